"""The ``docsort`` command line: one subcommand per stage, plus pipeline run/compile/submit.

Stage subcommands take Hydra overrides as trailing arguments
(``docsort train --prepared PREP --out DIR model=convnext_nano train.epochs=3``).
Every subcommand sets its handler with ``set_defaults(func=...)``; a handler
checks the local inputs it is given before it imports its stage (and torch),
so bad input ends fast with one ``docsort: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from docsort.cli import cluster, config, data, evaluate, export, orientation, review, text
from docsort.cli.args import (
    Parser,
    add_command,
    add_out,
    add_overrides,
    add_prepared,
    check_moved_prepared,
    exists,
    resolve_out,
)
from docsort.core import console
from docsort.core.console import LOG_NAME
from docsort.core.errors import DocsortError, SafeStream, from_os_error, safe_log_records

_OVERWRITE = "start again when --out holds other work (removes only what docsort wrote there)"
_PARAM = "pipeline input NAME=VALUE (typed as the pipeline declares it); repeatable"


def _param_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help=_PARAM)


def _register_stages(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "sample-data", "Generate the synthetic 17-class sample dataset.")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument(
        "--per-class", type=int, default=40, help="training images per class (default 40)"
    )
    p.add_argument("--test-per-class", type=int, default=None,
                   help="test images per class (default: max(2, per-class / 4))")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_sample_data)

    p = add_command(
        sub,
        "prepare",
        "Validate a dataset, make stratified folds, cache resized images.",
    )
    p.add_argument("data", metavar="DATA", help="dataset root: a folder or s3://bucket/prefix")
    add_overrides(p)  # after DATA: `prepare DATA NAME=VALUE ...` without --out must parse
    add_out(p, "prepare", "prepared folder to write")
    p.set_defaults(func=_prepare)

    p = add_command(
        sub,
        "train",
        "Train a timm model on one fold (fold=K), all folds (fold=all) or all data (fold=none).",
        overrides=True,
    )
    add_prepared(p, moved=True)
    add_out(p, "train", "model folder (or fold bundle) to write")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE)
    p.set_defaults(func=_train)

    p = add_command(
        sub,
        "predict",
        "Class probabilities of one trained model with batched 8-view TTA.",
        overrides=True,
    )
    add_prepared(p, moved=True)
    p.add_argument("--model", required=True,
                   help="a model folder or fold bundle (fold=all: the folds' mean) written by `docsort train`")  # fmt: skip
    add_out(p, "predict", "prediction folder to write")
    p.add_argument("--onnx", default=None, metavar="FILE",
                   help="with runtime=onnx: a file written by `docsort export` (default: MODEL/model.onnx when there)")  # fmt: skip
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="images to predict (default: test)")  # fmt: skip
    p.add_argument("--orientation", default=None, metavar="DIR",
                   help="turn each page upright first with this `docsort orientation` model")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE)
    p.set_defaults(func=_predict)

    p = add_command(
        sub,
        "submission",
        "Write a validated, versioned submission CSV (+ lineage) from probabilities.",
    )
    add_prepared(p, moved=True)
    p.add_argument("--probs", required=True, help="probs.csv of the chosen candidate")
    p.add_argument("--out", required=True, help="output root: folder or s3:// prefix")
    p.add_argument(
        "--candidate",
        default=None,
        help="name in the version (default: the candidate spec's name beside --probs)",
    )
    p.set_defaults(func=_submission)

    p = add_command(sub, "run", "Run a pipeline file end to end (locally with kfp.local).")
    p.add_argument("pipeline", help="pipeline file: .py with one @dsl.pipeline")
    p.add_argument(
        "--local",
        action="store_true",
        help="run with kfp.local on this machine (the only mode of `run`)",
    )
    _param_option(p)
    p.add_argument("--out", default="runs", help="where artifacts go (default: ./runs)")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="run every task again instead of reusing outputs of identical tasks under --out",
    )
    p.set_defaults(func=_run_pipeline)

    p = add_command(sub, "compile", "Compile a pipeline file to KFP YAML.")
    p.add_argument("pipeline", help="pipeline file: .py with one @dsl.pipeline")
    p.add_argument("--out", required=True, help="pipeline YAML to write")
    _param_option(p)
    cluster.add_compile_options(p)
    p.set_defaults(func=_compile)

    p = add_command(
        sub,
        "demo",
        "Sample data -> the demo pipeline locally -> submission, hard-case table, macro F1.",
    )
    p.add_argument("--out", default="demo-out", help="where the run goes (default: ./demo-out)")
    p.add_argument("--per-class", type=int, default=40, help="sample images per class (default 40)")
    _param_option(p)
    p.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``docsort`` parser (cheap: no stage module is imported)."""
    ap = Parser(
        prog="docsort",
        description="Document-image classification pipelines: local (kfp.local) or on Kubeflow.",
    )
    ap.add_argument(
        "--version",
        action="version",
        version=f"docsort {__import__('docsort').__version__}",
        help="print docsort's version and exit",
    )
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="show library output (Lightning, W&B, kfp's task logs) as well; "
                         f"it always goes to {LOG_NAME} in the output folder")  # fmt: skip
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND",
                            help="run `docsort COMMAND --help` for its arguments")  # fmt: skip
    _register_stages(sub)
    for module in (review, export, cluster, data, config, evaluate, orientation, text):
        module.register(sub)
    return ap


# ---------------------------------------------------------------- handlers of the stage commands


