"""A run knows what it is: re-runs into a finished or interrupted folder, typed as a user would.

Each case is the CLI sequence that triggers it: train (or predict) into a folder,
then the same command with something changed. A re-run that asks for other work
is refused with one line naming the keys that differ, exit 2, and the folder is
byte-identical afterwards; ``--overwrite`` starts again; an identical re-run
does nothing. Checkpoints that are unsafe, torn or of another model, and
overrides of the wrong type or range, are refused in one line too.

One member is trained per module (1 epoch, 48 px, resnet10t) and copied into
each test.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import TINY, TINY_TRAIN
from tests.scenario import one_line, run_cli, snapshot

BASE = [*TINY_TRAIN, "model=resnet10t", "train.lr=0.003"]
FOLD0 = [*BASE, "fold=0"]
PREDICT = [*TINY, "tta.views=[identity,flip]", "precision=fp32"]


@pytest.fixture(scope="module")
def member(prepared_root: Path, tmp_path_factory) -> Path:
    """``docsort train P --out m0 ... fold=0``, finished."""
    out = tmp_path_factory.mktemp("resume") / "m0"
    rc, _, err = run_cli("train", "--prepared", prepared_root, "--out", out, *FOLD0)
    assert rc == 0, err
    return out


@pytest.fixture
def m0(member: Path, tmp_path: Path) -> Path:
    """A copy of the finished member this test may change."""
    return Path(shutil.copytree(member, tmp_path / "m0"))


def _refused(rc: int, err: str) -> str:
    msg = one_line(err)
    assert rc == 2, msg
    return msg


# ---------------------------------------------------------------- train: another run, same --out

RERUNS = [
    ("another learning rate", ["train.lr=0.0001"],
     ["m0: was trained with train.lr=0.003; this run asks train.lr=0.0001"]),
    ("another architecture", ["model=resnet18"],
     ["was trained with model.name=resnet10t; this run asks model.name=resnet18"]),
    ("another fold (its OOF rows were seen by fold 0)", ["fold=1"],
     ["was trained with fold=0; this run asks fold=1"]),
    ("two keys at once", ["train.lr=0.0001", "fold=1"],
     ["was trained with fold=0, train.lr=0.003; this run asks fold=1, train.lr=0.0001"]),
    ("more epochs (another schedule)", ["train.epochs=3"],
     ["train.epochs=1; this run asks train.epochs=3"]),
    ("other TTA views for the OOF table", ["tta.views=[identity]"], ["tta.views=[identity]"]),
]  # fmt: skip


@pytest.mark.parametrize("label,change,expect", RERUNS, ids=[r[0] for r in RERUNS])
def test_rerun_asking_for_other_work_is_refused_and_the_run_is_untouched(
    label, change, expect, m0: Path, prepared_root: Path
):
    before = snapshot(m0)
    rc, out, err = run_cli("train", "--prepared", prepared_root, "--out", m0, *FOLD0, *change)
    msg = _refused(rc, err)
    for part in [*expect, "use --overwrite to start again, or another --out"]:
        assert part in msg, msg
    assert snapshot(m0) == before  # model.yaml still says what metrics.json measured
    assert out == ""


def test_rerun_with_the_same_work_does_nothing(m0: Path, prepared_root: Path):
    """Keys that change speed or logging, not the result, are no mismatch; nothing is rewritten."""
    before = snapshot(m0)
    same = ["threads=1", "train.num_workers=0", "tracking.wandb=offline", "tta.batch_size=4",
            "device=cpu", "train.channels_last=false", "data.max_pixels=1000000"]  # fmt: skip
    rc, _, err = run_cli("train", "--prepared", prepared_root, "--out", m0, *FOLD0, *same)
    assert rc == 0, err
    assert "already complete" in err
    assert snapshot(m0) == before


def test_a_removed_output_of_a_finished_run_is_written_again_without_training(
    m0: Path, prepared_root: Path
):
    weights = (m0 / "model.safetensors").read_bytes()
    (m0 / "model.safetensors").unlink()
    rc, stdout, err = run_cli("train", "--prepared", prepared_root, "--out", m0, *FOLD0)
    assert rc == 0, err
    assert "resuming from" in err and "epoch=" not in stdout  # no epoch was trained again
    assert (m0 / "model.safetensors").read_bytes() == weights


def test_overwrite_starts_again_and_keeps_what_docsort_did_not_write(m0: Path, prepared_root: Path):
    (m0 / "notes.txt").write_text("mine")
    rc, _, err = run_cli(
        "train", "--prepared", prepared_root, "--out", m0, *BASE, "fold=1", "--overwrite"
    )
    assert rc == 0, err
    assert json.loads((m0 / "metrics.json").read_text())["fold"] == 1
    assert json.loads((m0 / "run.json").read_text())["identity"]["fold"] == "1"
    assert (m0 / "notes.txt").read_text() == "mine"
    assert [p.name for p in (m0 / "logs").iterdir()] == ["run0"]  # fold 0's logs are gone
    # OOF rows are fold 1's only, predicted by weights that never saw them
    oof = pd.read_csv(m0 / "oof.csv", dtype={"ID": str})
    index = pd.read_csv(prepared_root / "index.csv", dtype={"ID": str})
    assert set(oof["fold"]) == {1}
    assert set(oof["ID"]) == set(index.loc[index["fold"] == 1, "ID"])


def test_a_folder_of_train_outputs_without_a_run_record_is_refused(m0: Path, prepared_root: Path):
    """Outputs of an earlier docsort (or copied by hand) cannot be identified, so not resumed."""
    (m0 / "run.json").unlink()
    before = snapshot(m0)
    rc, _, err = run_cli("train", "--prepared", prepared_root, "--out", m0, *FOLD0)
    msg = _refused(rc, err)
    assert "without a run.json" in msg and "--overwrite" in msg
    assert snapshot(m0) == before


def test_identity_is_every_key_but_speed_logging_and_prepare_keys():
    """The keys a train re-run may change (README "Training recipes" lists the same)."""
    from docsort.core.config import all_keys, identity_keys

    assert set(all_keys()) - set(identity_keys()) == {
        "threads", "device", "runtime", "train.num_workers", "train.compile",
        "train.channels_last", "tta.batch_size", "tta.workers", "tta.shard_size",
        "tracking.wandb", "tracking.project", "tracking.group", "data.num_folds", "data.group_column",
        "data.max_pixels", "data.exclude_label_errors", "data.correct_label_errors",
        # the orientation stage and predict --orientation record these in their own run.json
        *(f"orientation.{k}" for k in ("model", "image_size", "epochs", "batch_size", "lr",
                                      "weight_decay", "holdout_fold", "tta")),
        # the ocr stage records these in ocr.json (its cache keys on the engine settings)
        *(f"ocr.{k}" for k in ("engine", "languages", "psm", "oem", "orientation", "select",
                              "groups", "margin", "workers", "cache")),
    }  # fmt: skip
    assert {"fold", "seed", "train.lr", "model.name", "train.epochs"} <= set(identity_keys())


# ---------------------------------------------------------------- train: checkpoints


def _interrupted(m0: Path) -> Path:
    """What a run killed after its first epoch leaves: the record (unfinished) and last.ckpt."""
    for p in m0.iterdir():
        if p.name not in ("run.json", ".docsort", "checkpoints", "logs"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    record = json.loads((m0 / "run.json").read_text())
    (m0 / "run.json").write_text(json.dumps({**record, "complete": False}))
    return m0 / "checkpoints" / "last.ckpt"


class _Payload:
    """Unpickling this runs ``touch MARKER``: what a planted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_interrupted_run_resumes_with_the_same_config(m0: Path, prepared_root: Path):
    _interrupted(m0)
    rc, _, err = run_cli("train", "--prepared", prepared_root, "--out", m0, *FOLD0, "threads=1")
    assert rc == 0, err
    assert "resuming from" in err
    assert json.loads((m0 / "run.json").read_text())["complete"] is True
    assert (m0 / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "kind,expect",
    [
        ("torn", "not a checkpoint docsort can read (torn, corrupt"),
        ("garbage", "not a checkpoint docsort can read"),
        ("code", "refers to code or objects other than tensors and plain values"),
        ("other tensors", "checkpoint does not fit this model (1 tensors differ in shape"),
    ],
)
def test_bad_last_checkpoint_is_refused_in_one_line(
    kind: str, expect: str, m0: Path, prepared_root: Path, tmp_path: Path
):
    ckpt = _interrupted(m0)
    marker = tmp_path / "PAYLOAD-RAN"
    if kind == "torn":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif kind == "garbage":
        ckpt.write_text("not a checkpoint")
    elif kind == "code":
        torch.save({"state_dict": {}, "x": _Payload(marker)}, ckpt)
    else:  # the identity matches, but the tensors are another model's
        state = torch.load(ckpt, weights_only=True)
        first = next(iter(state["state_dict"]))
        state["state_dict"][first] = torch.zeros(3)
        torch.save(state, ckpt)
    before = snapshot(m0)
    rc, _, err = run_cli("train", "--prepared", prepared_root, "--out", m0, *FOLD0)
    msg = _refused(rc, err)
    assert expect in msg and str(ckpt) in msg and "--overwrite" in msg
    assert "weights_only=False" not in err
    assert not marker.exists()
    assert snapshot(m0) == before


