"""Outputs never overlap inputs, and docsort never replaces a folder it did not make.

Each case is the command sequence a user types: the refused command must print one
``docsort: error:`` line naming both paths, exit 2 and leave every file of the user's
work folder byte-identical (``snapshot`` before and after).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from docsort.core.errors import DocsortError
from docsort.core.outputs import MARKER, check_outputs, read_marker
from docsort.kfp.runner import failure_message
from tests.conftest import TINY
from tests.scenario import one_line, run_cli, snapshot

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(sample_root: Path, prepared_root: Path, trained_member: Path, tmp_path_factory) -> Path:
    """A user's work folder after the README's sequence: data, prep, m0, pred0, cands/soft, cmp."""
    w = tmp_path_factory.mktemp("work")
    shutil.copytree(sample_root, w / "data", symlinks=True)
    shutil.copytree(prepared_root, w / "prep", symlinks=True)
    shutil.copytree(trained_member, w / "m0", symlinks=True)
    for argv in (
        ["predict", "--prepared", w / "prep", "--model", w / "m0", "--out", w / "pred0", *TINY, "tta.views=[identity]"],
        ["ensemble", w / "pred0", "--model", w / "m0", "--out", w / "cands" / "soft"],
        ["hardcases", "compare", w / "cands", "--prepared", w / "prep", "--out", w / "cmp"],
    ):  # fmt: skip
        rc, _, err = run_cli(*argv)
        assert rc == 0, err
    (w / "data-link").symlink_to(w / "data")
    (w / "notes").mkdir()
    (w / "notes" / "todo.txt").write_text("my own notes\n")
    shutil.copy(REPO / "src" / "docsort" / "pipelines" / "train.py", w / "pipe.py")
    return w


def _refused(work: Path, argv: list, *expected: str) -> str:
    before = snapshot(work)
    rc, _, err = run_cli(*argv)
    msg = one_line(err)
    assert rc == 2, err
    for text in expected:
        assert text in msg, msg
    assert snapshot(work) == before, "a refused command changed the user's files"
    return msg


# Each row: the command (paths relative to the work folder), then what the line must say.
OVERLAPS = {
    "prepare --out DATA": (["prepare", "data", "--out", "data", *TINY], "output is the input", "data"),
    "prepare --out the parent of DATA": (["prepare", "data", "--out", ".", *TINY], "output contains the input"),
    "prepare --out inside DATA": (["prepare", "data", "--out", "data/prep", *TINY], "output lies inside the input"),
    "prepare --out a link to DATA": (["prepare", "data", "--out", "data-link", *TINY], "output is the input"),
    "train --out PREP": (["train", "--prepared", "prep", "--out", "prep", *TINY, "fold=0"], "output is the input", "prep"),
    "predict --out MODEL": (["predict", "--prepared", "prep", "--model", "m0", "--out", "m0", *TINY], "output is the input", "m0"),
    "predict --out inside PREP": (["predict", "--prepared", "prep", "--model", "m0", "--out", "prep/pred", *TINY], "lies inside the input"),
    "ensemble --out PRED": (["ensemble", "pred0", "--model", "m0", "--out", "pred0"], "output is the input", "pred0"),
    "tta-ablation --out MODEL": (["tta-ablation", "m0", "--out", "m0"], "output is the input", "m0"),
    "hardcases compare CANDS --out CANDS": (["hardcases", "compare", "cands", "--prepared", "prep", "--out", "cands"], "output is the input", "cands"),
    "hardcases compare --out inside a candidate": (["hardcases", "compare", "cands", "--prepared", "prep", "--out", "cands/soft/cmp"], "lies inside the input"),
    "hardcases mine --out PREP/index.csv": (["hardcases", "mine", "cands", "--prepared", "prep", "--out", "prep/index.csv"], "lies inside the input", "prep"),
    "report --out over the candidate's probs.csv": (["report", "--prepared", "prep", "--candidate", "cands/soft", "--out", "cands/soft/probs.csv"], "lies inside the input"),
    "report --out an existing folder": (["report", "--prepared", "prep", "--candidate", "cands/soft", "--out", "notes"], "output is an existing folder"),
    "candidate run SPEC --out its own folder": (["candidate", "run", "cands/soft/candidate.yaml", "--prepared", "prep", "--out", "cands/soft"], "output contains the input"),
    "submission --out PREP": (["submission", "--prepared", "prep", "--probs", "cands/soft/probs.csv", "--out", "prep"], "output is the input", "prep"),
    "candidate submit --out the candidate": (["candidate", "submission", "cands/soft", "--prepared", "prep", "--out", "cands/soft"], "output is the input"),
    "export -o the model folder": (["export", "m0", "--out", "m0"], "output is the input"),
    "augment-preview -o DATA/meta.csv": (["augment-preview", "data", "--out", "data/meta.csv", *TINY], "lies inside the input"),
    "run --out DATA with data_root=DATA": (["run", "pipelines/train.py", "--local", "--out", "data", "--param", "data_root=data"], "output is the input"),
    "run with output_root=DATA": (["run", "pipelines/submission.py", "--local", "--out", "runs", "--param", "data_root=data",
                                   "--param", 'candidates=["cands/soft/candidate.yaml"]', "--param", "output_root=data"], "output is the input"),
    "sweep --out PREP": (["sweep", "--prepared", "prep", "--space", "cpu_small", "--trials", "1", "--out", "prep"], "output is the input", "prep"),
    "compile -o the pipeline file": (["compile", "pipe.py", "--out", "pipe.py"], "output is the input"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(OVERLAPS))
def test_an_output_that_overlaps_an_input_is_refused_before_any_work(
    case: str, work: Path, monkeypatch: pytest.MonkeyPatch
):
    argv, *expected = OVERLAPS[case]
    monkeypatch.chdir(work)
    if argv[0] == "run":
        argv = [
            str(REPO / "src" / "docsort" / a) if a.startswith("pipelines/") else a for a in argv
        ]
    if "existing folder" not in expected[0]:
        expected.append("write outputs outside the inputs")
    _refused(work, argv, *expected)


NOT_DOCSORTS = {
    "prepare": ["prepare", "data", "--out", "notes", *TINY],
    "train": ["train", "--prepared", "prep", "--out", "notes", *TINY, "fold=0"],
    "predict": ["predict", "--prepared", "prep", "--model", "m0", "--out", "notes", *TINY],
    "ensemble": ["ensemble", "pred0", "--model", "m0", "--out", "notes"],
    "tta-ablation": ["tta-ablation", "m0", "--out", "notes"],
    "hardcases compare": ["hardcases", "compare", "cands", "--prepared", "prep", "--out", "notes"],
    "candidate run": ["candidate", "run", "cands/soft/candidate.yaml", "--prepared", "prep", "--out", "notes"],
    "sample-data": ["sample-data", "--out", "notes", "--per-class", "2"],
}  # fmt: skip


@pytest.mark.parametrize("stage", sorted(NOT_DOCSORTS))
def test_a_folder_docsort_did_not_make_is_never_replaced_or_written_into(
    stage: str, work: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(work)
    _refused(work, NOT_DOCSORTS[stage], "notes", "not an empty folder, nor one docsort made")


def test_a_docsort_folder_of_another_kind_is_not_replaced(
    work: Path, monkeypatch: pytest.MonkeyPatch
):
    """`hardcases compare --out pred0` would swap a prediction folder for a comparison."""
    monkeypatch.chdir(work)
    assert read_marker(work / "pred0") == "predict"
    _refused(
        work,
        ["hardcases", "compare", "cands", "--prepared", "prep", "--out", "pred0"],
        "holds a docsort predict output, not a comparison one",
    )


def test_a_stage_replaces_its_own_output_and_an_empty_folder(work: Path, tmp_path: Path):
    """Re-running a stage on its own output folder is accepted; so is an empty folder."""
    out = tmp_path / "cmp"
    out.mkdir()
    argv = ["hardcases", "compare", work / "cands", "--prepared", work / "prep", "--out", out]
    assert run_cli(*argv)[0] == 0
    assert read_marker(out) == "comparison" and (out / "winner.json").is_file()
    (out / "comparison.txt").write_text("stale")
    rc, _, err = run_cli(*argv)
    assert rc == 0, err
    assert (out / "comparison.txt").read_text() != "stale"
    assert [p.name for p in tmp_path.iterdir()] == ["cmp"]  # no temporary or old copy left


def test_the_readme_report_beside_its_comparison_is_accepted(work: Path, tmp_path: Path):
    """`docsort report --comparison cmp -o cmp/report.html` (the README's line) writes inside an input
    on purpose; the comparison's own files stay byte-identical."""
    cmp = tmp_path / "cmp"
    shutil.copytree(work / "cmp", cmp)
    before = snapshot(cmp)
    rc, out, err = run_cli(
        "report", "--prepared", work / "prep", "--comparison", cmp, "--out", cmp / "report.html"
    )
    assert rc == 0, err
    after = snapshot(cmp)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {"report.html", "summary.md"}


def test_export_default_output_goes_into_the_model_folder(work: Path, tmp_path: Path):
    """`docsort export MODEL` writes MODEL/model.onnx: a declared file inside its input."""
    pytest.importorskip("onnxruntime")
    model = tmp_path / "m0"
    shutil.copytree(work / "m0", model)
    before = snapshot(model)
    rc, _, err = run_cli("export", model)
    assert rc == 0, err
    assert set(snapshot(model)) - set(before) == {"model.onnx"}


def test_a_train_folder_is_not_taken_for_a_prediction_folder(work: Path, tmp_path: Path):
    """The marker names the kind: `predict --out` a (half-finished) train folder is refused."""
    out = tmp_path / "m"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"kind": "train"}))
    (out / "run.json").write_text("{}")
    rc, _, err = run_cli(
        "predict", "--prepared", work / "prep", "--model", work / "m0", "--out", out, *TINY
    )
    assert rc == 2 and "holds a docsort train output, not a predict one" in one_line(err)


