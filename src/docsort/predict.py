"""Stage ``predict``: class probabilities per image with batched dihedral TTA.

One pass per member over the images: every batch carries all requested views,
so the model runs ``views x images`` forward passes and nothing more.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from docsort.atomic import write_text_atomic
from docsort.config import load_config
from docsort.device import resolve_device, resolve_precision, set_threads
from docsort.errors import DocsortError
from docsort.models import load_member
from docsort.prepared import Prepared
from docsort.probs import write_probs
from docsort.train import ImageArrayDataset, predict_views
from docsort.tta import check_views, merge


def predict(
    prepared: str | os.PathLike,
    model: str | os.PathLike,
    out: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    split: str = "test",
) -> Path:
    """Write ``probs.csv`` (merged over ``tta.views``) and ``views.npz`` (logits per view) into ``out``.

    ``split`` is ``test`` (the test images) or ``train`` (every training image).
    """
    cfg = load_config(overrides)
    views = check_views(list(cfg.tta.views))
    prep = Prepared(Path(prepared))
    member = load_member(model)
    if member.class_names != prep.class_names:
        raise DocsortError("model classes differ from the prepared data's meta.csv", file=str(model))
    mcfg = member.cfg.data
    for key in ("image_size", "channels", "resize"):
        if str(mcfg[key]) != str(prep.info[key]):
            raise DocsortError(f"model was trained with data.{key}={mcfg[key]}, data prepared with {prep.info[key]}", file=str(model))
    if split not in ("test", "train"):
        raise DocsortError(f"split {split!r} must be test or train")
    ids = prep.test_ids if split == "test" else prep.index["ID"].tolist()
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    set_threads(cfg.threads)
    images = prep.images(split)
    per_view = predict_views(member.model, ImageArrayDataset(images, np.arange(len(ids)), None), views, device, precision, int(cfg.tta.batch_size))
    probs = merge(torch.stack([torch.from_numpy(per_view[v]) for v in views]), str(cfg.tta.merge)).numpy()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "views.npz", ids=np.asarray(ids), **per_view)
    write_probs(out / "probs.csv", ids, probs)
    info = {"model": str(model), "views": views, "merge": str(cfg.tta.merge), "precision": precision, "images": len(ids), "split": split}
    write_text_atomic(out / "predict.json", json.dumps(info, indent=2))
    return out
