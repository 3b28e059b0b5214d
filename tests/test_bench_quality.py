"""bench/quality.py: budget planning, and one tiny end-to-end run scored on the sample's test labels."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY


def test_plan_trades_members_for_epochs_within_the_budget():
    from bench.quality import plan

    speed = {"train_images_per_s": 100.0, "val_images_per_s": 400.0, "tta_images_per_s": 50.0}
    # 5 folds of 1000 images: an epoch of a member costs 8 + 0.5 s, its fixed part (TTA of 200 + 500 images) 14 + 8 s
    members, epochs = plan(
        5 * 60 * 20, 1000, 500, 5, 5, speed, min_epochs=8, max_epochs=60, overhead_s=8
    )
    assert members == 5 and 8 <= epochs <= 60
    assert members * (epochs * 8.5 + 22) <= 5 * 60 * 20
    few, e = plan(200, 1000, 500, 5, 5, speed, min_epochs=8, max_epochs=60, overhead_s=8)
    assert few < 5 and (e >= 8 or few == 1)  # fewer members rather than too few epochs
    assert plan(1e9, 1000, 500, 5, 3, speed, min_epochs=8, max_epochs=40, overhead_s=8) == (3, 40)
    assert plan(1, 1000, 500, 5, 5, speed, min_epochs=8, max_epochs=60, overhead_s=8) == (1, 1)


def test_members_are_added_or_dropped_by_their_measured_cost():
    from bench.quality import another_member_fits

    # 100 s budget, 3 s kept for scoring: a 30-s member fits after 60 s, not after 70 s
    assert another_member_fits(60.0, 30.0, 100.0)
    assert another_member_fits(67.0, 30.0, 100.0)
    assert not another_member_fits(67.1, 30.0, 100.0)
    assert not another_member_fits(10.0, 95.0, 100.0)  # a probe that was optimistic


@pytest.mark.slow
def test_quality_bench_runs_end_to_end_on_tiny_data(sample_root, tmp_path, capsys, monkeypatch):
    from bench.quality import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "q.json"
    result = main([str(sample_root), "--minutes", "1.5", "--recipe", "demo", "--json", str(out), "--members", "2",
                   "--min-epochs", "1", "--max-epochs", "2", "--probe-seconds", "1", "--work", str(tmp_path / "w"), "--no-anchor", *TINY])  # fmt: skip
    assert "anchor_macro_f1" not in result and "vs_anchor" not in result
    saved = json.loads(out.read_text())
    for key in ("macro_f1", "single_macro_f1", "tta_macro_f1", "ensemble_macro_f1", "wall_s"):
        assert 0 <= saved[key] <= (1 if key != "wall_s" else 1e6)
    assert saved == json.loads(json.dumps(result))
    assert saved["scored_on"] == "test_labels" and saved["scored_images"] == 34
    assert 1 <= len(saved["members"]) <= 2 and saved["train_images_per_s"] > 0
    table = capsys.readouterr().out
    assert "soft ensemble" in table and "fold0" in table and "macro F1" in table
