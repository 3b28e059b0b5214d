"""bench/quality.py: budget planning, and one tiny end-to-end run scored on the sample's test labels."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY


def test_planned_members_are_folds_or_seeds_on_all_pages():
    from bench.quality import member_specs
    from docsort.train.plan import Plan

    folds = member_specs(Plan(160, 40, "all", 3, "folds"))
    assert folds == [("fold0", ["fold=0"]), ("fold1", ["fold=1"]), ("fold2", ["fold=2"])]
    seeds = member_specs(Plan(224, 20, "none", 2, "proxy"))
    assert seeds == [("all0", ["fold=none", "seed=42"]), ("all1", ["fold=none", "seed=43"])]


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
    result = main([str(sample_root), "--minutes", "1.5", "--recipe", "demo", "--json", str(out), "--sizes", "48,32",
                   "--min-epochs", "1", "--max-epochs", "2", "--probe-seconds", "1", "--work", str(tmp_path / "w"), "--no-anchor", *TINY])  # fmt: skip
    assert "anchor_macro_f1" not in result and "vs_anchor" not in result
    # --max-epochs 2 caps enough_epochs: both tiny folds get them, so the plan is the 2 fold members
    assert result["plan"]["image_size"] == 48 and result["plan"]["fold"] == "all"
    saved = json.loads(out.read_text())
    for key in ("macro_f1", "single_macro_f1", "tta_macro_f1", "ensemble_macro_f1", "wall_s"):
        assert 0 <= saved[key] <= (1 if key != "wall_s" else 1e6)
    assert saved == json.loads(json.dumps(result))
    assert saved["scored_on"] == "test_labels" and saved["scored_images"] == 34
    assert len(saved["members"]) == saved["plan"]["members"] and saved["train_images_per_s"] > 0
    assert saved["oof_source"] == "folds" and saved["oof_images"] == saved["train_images"]
    table = capsys.readouterr().out
    assert "fold0" in table and "macro F1" in table and "plan: 2 fold members" in table
    assert "OOF for review (folds)" in table


@pytest.mark.slow
def test_quality_bench_fits_the_feature_member_first_and_votes_it_with_the_cnns(
    sample_root, backbone, tmp_path, capsys, monkeypatch
):
    from bench.quality import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    result = main([str(sample_root), "--minutes", "2", "--recipe", "demo", "--sizes", "48,32", "--min-epochs", "1",
                   "--max-epochs", "2", "--probe-seconds", "1", "--work", str(tmp_path / "w"), "--no-anchor",
                   "--feature-member", str(backbone), *TINY])  # fmt: skip
    names = [m["member"] for m in result["members"]]
    assert names[0] == "features" and len(names) == 1 + result["plan"]["members"]
    assert result["members"][0]["epochs"] == 0 and result["feature_member"] == str(backbone)
    # the review OOF pools the CNN folds only: the all-pages feature member has none
    assert result["oof_source"] == "folds" and result["oof_images"] == result["train_images"]
    assert result["epochs"] == result["members"][1]["epochs"] >= 1
    assert "soft ensemble (3)" in capsys.readouterr().out
