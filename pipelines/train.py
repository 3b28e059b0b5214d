"""K-fold training: data version -> prepare -> one member per fold (ParallelFor) -> out-of-fold report.

Every fold's member predicts its own validation fold; the report merges those
predictions into one out-of-fold table over all training images and scores it
(macro F1 overall and per fold, logged as KFP metrics).

Locally: ``docsort run pipelines/train.py --local --param data_uri=DATA``.
On a cluster: ``docsort submit pipelines/train.py --host URL --param data_uri=s3://...``.
"""

from kfp import dsl

from docsort.components.k8s import apply
from docsort.components.stages import data_version_op, oof_report_op, prepare_op, train_op

#: Folds trained at once on a cluster (kfp.local runs at most two tasks at a time).
FOLD_PARALLELISM = 5


@dsl.pipeline(
    name="docsort-train",
    description="docsort: prepare, train one member per fold, report out-of-fold macro F1.",
)
def train_pipeline(
    data_uri: str,
    data_overrides: str = "",
    train_overrides: str = "",
) -> dsl.Dataset:
    """``data_uri``: dataset root (folder or s3://bucket/prefix). ``data_overrides``: Hydra
    overrides for prepare and train alike (``data.*``, ``experiment=...``);
    ``train_overrides``: training only (``model=...``, ``train.epochs=...``)."""
    version = apply(data_version_op(data_uri=data_uri).set_display_name("data-version"))
    prep = apply(
        prepare_op(
            data_uri=data_uri, data_version=version.output, overrides=data_overrides
        ).set_display_name("prepare")
    )
    with dsl.ParallelFor(prep.outputs["Output"], parallelism=FOLD_PARALLELISM) as fold:
        trained = train_op(
            prepared=prep.outputs["prepared"],
            overrides=data_overrides,
            extra_overrides=train_overrides,
            fold=fold,
        )
        apply(trained.set_display_name("train-fold"))
    report = oof_report_op(
        prepared=prep.outputs["prepared"], models=dsl.Collected(trained.outputs["model"])
    )
    apply(report.set_display_name("oof-report"))
    return report.outputs["report"]