# ---------------------------------------------------------------- the check itself


def test_check_outputs_compares_resolved_paths_and_s3_prefixes_by_segment(tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    for out, inp in (
        (tmp_path / "link" / "x", tmp_path / "data"),
        (tmp_path / "data" / ".." / "data", tmp_path / "data"),
        ("s3://b/runs", "s3://b/runs/"),
        ("s3://b/runs", "s3://b/runs/data"),
        ("s3://b/runs/prep", "s3://b/runs"),
    ):
        with pytest.raises(DocsortError, match="output (is|contains|lies inside) the input"):
            check_outputs([out], [inp])
    for out, inp in (
        (tmp_path / "data2", tmp_path / "data"),
        ("s3://b/runs2", "s3://b/runs"),
        ("s3://other/runs", "s3://b/runs"),
        (tmp_path / "s3:" / "b", "s3://b"),
    ):
        check_outputs([out], [inp])
    check_outputs([tmp_path / "data" / "r.html"], [tmp_path / "data"], into=[tmp_path / "data"])


# ---------------------------------------------------------------- `docsort run` failures


def test_failure_message_names_the_task_and_its_docsort_line():
    err = (
        "Pipeline \x1b[96m'docsort-demo'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m. "
        "Inner task failed: \x1b[96m'train-op'\x1b[0m inside \x1b[96m'for-loop-2'\x1b[0m."
    )
    output = [
        "    Traceback (most recent call last):",
        '      File "/x/executor.py", line 1, in execute',
        "    docsort.core.errors.ConfigError: train.lr=-1 must be > 0",
        "    RuntimeError: the executor's wrapper",
    ]
    assert failure_message(err, output) == (
        "task 'train-op' inside 'for-loop-2' failed: train.lr=-1 must be > 0"
    )
    assert failure_message(err, ["ZeroDivisionError: division by zero"]) == (
        "task 'train-op' inside 'for-loop-2' failed: ZeroDivisionError: division by zero"
    )
    assert "see the log above" in failure_message(err, ["nothing useful"])


@pytest.mark.slow
def test_a_failed_pipeline_ends_with_the_task_and_its_one_line_error(tmp_path: Path):
    """The demo pipeline on 2 images per class fails in prepare (fewer images than folds): the last
    line names the task and prepare's own message, not kfp's 'Inner task failed'."""
    rc, out, err = run_cli(
        "run", REPO / "src" / "docsort" / "pipelines" / "demo.py", "--local", "--out", tmp_path / "runs",
        "--param", "per_class=2",
    )  # fmt: skip
    *status, last = [ln for ln in err.splitlines() if ln.strip()]
    # the run's progress (one line per task as it ends), then the one error line; no traceback
    assert status[0].startswith("running demo.py with kfp.local")
    assert [ln.split()[:2] for ln in status[1:]] == [
        ["done", "sample-data"],
        ["failure", "prepare"],
    ]
    msg = one_line(last)
    assert rc == 2
    assert "task 'prepare-op' failed: " in msg and "fewer than data.num_folds" in msg, msg
