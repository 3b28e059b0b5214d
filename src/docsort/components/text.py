"""KFP components of the OCR stage: the shard list, one block of pages, the merge."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from docsort.core.container_images import image

CPU_IMAGE = image("cpu")


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ocr_shards_op(shards: int) -> list[int]:
    """The block numbers ``[0, ..., shards-1]`` for a ParallelFor. ``list[int]``: the loop item
    is then typed NUMBER_INTEGER, as ``ocr_op.shard: int`` needs (see ``prepare_op``)."""
    from docsort.text.ocr import shard_numbers

    return shard_numbers(shards)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ocr_op(
    ocr: Output[Dataset],
    data_root: str = "",
    data: Input[Dataset] = None,
    overrides: str = "",
    shard: int = 0,
    shards: int = 1,
    data_version: str = "",
):
    """Read block ``shard`` of ``shards`` of the dataset's pages with tesseract.

    ``data_version`` (from ``data_version_op``) keys KFP's cache to the data's content.
    """
    from docsort.text.ocr import ocr as read_pages

    read_pages(data_root or data.path, ocr.path, overrides.split(), shard=shard, shards=shards)
    ocr.metadata["data_version"] = data_version


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ocr_merge_op(shards: Input[list[Dataset]], ocr: Output[Dataset]):
    """Join the blocks into one OCR folder, after checking every page is there exactly once."""
    from docsort.text.ocr import merge_ocr

    merge_ocr([s.path for s in shards], ocr.path)
