"""``docsort orientation``: learn page orientation from the training pages, without labels.

The model learns which of the 8 dihedral views a (presumed upright) training
page was given; ``docsort predict ... --orientation DIR`` then turns each test
page upright before the classifier sees it.
"""

from __future__ import annotations

import argparse
import sys

from docsort.cli.args import add_command, add_out, add_prepared, exists, resolve_out

_OVERWRITE = "start again when --out holds other work (removes only what docsort wrote there)"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``orientation`` to the ``docsort`` parser."""
    p = add_command(
        sub,
        "orientation",
        "Train a small model naming the view (rotation/flip) each page was given; no labels needed.",
        overrides=True,
    )
    add_prepared(p)
    add_out(p, "orientation", "orientation model folder to write")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE)
    p.set_defaults(func=_orientation)


def _orientation(args: argparse.Namespace) -> int:
    exists(args.prepared, "prepared folder")
    resolve_out(args)
    from docsort.models.orientation import train_orientation

    out = train_orientation(args.prepared, args.out, args.overrides, overwrite=args.overwrite)
    print(f"orientation model written to {out}", file=sys.stderr)
    return 0
