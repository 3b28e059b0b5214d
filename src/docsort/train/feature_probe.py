"""Training of a ``feature_probe`` member: features once, a logistic regression, no epochs.

The frozen backbone (:mod:`docsort.models.feature_probe`) reads every training
page once per view (``model.fit_views``: the 8 dihedral views, or the page as it
is); a standardised logistic regression is fitted for every candidate layer set
and ``C``, and the pair with the best macro F1 in a ``model.cv_folds``-fold
cross-validation on the training rows (fitted and scored on the page as it is)
is refitted on all of them in every view. Its coefficients become the member's
linear head. The held-out fold, the member's OOF, is predicted by the finished
module exactly as a CNN member's is, so combiners and reviews cannot tell the
two apart.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from docsort.core import console
from docsort.core.atomic import atomic_path, write_text_atomic
from docsort.core.config import save_config
from docsort.core.device import autocast, resolve_device, resolve_precision, set_threads
from docsort.core.stats import macro_f1
from docsort.data.datasets import ImageArrayDataset
from docsort.data.prepared import Prepared
from docsort.models.factory import save_member
from docsort.models.feature_probe import BACKBONE_FILE, FeatureProbe, backbone_file, load_backbone
from docsort.models.tta import VIEWS, stack_views


@torch.inference_mode()
def pooled_features(
    probe: FeatureProbe,
    images: np.ndarray,
    rows: np.ndarray,
    views: list[str],
    device: torch.device,
    precision: str,
    views_per_batch: int = 64,
) -> dict[int, np.ndarray]:
    """For each of ``probe.layers``, an array (views, rows, channels) of average-pooled activations.

    About 64 views per forward pass: on a 2-core CPU 256 ran at 60-70 % of the speed.
    """
    probe = probe.to(device).eval()
    chunks: list[dict[int, torch.Tensor]] = []
    batch_size = max(1, views_per_batch // len(views))
    loader = DataLoader(ImageArrayDataset(images, rows, None), batch_size=batch_size)
    with console.Progress(len(rows), "features", "img") as bar:
        for x in loader:
            with autocast(device, precision):
                acts = probe.pooled(stack_views(x.to(device), views))
            # copies: the pooled tensors can keep their activation maps' memory alive (24 GB on
            # 3 000 RVL pages x 8 views before this clone)
            chunks.append(
                {
                    j: acts[j].float().reshape(len(views), x.shape[0], -1).clone()
                    for j in probe.layers
                }
            )
            bar.update(x.shape[0])
    return {j: torch.cat([c[j] for c in chunks], 1).numpy() for j in probe.layers}


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs' iteration warning: C is chosen by CV, not by it
        return make_pipeline(
            StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed)
        ).fit(x, y)


def _probs(model, x: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(x), k), np.float64)
    out[:, model[-1].classes_] = model.predict_proba(x)
    return out


def choose(
    feats: dict[int, np.ndarray], y: np.ndarray, layer_sets: dict, cs: list[float], folds: int,
    k: int, seed: int,
) -> tuple[list[dict], dict]:  # fmt: skip
    """Every (layer set, C)'s cross-validated macro F1, fitted and scored on the identity view; the best one.

    Fitting the CV folds on one view instead of all eight costs an eighth (on 3 000 RVL pages,
    about 20 s instead of about 3 min); only the final fit sees every view.
    """
    from sklearn.model_selection import StratifiedKFold

    n = len(y)
    folds = max(2, min(folds, int(np.bincount(y).max())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class with fewer pages than folds
        split = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y))
    rows = []
    for name, layers in layer_sets.items():
        x = np.concatenate([feats[j][0] for j in layers], -1)  # identity view: (pages, dims)
        for c in cs:
            oof = np.zeros((n, k))
            for a, b in split:
                oof[b] = _probs(_fit(x[a], y[a], c, seed), x[b], k)
            rows.append({"layers": name, "C": float(c), "dims": int(x.shape[-1]),
                         "cv_macro_f1": round(macro_f1(y, oof.argmax(1), range(k)), 4)})  # fmt: skip
    return rows, max(rows, key=lambda r: r["cv_macro_f1"])


def head_from(model, k: int) -> tuple[torch.Tensor, ...]:
    """(mean, scale, weight, bias) of a fitted scaler + logistic regression over ``k`` classes.

    A class the regression never saw gets a bias of -1e4 (probability 0, as docsort's
    CNN members give it almost none); a two-class regression's one logit is split in two.
    """
    scaler, lr = model[0], model[-1]
    coef, icpt = lr.coef_, lr.intercept_
    if coef.shape[0] == 1:  # binary: softmax([-z/2, z/2]) == sigmoid(z)
        coef, icpt = np.concatenate([-coef, coef]) / 2, np.concatenate([-icpt, icpt]) / 2
    weight = np.zeros((k, coef.shape[1]), np.float32)
    bias = np.full(k, -1e4, np.float32)
    weight[lr.classes_], bias[lr.classes_] = coef, icpt
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    return tuple(
        torch.from_numpy(np.asarray(a, np.float32)) for a in (scaler.mean_, scale, weight, bias)
    )


def fit_feature_probe(prep: Prepared, cfg: DictConfig, fold: int | None, out: Path) -> dict:
    """Fit a ``feature_probe`` member on ``fold``'s training rows and write it like any member."""
    from docsort.train.train import member_label, write_oof

    t0 = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    set_threads(cfg.threads)
    m, k, seed = cfg.model, prep.num_classes, int(cfg.seed) + (fold or 0)
    index = prep.index
    images = prep.images("train")
    targets = index["target"].to_numpy()
    is_val = index["fold"].to_numpy() == fold if fold is not None else np.zeros(len(index), bool)
    tr_rows, va_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    views = list(VIEWS) if m.fit_views == "all" else ["identity"]
    src = backbone_file(m.backbone, out / ".backbone")
    net = load_backbone(src)
    layer_sets = {str(n): [int(i) for i in v] for n, v in m.layer_sets.items()}
    taps = sorted({i for v in layer_sets.values() for i in v})
    every = FeatureProbe(net, taps, k, int(cfg.data.channels))  # refuses layers it lacks
    of = f"/{int(prep.info['num_folds'])}" if fold is not None else ""
    console.header(
        f"{member_label(fold)}{of}: feature_probe ({m.backbone}), {int(cfg.data.image_size)} px, "
        f"{len(views)} view(s), {len(tr_rows)} train / {len(va_rows)} val images"
    )
    n_taps = len(every._taps)
    layer_sets = {n: [i % n_taps for i in v] for n, v in layer_sets.items()}
    feats = pooled_features(every, images, tr_rows, views, device, precision)
    y = targets[tr_rows]
    rows, best = choose(feats, y, layer_sets, list(m.C), int(m.cv_folds), k, seed)
    layers = layer_sets[best["layers"]]
    console.say(
        f"{member_label(fold)}: layers {best['layers']} {layers}, C={best['C']}: CV macro F1 "
        f"{best['cv_macro_f1']:.4f} (best of {len(rows)})"
    )
    x = np.concatenate([feats[j] for j in layers], -1)
    fitted = _fit(x.reshape(-1, x.shape[-1]), np.tile(y, len(views)), best["C"], seed)
    probe = FeatureProbe(net, layers, k, int(cfg.data.channels))
    mean, scale, weight, bias = head_from(fitted, k)
    with torch.no_grad():
        probe.mean.copy_(mean)
        probe.scale.copy_(scale)
        probe.head.weight.copy_(weight)
        probe.head.bias.copy_(bias)
    probe.eval()
    cfg = OmegaConf.merge(cfg, {"model": {"layers": layers}})
    result = {"fold": fold, "epochs": 0, "precision": precision, "train_images": len(tr_rows),
              "val_images": len(va_rows), "history": [],
              "probe": {"chosen": best, "candidates": rows, "views": views}}  # fmt: skip
    if len(va_rows):
        _, _, oof_scores = write_oof(out, probe, prep, cfg, images, va_rows, device, precision)
        result.update(val_macro_f1=oof_scores["oof_macro_f1"], best_epoch=0, **oof_scores)
    with atomic_path(out / BACKBONE_FILE) as tmp:
        shutil.copyfile(src, tmp)
    shutil.rmtree(out / ".backbone", ignore_errors=True)
    save_member(out, probe, cfg, prep.class_names, fold=fold, epochs=0)
    save_config(cfg, out / "config.yaml")
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=2))
    text = f"{member_label(fold)}: fitted in {console.fmt_seconds(time.monotonic() - t0)}"
    if "oof_macro_f1" in result:
        text += (
            f"; val macro F1 {result['oof_macro_f1']:.4f}, with 8-view TTA "
            f"{result['oof_tta_macro_f1']:.4f}"
        )
    console.say(text)
    return result
