"""KFP components of the data stages: sample data, the data version stamp, prepare."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from docsort.core.container_images import image

CPU_IMAGE = image("cpu")


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def sample_data_op(data: Output[Dataset], per_class: int = 40, seed: int = 0):
    """Generate the synthetic sample dataset."""
    from docsort.data.sample import generate_sample_data

    generate_sample_data(data.path, per_class=per_class, seed=seed)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def data_version_op(data_root: str) -> str:
    """A version stamp of the dataset root (file listing: names, sizes, mtimes or ETags).

    Never cached: it runs on every pipeline run, and ``prepare`` takes its output
    as a parameter, so prepare's cache key (and every later step's) changes
    exactly when the data behind ``data_root`` changes.
    """
    from docsort.core.storage import fingerprint

    return fingerprint(data_root)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def prepare_op(
    prepared: Output[Dataset],
    data_root: str = "",
    data: Input[Dataset] = None,
    overrides: str = "",
    data_version: str = "",
) -> list[int]:
    """Validate the dataset (``data_root`` or the ``data`` artifact), make folds and the image cache.

    ``data_version`` (from ``data_version_op``) is not used by the stage: it is part of
    the cache key, so new data behind the same root is prepared again. Returns the
    fold indices ``[0, ..., K-1]``, for a ParallelFor over the folds. ``list[int]``, not
    ``list``: the loop item is then typed NUMBER_INTEGER and the KFP driver hands it to
    ``train_op.fold: int`` as a number (a bare ``list`` makes it a STRING, refused there).
    """
    from docsort.data.prepare import prepare
    from docsort.data.prepared import Prepared

    folder = Prepared(prepare(data_root or data.path, prepared.path, overrides.split()))
    prepared.metadata["data_version"] = data_version
    return list(range(int(folder.info["num_folds"])))
