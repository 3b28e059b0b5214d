"""Review subcommands: tta-ablation, ensemble, candidate run/submission/upload, hardcases, report.

Each handler checks the local inputs it is given, then calls one stage function
and prints what a person needs to read or do next.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from docsort.cli.args import add_command, add_out, add_overrides, exist, exists, resolve_out
from docsort.core.choices import (
    COMBINERS,
    HARDCASE_KINDS,
    MERGES,
    OBJECTIVES,
    REPORT_SETS,
    VIEW_NAMES,
)


def _hardcases_file_args(c: argparse.ArgumentParser) -> None:
    """``--file`` and ``--data``: the hardcases.csv a command edits and its dataset root."""
    c.add_argument("--file", required=True, help="the dataset's hardcases.csv")
    c.add_argument(
        "--data",
        default=None,
        help="dataset root with meta.csv/train.csv/sample_submission.csv (default: the file's folder)",
    )


def _merge_option(p: argparse.ArgumentParser, flag: str, what: str) -> None:
    p.add_argument(flag, choices=MERGES, default="mean", help=f"{what} (default: mean)")


def _hardcases_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hardcases",
        default=None,
        metavar="FILE",
        help="hard-case verdicts to use (default: hardcases.csv in the data root the prepared "
        "folder was made from, as it is now)",
    )


def _alpha_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help=f"significance level {what} must beat the stated prior at (exact McNemar "
        "p < alpha; default 0.05); otherwise the prior is kept",
    )


def _view_list(text: str) -> list[str]:
    """``--views a,b,c``: known view names only (a tta-ablation folder goes to --views-from)."""
    views = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in views if v not in VIEW_NAMES]
    if bad or not views:
        raise argparse.ArgumentTypeError(
            f"unknown TTA view {bad[0] if bad else '(none)'!r}; choose from {', '.join(VIEW_NAMES)} "
            "(a `docsort tta-ablation` folder goes to --views-from)"
        )
    return views


def register(sub: argparse._SubParsersAction) -> None:
    """Add the review subcommands to the ``docsort`` parser."""
    p = add_command(
        sub,
        "tta-ablation",
        "Score each TTA view and every subset of views on OOF predictions; recommend a subset only if it beats the configured views.",
    )
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL_DIR",
        help="model folders or fold bundles written by `docsort train` (with oof_views.npz); "
        "NAME=VALUE items are config overrides, e.g. tta.views=[identity] (the prior)",
    )
    _merge_option(
        p,
        "--tta-merge",
        "how views are merged: mean of probabilities, geometric mean or mean of logits",
    )
    p.add_argument(
        "--subsets",
        choices=("all", "families"),
        default="all",
        help="all 255 subsets, or single views plus named families",
    )
    p.add_argument(
        "--out", default=None, help="folder for ablation.csv, recommended.json/.yaml, summary.txt"
    )
    p.add_argument("--top", type=int, default=10, help="rows of the best subsets to print")
    p.add_argument(
        "--prior",
        type=_view_list,
        default=None,
        metavar="VIEW,...",
        help="the views kept unless a subset beats them (default: the configured tta.views)",
    )
    _alpha_option(p, "the best subset")
    p.set_defaults(func=_tta_ablation, overrides=[])  # NAME=VALUE after the options land here

    p = add_command(
        sub,
        "ensemble",
        "Combine member predictions into a named candidate: spec + probabilities + OOF ensemble report.",
    )
    p.add_argument("predictions", nargs="*", metavar="PREDICTION_DIR",
                   help="prediction folders written by `docsort predict` (or give --model and --prepared); "
                        "NAME=VALUE items are prediction overrides such as precision=fp32")  # fmt: skip
    add_out(p, "ensemble", "candidate folder to write")
    p.add_argument("--model", action="append", default=[],
                   help="the members' model folders or fold bundles, in order (default: the model each predict.json names); "
                        "without prediction folders they are predicted here")  # fmt: skip
    p.add_argument(
        "--prepared",
        default=None,
        metavar="DIR",
        help="prepared data to predict --model members on (when no prediction folders are given)",
    )
    views = p.add_mutually_exclusive_group()
    views.add_argument(
        "--views",
        type=_view_list,
        default=None,
        metavar="VIEW,...",
        help=f"TTA views for members predicted here, a comma list of {', '.join(VIEW_NAMES)}",
    )
    views.add_argument(
        "--views-from",
        default=None,
        metavar="DIR",
        help="a `docsort tta-ablation` folder: use the views it recommends",
    )
    _merge_option(p, "--tta-merge", "how a member's views are merged")
    p.add_argument("--method", choices=COMBINERS, default="auto",
                   help="how members are combined; auto (default): soft voting unless stacking beats it "
                        "on the members' shared OOF predictions (paired test)")  # fmt: skip
    p.add_argument("--name", default=None, help="candidate name (default: the method)")
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="macro_f1",
        help="what the weight search optimizes",
    )
    _merge_option(p, "--merge", "how members are merged for soft/weighted")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="fit one temperature per member on OOF predictions (reports ECE before/after)",
    )
    p.set_defaults(func=_ensemble)

    p = add_command(
        sub,
        "candidate",
        "Saved candidate specs: re-run one from its models, write its submission, upload it.",
    )
    cs = p.add_subparsers(dest="action", required=True, metavar="ACTION",
                          help="run `docsort candidate ACTION --help` for its arguments")  # fmt: skip
    c = cs.add_parser("run", help="Re-run a candidate spec (candidate.yaml) from its models on prepared data.",
                      description="Predict every member with its TTA views, then combine them as the spec says (nothing is refitted).")  # fmt: skip
    c.add_argument("spec", help="candidate.yaml (a path or s3:// URI)")
    c.add_argument("--prepared", required=True, metavar="DIR", help="prepared data to predict on")
    c.add_argument("--out", required=True, help="candidate folder to write")
    add_overrides(c, "precision=fp32 tta.batch_size=32")
    c.set_defaults(func=_candidate_run)
    c = cs.add_parser(
        "submission",
        help="Write a candidate's validated, versioned submission with its lineage.",
        description="Write a candidate's validated, versioned submission with its lineage.",
    )
    c.add_argument("candidate", help="candidate folder")
    c.add_argument("--prepared", required=True, metavar="DIR", help="prepared data it was run on")
    c.add_argument("--out", required=True, help="output root: folder or s3:// prefix")
    c.set_defaults(func=_candidate_submission)
    c = cs.add_parser(
        "upload",
        help="Copy a candidate spec and its members' models to S3 for the nightly pipeline.",
        description="Upload each member to DEST/members/<name>/ and write DEST/candidate.yaml naming them.",
    )
    c.add_argument("spec", help="candidate.yaml written by `docsort ensemble`")
    c.add_argument("dest", help="new prefix, e.g. s3://docsort-results/candidates/soft-2026-06-01")
    c.set_defaults(func=_candidate_upload)

    p = add_command(
        sub, "hardcases", "Hard-case workflow: mine proposals, record verdicts, compare candidates."
    )
    hs = p.add_subparsers(dest="action", required=True, metavar="ACTION",
                          help="run `docsort hardcases ACTION --help` for its arguments")  # fmt: skip
    c = hs.add_parser(
        "compare",
        help="Score candidates on hardcases.csv side by side and pick the winner.",
        description="Score candidates on hardcases.csv side by side and pick the winner.",
    )
    c.add_argument(
        "candidates",
        nargs="+",
        help="candidate folders (`docsort ensemble`, `docsort candidate run`) or folders of them",
    )
    c.add_argument(
        "--prepared", required=True, metavar="DIR", help="prepared data the candidates ran on"
    )
    add_out(c, "compare", "comparison folder to write")
    _hardcases_option(c)
    _alpha_option(c, "the best candidate")
    c.set_defaults(func=_compare)
    c = hs.add_parser(
        "mine",
        help="Propose images to review: OOF errors, candidate disagreements, least confident test images.",
        description="Propose images to review: OOF errors, candidate disagreements, least confident test images.",
    )
    c.add_argument("candidates", nargs="*", help="candidate folders or folders of them")
    c.add_argument(
        "--prepared", required=True, metavar="DIR", help="prepared data the candidates ran on"
    )
    c.add_argument(
        "--model", action="append", default=[], help="model folders whose oof.csv to mine as well"
    )
    c.add_argument("--top", type=int, default=20, help="proposals per source (default 20)")
    c.add_argument(
        "--file",
        default=None,
        help="hardcases.csv whose rows are left out (default: the data root's current file)",
    )
    c.add_argument(
        "--min-score",
        type=float,
        default=None,
        metavar="M",
        help="margin (-1..1) from which an OOF error is suggested as a label_error (default 0.5)",
    )
    c.add_argument(
        "--ranking",
        default=None,
        metavar="FILE",
        help="also write every training image's label-error score, most likely first, to this CSV",
    )
    c.add_argument("--out", required=True, help="proposals CSV to write")
    c.set_defaults(func=_mine)
    c = hs.add_parser(
        "accept",
        help="Add the top proposals of `hardcases mine` of one suggested kind to hardcases.csv.",
        description="Add the first N proposals (file order, best first) whose suggested_kind is KIND, "
        "with their suggested targets; delete the rows you reject from the proposals CSV first.",
    )
    c.add_argument("proposals", help="proposals CSV written by `docsort hardcases mine`")
    _hardcases_file_args(c)
    c.add_argument(
        "--kind",
        choices=HARDCASE_KINDS,
        default="label_error",
        help="the suggested kind to accept (default: label_error)",
    )
    c.add_argument(
        "--top", type=int, default=None, help="accept at most N (default: all of that kind)"
    )
    c.set_defaults(func=_accept)
    for name, helptext in (
        ("add", "Add an image to hardcases.csv with its true label."),
        ("mark", "Record a verdict on a row of hardcases.csv."),
    ):
        c = hs.add_parser(
            name,
            help=helptext,
            description=helptext
            + " The file is rewritten atomically and checked against meta.csv.",
        )
        c.add_argument("id", metavar="ID", help="image ID (file name)")
        _hardcases_file_args(c)
        c.add_argument(
            "--target", required=name == "add", help="true class: target number or class name"
        )
        c.add_argument(
            "--kind",
            choices=HARDCASE_KINDS,
            required=name == "mark",
            default="hard" if name == "add" else None,
            help="the verdict" + (" (default: hard)" if name == "add" else ""),
        )
        c.add_argument(
            "--note",
            default="" if name == "add" else None,
            help="why, in a few words" + ("" if name == "add" else " (default: keep the row's)"),
        )
        c.set_defaults(func=_add if name == "add" else _mark)

    p = add_command(
        sub,
        "report",
        "The error notebook: one self-contained HTML file (plus summary.md) for a candidate.",
    )
    p.add_argument(
        "--prepared", required=True, metavar="DIR", help="prepared data the candidate ran on"
    )
    p.add_argument(
        "--candidate", default=None, help="candidate folder (default: the winner of --comparison)"
    )
    p.add_argument(
        "--comparison",
        default=None,
        help="a `docsort hardcases compare` folder, shown side by side",
    )
    p.add_argument(
        "--ablation",
        default=None,
        help="a `docsort tta-ablation` folder (default: computed from the members' OOF views)",
    )
    p.add_argument("--on", choices=REPORT_SETS, default="auto",
                   help="labelled set: auto = the candidate's OOF training predictions, else test_labels.csv, else hard cases")  # fmt: skip
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument(
        "--summary", default=None, help="Markdown summary (default: summary.md beside the HTML)"
    )
    _hardcases_option(p)
    p.set_defaults(func=_report)


def _tta_ablation(args: argparse.Namespace) -> int:
    overrides = [m for m in args.models if "=" in m and not Path(m).exists()]
    overrides += getattr(args, "overrides", [])
    args.models = [m for m in args.models if m not in overrides]
    exist(args.models, "model folder")
    from docsort.ensemble.tta_ablation import ablate_tta, format_ablation

    abl = ablate_tta(args.models, args.out, merge=args.tta_merge, subsets=args.subsets,
                     prior=args.prior, alpha=args.alpha, overrides=overrides)  # fmt: skip
    if args.out:
        print((Path(args.out) / "summary.txt").read_text(), end="")
        print(f"\nwritten to {args.out} (ablation.csv, recommended.json, recommended.yaml)")
    else:
        print(format_ablation(abl, top=args.top), end="")
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    overrides = [p for p in args.predictions if "=" in p and not Path(p).exists()]
    predictions = [p for p in args.predictions if p not in overrides]
    exist(predictions, "prediction folder")
    exist(args.model, "model folder")
    exists(args.prepared, "prepared folder")
    exists(args.views_from, "TTA ablation folder")
    resolve_out(args)
    from docsort.ensemble.ensemble import ensemble

    views = args.views
    if args.views_from:
        from docsort.ensemble.tta_ablation import load_ablation

        views = list(load_ablation(args.views_from).recommended)
    out = ensemble(predictions, args.out, models=args.model, name=args.name, method=args.method,
                   objective=args.objective, merge=args.merge, calibrate=args.calibrate, prepared=args.prepared,
                   views=views, tta_merge=args.tta_merge, predict_overrides=overrides)  # fmt: skip
    report = out / "ensemble_report.md"
    if report.is_file():
        print(report.read_text())
    choice = json.loads((out / "candidate.json").read_text()).get("method_choice")
    if choice:
        print(f"method auto: {choice['evidence']['text']}")
    print(f"candidate written to {out}")
    return 0


def _candidate_run(args: argparse.Namespace) -> int:
    exists(args.spec, "candidate spec")
    exists(args.prepared, "prepared folder")
    from docsort.ensemble.candidate import run_candidate

    print(
        f"candidate written to {run_candidate(args.spec, args.prepared, args.out, args.overrides)}"
    )
    return 0


def _candidate_submission(args: argparse.Namespace) -> int:
    exists(args.candidate, "candidate folder")
    exists(args.prepared, "prepared folder")
    from docsort.review.submission import write_candidate_submission

    out = write_candidate_submission(args.prepared, args.candidate, args.out)
    print(f"submission written to {out}")
    return 0


def _candidate_upload(args: argparse.Namespace) -> int:
    exists(args.spec, "candidate spec")
    from docsort.ensemble.candidate_upload import upload_candidate

    print(f"candidate spec uploaded to {upload_candidate(args.spec, args.dest)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    exist(args.candidates, "candidate folder")
    exists(args.prepared, "prepared folder")
    exists(args.hardcases, "hard-case file")
    resolve_out(args)
    from docsort.review.compare import compare_candidates

    out = compare_candidates(
        args.prepared, args.candidates, args.out, hardcases=args.hardcases, alpha=args.alpha
    )
    print((out / "comparison.txt").read_text())  # its first line: which hard-case file, how many
    return 0


def _at_least_one(option: str, value: int) -> None:
    """A count option below 1 is refused in one line (argparse only checks that it is an integer)."""
    if value < 1:
        from docsort.core.errors import DocsortError

        raise DocsortError(f"{option} {value} must be an integer >= 1")


def _mine(args: argparse.Namespace) -> int:
    from docsort.core.errors import DocsortError
    from docsort.core.outputs import check_file, check_outputs
    from docsort.core.tables import text_table
    from docsort.review.hardcases import mine, write_proposals

    _at_least_one("--top", args.top)
    exist(args.candidates, "candidate folder")
    exist(args.model, "model folder")
    exists(args.prepared, "prepared folder")
    outs = [args.out, *([args.ranking] if args.ranking else [])]
    check_outputs(outs, [args.prepared, *args.candidates, *args.model, args.file])
    for out in outs:
        check_file(out)
    if args.ranking and Path(args.ranking).resolve() == Path(args.out).resolve():
        raise DocsortError("--ranking and --out name the same file")
    margin = {} if args.min_score is None else {"min_score": args.min_score}
    df = mine(args.prepared, args.candidates, models=args.model, top=args.top,
              existing=args.file, ranking=args.ranking, **margin)  # fmt: skip
    write_proposals(df, args.out)
    rows = [
        [r.ID, r.source, r.suggested_kind, r.suggested_class, f"{r.score:+.2f}", r.reason]
        for r in df.itertuples()
    ]
    print(text_table(["ID", "source", "kind?", "class?", "score", "reason"], rows))
    print(f"\n{len(df)} proposals written to {args.out}")
    if args.ranking:
        print(f"label-error ranking of every training image written to {args.ranking}")
    print(
        "record a verdict: docsort hardcases add ID --target T --kind hard|model_error|label_error|ambiguous --note ... --file DATA/hardcases.csv"
    )
    n = int((df["suggested_kind"] == "label_error").sum())
    if n:
        print(
            f"or, after deleting the rows you reject: docsort hardcases accept {args.out} --kind label_error "
            f"--file DATA/hardcases.csv  ({n} suggested), then prepare with data.exclude_label_errors=true"
        )
    return 0


def _accept(args: argparse.Namespace) -> int:
    from docsort.review.hardcases import accept

    if args.top is not None:
        _at_least_one("--top", args.top)
    exists(args.proposals, "proposals file")
    added, skipped = accept(args.file, args.proposals, kind=args.kind, top=args.top, data=args.data)
    for row in added:
        print(f"added {row['ID']} target={row['target']} kind={row['kind']}")
    if skipped:
        print(f"left {len(skipped)} already in {args.file} as they are: {', '.join(skipped)}")
    print(
        f"{len(added)} proposal{'s' if len(added) != 1 else ''} of kind {args.kind} added to {args.file}"
    )
    if added and args.kind == "label_error":
        print(
            "training uses them only with data.exclude_label_errors=true or data.correct_label_errors=true (then prepare again)",
            file=sys.stderr,
        )
    return 0


def _add(args: argparse.Namespace) -> int:
    from docsort.review.hardcases import add

    row = add(args.file, args.id, args.target, kind=args.kind, note=args.note, data=args.data)
    print(f"added {row['ID']} target={row['target']} kind={row['kind']} to {args.file}")
    return 0


def _mark(args: argparse.Namespace) -> int:
    from docsort.review.hardcases import mark

    row = mark(
        args.file, args.id, kind=args.kind, target=args.target, note=args.note, data=args.data
    )
    print(f"marked {row['ID']} target={row['target']} kind={row['kind']} in {args.file}")
    if row["kind"] == "label_error":
        print(
            "training uses it only with data.exclude_label_errors=true or data.correct_label_errors=true (then prepare again)",
            file=sys.stderr,
        )
    return 0


def _report(args: argparse.Namespace) -> int:
    exists(args.prepared, "prepared folder")
    exists(args.candidate, "candidate folder")
    exists(args.comparison, "comparison folder")
    exists(args.ablation, "TTA ablation folder")
    exists(args.hardcases, "hard-case file")
    from docsort.review.report import error_report

    r = error_report(
        args.prepared,
        args.candidate,
        args.out,
        summary=args.summary,
        comparison=args.comparison,
        ablation=args.ablation,
        on=args.on,
        hardcases=args.hardcases,
    )
    print(
        f"report on {r.images} images ({r.on}): macro F1 {r.macro_f1:.4f}, accuracy {r.accuracy:.4f}"
    )
    for line in r.hardcases:
        print(line)
    print(f"written to {r.html} and {r.summary}")
    return 0