def test_resuming_with_another_architecture_is_refused_before_loading(
    m0: Path, prepared_root: Path, tmp_path: Path
):
    ckpt = _interrupted(m0)
    marker = tmp_path / "PAYLOAD-RAN"
    torch.save({"state_dict": {}, "x": _Payload(marker)}, ckpt)  # would show if it were loaded
    rc, _, err = run_cli(
        "train", "--prepared", prepared_root, "--out", m0, *FOLD0, "model=resnet18"
    )
    msg = _refused(rc, err)
    assert "model.name=resnet10t; this run asks model.name=resnet18" in msg
    assert not marker.exists()


def test_model_weights_that_do_not_fit_the_model_are_refused(
    m0: Path, prepared_root: Path, tmp_path: Path
):
    (m0 / "model.yaml").write_text(
        (m0 / "model.yaml").read_text().replace("name: resnet10t", "name: resnet18")
    )
    rc, _, err = run_cli(
        "predict", "--prepared", prepared_root, "--model", m0, "--out", tmp_path / "p", *TINY
    )
    assert "model.safetensors does not fit arch resnet18" in _refused(rc, err)
    (m0 / "model.safetensors").write_bytes(b"\x00" * 64)
    rc, _, err = run_cli(
        "predict", "--prepared", prepared_root, "--model", m0, "--out", tmp_path / "p", *TINY
    )
    assert "not a valid safetensors file" in _refused(rc, err)
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------- predict: another run, same --out


