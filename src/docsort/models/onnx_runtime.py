"""Batched TTA through onnxruntime: the same views, batches and merge as the torch path.

Providers are picked from what the installed onnxruntime offers: TensorRT, then
CUDA, then CPU (``device=cpu`` forces CPU). The CPU provider runs fp32; an
fp16 export is for GPU providers only. Intra-op threads match torch's, so a
comparison of the two runtimes is fair.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from docsort.core.errors import ConfigError, DocsortError
from docsort.models.onnx_export import (
    DEFAULT_NAME,
    INPUT,
    OUTPUT,
    export_onnx,
    read_metadata,
    weights_digest,
)
from docsort.models.tta import normalize, stack_views


def ort_providers(
    device: str,
    available: Sequence[str],
    *,
    fp16: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> list:
    """Execution providers in priority order for ``device`` (auto | cpu | cuda)."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={device!r} is not valid; choose from: auto, cpu, cuda")
    chosen: list = []
    if device != "cpu":
        if "TensorrtExecutionProvider" in available:
            opts = {"trt_fp16_enable": bool(fp16)}
            if cache_dir is not None:
                opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
            chosen.append(("TensorrtExecutionProvider", opts))
        if "CUDAExecutionProvider" in available:
            chosen.append("CUDAExecutionProvider")
        if device == "cuda" and not chosen:
            raise ConfigError(
                "device=cuda but this onnxruntime has no CUDA or TensorRT provider (install onnxruntime-gpu)"
            )
    chosen.append("CPUExecutionProvider")
    return chosen


class OrtTTA:
    """An exported member in an onnxruntime session; called like :class:`docsort.models.tta.TorchTTA`."""

    runtime = "onnx"

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        *,
        threads: int,
        device: str = "auto",
        cache_dir: str | os.PathLike | None = None,
    ):
        import onnxruntime as ort

        src = model if isinstance(model, bytes) else str(model)
        meta = {} if isinstance(model, bytes) else read_metadata(model)
        self.precision = meta.get("docsort.precision", "fp32")
        providers = ort_providers(
            device,
            ort.get_available_providers(),
            fp16=self.precision == "fp16",
            cache_dir=cache_dir,
        )
        if self.precision == "fp16" and len(providers) == 1:
            raise ConfigError(
                "an fp16 ONNX model runs on the CUDA or TensorRT provider only; export without --fp16 for CPU"
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(src, so, providers=providers)
        self.providers = self.session.get_providers()
        self.threads = int(threads)
        self.model_file = "(in memory)" if isinstance(model, bytes) else str(model)

    def __call__(self, x: torch.Tensor, views: Sequence[str]) -> np.ndarray:
        batch = normalize(stack_views(x, views)).contiguous().numpy()
        out = self.session.run([OUTPUT], {INPUT: batch})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(views), x.shape[0], -1)

    def describe(self) -> dict:
        return {
            "runtime": self.runtime,
            "providers": self.providers,
            "precision": self.precision,
            "threads": self.threads,
            "model": self.model_file,
        }


def exported_onnx(
    model_dir: str | os.PathLike,
    onnx: str | os.PathLike | None = None,
    *,
    precision: str = "auto",
) -> tuple[Path | None, dict[str, str]]:
    """The exported file ``predict runtime=onnx`` runs for ``model_dir``, with its metadata.

    ``onnx`` (``predict --onnx FILE``) when given, else ``MODEL_DIR/model.onnx``
    when there, else ``(None, {})`` (predict exports afresh). A file exported
    from other weights is refused: its results would not be this model's.
    ``precision`` (``precision=``): an explicit fp32/fp16 the named file lacks is
    refused; the folder's own file of another precision is passed over.
    """
    explicit = onnx is not None
    path = Path(onnx) if explicit else Path(model_dir) / DEFAULT_NAME
    if not path.is_file():
        if explicit:
            raise DocsortError("ONNX file not found", file=str(path))
        return None, {}
    try:
        meta = read_metadata(path)
    except Exception as err:  # noqa: BLE001 - any parse failure of a user file is bad input
        raise DocsortError(
            f"not a readable ONNX file ({type(err).__name__})", file=str(path)
        ) from None
    if "docsort.weights_sha256" not in meta:
        raise DocsortError(
            "has no docsort metadata (weights digest); write it with `docsort export`",
            file=str(path),
        )
    if meta["docsort.weights_sha256"] != weights_digest(model_dir):
        raise DocsortError(
            f"was exported from other weights than {Path(model_dir) / 'model.safetensors'}; "
            f"export again: docsort export {model_dir}" + (f" --out {path}" if explicit else ""),
            file=str(path),
        )
    have = meta.get("docsort.precision", "fp32")
    if precision in ("fp32", "fp16") and have != precision:
        if explicit:
            raise DocsortError(
                f"is an {have} export but precision={precision} was asked; export "
                f"{'with' if precision == 'fp16' else 'without'} --fp16, or drop precision=",
                file=str(path),
            )
        return None, {}
    return path, meta


def runner_for(
    member,
    model_dir: str | os.PathLike,
    work_dir: Path,
    *,
    device: str,
    threads: int,
    precision: str,
    onnx: str | os.PathLike | None = None,
) -> OrtTTA:
    """An :class:`OrtTTA` for a member: the exported file ``onnx`` (see :func:`exported_onnx`), else a fresh export.

    ``precision`` is ``fp32`` or ``fp16`` (fp16 only with a GPU provider).
    """
    path = Path(onnx) if onnx is not None else None
    if path is None:
        path = export_onnx(
            model_dir, work_dir / f"model-{precision}.onnx", member=member, fp16=precision == "fp16"
        )
    return OrtTTA(path, threads=threads, device=device, cache_dir=work_dir / "trt-cache")
