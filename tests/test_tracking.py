"""Candidates and reports become W&B artifacts only when the job's environment asks for it."""

from __future__ import annotations

import time

import pytest

from docsort.core import tracking


def test_artifact_mode_follows_the_environment():
    assert tracking.artifact_mode({}) == "disabled"  # a laptop run: nothing logged
    assert tracking.artifact_mode({"WANDB_API_KEY": "k"}) == "online"
    assert tracking.artifact_mode({"WANDB_API_KEY": "k", "WANDB_MODE": "disabled"}) == "disabled"
    assert tracking.artifact_mode({"WANDB_MODE": "offline"}) == "disabled"  # nowhere to write
    assert tracking.artifact_mode({"WANDB_MODE": "offline", "WANDB_DIR": "/x"}) == "offline"


@pytest.mark.slow  # a W&B offline run: about 9 s on 2 cores
def test_offline_artifact_holds_the_folder_and_leaves_it_alone(tmp_path, monkeypatch):
    cand = tmp_path / "soft"
    cand.mkdir()
    (cand / "probs.csv").write_text("ID,p0\na,1\n")
    (cand / "candidate.yaml").write_text("name: soft\n")
    runs = tmp_path / "wandb-runs"
    runs.mkdir()
    monkeypatch.setenv("WANDB_DIR", str(runs))
    monkeypatch.setenv("WANDB_RUN_GROUP", "exp-1")
    mode = tracking.log_artifact(cand, kind="candidate", name="soft", metrics={"oof_macro_f1": 0.8})
    assert mode == "offline"
    assert sorted(p.name for p in cand.iterdir()) == ["candidate.yaml", "probs.csv"]
    wanted = (b"candidate/soft", b"exp-1", b"probs.csv")
    for _ in range(100):  # W&B's service process may still be flushing the offline record
        data = b"".join(p.read_bytes() for p in runs.glob("wandb/offline-run-*/run-*.wandb"))
        if all(w in data for w in wanted):
            break
        time.sleep(0.2)
    assert all(w in data for w in wanted), data[:500]


def test_nothing_is_logged_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_DIR", raising=False)
    assert tracking.log_artifact(tmp_path, kind="report", name="r") is None
    assert list(tmp_path.iterdir()) == []
