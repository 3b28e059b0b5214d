"""OCR of a whole dataset: data version -> shard list -> one tesseract block per shard
(ParallelFor, CPU nodes) -> merge (every page exactly once, in order).

Locally: ``docsort run pipelines/ocr.py --local --param data_root=DATA --param shards=2``.
On a cluster: ``docsort submit pipelines/ocr.py --host URL --param data_root=s3://...
--param shards=32 --param 'overrides=ocr.languages=kor+eng'``.
"""

from kfp import dsl

from docsort.components.data import data_version_op
from docsort.components.k8s import apply
from docsort.components.text import ocr_merge_op, ocr_op, ocr_shards_op

#: Blocks read at once on a cluster (kfp.local runs at most two tasks at a time).
OCR_PARALLELISM = 16


@dsl.pipeline(
    name="docsort-ocr",
    description="docsort: read every page's text with tesseract, sharded over CPU pods.",
)
def ocr_pipeline(data_root: str, shards: int = 4, overrides: str = "") -> dsl.Dataset:
    """``data_root``: dataset root or image folder (folder or s3://bucket/prefix); ``shards``:
    blocks of pages, one pod each; ``overrides``: ``ocr.*`` settings (languages, psm, ...)."""
    version = apply(data_version_op(data_root=data_root).set_display_name("data-version"))
    blocks = apply(ocr_shards_op(shards=shards).set_display_name("ocr-shards"))
    with dsl.ParallelFor(blocks.output, parallelism=OCR_PARALLELISM) as shard:
        part = ocr_op(data_root=data_root, data_version=version.output, overrides=overrides,
                      shard=shard, shards=shards)  # fmt: skip
        apply(part.set_display_name("ocr"))
    merged = ocr_merge_op(shards=dsl.Collected(part.outputs["ocr"]))
    return apply(merged.set_display_name("ocr-merge")).outputs["ocr"]
