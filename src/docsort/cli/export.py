"""``docsort export``: a trained member (or each fold of a bundle) as ONNX for onnxruntime / TensorRT.

``docsort predict ... runtime=onnx`` runs the export it finds at
``MODEL_DIR/model.onnx`` (the default here), or the file ``--onnx FILE`` names,
after checking it was exported from the same weights; without one it exports
on the fly.
"""

from __future__ import annotations

import argparse

from docsort.cli.args import add_command, exists


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``docsort`` parser."""
    p = add_command(
        sub,
        "export",
        "Export a trained model folder to ONNX (dynamic batch axis; checked against torch).",
    )
    p.add_argument(
        "model",
        metavar="MODEL_DIR",
        help="a model folder or fold bundle (fold=all) written by `docsort train`",
    )
    p.add_argument(
        "--format", choices=("onnx",), default="onnx", help="export format (default: onnx)"
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (13..21, default 17)")
    p.add_argument(
        "--fp16",
        action="store_true",
        help="fp16 weights for the CUDA/TensorRT providers (inputs/outputs stay fp32)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output file (default: MODEL_DIR/model.onnx, or fold*/model.onnx of a bundle, which "
        "`predict runtime=onnx` picks up; another file: `predict --onnx FILE`)",
    )
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    exists(args.model, "model folder")
    from docsort.models.onnx_export import export_model, read_metadata

    note = (
        " (runs on CUDA/TensorRT providers only)"
        if args.fp16
        else " (checked: onnxruntime matches torch within 1e-4)"
    )
    for path in export_model(args.model, args.out, opset=args.opset, fp16=args.fp16):
        meta = read_metadata(path)
        print(f"exported {meta['docsort.arch']} {meta['docsort.precision']} opset {args.opset}, input (batch, "
              f"{meta['docsort.channels']}, {meta['docsort.image_size']}, {meta['docsort.image_size']}) to {path}{note}")  # fmt: skip
    return 0
