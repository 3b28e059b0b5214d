"""The ``docsort`` command line: one subcommand per stage, plus pipeline run/compile/submit.

Stage subcommands take Hydra overrides as trailing arguments
(``docsort train PREP --out DIR model=convnext_nano train.epochs=3``). Bad input
ends with one ``docsort: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from docsort.core.errors import DocsortError, SafeStream, from_os_error, safe_log_records

# Modules that add subcommands: each has ``register(sub, add)`` and sets ``func`` on its parsers.
EXTENSIONS: tuple[str, ...] = (
    "docsort.cli.review",
    "docsort.cli.export",
    "docsort.cli.cluster",
    "docsort.cli.data",
)


def _add(sub, name: str, help: str, *, overrides: bool = False) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help)
    if overrides:
        p.add_argument(
            "overrides", nargs="*", help="Hydra overrides, e.g. model=resnet18 train.epochs=3"
        )
    return p


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="docsort",
        description="Document-image classification pipelines: local (kfp.local) or on Kubeflow.",
    )
    ap.add_argument(
        "--version", action="version", version=f"docsort {__import__('docsort').__version__}"
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "sample-data", "Generate the synthetic 17-class sample dataset.")
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)

    p = _add(
        sub,
        "prepare",
        "Validate a dataset, make stratified folds, cache resized images.",
        overrides=True,
    )
    p.add_argument("data", help="dataset root: a folder or s3://bucket/prefix")
    p.add_argument("--out", required=True)

    p = _add(
        sub,
        "train",
        "Train a timm model on one fold (fold=K), all folds (fold=all) or all data (fold=none).",
        overrides=True,
    )
    p.add_argument("prepared")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start again when --out holds other work (removes only what docsort wrote there)",
    )

    p = _add(
        sub,
        "predict",
        "Class probabilities of one trained model with batched 8-view TTA.",
        overrides=True,
    )
    p.add_argument("prepared")
    p.add_argument("--model", required=True, help="a model folder written by `docsort train`")
    p.add_argument("--out", required=True)
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start again when --out holds other work (removes only what docsort wrote there)",
    )

    p = _add(
        sub,
        "submission",
        "Write a validated, versioned submission CSV (+ lineage) from probabilities.",
    )
    p.add_argument("prepared")
    p.add_argument("--probs", required=True, help="probs.csv of the chosen candidate")
    p.add_argument("--out", required=True, help="output root: folder or s3:// prefix")
    p.add_argument(
        "--candidate",
        default=None,
        help="name in the version (default: the candidate spec's name beside --probs)",
    )

    p = _add(sub, "run", "Run a pipeline file end to end (locally with kfp.local).")
    p.add_argument("pipeline")
    p.add_argument(
        "--local",
        action="store_true",
        help="run with kfp.local on this machine (the only mode of `run`)",
    )
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--out", default="runs", help="where artifacts go (default: ./runs)")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="run every task again instead of reusing outputs of identical tasks under --out",
    )

    p = _add(sub, "compile", "Compile a pipeline file to KFP YAML.")
    p.add_argument("pipeline")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    from docsort.cli.cluster import add_compile_options

    add_compile_options(p)

    p = _add(
        sub,
        "demo",
        "Sample data -> the demo pipeline locally -> submission, hard-case table, macro F1.",
    )
    p.add_argument("--out", default="demo-out")
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    for module in EXTENSIONS:
        importlib.import_module(module).register(sub, _add)
    return ap


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "func", None) is not None:
        return int(args.func(args) or 0)
    cmd = args.command
    if cmd == "sample-data":
        from docsort.data.sample import generate_sample_data

        out = generate_sample_data(
            args.out, per_class=args.per_class, test_per_class=args.test_per_class, seed=args.seed
        )
        print(f"sample data written to {out}")
    elif cmd == "prepare":
        from docsort.data.prepare import prepare

        print(f"prepared data written to {prepare(args.data, args.out, args.overrides)}")
    elif cmd == "train":
        from docsort.train.train import train

        out = train(args.prepared, args.out, args.overrides, overwrite=args.overwrite)
        print(f"model written to {out}", file=sys.stderr)
    elif cmd == "predict":
        from docsort.predict.predict import predict

        out = predict(args.prepared, args.model, args.out, args.overrides, split=args.split,
                      overwrite=args.overwrite)  # fmt: skip
        print(f"predictions written to {out}")
    elif cmd == "submission":
        from docsort.review.submission import submit

        print(
            f"submission written to {submit(args.prepared, args.probs, args.out, candidate=args.candidate)}"
        )
    elif cmd == "run":
        from docsort.kfp.runner import load_pipeline, parse_params, run_local

        if not args.local:
            raise DocsortError(
                "`docsort run` runs locally; pass --local (use `docsort submit` for a cluster)"
            )
        params = parse_params(args.param, load_pipeline(args.pipeline))
        output = run_local(args.pipeline, args.out, params, cache=not args.no_cache)
        print(f"\nrun finished; artifacts under {Path(args.out).resolve()}")
        if output is not None:
            print(f"pipeline output: {output.path}")
    elif cmd == "compile":
        from docsort.components.k8s import use_profile
        from docsort.kfp.runner import compile_pipeline, load_pipeline, parse_params

        with use_profile(args.k8s_profile):
            params = parse_params(args.param, load_pipeline(args.pipeline))
            out = compile_pipeline(
                args.pipeline, args.output, params,
                image_registry=args.image_registry, image_tag=args.image_tag,
            )  # fmt: skip
        print(f"compiled to {out}")
    elif cmd == "demo":
        from docsort.kfp.demo import run_demo

        run_demo(args.out, per_class=args.per_class, params=args.param)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Hydra overrides may come anywhere after the subcommand (argparse stops at the first option).
    bad = [e for e in extra if e.startswith("-") or "=" not in e]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        # names from the user's files (class names, IDs) reach the terminal escaped
        with contextlib.redirect_stdout(SafeStream(sys.stdout)), safe_log_records():
            return _run(args)
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
