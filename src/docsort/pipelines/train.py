"""K-fold training: data version -> prepare -> one member per fold (ParallelFor) -> out-of-fold report.

Every fold's member predicts its own validation fold; the report merges those
predictions into one out-of-fold table over all training images and scores it
(macro F1 overall and per fold, logged as KFP metrics).

Locally: ``docsort run pipelines/train.py --local --param data_root=DATA``.
On a cluster: ``docsort submit pipelines/train.py --host URL --param data_root=s3://...``.
"""

from kfp import dsl

from docsort.components.graph import trained_folds, versioned_prepare


@dsl.pipeline(
    name="docsort-train",
    description="docsort: prepare, train one member per fold, report out-of-fold macro F1.",
)
def train_pipeline(
    data_root: str,
    data_overrides: str = "",
    train_overrides: str = "",
) -> dsl.Dataset:
    """``data_root``: dataset root (folder or s3://bucket/prefix). ``data_overrides``: Hydra
    overrides for prepare and train alike (``data.*``, ``experiment=...``);
    ``train_overrides``: training only (``model=...``, ``train.epochs=...``)."""
    prep = versioned_prepare(data_root, data_overrides)
    report = trained_folds(prep, {"overrides": data_overrides, "extra_overrides": train_overrides})
    return report.outputs["report"]
