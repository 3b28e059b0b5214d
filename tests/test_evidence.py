"""The shared rule: a ranked-first option replaces the stated prior only by a paired test."""

from __future__ import annotations

import numpy as np
import pytest

from docsort.core.errors import DocsortError
from docsort.core.evidence import choice_from_record, choose
from docsort.core.stats import PairedResult, paired_compare


def _result(wins: int, losses: int, same: int = 10) -> PairedResult:
    """The paired result of correctness vectors with ``wins``/``losses`` discordant images."""
    a = np.array([True] * wins + [False] * losses + [True] * same)
    b = np.array([False] * wins + [True] * losses + [True] * same)
    return paired_compare(a, b)


def test_identical_predictions_keep_the_prior():
    c = choose(["S", "P"], "P", {"S": _result(0, 0)})
    assert (c.name, c.decided_by, c.challenger) == ("P", "prior", "S")
    assert c.result.p_value == 1.0
    assert "does not separate" in c.evidence_text and "keeping P" in c.evidence_text


def test_a_clearly_better_option_is_chosen_by_evidence():
    c = choose(["S", "P"], "P", {"S": _result(30, 2)})
    assert (c.name, c.decided_by) == ("S", "evidence")
    assert c.result.p_value < 1e-6
    assert "wins 30 / losses 2" in c.evidence_text and "choosing S by evidence" in c.evidence_text


def test_noise_keeps_the_prior_and_says_so():
    c = choose(["S", "P"], "P", {"S": _result(2, 1)}, prior_reason="the configured views")
    assert (c.name, c.decided_by) == ("P", "prior")
    assert c.result.p_value == pytest.approx(1.0)
    text = c.evidence_text
    assert "the evidence does not separate" in text and "p=1" in text
    assert "keeping P by the stated prior (the configured views)" in text


def test_alpha_is_the_threshold():
    r = _result(10, 2)  # exact McNemar p = 0.0386
    assert choose(["S", "P"], "P", {"S": r}, alpha=0.05).name == "S"
    assert choose(["S", "P"], "P", {"S": r}, alpha=0.01).name == "P"


def test_only_the_top_ranked_option_is_tested():
    # T would beat the prior, but S ranks first and does not: no fishing through the table.
    c = choose(["S", "T", "P"], "P", {"S": _result(2, 1), "T": _result(30, 2)})
    assert (c.name, c.challenger) == ("P", "S")


def test_a_prior_ranked_first_is_kept_and_said_to_be_best():
    clear = choose(["P", "S"], "P", {"S": _result(2, 30)})
    assert (clear.name, clear.decided_by) == ("P", "evidence")
    assert "ranks first and beats the next" in clear.evidence_text
    close = choose(["P", "S"], "P", {"S": _result(1, 2)})
    assert (close.name, close.decided_by) == ("P", "prior")
    assert "does not separate" in close.evidence_text


def test_more_losses_than_wins_never_replace_the_prior():
    # significant, but the wrong way round (a ranking by another score put S first)
    c = choose(["S", "P"], "P", {"S": _result(2, 30)})
    assert (c.name, c.decided_by) == ("P", "prior")


def test_one_option_and_the_record_round_trip():
    only = choose(["P"], "P", {})
    assert (only.name, only.decided_by, only.result) == ("P", "prior", None)
    c = choose(["S", "P"], "P", {"S": _result(30, 2)}, noun="subset", counts=("fixed", "broken"))
    rec = c.record()
    assert rec["decided_by"] == "evidence"
    assert (rec["evidence"]["wins"], rec["evidence"]["losses"], rec["evidence"]["prior"]) == (
        30,
        2,
        "P",
    )
    assert "fixed 30 / broken 2" in rec["evidence"]["text"]
    assert choice_from_record("S", rec) == c
    assert choice_from_record("S", {}) is None


def test_bad_inputs():
    with pytest.raises(DocsortError, match="alpha"):
        choose(["S", "P"], "P", {"S": _result(1, 1)}, alpha=0)
    with pytest.raises(DocsortError, match="alpha"):
        choose(["S", "P"], "P", {"S": _result(1, 1)}, alpha="x")
    with pytest.raises(DocsortError, match="prior 'Q'"):
        choose(["S", "P"], "Q", {})
    with pytest.raises(DocsortError, match="no paired result"):
        choose(["S", "P"], "P", {})
    with pytest.raises(DocsortError, match="distinct"):
        choose(["S", "S"], "S", {})
