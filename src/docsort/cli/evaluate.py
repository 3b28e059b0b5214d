"""``docsort evaluate``: score a prediction against labels (macro F1, accuracy, ECE, per class)."""

from __future__ import annotations

import argparse

from docsort.cli.args import add_command, exists

_SPLITS = ("test", "oof")  # docsort.review.evaluate.SPLITS (not imported: the parser stays light)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to the ``docsort`` parser."""
    p = add_command(
        sub,
        "evaluate",
        "Score predictions against labels: macro F1, accuracy, ECE, log loss, per-class table.",
    )
    p.add_argument(
        "pred",
        metavar="PRED",
        help="a probs.csv, a candidate or prediction folder (probs.csv inside), a submission CSV "
        "(ID,target), or with --split oof a model, fold bundle or candidate folder (oof.csv)",
    )
    given = p.add_mutually_exclusive_group()
    given.add_argument(
        "--labels", default=None, metavar="FILE", help="an ID,target CSV of true labels"
    )
    given.add_argument(
        "--hardcases",
        default=None,
        metavar="FILE",
        help="hard-case verdicts: score only the reviewed images, on their verdict label",
    )
    p.add_argument(
        "--prepared",
        default=None,
        metavar="DIR",
        help="prepared folder: class names, and its test_labels.csv (or training labels with "
        "--split oof) when no --labels/--hardcases is given",
    )
    p.add_argument("--split", choices=_SPLITS, default="test",
                   help="test: PRED's probs.csv; oof: its out-of-fold oof.csv on the training "
                   "labels (default: test)")  # fmt: skip
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="also write metrics.json, per_class.csv, confusion.png, reliability.png here",
    )
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    exists(args.pred, "prediction")
    exists(args.labels, "labels file")
    exists(args.hardcases, "hard-case file")
    exists(args.prepared, "prepared folder")
    from docsort.review.evaluate import evaluate

    result = evaluate(
        args.pred,
        args.out,
        labels=args.labels,
        prepared=args.prepared,
        hardcases=args.hardcases,
        split=args.split,
    )
    print(result.text())
    if result.out is not None:
        print(f"\nwritten to {result.out}")
    return 0
