"""Task groups that several pipelines share, so each pipeline file only states what is its own.

Call these inside a ``@dsl.pipeline`` function: KFP records the tasks they create
in the pipeline being defined, exactly as if they were written inline.
"""

from __future__ import annotations

from kfp import dsl

from docsort.components.data import data_version_op, prepare_op
from docsort.components.k8s import apply
from docsort.components.train import oof_report_op, train_op

#: Folds trained at once on a cluster (kfp.local runs at most two tasks at a time).
FOLD_PARALLELISM = 5


def versioned_prepare(data_root: str, overrides: str) -> dsl.PipelineTask:
    """data-version -> prepare; the version stamp keys KFP's cache to the data's content."""
    version = apply(data_version_op(data_root=data_root).set_display_name("data-version"))
    return apply(
        prepare_op(
            data_root=data_root, data_version=version.output, overrides=overrides
        ).set_display_name("prepare")
    )


def trained_folds(prep: dsl.PipelineTask, train_op_kwargs: dict) -> dsl.PipelineTask:
    """One member per fold (ParallelFor over prepare's fold list), then the out-of-fold report."""
    with dsl.ParallelFor(prep.outputs["Output"], parallelism=FOLD_PARALLELISM) as fold:
        trained = train_op(prepared=prep.outputs["prepared"], fold=fold, **train_op_kwargs)
        apply(trained.set_display_name("train-fold"))
    report = oof_report_op(
        prepared=prep.outputs["prepared"], models=dsl.Collected(trained.outputs["model"])
    )
    return apply(report.set_display_name("oof-report"))
