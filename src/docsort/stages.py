"""File-level stages that connect predictions, candidates, hard cases and submissions.

``ensemble`` turns member prediction folders into a candidate folder
(``candidate.yaml`` + ``probs.csv``); ``compare_hardcases`` scores candidate
folders on hardcases.csv and records the winner; ``submit_winner`` writes the
winner's submission. The numeric work lives in ``ensemble``, ``hardcase_compare``
and ``submit``; this module only reads and writes their files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from docsort import ensemble as ens
from docsort.atomic import atomic_path, write_text_atomic
from docsort.data import read_hardcases, read_meta
from docsort.errors import DocsortError
from docsort.hardcase_compare import compare_candidates
from docsort.prepared import Prepared
from docsort.probs import align, read_probs, write_probs
from docsort.submit import submit


def _member_name(pred_dir: Path, model_dir: Path | None, n: int) -> str:
    if model_dir is not None and (model_dir / "model.yaml").is_file():
        from omegaconf import OmegaConf

        doc = OmegaConf.load(model_dir / "model.yaml")
        fold = doc.get("fold")
        return f"{doc.arch}-f{fold}" if fold is not None else f"{doc.arch}-all"
    return f"member{n}"


def ensemble(
    predictions: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    models: Sequence[str | os.PathLike] = (),
    name: str = "soft",
    method: str = "soft",
    weights: Sequence[float] | None = None,
    objective: str = "macro_f1",
) -> Path:
    """Combine member prediction folders (``probs.csv`` each) into a candidate folder.

    ``weighted`` and ``stacked`` fit on the members' out-of-fold tables
    (``oof.csv`` in each model folder), restricted to the rows all members share.
    """
    if not predictions:
        raise DocsortError("ensemble needs at least one member prediction folder")
    preds = [Path(p) for p in predictions]
    model_dirs = [Path(m) for m in models] if models else [None] * len(preds)
    if len(model_dirs) != len(preds):
        raise DocsortError(f"{len(preds)} prediction folders but {len(model_dirs)} model folders")
    tables = [read_probs(p / "probs.csv") for p in preds]
    ids = tables[0][0]
    member_probs = [align(t[0], t[1], ids, source=str(p / "probs.csv")) for t, p in zip(tables, preds, strict=True)]
    views = json.loads((preds[0] / "predict.json").read_text()).get("views", []) if (preds[0] / "predict.json").is_file() else []
    members = [
        ens.MemberSpec(name=_member_name(p, m, n), checkpoint=str(m) if m else str(p))
        for n, (p, m) in enumerate(zip(preds, model_dirs, strict=True))
    ]
    oof_f1 = None
    if method in ("weighted", "stacked") or all(m is not None and (m / "oof.csv").is_file() for m in model_dirs):
        oof = _shared_oof(model_dirs)
        if oof is not None:
            oof_ids, targets, oof_probs = oof
            spec = ens.fit_candidate(name, members, oof_probs, targets, method=method, objective=objective, tta_views=views or ["identity"])
            # Score fitted methods on folds they did not see, or the winner policy would favour them.
            honest = ens.cross_fit_oof(oof_probs, targets, method=method, objective=objective) if method in ("weighted", "stacked") else ens.combine(spec, oof_probs)
            oof_f1 = float(_macro_f1(targets, honest))
        elif method in ("weighted", "stacked"):
            raise DocsortError(f"method {method} needs out-of-fold predictions (oof.csv) sharing rows across members")
        else:
            spec = ens.CandidateSpec(name=name, members=members, method=method, tta_views=views or ["identity"])
    else:
        spec = ens.CandidateSpec(name=name, members=members, method=method, weights=list(weights) if weights else None, tta_views=views or ["identity"])
    spec.validate()
    probs = ens.combine(spec, member_probs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ens.save_spec(spec, out / "candidate.yaml")
    write_probs(out / "probs.csv", ids, probs)
    info = {"name": name, "method": method, "members": len(members), "oof_macro_f1": oof_f1}
    write_text_atomic(out / "candidate.json", json.dumps(info, indent=2))
    return out


def ensemble_candidates(
    predictions: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    models: Sequence[str | os.PathLike] = (),
    methods: Sequence[str] = ("soft",),
    include_members: bool = True,
) -> Path:
    """One candidate folder per method under ``out`` (plus one per member alone)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = list(models) or [None] * len(predictions)
    for method in methods:
        name = {"soft": "soft-vote", "hard": "hard-vote"}.get(method, method)
        ensemble(predictions, out / name, models=[m for m in models if m], name=name, method=method)
    if include_members and len(predictions) > 1:
        for n, (p, m) in enumerate(zip(predictions, models, strict=True)):
            name = _member_name(Path(p), Path(m) if m else None, n)
            ensemble([p], out / name, models=[m] if m else [], name=name, method="soft")
    return out


