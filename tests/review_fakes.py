"""Hand-made member and candidate folders for the review tests (no training needed)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from docsort.core.probs import write_probs


def fake_member(
    path: Path,
    ids: Sequence[str],
    targets: Sequence[int],
    view_probs: Mapping[str, np.ndarray],
    *,
    fold: int = 0,
    arch: str = "resnet18",
    object_ids: bool = True,
    class_names: Sequence[str] | None = None,
) -> Path:
    """A model folder whose ``oof_views.npz`` holds ``log(p)`` per view (softmax gives ``p`` back).

    ``object_ids`` stores the IDs as an object array, as training does, which
    the review stages must read without unpickling.
    """
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"weights are not loaded by these tests")
    k = next(iter(view_probs.values())).shape[1]
    doc = {
        "arch": arch,
        "class_names": list(class_names or [f"c{i}" for i in range(k)]),
        "fold": fold,
        "config": {"data": {"image_size": 48, "channels": 1, "resize": "pad"}},
    }
    (path / "model.yaml").write_text(yaml.safe_dump(doc))
    logits = {
        v: np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1)).astype(np.float32)
        for v, p in view_probs.items()
    }
    ids_arr = np.asarray(list(ids), dtype=object if object_ids else str)
    np.savez_compressed(path / "oof_views.npz", ids=ids_arr, targets=np.asarray(targets), **logits)
    mean = np.mean([np.asarray(p) for p in view_probs.values()], axis=0)
    write_probs(
        path / "oof.csv", list(ids), mean, {"target": list(targets), "fold": [fold] * len(ids)}
    )
    return path


def fake_candidate(
    path: Path,
    name: str,
    ids: Sequence[str],
    probs: np.ndarray,
    *,
    members: int = 1,
    oof_macro_f1: float | None = None,
    oof: tuple[Sequence[str], Sequence[int], np.ndarray] | None = None,
) -> Path:
    """A candidate folder as `docsort ensemble` writes it (without a spec)."""
    path.mkdir(parents=True)
    write_probs(path / "probs.csv", list(ids), probs)
    if oof is not None:
        o_ids, o_targets, o_probs = oof
        write_probs(
            path / "oof.csv",
            list(o_ids),
            o_probs,
            {"target": list(o_targets), "fold": [0] * len(o_ids)},
        )
    info = {"name": name, "method": "soft", "members": members, "oof_macro_f1": oof_macro_f1}
    (path / "candidate.json").write_text(json.dumps(info))
    return path


def one_hot(classes: Sequence[int], k: int, confidence: float = 0.9) -> np.ndarray:
    """Rows putting ``confidence`` on the given class and the rest evenly elsewhere."""
    p = np.full((len(classes), k), (1 - confidence) / (k - 1))
    p[np.arange(len(classes)), list(classes)] = confidence
    return p
