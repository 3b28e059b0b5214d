"""Pick the device, precision and thread count that run fastest here.

bf16 autocast is 2-3x faster than fp32 on CPUs with AMX (Intel) or AVX-512
BF16 (AMD Zen 4+), and fine on recent GPUs, but slower on CPUs that emulate
it, so a short measured probe decides, not the CPU's name or flags.
"""

from __future__ import annotations

import os
from functools import cache

import torch


@cache
def cpu_bf16_speedup() -> float:
    """Measured speed of bf16 over fp32 matmul on this CPU (a ~0.1 s probe).

    AMX (Intel) and AVX-512 BF16 (AMD Zen 4+) run bf16 natively; elsewhere it is
    emulated and slower than fp32, so only a measurement decides.
    """
    import time

    torch.manual_seed(0)
    a = torch.randn(768, 768)
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        x @ x  # warm-up
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(4):
                x @ x
            best = min(best, time.perf_counter() - t)
        timings[dtype] = best
    return timings[torch.float32] / timings[torch.bfloat16]


def check_device(device: str) -> None:
    """Refuse ``device=cuda`` in one line on a machine without a usable CUDA device."""
    if device == "cuda" and not torch.cuda.is_available():
        from docsort.core.errors import ConfigError

        raise ConfigError(
            "device='cuda' but this machine has no CUDA device "
            "(torch.cuda.is_available() is false); use device=auto or device=cpu"
        )


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda when a CUDA device is usable, else cpu; ``cuda`` without one is refused."""
    check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the probe measures it >= 1.3x faster (CPU) or the GPU supports it, else ``fp32``/``fp16``."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_bf16_speedup() >= 1.3 else "fp32"


def lightning_precision(precision: str) -> str:
    return {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}[precision]


def autocast(device: torch.device, precision: str):
    """An autocast context for inference at ``precision`` (no-op for fp32)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers limit)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (default: the cores this process may use)."""
    n = int(threads or usable_cores())
    torch.set_num_threads(n)
    return n


def default_workers(device: torch.device) -> int:
    """DataLoader workers: none on small CPU hosts (they would steal the model's cores)."""
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, max(2, cores - 1))
    return 0 if cores <= 4 else min(4, cores // 4)