def _sample_data(args: argparse.Namespace) -> int:
    from docsort.data.sample import generate_sample_data

    out = generate_sample_data(
        args.out, per_class=args.per_class, test_per_class=args.test_per_class, seed=args.seed
    )
    print(f"sample data written to {out}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    exists(args.data, "dataset folder")
    resolve_out(args)
    from docsort.data.prepare import prepare

    print(f"prepared data written to {prepare(args.data, args.out, args.overrides)}")
    return 0


def _train(args: argparse.Namespace) -> int:
    exists(args.prepared, "prepared folder")
    resolve_out(args)
    if args.out.startswith("s3://"):  # a Katib trial: train in scratch space, keep the member on S3
        from docsort.sweep.results import train_to_s3

        console.set_metric_lines(True)  # the collector reads them even from a pod with a TTY
        try:
            out = train_to_s3(args.prepared, args.out, args.overrides)
        finally:
            console.set_metric_lines(None)
    else:
        from docsort.train.train import train

        out = train(args.prepared, args.out, args.overrides, overwrite=args.overwrite)
    print(f"model written to {out}", file=sys.stderr)
    return 0


def _predict(args: argparse.Namespace) -> int:
    exists(args.prepared, "prepared folder")
    exists(args.model, "model folder")
    exists(args.onnx, "ONNX file")
    exists(args.orientation, "orientation model folder")
    resolve_out(args)
    from docsort.predict.predict import predict

    out = predict(args.prepared, args.model, args.out, args.overrides, split=args.split,
                  overwrite=args.overwrite, onnx=args.onnx, orientation=args.orientation)  # fmt: skip
    print(f"predictions written to {out}")
    return 0


def _submission(args: argparse.Namespace) -> int:
    exists(args.prepared, "prepared folder")
    exists(args.probs, "probability table")
    from docsort.review.submission import write_submission

    out = write_submission(args.prepared, args.probs, args.out, candidate=args.candidate)
    print(f"submission written to {out}")
    return 0


def _run_pipeline(args: argparse.Namespace) -> int:
    if not args.local:
        raise DocsortError(
            "`docsort run` runs locally; pass --local (use `docsort submit` for a cluster)"
        )
    from docsort.kfp.runner import load_pipeline, parse_params, run_local

    params = parse_params(args.param, load_pipeline(args.pipeline), complete=True)
    output = run_local(args.pipeline, args.out, params, cache=not args.no_cache)
    rows: list[tuple[str, object]] = [("artifacts", Path(args.out).resolve())]
    if output is not None:
        rows.append(("pipeline output", output.path))
    rows.append(("full log", Path(args.out).resolve() / LOG_NAME))
    console.summary(f"{Path(args.pipeline).name}: done", rows)
    return 0


def _compile(args: argparse.Namespace) -> int:
    from docsort.components.k8s import use_profile
    from docsort.kfp.runner import compile_pipeline, load_pipeline, parse_params

    with use_profile(args.k8s_profile):
        params = parse_params(args.param, load_pipeline(args.pipeline))
        out = compile_pipeline(
            args.pipeline, args.out, params,
            image_registry=args.image_registry, image_tag=args.image_tag,
        )  # fmt: skip
    print(f"compiled to {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from docsort.kfp.demo import run_demo

    run_demo(args.out, per_class=args.per_class, params=args.param)
    return 0


# ---------------------------------------------------------------- entry point


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (for an error that names its ``--help``)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _without_verbose(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``-v``/``--verbose`` may come anywhere before ``--`` (after the subcommand too)."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    flags = {"-v", "--verbose"}
    found = any(a in flags for a in argv[:end])
    return [a for a in argv[:end] if a not in flags] + argv[end:], found


@contextlib.contextmanager
def _command_log(args: argparse.Namespace, argv: Sequence[str]) -> Iterator[None]:
    """Library output goes to a log file, which ends up in the command's ``--out`` folder.

    The log is written to a temporary file while the command runs (the output
    folder may not exist yet, and an existing one must not change before the
    stage's checks), then appended to ``<out>/docsort.log`` when the command
    leaves a local folder there; otherwise it is dropped.
    """
    import tempfile

    fd, name = tempfile.mkstemp(prefix="docsort-", suffix=".log")
    os.close(fd)
    tmp = Path(name)
    ok = False
    try:
        with console.capture(tmp):
            logging.getLogger("docsort").info("docsort %s", " ".join(argv))
            yield
        ok = True
    finally:
        out = getattr(args, "out", None)
        folder = Path(out) if isinstance(out, str) and not out.startswith("s3://") else None
        if ok and folder is not None and folder.is_dir():
            with contextlib.suppress(OSError), open(folder / LOG_NAME, "a", encoding="utf-8") as f:
                f.write(tmp.read_text(encoding="utf-8", errors="replace"))
        tmp.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv, verbose = _without_verbose(sys.argv[1:] if argv is None else argv)
    console.set_verbose(verbose)
    args, extra = parser.parse_known_args(argv)
    command = _command_parser(parser, args.command)
    if any(getattr(a, "moved_prepared", False) for a in command._actions):
        check_moved_prepared(command, args, extra)
    # Hydra overrides may come anywhere after the subcommand (argparse stops at the first option).
    bad = [e for e in extra if e.startswith("-") or "=" not in e]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        # names from the user's files (class names, IDs) reach the terminal escaped
        with (
            contextlib.redirect_stdout(SafeStream(sys.stdout)),
            safe_log_records(),
            _command_log(args, argv),
        ):
            return int(args.func(args) or 0)
    except DocsortError as err:
        print(f"docsort: error: {err}", file=sys.stderr)  # DocsortError made its text safe
        return err.exit_code
    except OSError as err:  # a full disk or a read-only folder outside any stage's guard
        print(f"docsort: error: {from_os_error(err)}", file=sys.stderr)
        return DocsortError.exit_code
    except KeyboardInterrupt:
        print("docsort: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
