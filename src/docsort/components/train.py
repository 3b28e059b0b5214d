"""KFP components of the training stages: one member, the out-of-fold report."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from docsort.core.container_images import image

CPU_IMAGE = image("cpu")
GPU_IMAGE = image("gpu")


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
    ``overrides``, ``extra_overrides``, then ``fold=<fold>`` when ``fold >= 0``; the sweep's
    best trial's member is reused when it is exactly that one."""
    from docsort.components.artifacts import log_metrics
    from docsort.sweep.results import train_member

    member = train_member(
        prepared.path, model.path, overrides.split() + extra_overrides.split(), fold=fold,
        sweep=sweep.path if sweep is not None else None,
    )  # fmt: skip
    model.metadata["overrides"] = " ".join(member.overrides)
    log_metrics(metrics, member.metrics)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def oof_report_op(
    prepared: Input[Dataset],
    models: Input[list[Model]],
    report: Output[Dataset],
    metrics: Output[Metrics],
    summary: Output[Markdown],
):
    """Merge the fold members' out-of-fold predictions into one table and score it (macro F1)."""
    import shutil
    from pathlib import Path

    from docsort.components.artifacts import log_metrics
    from docsort.train.oof import oof_report

    result = oof_report(prepared.path, [m.path for m in models], report.path)
    log_metrics(metrics, {
        "oof_macro_f1": float(result["macro_f1"]), "oof_accuracy": float(result["accuracy"]),
        **{f"fold{k}_macro_f1": float(r["macro_f1"]) for k, r in result["folds"].items()},
    })  # fmt: skip
    shutil.copyfile(Path(report.path) / "report.md", summary.path)
