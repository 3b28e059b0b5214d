"""The speed and load benchmarks run end to end on tiny settings (slow: run with `-m slow`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
def test_load_bench_reports_flat_memory_and_an_identical_resume(tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(BENCH / "load.py"), "--sizes", "60,240", "--shard-size", "32", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert {(x["images"], x["source"]) for x in r["runs"]} == {
        (60, "cache"),
        (60, "folder"),
        (240, "cache"),
        (240, "folder"),
    }
    assert all(x["peak_rss_mb"] > 100 and x["peak_worker_rss_mb"] >= 0 for x in r["runs"])
    assert r["resume"]["resumed_shards"] == 4 and r["resume"]["identical_to_uninterrupted"]
    assert "peak RSS main MB" in proc.stdout


@pytest.mark.slow
def test_throughput_bench_writes_every_ratio(tmp_path):
    out = tmp_path / "t.json"
    args = ["--rounds", "2", "--per-class", "3", "--test-per-class", "2",
            "--train-epochs", "1", "--epoch-images", "34", "--epoch-sides", "320", "--epoch-rounds", "1",
            "--image-size", "64", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(BENCH / "throughput.py"), *args],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in (
        "tta8_vs_limit",
        "torch_vs_ttach",
        "bf16_vs_ttach",
        "onnx_vs_torch",
        "cache_speedup",
    ):
        assert r[key] > 0 and key in r["ceilings"]
    assert set(r["macro_f1"]) >= {"fp32", "bf16", "onnx", "bf16_minus_fp32"}
    assert "| docsort torch bf16 |" in proc.stdout
