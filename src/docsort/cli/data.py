"""``docsort augment-preview``: what the model sees, as a PNG grid."""

from __future__ import annotations

import argparse

from docsort.cli.args import add_command, exists


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``augment-preview`` to the ``docsort`` parser."""
    p = add_command(
        sub,
        "augment-preview",
        "Write a PNG grid of augmented training samples (what the model sees).",
        overrides=True,
    )
    p.add_argument("data", help="a dataset root (folder or s3://) or a prepared folder")
    p.add_argument(
        "--aug",
        default=None,
        metavar="PRESET",
        help="aug group (doc_light, doc_strong, none) or preset (light, strong)",
    )
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument(
        "--images", type=int, default=6, help="rows: training images, one class each (default 6)"
    )
    p.add_argument("--draws", type=int, default=5, help="augmented draws per image (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the draws (default 0)")
    p.set_defaults(func=_preview)


def _preview(args: argparse.Namespace) -> int:
    exists(args.data, "dataset folder")
    from docsort.data.preview import aug_override, augment_preview

    overrides = ([aug_override(args.aug)] if args.aug else []) + list(args.overrides)
    out = augment_preview(
        args.data, args.out, overrides, images=args.images, draws=args.draws, seed=args.seed
    )
    print(f"preview written to {out}")
    return 0
