"""Every shipped pipeline compiles to YAML that reads back; the demo pipeline runs end to end with kfp.local."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from docsort.kfp.runner import compile_pipeline, run_local

PIPELINES = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "src" / "docsort" / "pipelines").glob("*.py")
    if p.name != "__init__.py"
)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_pipeline_compiles_and_reads_back(path, tmp_path):
    out = compile_pipeline(path, tmp_path / f"{path.stem}.yaml")
    docs = list(yaml.safe_load_all(out.read_text()))
    spec = docs[0]
    assert spec["pipelineInfo"]["name"].startswith("docsort")
    execs = spec["deploymentSpec"]["executors"]
    assert execs, "no executors"
    for ex in execs.values():
        container = ex["container"]
        assert container["image"].startswith("ghcr.io/docsort/docsort-")
        # the component body calls docsort: no pip install of kfp at run time
        assert "pip install" not in " ".join(container.get("command", []))


@pytest.mark.slow  # kfp.local end to end
def test_demo_pipeline_runs_locally_end_to_end(tmp_path):
    tiny = "data.image_size=40 data.num_folds=2"
    params = {
        "per_class": 6,
        "members": [
            f"experiment=demo {tiny} fold=0 train.epochs=1",
            f"experiment=demo {tiny} fold=1 train.epochs=1 seed=7",
        ],
        "prepare_overrides": f"experiment=demo {tiny}",
        "predict_overrides": f"experiment=demo {tiny}",
    }
    real_print = builtins.print
    output = run_local(
        Path(__file__).resolve().parents[1] / "src" / "docsort" / "pipelines" / "demo.py",
        tmp_path,
        params,
    )
    # kfp.local's per-task print wrapper must not outlive the run (it broke later prints)
    assert builtins.print is real_print
    sub_csv = next(Path(output.path).glob("submissions/*.csv"))
    run_dir = Path(output.path).parent.parent
    prepared = next(run_dir.glob("*/prepared/prepared.json")).parent
    sample = pd.read_csv(prepared / "sample_submission.csv", dtype={"ID": str})
    meta = pd.read_csv(prepared / "meta.csv")
    sub = pd.read_csv(sub_csv, dtype={"ID": str})
    assert sub["ID"].tolist() == sample["ID"].tolist()  # every test ID, in sample_submission order
    assert set(sub["target"]) <= set(meta["target"])
    per_cand = pd.read_csv(next(run_dir.glob("*/comparison/per_candidate.csv")))
    cand_dirs = {p.parent.name for p in run_dir.glob("*/candidates/*/candidate.json")}
    assert set(per_cand["candidate"]) == cand_dirs  # the table lists every candidate
    assert {"soft", "hard"} <= cand_dirs and len(cand_dirs) == 4


@pytest.mark.slow  # `docsort demo` end to end, as `make demo` runs it
def test_demo_prints_a_short_summary_and_keeps_the_full_log(tmp_path):
    """The shape a user sees: one line per task, the hard-case table, a summary; the rest is logged."""
    import re
    import subprocess
    import sys

    tiny = "data.image_size=40 data.num_folds=2"
    members = [f"experiment=demo {tiny} fold=0 train.epochs=1",
               f"experiment=demo {tiny} fold=1 train.epochs=1 seed=7"]  # fmt: skip
    argv = [sys.executable, "-c", "import sys; from docsort.cli.main import main; sys.exit(main())",
            "demo", "--out", str(tmp_path / "demo"), "--per-class", "6",
            "--param", f"members={json.dumps(members)}",
            "--param", f"prepare_overrides=experiment=demo {tiny}",
            "--param", f"predict_overrides=experiment=demo {tiny}"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = (proc.stderr + proc.stdout).splitlines()
    assert len(shown) <= 60, "\n".join(shown)
    assert not re.search(r"\x1b\[", proc.stdout + proc.stderr)  # not a terminal: no colour codes
    done = [ln.split() for ln in proc.stderr.splitlines() if ln.startswith("  done ")]
    assert sorted(d[1] for d in done) == sorted(
        [
            "sample-data",
            "prepare",
            "train",
            "train",
            "predict",
            "predict",
            "ensemble",
            "compare-candidate-folder",
            "submission",
        ]  # fmt: skip
    )
    # library output and the tasks' logs are not shown...
    for noise in ("GPU available", "executor_input", "wandb:", "Tip:", "epoch=", "is deprecated"):
        assert noise not in proc.stdout + proc.stderr, noise
    # ...the summary is, and it names files that exist
    summary = proc.stdout[proc.stdout.index("docsort demo: done") :]
    fields = dict(re.findall(r"^  (\w[\w ]*?)\s{2,}(.+)$", summary, re.M))
    assert Path(fields["submission"]).is_file()
    assert re.match(r"0\.\d{4} on the 34 sample test images", fields["macro F1"])
    log = Path(fields["full log"])
    assert log == tmp_path / "demo" / "docsort.log"
    text = log.read_text()
    assert "Executing task" in text and "val_macro_f1=" in text  # kfp's and the trainer's output
    assert not re.search(r"\x1b\[", text)
    assert "Hard cases" in proc.stdout and "Winner:" in proc.stdout
