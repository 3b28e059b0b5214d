"""One lightweight KFP component per docsort stage.

Each body imports docsort and calls one stage function: on a cluster it runs in
the docsort image, locally ``kfp.local.SubprocessRunner(use_venv=False)`` runs
the same body with the installed package. Hydra overrides travel as one
space-separated string, e.g. ``"model=resnet18 train.epochs=3"``.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from docsort.core.container_images import image

CPU_IMAGE = image("cpu")
GPU_IMAGE = image("gpu")


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def sample_data_op(data: Output[Dataset], per_class: int = 40, seed: int = 0):
    """Generate the synthetic sample dataset."""
    from docsort.data.sample import generate_sample_data

    generate_sample_data(data.path, per_class=per_class, seed=seed)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def data_version_op(data_uri: str) -> str:
    """A version stamp of the dataset root (file listing: names, sizes, mtimes or ETags).

    Never cached: it runs on every pipeline run, and ``prepare`` takes its output
    as a parameter, so prepare's cache key (and every later step's) changes
    exactly when the data behind ``data_uri`` changes.
    """
    from docsort.core.storage import fingerprint

    return fingerprint(data_uri)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def prepare_op(
    prepared: Output[Dataset],
    data_uri: str = "",
    data: Input[Dataset] = None,
    overrides: str = "",
    data_version: str = "",
) -> list[int]:
    """Validate the dataset (``data_uri`` or the ``data`` artifact), make folds and the image cache.

    ``data_version`` (from ``data_version_op``) is not used by the stage: it is part of
    the cache key, so new data behind the same URI is prepared again. Returns the
    fold indices ``[0, ..., K-1]``, for a ParallelFor over the folds. ``list[int]``, not
    ``list``: the loop item is then typed NUMBER_INTEGER and the KFP driver hands it to
    ``train_op.fold: int`` as a number (a bare ``list`` makes it a STRING, refused there).
    """
    import json
    from pathlib import Path

    from docsort.data.prepare import prepare

    prepare(data_uri or data.path, prepared.path, overrides.split())
    prepared.metadata["data_version"] = data_version
    info = json.loads((Path(prepared.path) / "prepared.json").read_text())
    return list(range(int(info["num_folds"])))


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_op(
    prepared: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    overrides: str = "",
    extra_overrides: str = "",
    fold: int = -1,
    sweep: Input[Dataset] = None,
):
    """Train one member with the overrides: a ``sweep`` result's best config (when given),
    ``overrides``, ``extra_overrides``, then ``fold=<fold>`` when ``fold >= 0``."""
    import json
    from pathlib import Path

    from docsort.sweep.results import reuse_member
    from docsort.train.train import train

    best = (
        (Path(sweep.path) / "best_overrides.txt").read_text().split() if sweep is not None else []
    )
    args = (
        best + overrides.split() + extra_overrides.split() + ([f"fold={fold}"] if fold >= 0 else [])
    )
    # The sweep's best trial already trained this member when its overrides, fold and data match.
    kept = None
    if sweep is not None and fold >= 0:
        kept = reuse_member(sweep.path, fold, args, prepared.path, model.path)
    if kept is None:
        train(prepared.path, model.path, args)
    result = json.loads((Path(model.path) / "metrics.json").read_text())
    for key in ("val_macro_f1", "val_loss", "oof_tta_macro_f1"):
        if key in result:
            metrics.log_metric(key, float(result[key]))
    model.metadata["overrides"] = " ".join(args)
    # kfp.local treats an output artifact without a file as missing, so a cached task would never hit.
    Path(metrics.path).write_text(json.dumps(metrics.metadata))


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def predict_op(
    prepared: Input[Dataset], model: Input[Model], predictions: Output[Dataset], overrides: str = ""
):
    """Test-set probabilities of one member with batched TTA."""
    from docsort.predict.predict import predict

    predict(prepared.path, model.path, predictions.path, overrides.split())
    predictions.metadata["model"] = model.path


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ensemble_op(
    predictions: Input[list[Dataset]],
    models: Input[list[Model]],
    candidates: Output[Dataset],
    methods: str = "soft",
    include_members: bool = True,
):
    """Build one candidate per method (soft, weighted, hard, stacked), plus each member alone."""
    from docsort.ensemble.ensemble import ensemble_candidates

    ensemble_candidates(
        [p.path for p in predictions], candidates.path, models=[m.path for m in models],
        methods=methods.split(","), include_members=include_members,
    )  # fmt: skip


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def hardcases_op(
    prepared: Input[Dataset],
    candidates: Input[Dataset],
    comparison: Output[Dataset],
    summary: Output[Markdown],
):
    """Score every candidate on hardcases.csv side by side and choose the winner."""
    import shutil
    from pathlib import Path

    from docsort.ensemble.candidate import list_candidates
    from docsort.review.compare import compare_hardcases

    compare_hardcases(prepared.path, list_candidates(candidates.path), comparison.path)
    shutil.copyfile(Path(comparison.path) / "comparison.md", summary.path)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def submit_op(
    prepared: Input[Dataset],
    comparison: Input[Dataset],
    submission: Output[Dataset],
    output_root: str = "",
):
    """Write the winner's validated submission (to ``output_root`` too when set, e.g. s3://...)."""
    from docsort.review.submission import submit_winner

    uri = submit_winner(prepared.path, comparison.path, submission.path, output_root or None)
    submission.metadata["uri"] = uri


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def sweep_op(
    prepared: Input[Dataset],
    result: Output[Dataset],
    metrics: Output[Metrics],
    space: str = "default",
    backend: str = "auto",
    n_trials: int = 0,
    overrides: str = "",
    extra_overrides: str = "",
    namespace: str = "",
    timeout_s: int = 0,
):
    """Hyperparameter sweep over ``space``: a Katib Experiment (``katib``) or a local Optuna study (``local``).

    ``auto`` picks Katib inside a Kubernetes pod and the local twin elsewhere
    (kfp.local). Every trial gets ``overrides`` then ``extra_overrides``; Katib
    trials read the prepared data by its S3 URI and keep their members beside
    ``result`` (``<task output>/trials/<trial>/``, so ``result`` stays small for
    the steps that download it). ``namespace``: the Experiment's, default the
    one this pod runs in. ``timeout_s``: how long to wait, 0 = the Experiment's
    worst case; a shorter wait is refused before the Experiment is created.
    Besides ``trials.csv`` and ``best.json`` (naming the best trial's member),
    ``result`` holds ``best_overrides.txt``: the best trial's whole override list
    without ``fold``, which ``train_op(sweep=...)`` trains on K folds.
    """
    import json
    import os
    from pathlib import Path

    from docsort.core.errors import DocsortError
    from docsort.sweep.sweep import (
        load_space,
        override_key,
        run_sweep,
        sweep_wait_s,
        trial_overrides,
    )

    if backend == "auto":
        backend = "katib" if os.environ.get("KUBERNETES_SERVICE_HOST") else "local"
    fixed = overrides.split() + extra_overrides.split()
    if backend == "katib":
        uri = prepared.uri.replace("minio://", "s3://", 1)
        if not uri.startswith("s3://"):
            raise DocsortError(
                f"Katib trials read the prepared data from S3, but it is at {uri}: use an s3:// pipeline root"
            )
        pod = json.loads(os.environ.get("DOCSORT_TRIAL_POD") or "{}")
        wait = sweep_wait_s(space, n_trials or None, timeout_s)  # refuses one too short for it
        out_uri = result.uri.replace("minio://", "s3://", 1).rstrip("/")
        trials = out_uri.rsplit("/", 1)[0] + "/trials" if out_uri.startswith("s3://") else None
        found = run_sweep(uri, space, result.path, backend="katib", fixed_overrides=fixed, namespace=namespace,
                          timeout_s=wait, n_trials=n_trials or None, pod=pod, trials_uri=trials)  # fmt: skip
    else:
        found = run_sweep(
            prepared.path,
            space,
            result.path,
            backend=backend,
            fixed_overrides=fixed,
            n_trials=n_trials or None,
            timeout_s=timeout_s or None,
        )
    best = [
        o
        for o in trial_overrides(load_space(space), fixed, found.overrides)
        if override_key(o) != "fold"
    ]
    metrics.log_metric(f"best_{found.metric}", float(found.value))
    states = found.trials["state"].value_counts().to_dict()
    for state in ("succeeded", "pruned", "failed"):
        metrics.log_metric(f"trials_{state}", int(states.get(state, 0)))
    (Path(result.path) / "best_overrides.txt").write_text(" ".join(best) + "\n")
    result.metadata.update(
        {
            "backend": found.backend,
            "experiment": found.experiment or "",
            "best_overrides": " ".join(best),
        }
    )
    Path(metrics.path).write_text(
        json.dumps(metrics.metadata)
    )  # a file, so that kfp.local's cache finds it


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def oof_report_op(
    prepared: Input[Dataset],
    models: Input[list[Model]],
    report: Output[Dataset],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """Merge the fold members' out-of-fold predictions into one table and score it (macro F1)."""
    import json
    import shutil
    from pathlib import Path

    from docsort.train.oof import oof_report

    result = oof_report(prepared.path, [m.path for m in models], report.path)
    metrics.log_metric("oof_macro_f1", float(result["macro_f1"]))
    metrics.log_metric("oof_accuracy", float(result["accuracy"]))
    for fold, r in result["folds"].items():
        metrics.log_metric(f"fold{fold}_macro_f1", float(r["macro_f1"]))
    shutil.copyfile(Path(report.path) / "report.md", summary.path)
    Path(metrics.path).write_text(
        json.dumps(metrics.metadata)
    )  # a file, so that kfp.local's cache finds it
