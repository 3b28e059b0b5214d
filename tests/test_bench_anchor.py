"""bench/anchor.py: the plain loop every quality run measures beside docsort."""

from __future__ import annotations

import pytest
import torch


def test_epochs_fit_the_budget_after_prediction():
    from bench.anchor import fit_epochs

    assert fit_epochs(100.0, 10.0, 20.0) == 8  # 80 s left for 10-s epochs
    assert fit_epochs(5.0, 10.0, 20.0) == 1  # always at least one epoch
    assert fit_epochs(1e9, 1.0, 0.0, most=50) == 50


def test_views_are_the_eight_dihedral_views():
    from bench.anchor import dihedral_views

    x = torch.arange(9, dtype=torch.uint8).reshape(1, 1, 3, 3)
    views = {tuple(v.flatten().tolist()) for v in dihedral_views(x)}
    assert len(views) == 8  # an asymmetric image: all 8 views differ


@pytest.mark.slow  # `make test-slow`
def test_anchor_learns_a_separable_task_within_a_few_steps():
    """Its EMA warms up: after 16 steps a fixed 0.99 decay would still hold 85 % of the random init."""
    from bench.anchor import predict, train_anchor

    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    # class 0 dark, class 1 bright: a signal that survives every rotation and flip
    x = (torch.rand(64, 1, 24, 24, generator=g) * 80 + y.view(-1, 1, 1, 1) * 150).to(torch.uint8)
    model, facts = train_anchor(x, y, 2, budget_s=0, n_predict=0, epochs=8, bf16=False)
    assert facts["epochs"] == 8 and facts["bf16"] is False
    acc = (predict(model, x, None).argmax(1) == y.numpy()).mean()
    assert acc >= 0.95


@pytest.mark.slow
def test_anchor_scores_on_test_labels_of_the_sample(sample_root):
    from bench.anchor import run_anchor

    r = run_anchor(sample_root, 60, epochs=1, size=32)
    assert 0 <= r["anchor_macro_f1"] <= 1 and r["anchor_epochs"] == 1
    assert r["anchor_images"]["test"] == 34


def test_anchor_without_test_labels_says_so(tmp_path):
    from bench.anchor import run_anchor

    (tmp_path / "train.csv").write_text("ID,target\na.png,0\n")
    r = run_anchor(tmp_path, 10)
    assert r["anchor_macro_f1"] is None and "test_labels.csv" in r["skipped"]