def list_candidates(folder: str | os.PathLike) -> list[Path]:
    """Candidate folders (those with candidate.json) inside ``folder``, sorted by name."""
    found = sorted(p.parent for p in Path(folder).glob("*/candidate.json"))
    if not found:
        raise DocsortError("no candidate folders (*/candidate.json)", file=str(folder))
    return found


def _macro_f1(targets: np.ndarray, probs: np.ndarray) -> float:
    from docsort.stats import macro_f1

    return macro_f1(targets, probs.argmax(1))


def _shared_oof(model_dirs: Sequence[Path | None]) -> tuple[list[str], np.ndarray, list[np.ndarray]] | None:
    """Members' OOF probabilities on the rows every member holds out, or None."""
    if any(m is None or not (m / "oof.csv").is_file() for m in model_dirs):
        return None
    frames = [read_probs(m / "oof.csv") for m in model_dirs]  # type: ignore[operator]
    common = set(frames[0][0])
    for f in frames[1:]:
        common &= set(f[0])
    if len(common) < 10:
        return None
    ids = [i for i in frames[0][0] if i in common]
    targets = frames[0][2].set_index("ID").loc[ids, "target"].to_numpy()
    return ids, targets, [align(f[0], f[1], ids, source="oof.csv") for f in frames]


def compare_hardcases(prepared: str | os.PathLike, candidates: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Score each candidate folder on the prepared hardcases.csv; write the table and the winner."""
    prep = Prepared(Path(prepared))
    meta = read_meta(prep.root / "meta.csv")
    hard_path = prep.file("hardcases.csv")
    if hard_path is None:
        raise DocsortError("no hardcases.csv in the dataset; add one (ID,target,note,kind) to compare candidates", file=str(prep.root))
    hard = read_hardcases(hard_path, meta)
    hard = hard[hard["ID"].isin(set(prep.test_ids))]
    if hard.empty:
        raise DocsortError("no hard case is a test image", file="hardcases.csv")
    cand_probs, oof, members, dirs = {}, {}, {}, {}
    for c in candidates:
        c = Path(c)
        info = json.loads((c / "candidate.json").read_text())
        name = info["name"]
        if name in cand_probs:
            raise DocsortError(f"two candidates are named {name!r}", file=str(c))
        ids, probs, _ = read_probs(c / "probs.csv")
        cand_probs[name] = align(ids, probs, hard["ID"].tolist(), source=str(c / "probs.csv"))
        oof[name] = info.get("oof_macro_f1") if info.get("oof_macro_f1") is not None else float("nan")
        members[name] = int(info["members"])
        dirs[name] = c
    cmp = compare_candidates(
        hard["ID"].tolist(), hard["target"].tolist(), cand_probs, class_names=meta.class_names,
        notes=hard["note"].tolist(), kinds=hard["kind"].tolist(), oof_macro_f1=oof, members=members,
    )  # fmt: skip
    out = Path(out)
    with atomic_path(out, is_dir=True) as tmp:
        cmp.per_image.to_csv(tmp / "per_image.csv", index=False)
        cmp.per_candidate.to_csv(tmp / "per_candidate.csv", index=False)
        cmp.pairwise.to_csv(tmp / "pairwise.csv", index=False)
        text = cmp.format_table()
        (tmp / "comparison.txt").write_text(text)
        (tmp / "comparison.md").write_text(f"# Hard-case comparison\n\nWinner: **{cmp.winner}**\n\n{cmp.policy}\n\n```\n{text}\n```\n")
        shutil.copytree(dirs[cmp.winner], tmp / "winner")
        (tmp / "winner.json").write_text(json.dumps({"winner": cmp.winner, "policy": cmp.policy}, indent=2))
    return out


def submit_winner(prepared: str | os.PathLike, comparison: str | os.PathLike, out: str | os.PathLike, output_root: str | None = None) -> str:
    """Submit the winning candidate of a hard-case comparison (also to ``output_root`` if given)."""
    comparison = Path(comparison)
    winner = comparison / "winner"
    spec = ens.load_spec(winner / "candidate.yaml")
    kwargs = dict(candidate=spec.name, spec=spec.to_dict(), checkpoints=[m.checkpoint for m in spec.members if Path(m.checkpoint).exists()],
                  views=spec.tta_views)  # fmt: skip
    uri = submit(prepared, winner / "probs.csv", str(out), **kwargs)
    if output_root:
        uri = submit(prepared, winner / "probs.csv", output_root, **kwargs)
    return uri


def score_against_labels(prepared: str | os.PathLike, probs: str | os.PathLike) -> float | None:
    """Macro F1 of ``probs`` on the prepared test_labels.csv (demo data), else None."""
    prep = Prepared(Path(prepared))
    labels = prep.file("test_labels.csv")
    if labels is None:
        return None
    df = pd.read_csv(labels, dtype={"ID": str})
    ids, p, _ = read_probs(probs)
    return _macro_f1(df["target"].to_numpy(), align(ids, p, df["ID"].tolist(), source=str(probs)))
