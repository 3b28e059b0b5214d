"""``docsort ocr``: read the pages' text with tesseract (cached, parallel, shardable)."""

from __future__ import annotations

import argparse

from docsort.cli.args import add_out, add_overrides, exist, exists, resolve_out


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``ocr`` to the ``docsort`` parser."""
    p = sub.add_parser(
        "ocr",
        help="Read each page's text and word confidences with tesseract (cached by image content).",
        description="Read each page's text and word confidences with tesseract. Results are cached "
        "by image content and engine settings (ocr.cache), so a re-run or another shard is free. "
        "`docsort ocr --merge SHARD... --out DIR` joins the shards of one run.",
    )
    p.add_argument("data", nargs="?", metavar="DATA",
                   help="dataset root (folder or s3://) or a folder of images")  # fmt: skip
    add_overrides(p, "ocr.languages=kor+eng ocr.select=ambiguous")
    add_out(p, "ocr", "OCR folder to write (ocr.jsonl + ocr.json)")
    p.add_argument("--split", choices=("train", "test", "all"), default="all",
                   help="which pages of a dataset root (default: all)")  # fmt: skip
    p.add_argument("--probs", action="append", default=[], metavar="CSV",
                   help="the image model's probs.csv or oof.csv: chooses pages with ocr.select=ambiguous (repeatable)")  # fmt: skip
    p.add_argument("--predictions", default=None, metavar="DIR",
                   help="a `docsort predict` folder: each page's view for ocr.orientation=views")  # fmt: skip
    p.add_argument("--shard", type=int, default=0, help="this block of the pages (0-based)")
    p.add_argument("--shards", type=int, default=1, help="number of blocks (default 1)")
    p.add_argument("--merge", nargs="+", default=None, metavar="SHARD",
                   help="join these sharded ocr folders instead of reading pages")  # fmt: skip
    p.set_defaults(func=_ocr)


def _ocr(args: argparse.Namespace) -> int:
    from docsort.core.errors import DocsortError

    if args.merge:
        if args.data is not None:
            raise DocsortError(f"--merge joins ocr folders; drop the dataset {args.data}")
        exist(args.merge, "ocr shard folder")
        resolve_out(args)
        from docsort.text.ocr import merge_ocr

        merge_ocr(args.merge, args.out)
        print(f"ocr written to {args.out}")
        return 0
    if args.data is None:
        raise DocsortError("give a dataset root or image folder (or --merge SHARD...)")
    exists(args.data, "dataset folder")
    exist(args.probs, "probability table")
    exists(args.predictions, "prediction folder")
    resolve_out(args)
    from docsort.text.ocr import SPLITS, ocr

    splits = SPLITS if args.split == "all" else (args.split,)
    ocr(args.data, args.out, args.overrides, splits=splits, probs=args.probs,
        predictions=args.predictions, shard=args.shard, shards=args.shards)  # fmt: skip
    print(f"ocr written to {args.out}")
    return 0
