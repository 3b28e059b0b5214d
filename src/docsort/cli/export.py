"""``docsort export``: a trained member as an ONNX file for onnxruntime / TensorRT.

``docsort predict ... runtime=onnx``
uses onnxruntime directly (exporting on the fly, or using ``MODEL_DIR/model.onnx``
when it was exported from the same weights).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from docsort.cli.args import add_command, exists


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``docsort`` parser."""
    p = add_command(
        sub,
        "export",
        "Export a trained model folder to ONNX (dynamic batch axis; checked against torch).",
    )
    p.add_argument("model", metavar="MODEL_DIR", help="a model folder written by `docsort train`")
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
        help="output file (default: MODEL_DIR/model.onnx, which `predict runtime=onnx` picks up)",
    )
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    exists(args.model, "model folder")
    from docsort.models.onnx_export import export_onnx, read_metadata

    out = Path(args.out) if args.out else Path(args.model) / "model.onnx"
    path = export_onnx(args.model, out, opset=args.opset, fp16=args.fp16)
    meta = read_metadata(path)
    note = (
        " (runs on CUDA/TensorRT providers only)"
        if args.fp16
        else " (checked: onnxruntime matches torch within 1e-4)"
    )
    print(f"exported {meta['docsort.arch']} {meta['docsort.precision']} opset {args.opset}, input (batch, {meta['docsort.channels']}, "
          f"{meta['docsort.image_size']}, {meta['docsort.image_size']}) to {path}{note}")  # fmt: skip
    return 0
