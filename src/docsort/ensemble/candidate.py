"""Candidate specs re-run: fetch a spec and its members' models, predict, combine."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from docsort.core import storage
from docsort.core.atomic import atomic_path, scratch_dir
from docsort.core.errors import ConfigError, DocsortError
from docsort.core.outputs import stage
from docsort.core.probs import align, read_probs
from docsort.data.prepared import Prepared
from docsort.ensemble import combiners as ens
from docsort.ensemble import members as mem
from docsort.ensemble.ensemble import candidate_oof, member_oofs, write_candidate


def list_candidates(folder: str | os.PathLike) -> list[Path]:
    """Candidate folders (those with candidate.json) inside ``folder``, sorted by name."""
    found = sorted(p.parent for p in Path(folder).glob("*/candidate.json"))
    if not found:
        raise DocsortError("no candidate folders (*/candidate.json)", file=str(folder))
    return found


def expand_candidates(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Candidate folders from arguments that are candidate folders or folders of them."""
    out: list[Path] = []
    for p in map(Path, paths):
        out += [p] if (p / "candidate.json").is_file() else list_candidates(p)
    return out


def copy_candidate(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a candidate folder to ``dst``, its spec re-written so member paths start from the copy.

    A spec names members relative to its own folder; a plain copy elsewhere
    (without the models) would point at nothing.
    """
    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    if (src / "candidate.yaml").is_file():
        ens.save_spec(ens.load_spec(src / "candidate.yaml"), dst / "candidate.yaml")
    return dst


def _fetch_spec(spec: str | os.PathLike, workdir: Path) -> Path:
    if storage.is_s3(spec):
        local = workdir / "candidate.yaml"
        local.write_bytes(storage.read_bytes(spec))
        return local
    return Path(spec)


def _fetch_model(model: str, workdir: Path) -> Path:
    if storage.is_s3(model):
        return storage.localize(model, workdir / "models", progress=False)
    p = Path(model)
    if not p.exists():
        raise DocsortError("member model not found", file=model)
    return p


@stage("candidate", inputs=("spec", "prepared"), folder="out")
def run_candidate(
    spec: str | os.PathLike,
    prepared: str | os.PathLike,
    out: str | os.PathLike,
    overrides: Sequence[str] = (),
) -> Path:
    """Re-run a saved candidate spec from its members' models on the prepared test images.

    Member paths in the spec are relative to its folder (or absolute, or URIs),
    so a candidate moved with its models re-runs where it now lies.

    Each member predicts with its own TTA views (a fold bundle averages its
    folds), then the spec combines them with its stored method, weights,
    temperatures or stacker; nothing is refitted. ``overrides`` reach
    ``docsort predict`` (device, precision, tta.batch_size). The output is a
    candidate folder like ``docsort ensemble`` writes, plus ``members/``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with scratch_dir(out) as work:
        spec_obj = ens.load_spec(_fetch_spec(spec, Path(work)), base=ens.spec_folder(spec))
        prep = Prepared(Path(prepared))
        models = [_fetch_model(m.model, Path(work)) for m in spec_obj.members]
        with atomic_path(out, is_dir=True) as tmp:
            member_probs = []
            for i, (m, model) in enumerate(zip(spec_obj.members, models, strict=True)):
                folder = (
                    tmp
                    / "members"
                    / f"{i:02d}-{''.join(c if c.isalnum() or c in '._-' else '_' for c in m.name)}"
                )
                mem.predict_member(
                    prep.root, model, folder, spec_obj.views_of(i), spec_obj.tta_merge, overrides
                )
                ids, p, _ = read_probs(folder / "probs.csv")
                member_probs.append(align(ids, p, prep.test_ids, source=str(folder / "probs.csv")))
            probs = ens.combine(spec_obj, member_probs)
            oofs = member_oofs(spec_obj, models)
            oof = candidate_oof(spec_obj, oofs) if oofs else None
            if spec_obj.oof_macro_f1 is None and oof is not None:
                spec_obj.oof_macro_f1 = ens.score(oof.probs, oof.targets, "macro_f1")
            write_candidate(tmp, spec_obj, prep.test_ids, probs, oof, {"spec": str(spec), "rerun": True},
                            class_names=prep.class_names)  # fmt: skip
    return out


def prepare_for_candidates(
    data: str,
    specs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    overrides: Sequence[str] = (),
) -> Path:
    """``prepare`` the dataset with the image settings the candidates' members were trained with.

    Prediction needs the prepared images to match each model's
    ``data.image_size/channels/resize``; reading them from the members saves
    the user from repeating (and mistyping) them. ``data.num_folds`` defaults
    to the first member's (folds do not matter for prediction, but a small
    dataset may not split into the default number).
    """
    from docsort.data.prepare import prepare

    if not specs:
        raise DocsortError("no candidate specs given")
    out = Path(out)
    settings: dict[str, str] = {}
    defaults: dict[str, str] = {}
    with scratch_dir(out) as work:  # named so that a killed run's leftover is removed next time
        for s in specs:
            spec = ens.load_spec(_fetch_spec(s, work), base=ens.spec_folder(s))
            for m in spec.members:
                model = _fetch_model(m.model, work)
                defaults = defaults or mem.data_settings(model, ("num_folds",))
                for key, value in mem.data_settings(model).items():
                    if settings.setdefault(key, value) != value:
                        raise ConfigError(f"members need different data.{key} ({settings[key]} vs {value}); "
                                          "candidates run on one prepared folder, so their members must share it")  # fmt: skip
    given = {o.split("=", 1)[0].lstrip("+"): o.split("=", 1)[1] for o in overrides if "=" in o}
    for key, value in settings.items():
        if f"data.{key}" in given and given[f"data.{key}"] != value:
            raise ConfigError(
                f"data.{key}={given[f'data.{key}']} but the candidates' members were trained with {value}"
            )
    return prepare(
        data,
        out,
        [
            *overrides,
            *(
                f"data.{k}={v}"
                for k, v in {**defaults, **settings}.items()
                if f"data.{k}" not in given
            ),
        ],
    )
