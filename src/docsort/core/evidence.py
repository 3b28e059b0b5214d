"""One rule for turning paired evidence into a choice, used by the TTA ablation and hard-case compare.

A table that ranks options by a point score always has a first row, even when
the first row is one image ahead out of forty. Reporting that row as a finding
is a coin flip dressed up as a result. So every stage that recommends one of
several options states a *prior* (the option it would pick with no data) and
keeps it unless the evidence says otherwise:

- the *challenger* is the option the stage's own ranking puts first; options
  ranked below the prior never replace it;
- the challenger replaces the prior only if, on the same images, it is right
  where the prior is wrong more often than the reverse, with an exact McNemar
  p < ``alpha``;
- otherwise the prior is kept, and the text says that the evidence does not
  separate them, with the counts and the p-value beside the choice.

``decided_by`` is ``evidence`` when the chosen option is significantly better
than the best other one (the challenger beat the prior, or the prior ranks
first and beats the runner-up), else ``prior``.

One test, of the best-ranked option only, not one per option: looking through
255 TTA subsets for any p < 0.05 would manufacture a finding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from docsort.core.errors import DocsortError
from docsort.core.stats import PairedResult

#: Significance level a challenger must beat the prior at (``--alpha``).
ALPHA = 0.05
#: ``Choice.decided_by``: the evidence separates the chosen option from the next, or it does not.
DECIDED_BY = ("evidence", "prior")


@dataclass(frozen=True)
class Choice:
    """The chosen option, whether evidence or the prior decided, and the evidence shown beside it.

    ``result`` is the challenger against the prior (``wins``: images only the
    challenger got right); ``None`` when there is no other option.
    """

    name: str
    decided_by: str
    prior: str
    challenger: str | None
    result: PairedResult | None
    alpha: float
    evidence_text: str

    def record(self) -> dict:
        """The choice as JSON-ready fields (``decided_by``, ``evidence``) for an output file."""
        r = self.result
        return {
            "decided_by": self.decided_by,
            "evidence": {
                "prior": self.prior,
                "challenger": self.challenger,
                "wins": None if r is None else r.wins,
                "losses": None if r is None else r.losses,
                "both_right": None if r is None else r.both_right,
                "both_wrong": None if r is None else r.both_wrong,
                "p": None if r is None else r.p_value,
                "alpha": self.alpha,
                "text": self.evidence_text,
            },
        }


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float strictly between 0 and 1, else a one-line error."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 1.0:
        raise DocsortError(f"alpha {alpha!r} must be a number between 0 and 1 (e.g. 0.05)")
    return value


def choose(
    options: Sequence[str],
    prior: str,
    paired_results: Mapping[str, PairedResult],
    alpha: float = ALPHA,
    *,
    noun: str = "option",
    counts: tuple[str, str] = ("wins", "losses"),
    notes: Mapping[str, str] | None = None,
    prior_reason: str = "",
) -> Choice:
    """Pick from ``options`` (ranked best first by the stage's own score) by the stated rule.

    ``paired_results[o]`` is option ``o`` against ``prior`` on the same images
    (``wins``: only ``o`` right). ``counts`` names wins and losses in the text
    (the ablation says fixed/broken); ``notes`` adds a few words per option
    (its score); ``prior_reason`` says why the prior is the prior.
    """
    alpha = check_alpha(alpha)
    options = list(options)
    if not options or len(set(options)) != len(options):
        raise DocsortError(f"choose needs distinct {noun}s, got {options}")
    if prior not in options:
        raise DocsortError(f"the prior {prior!r} is not one of the {noun}s: {', '.join(options)}")
    notes = notes or {}
    reason = f" ({prior_reason})" if prior_reason else ""

    def shown(name: str) -> str:
        return f"{name} ({notes[name]})" if notes.get(name) else name

    others = [o for o in options if o != prior]
    if not others:
        return Choice(prior, "prior", prior, None, None, alpha, f"only one {noun}: {prior}")
    challenger = others[0]
    if challenger not in paired_results:
        raise DocsortError(f"no paired result of {challenger!r} against the prior {prior!r}")
    r = paired_results[challenger]
    won, lost = counts
    tally = f"{won} {r.wins} / {lost} {r.losses}"
    test = f"exact McNemar p={r.p_value:.3g}"
    if options[0] == prior:
        if r.losses > r.wins and r.p_value < alpha:
            text = (
                f"the prior {shown(prior)} ranks first and beats the next {noun}, "
                f"{shown(challenger)}: {tally} against it, {test} < {alpha:g}; keeping {prior} by evidence"
            )
            return Choice(prior, "evidence", prior, challenger, r, alpha, text)
        text = (
            f"no {noun} beats the prior {shown(prior)}: it ranks first itself, but the evidence does not "
            f"separate it from the next, {shown(challenger)} ({tally} against it, {test}); "
            f"keeping {prior} by the stated prior{reason}"
        )
        return Choice(prior, "prior", prior, challenger, r, alpha, text)
    if r.wins > r.losses and r.p_value < alpha:
        text = (
            f"{shown(challenger)} beats the prior {shown(prior)}: {tally}, {test} < {alpha:g}; "
            f"choosing {challenger} by evidence"
        )
        return Choice(challenger, "evidence", prior, challenger, r, alpha, text)
    text = (
        f"the evidence does not separate the {noun}s: best {shown(challenger)} against the prior "
        f"{shown(prior)}: {tally}, {test} (needs p < {alpha:g}); keeping {prior} by the stated prior{reason}"
    )
    return Choice(prior, "prior", prior, challenger, r, alpha, text)


def choice_from_record(name: str, record: dict) -> Choice | None:
    """A :class:`Choice` read back from :meth:`Choice.record`'s fields (``None`` if absent)."""
    ev = record.get("evidence")
    if not isinstance(ev, dict) or record.get("decided_by") not in DECIDED_BY:
        return None
    result = None
    if ev.get("p") is not None:
        result = PairedResult(wins=int(ev["wins"]), losses=int(ev["losses"]),
                              both_right=int(ev.get("both_right") or 0),
                              both_wrong=int(ev.get("both_wrong") or 0), p_value=float(ev["p"]))  # fmt: skip
    return Choice(name=name, decided_by=record["decided_by"], prior=str(ev["prior"]),
                  challenger=ev.get("challenger"), result=result, alpha=float(ev["alpha"]),
                  evidence_text=str(ev["text"]))  # fmt: skip