def test_predict_rerun_is_a_no_op_or_refused_and_overwrite_redoes_it(
    member: Path, prepared_root: Path, tmp_path: Path
):
    from safetensors.torch import load_file, save_file

    other = Path(shutil.copytree(member, tmp_path / "m1"))
    state = load_file(other / "model.safetensors")
    first = next(iter(state))
    state[first] = state[first] + 0.01
    save_file(state, other / "model.safetensors")

    pred = tmp_path / "pred"
    rc, _, err = run_cli(
        "predict", "--prepared", prepared_root, "--model", member, "--out", pred, *PREDICT
    )
    assert rc == 0, err
    before = snapshot(pred)
    rc, _, err = run_cli("predict", "--prepared", prepared_root, "--model", member, "--out", pred, *PREDICT,
                         "threads=1", "tta.batch_size=5", "tta.shard_size=7")  # fmt: skip
    assert rc == 0 and "already complete" in err
    assert snapshot(pred) == before
    for model, change, expect in (
        (other, [], f"({member}); this run asks model weights="),
        (member, ["tta.views=[identity]"], "this run asks tta.views=[identity]"),
        (member, ["tta.merge=geomean"], "tta.merge=mean; this run asks tta.merge=geomean"),
    ):
        argv = [
            "predict",
            "--prepared",
            prepared_root,
            "--model",
            model,
            "--out",
            pred,
            *PREDICT,
            *change,
        ]
        rc, _, err = run_cli(*argv)
        msg = _refused(rc, err)
        assert "was predicted with" in msg and expect in msg, msg
        assert snapshot(pred) == before
    rc, _, err = run_cli("predict", "--prepared", prepared_root, "--model", other, "--out", pred, *PREDICT,
                         "--overwrite")  # fmt: skip
    assert rc == 0, err
    assert snapshot(pred)["probs.csv"] != before["probs.csv"]


# ---------------------------------------------------------------- overrides and options: one line

OPTION_CASES = [
    ("ensemble --views-from: a folder that is not a TTA ablation",
     lambda w, p, m: ["ensemble", "--model", m, "--prepared", p, "--views-from", w / "views", "--out", w / "c"],
     "not a TTA ablation folder (no ablation.csv)"),
    ("run --param of the wrong type",
     lambda w, p, m: ["run", "pipelines/demo.py", "--local", "--param", "per_class=abc", "--out", w / "runs"],
     "--param per_class=abc: pipeline input 'per_class' needs an integer"),
    ("hardcases mine --top -1",
     lambda w, p, m: ["hardcases", "mine", w / "views", "--prepared", p, "--out", w / "x.csv", "--top", "-1"],
     "--top -1 must be an integer >= 1"),
]  # fmt: skip


@pytest.mark.parametrize("label,argv,expect", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_bad_option_is_refused_in_one_line(
    label, argv, expect, member: Path, prepared_root: Path, tmp_path: Path
):
    (tmp_path / "views").mkdir()
    before = snapshot(tmp_path)
    rc, _, err = run_cli(*argv(tmp_path, prepared_root, member))
    assert expect in _refused(rc, err)
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["views"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_refused_before_any_work(prepared_root: Path, tmp_path: Path):
    rc, _, err = run_cli(
        "train", "--prepared", prepared_root, "--out", tmp_path / "m", *FOLD0, "device=cuda"
    )
    assert "device='cuda' but this machine has no CUDA device" in _refused(rc, err)
    assert not (tmp_path / "m").exists()
