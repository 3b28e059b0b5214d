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

from docsort.core.errors import ConfigError
from docsort.models.onnx_export import INPUT, OUTPUT, export_onnx, read_metadata, weights_digest
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


def runner_for(
    member,
    model_dir: str | os.PathLike,
    work_dir: Path,
    *,
    device: str,
    threads: int,
    precision: str,
) -> OrtTTA:
    """An :class:`OrtTTA` for a member: its ``model.onnx`` when exported from these weights, else a fresh export.

    ``precision`` is ``fp32`` or ``fp16`` (fp16 only with a GPU provider).
    """
    digest = weights_digest(model_dir)
    path = Path(model_dir) / "model.onnx"
    meta = read_metadata(path) if path.is_file() else {}
    if meta.get("docsort.weights_sha256") != digest or meta.get("docsort.precision") != precision:
        path = export_onnx(
            model_dir, work_dir / f"model-{precision}.onnx", member=member, fp16=precision == "fp16"
        )
    return OrtTTA(path, threads=threads, device=device, cache_dir=work_dir / "trt-cache")
