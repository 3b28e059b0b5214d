"""W&B artifacts for what follows training: candidate ensembles and error notebooks.

Training members log through Lightning's ``WandbLogger`` (``tracking.*`` in the
config). The later stages have no training config, so they follow the job's
environment: with ``WANDB_API_KEY`` set they log online, with
``WANDB_MODE=offline`` into ``<folder>/wandb/`` (``wandb sync`` uploads it later),
and otherwise not at all, so a laptop run never gains a ``wandb/`` folder it did
not ask for. ``WANDB_RUN_GROUP`` puts them in the same group as the training runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def artifact_mode(env: Mapping[str, str] | None = None) -> str:
    """``online``, ``offline`` or ``disabled`` for the stages after training (see the module)."""
    env = os.environ if env is None else env
    forced = env.get("WANDB_MODE", "").lower()
    if forced == "disabled":
        return "disabled"
    if forced in ("offline", "dryrun"):
        return "offline" if env.get("WANDB_DIR") else "disabled"
    return "online" if env.get("WANDB_API_KEY") else "disabled"


def log_artifact(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    kind: str,
    name: str,
    project: str = "docsort",
    metrics: Mapping[str, float] | None = None,
) -> str | None:
    """Log a folder's files (or the files listed) as one W&B artifact of type ``kind``
    (``candidate``, ``report``).

    Returns the run's mode when something was logged, else None. ``metrics`` go to
    the run's summary (macro F1 of a candidate, ...), so runs compare in the W&B table.
    """
    mode = artifact_mode()
    if mode == "disabled":
        return None
    import tempfile

    import wandb

    if isinstance(paths, (str, os.PathLike)):
        root = Path(paths)
        files = {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}
    else:
        files = {Path(p).name: Path(p) for p in paths}
    where = os.environ.get("WANDB_DIR") or tempfile.mkdtemp(prefix="docsort-wandb-")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:120] or kind
    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", project),
        group=os.environ.get("WANDB_RUN_GROUP") or None,
        job_type=kind,
        name=f"{kind}/{safe}",
        dir=where,
        mode=mode,
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        reinit="create_new",
    )
    try:
        art = wandb.Artifact(safe, type=kind)
        for rel, p in files.items():
            art.add_file(str(p), name=rel)
        run.log_artifact(art)
        for key, value in (metrics or {}).items():
            run.summary[key] = value
    finally:
        run.finish()
    return mode
