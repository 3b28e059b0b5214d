"""Export a trained member to ONNX for onnxruntime (CPU, CUDA or TensorRT providers).

The graph is the plain classifier with a dynamic batch axis; TTA views are
stacked into that batch by the predictor, exactly as in torch. The file carries
what a predictor needs to check it is used correctly: the digest of the
weights it came from, the image spec and the class names (ONNX metadata).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from docsort.core.atomic import atomic_path
from docsort.core.errors import DocsortError
from docsort.core.outputs import stage
from docsort.models.factory import Member, load_member
from docsort.models.folders import model_folders

INPUT, OUTPUT = "image", "logits"
#: Where an export goes by default, and where ``predict runtime=onnx`` finds it.
DEFAULT_NAME = "model.onnx"


def weights_digest(model_dir: str | os.PathLike) -> str:
    """sha256 of ``model.safetensors``: ties an exported file to the weights it came from."""
    h = hashlib.sha256()
    with open(Path(model_dir) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _spec(member: Member) -> tuple[int, int, str]:
    d = member.cfg.data
    return int(d.image_size), int(d.channels), str(d.resize)


def export_bytes(member: Member, *, opset: int = 17, fp16: bool = False, digest: str = "") -> bytes:
    """The member as a serialized ONNX model (fp32, or fp16 weights with fp32 inputs/outputs)."""
    import onnx

    size, ch, resize = _spec(member)
    model = member.model.float().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter needs no onnxscript and handles every timm CNN we ship.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        torch.onnx.export(
            model, torch.zeros(2, ch, size, size), buf, opset_version=int(opset), dynamo=False,
            input_names=[INPUT], output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )  # fmt: skip
    proto = onnx.load_from_string(buf.getvalue())
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        proto = convert_float_to_float16(proto, keep_io_types=True)
        _toposort(proto.graph)  # the converter appends its input casts at the end
    meta = {
        "docsort.weights_sha256": digest,
        "docsort.arch": str(member.cfg.model.name),
        "docsort.image_size": str(size),
        "docsort.channels": str(ch),
        "docsort.resize": resize,
        "docsort.precision": "fp16" if fp16 else "fp32",
        "docsort.class_names": json.dumps(member.class_names),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "docsort"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _toposort(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the nodes producing its inputs."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise DocsortError("exported graph has a cycle or a dangling input")
        pending = rest
    nodes = [type(n)() for n in ordered]
    for dst, src in zip(nodes, ordered, strict=True):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(nodes)


@stage("export", inputs=("model_dir",), files=("out",), into=("model_dir",))
def export_onnx(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    opset: int = 17,
    fp16: bool = False,
    verify: bool = True,
    member: Member | None = None,
) -> Path:
    """Write ``out`` (atomically) and, for fp32, check onnxruntime agrees with torch.

    The check runs a few random images through both and fails when any class
    probability differs by more than 1e-4, so a broken export never lands.
    """
    if not 13 <= int(opset) <= 21:
        raise DocsortError(f"--opset {opset} is not supported; use 13..21 (17 is the default)")
    member = member or load_member(model_dir)
    data = export_bytes(member, opset=opset, fp16=fp16, digest=weights_digest(model_dir))
    if verify and not fp16:
        diff = max_prob_diff(member, data)
        if diff > 1e-4:
            raise DocsortError(
                f"exported model disagrees with torch (max |dp| = {diff:.2e} > 1e-4)", file=str(out)
            )
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return Path(out)


def export_model(
    model: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    opset: int = 17,
    fp16: bool = False,
) -> list[Path]:
    """Export a model folder (to ``out``, default ``MODEL/model.onnx``) or each fold of a bundle.

    The default place is where ``docsort predict runtime=onnx`` looks, so an
    export is used without naming it; a bundle's folds each get their own
    ``fold*/model.onnx`` (one file per fold, so ``out`` cannot name them).
    """
    folders = model_folders(model)
    if len(folders) > 1 and out is not None:
        raise DocsortError(
            f"is a fold bundle ({len(folders)} models): its export is one {DEFAULT_NAME} per fold; "
            "drop --out",
            file=str(model),
        )
    targets = [Path(out)] if out is not None else [f / DEFAULT_NAME for f in folders]
    return [
        export_onnx(f, t, opset=opset, fp16=fp16) for f, t in zip(folders, targets, strict=True)
    ]


def max_prob_diff(member: Member, onnx_model: bytes, n: int = 4, seed: int = 0) -> float:
    """Largest class-probability difference between torch and onnxruntime (CPU) on random images."""
    import onnxruntime as ort

    size, ch, _ = _spec(member)
    x = torch.from_numpy(
        np.random.default_rng(seed).uniform(-1, 1, (n, ch, size, size)).astype(np.float32)
    )
    with torch.inference_mode():
        ref = member.model.float().eval()(x).softmax(-1).numpy()
    sess = ort.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run([OUTPUT], {INPUT: x.numpy()})[0]).softmax(-1).numpy()
    return float(np.abs(ref - got).max())


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``docsort.*`` metadata of an exported file (without loading the weights)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith("docsort.")}
