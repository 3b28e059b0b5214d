"""Side-by-side comparison of candidate ensembles on hand-labelled hard cases.

Two candidates within a hair of each other on OOF macro F1 are not told apart
by that number; the seed's user ran both on a set of hard images labelled by
hand and read the results side by side. This module builds that table, the
per-candidate scores, paired wins/losses with an exact McNemar p-value (the
right test for two classifiers on the same few dozen images), and picks a
winner by the rule of :mod:`docsort.core.evidence`, so that one image of
difference is never reported as a finding:

- the *prior* candidate is the one chosen without evidence (:data:`PRIOR`):
  an ensemble over a single member, soft voting over weighted, stacked and
  hard voting (the seed found soft voting better than hard), then fewer
  members, then the order given;
- the candidates are ranked on the evidence: more hard cases right (same rows
  for everyone, so counts compare exactly), then higher OOF macro F1 (unknown
  counts as worst), then fewer members, then name;
- the first-ranked candidate wins *by evidence* only if it beats the prior on
  the hard cases with an exact McNemar p < alpha; otherwise the prior wins and
  the comparison says the evidence does not separate them, with the counts.

Rows marked ``kind == "label_error"`` record a wrong *training* label, not a
model error: they are listed but not scored.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from docsort.core.atomic import atomic_path
from docsort.core.csv_tables import read_table
from docsort.core.errors import DocsortError
from docsort.core.evidence import ALPHA, Choice, check_alpha, choice_from_record, choose
from docsort.core.outputs import stage
from docsort.core.probs import align, read_probs
from docsort.core.stats import macro_f1, paired_compare
from docsort.core.tables import fmt_cell, text_table
from docsort.data.contract import read_meta
from docsort.data.prepared import Prepared
from docsort.ensemble.candidate import copy_candidate, expand_candidates

LABEL_ERROR = "label_error"
#: How candidates are ranked on the evidence (the first one is the challenger).
RANKING = "hard-case accuracy, then OOF macro F1, then fewer members, then name"
#: The stated prior: the candidate chosen when the hard cases do not separate them.
PRIOR = (
    "an ensemble over a single member, soft voting over weighted, stacked and hard voting, "
    "then fewer members, then the order given"
)
#: Prior order of ensemble methods (unknown methods come last).
METHOD_PRIOR = ("soft", "weighted", "stacked", "hard")
POLICY = (
    f"the top candidate by {RANKING} wins only if it beats the prior candidate ({PRIOR}) "
    "on the hard cases with exact McNemar p < alpha; otherwise the prior wins"
)


def _text(value: object) -> str:
    """Notes and kinds come from a CSV: NaN/None mean empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _printable(value: object, width: int | None = None) -> str:
    """Terminal-safe text: control characters (escape sequences) become '?'."""
    s = "".join(ch if ch.isprintable() else "?" for ch in _text(value))
    if width is not None and len(s) > width:
        s = s[: width - 1] + "~"
    return s


@dataclass(frozen=True)
class Comparison:
    """Everything ``docsort hardcases compare`` prints and the report shows."""

    candidates: list[str]
    per_image: pd.DataFrame
    per_candidate: pd.DataFrame
    pairwise: pd.DataFrame
    winner: str
    policy: str
    prior: str = ""
    choice: Choice | None = None
    #: Each candidate's folder as the comparison read it (winner.json's ``candidates``).
    folders: dict[str, str] = field(default_factory=dict)

    @property
    def decided_by(self) -> str:
        """``evidence`` when the hard cases moved the choice away from the prior, else ``prior``."""
        return self.choice.decided_by if self.choice else "prior"

    def format_table(self, id_width: int = 28, note_width: int = 40) -> str:
        """Readable plain-text rendering for the terminal."""
        img = self.per_image
        headers = ["ID", "truth"] + self.candidates + ["kind", "note"]
        rows = []
        for _, r in img.iterrows():
            cells = [_printable(r["ID"], id_width), _printable(r["truth"], 24)]
            for c in self.candidates:
                mark = ("ok" if r[f"{c}:ok"] else "X") if r["scored"] else "-"
                cells.append(f"{_printable(r[f'{c}:pred'], 24)} {r[f'{c}:conf']:.2f} {mark}")
            cells += [_printable(r["kind"], 12), _printable(r["note"], note_width)]
            rows.append(cells)
        pc = self.per_candidate
        cand_rows = [
            [
                _printable(r["candidate"]),
                f"{r['correct']}/{r['scored']}",
                fmt_cell(r["accuracy"], missing="?"),
                fmt_cell(r["macro_f1"], missing="?"),
                fmt_cell(r["oof_macro_f1"], missing="?"),
                "?" if pd.isna(r["members"]) else str(int(r["members"])),
                str(r["rank"]),
            ]
            for _, r in pc.iterrows()
        ]
        pair_rows = [
            [
                _printable(r["a"]),
                _printable(r["b"]),
                str(r["a_wins"]),
                str(r["b_wins"]),
                str(r["both_right"]),
                str(r["both_wrong"]),
                f"{r['mcnemar_p']:.4g}",
            ]
            for _, r in self.pairwise.iterrows()
        ]
        parts = [
            "Hard cases (prediction, confidence, ok / X; '-' = not scored)",
            text_table(headers, rows),
            "",
            "Candidates (rank: order on the evidence; the winner follows the rule below)",
            text_table(
                ["candidate", "right", "accuracy", "macro_f1", "oof_macro_f1", "members", "rank"],
                cand_rows,
            ),
        ]
        if pair_rows:
            parts += [
                "",
                "Pairs (wins = only this one right; exact McNemar p)",
                text_table(["A", "B", "A wins", "B wins", "both ok", "both X", "p"], pair_rows),
            ]
        parts += ["", self.policy]
        return "\n".join(parts)


def _check_inputs(
    ids: Sequence[str], targets: np.ndarray, candidate_probs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    if len(ids) != len(targets):
        raise DocsortError(f"{len(ids)} hard-case IDs but {len(targets)} targets")
    if len(set(ids)) != len(ids):
        raise DocsortError("hard-case IDs must be unique")
    if not candidate_probs:
        raise DocsortError("compare needs at least one candidate")
    arrays = {str(n): np.asarray(p, dtype=np.float64) for n, p in candidate_probs.items()}
    shapes = {p.shape for p in arrays.values()}
    if len(shapes) != 1 or next(iter(shapes))[0] != len(ids) or len(next(iter(shapes))) != 2:
        raise DocsortError(
            f"every candidate needs {len(ids)} x K probabilities aligned to the hard cases, got "
            + ", ".join(f"{n}: {p.shape}" for n, p in arrays.items())
        )
    k = next(iter(shapes))[1]
    if len(targets) and (targets.min() < 0 or targets.max() >= k):
        raise DocsortError(f"hard-case targets must lie in 0..{k - 1}")
    return arrays


_LEVELS = ("hard-case accuracy", "OOF macro F1", "member count", "name")


def _policy_key(r: pd.Series) -> tuple:
    """The policy as a sort key (smaller is better); unknown OOF/members sort last."""
    oof, members = r["oof_macro_f1"], r["members"]
    return (
        -r["correct"],
        math.inf if pd.isna(oof) else -oof,
        math.inf if pd.isna(members) else members,
        r["candidate"],
    )


def _shown(r: pd.Series, level: int) -> str:
    """How a candidate's value at one policy level is written in the explanation."""
    if level == 0:
        return f"{r['candidate']} {r['correct']}/{r['scored']}"
    if level == 1:
        return f"{r['candidate']} {fmt_cell(r['oof_macro_f1'], missing='?')}"
    if level == 2:
        return f"{r['candidate']} {'?' if pd.isna(r['members']) else int(r['members'])}"
    return str(r["candidate"])


def _rank(stats: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Rank candidates on the evidence and explain, level by level, where they part."""
    rows = {r["candidate"]: r for _, r in stats.iterrows()}
    keys = {name: _policy_key(r) for name, r in rows.items()}
    ranked = sorted(rows, key=keys.__getitem__)
    pool, steps = ranked, []
    for level, label in enumerate(_LEVELS):
        if len(pool) == 1:
            break
        best = min(keys[n][level] for n in pool)
        kept = [n for n in pool if keys[n][level] == best]
        desc = ", ".join(_shown(rows[n], level) for n in pool)
        steps.append(f"{label}: " + (f"tied ({desc})" if len(kept) == len(pool) else desc))
        pool = kept
    return ranked, steps


def prior_candidate(
    names: Sequence[str], methods: Mapping[str, str] | None, members: Mapping[str, int] | None
) -> str:
    """The candidate :data:`PRIOR` picks: an ensemble over a single member (averaging members
    lowers the variance of any one of them, the seed's finding), then by method, then fewer
    members (cheaper to predict), then the order given."""
    methods, members = methods or {}, members or {}

    def key(i: int) -> tuple:
        method = methods.get(names[i])
        count = members.get(names[i])
        single = count is not None and not pd.isna(count) and int(count) == 1
        return (
            single,
            METHOD_PRIOR.index(method) if method in METHOD_PRIOR else len(METHOD_PRIOR),
            math.inf if count is None or pd.isna(count) else count,
            i,
        )

    return names[min(range(len(names)), key=key)]


def _decide(
    stats: pd.DataFrame,
    prior: str,
    correct: Mapping[str, np.ndarray],
    alpha: float,
) -> tuple[list[str], Choice, str]:
    """Rank on the evidence, apply the rule against ``prior`` and write the explanation."""
    ranked, steps = _rank(stats)
    rows = {r["candidate"]: r for _, r in stats.iterrows()}
    paired = {n: paired_compare(correct[n], correct[prior]) for n in ranked if n != prior}
    notes = {n: f"{r['correct']}/{r['scored']} right" for n, r in rows.items()}
    choice = choose(ranked, prior, paired, alpha, noun="candidate", notes=notes, prior_reason=PRIOR)
    if len(ranked) == 1:
        return ranked, choice, f"Winner: {choice.name} (only candidate)."
    how = "by evidence" if choice.decided_by == "evidence" else "by the stated prior"
    lines = [
        f"Winner: {choice.name}, decided {how}.",
        f"  {choice.evidence_text}.",
        f"  Ranked by {RANKING}:",
        *(f"    {s}" for s in steps),
    ]
    return ranked, choice, "\n".join(lines)


def score_candidates(
    ids: Sequence[str],
    targets: Sequence[int],
    candidate_probs: Mapping[str, np.ndarray],
    *,
    class_names: Sequence[str] | None = None,
    notes: Sequence[object] | None = None,
    kinds: Sequence[object] | None = None,
    oof_macro_f1: Mapping[str, float] | None = None,
    members: Mapping[str, int] | None = None,
    methods: Mapping[str, str] | None = None,
    alpha: float = ALPHA,
) -> Comparison:
    """Compare candidates on hard cases and choose the winner by :data:`POLICY`.

    ``candidate_probs`` maps candidate name to N x K probabilities aligned to
    ``ids`` (its order is "the order given" of :data:`PRIOR`); ``methods``
    are the ensemble methods (``soft``, ``hard``, ...). Macro F1 is over the
    classes present among the scored truths: a hand-picked set rarely covers
    every class.
    """
    alpha = check_alpha(alpha)
    y = np.asarray(targets, dtype=np.int64)
    arrays = _check_inputs(ids, y, candidate_probs)
    names = list(arrays)
    n = len(ids)
    notes_ = [_text(v) for v in notes] if notes is not None else [""] * n
    kinds_ = [_text(v) for v in kinds] if kinds is not None else [""] * n
    if len(notes_) != n or len(kinds_) != n:
        raise DocsortError("notes and kinds must have one entry per hard case")
    label = (lambda t: str(class_names[t])) if class_names is not None else str
    scored = np.array([k != LABEL_ERROR for k in kinds_], dtype=bool)

    per_image = pd.DataFrame(
        {
            "ID": list(ids),
            "target": y,
            "truth": [label(t) for t in y],
            "kind": kinds_,
            "note": notes_,
        }
    )
    per_image["scored"] = scored
    correct = {}
    for c in names:
        pred = arrays[c].argmax(axis=1)
        correct[c] = pred == y
        per_image[f"{c}:pred"] = [label(p) for p in pred]
        per_image[f"{c}:conf"] = arrays[c].max(axis=1)
        per_image[f"{c}:ok"] = correct[c]

    present = np.unique(y[scored])
    per_candidate = pd.DataFrame(
        [
            {
                "candidate": c,
                "scored": int(scored.sum()),
                "correct": int(correct[c][scored].sum()),
                "accuracy": float(correct[c][scored].mean()) if scored.any() else float("nan"),
                "macro_f1": macro_f1(y[scored], arrays[c].argmax(axis=1)[scored], labels=present),
                "oof_macro_f1": (oof_macro_f1 or {}).get(c, float("nan")),
                "members": (members or {}).get(c, float("nan")),
            }
            for c in names
        ]
    )
    prior = prior_candidate(names, methods, members)
    ranked, choice, policy = _decide(
        per_candidate, prior, {c: correct[c][scored] for c in names}, alpha
    )
    per_candidate["rank"] = [ranked.index(c) + 1 for c in per_candidate["candidate"]]
    per_candidate = per_candidate.sort_values("rank").reset_index(drop=True)

    pairs = []
    for a, b in combinations(names, 2):
        r = paired_compare(correct[a][scored], correct[b][scored])
        pairs.append(
            {
                "a": a,
                "b": b,
                "a_wins": r.wins,
                "b_wins": r.losses,
                "both_right": r.both_right,
                "both_wrong": r.both_wrong,
                "mcnemar_p": r.p_value,
            }
        )
    pairwise = pd.DataFrame(
        pairs, columns=["a", "b", "a_wins", "b_wins", "both_right", "both_wrong", "mcnemar_p"]
    )
    return Comparison(
        candidates=names,
        per_image=per_image,
        per_candidate=per_candidate,
        pairwise=pairwise,
        winner=choice.name,
        policy=policy,
        prior=prior,
        choice=choice,
    )


# ---------------------------------------------------------------- hard cases


@stage(
    "comparison",
    inputs=("prepared", "candidates", "hardcases"),
    folder="out",
    files=("summary",),
)
def compare_candidates(
    prepared: str | os.PathLike,
    candidates: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    summary: str | os.PathLike | None = None,
    hardcases: str | os.PathLike | None = None,
    alpha: float = ALPHA,
) -> Path:
    """Score each candidate folder on the current hard cases; write the table and the winner.

    Arguments may be candidate folders (``docsort ensemble`` / ``docsort
    candidate run``) or folders holding several. The verdicts are the data
    root's hardcases.csv as it is now, or ``hardcases`` (see
    :func:`docsort.review.hardcases.current_hardcases`): a verdict added after
    ``prepare`` counts. Without any hard case on a test image nothing separates
    the candidates and the stated prior chooses, and the table says so.
    ``winner.json`` records ``decided_by`` (``evidence`` or ``prior``) and the
    ``evidence`` (the challenger's wins, losses and p against the prior).
    ``summary`` gets a copy of ``comparison.md`` (a KFP Markdown output).
    """
    from docsort.review.hardcases import current_hardcases

    alpha = check_alpha(alpha)

    prep = Prepared(Path(prepared))
    meta = read_meta(prep.root / "meta.csv")
    verdicts = current_hardcases(prep, hardcases)
    hard = verdicts.rows[verdicts.rows["ID"].isin(set(prep.test_ids))]
    cand_probs, oof, members, methods, dirs = {}, {}, {}, {}, {}
    for c in expand_candidates(candidates):
        info = json.loads((c / "candidate.json").read_text())
        name = info["name"]
        if name in cand_probs:
            raise DocsortError(f"two candidates are named {name!r}", file=str(c))
        ids, probs, _ = read_probs(c / "probs.csv", meta.num_classes)
        missing = set(prep.test_ids) - set(ids)
        if missing:
            raise DocsortError(
                f"{len(missing)} test images have no prediction (first {sorted(missing)[0]!r}); was it run on this prepared data?",
                file=str(c / "probs.csv"),
            )
        cand_probs[name] = (
            align(ids, probs, hard["ID"].tolist(), source=str(c / "probs.csv"))
            if len(hard)
            else np.zeros((0, probs.shape[1]))
        )
        oof[name] = (
            info.get("oof_macro_f1") if info.get("oof_macro_f1") is not None else float("nan")
        )
        members[name] = int(info["members"])
        methods[name] = str(info.get("method") or "")
        dirs[name] = c
    cmp = score_candidates(
        hard["ID"].tolist(), np.asarray(hard["target"], dtype=np.int64), cand_probs, class_names=meta.class_names,
        notes=hard["note"].tolist(), kinds=hard["kind"].tolist(), oof_macro_f1=oof, members=members,
        methods=methods, alpha=alpha,
    )  # fmt: skip
    out = Path(out)
    with atomic_path(out, is_dir=True) as tmp:
        cmp.per_image.to_csv(tmp / "per_image.csv", index=False)
        cmp.per_candidate.to_csv(tmp / "per_candidate.csv", index=False)
        cmp.pairwise.to_csv(tmp / "pairwise.csv", index=False)
        text = cmp.format_table()
        if hard.empty:
            text = (
                "No hard case is a test image (add some with `docsort hardcases add`): nothing separates the candidates, so the stated prior chooses.\n\n"
                + text
            )
        text = f"{verdicts.describe(len(hard))}\n\n{text}"
        (tmp / "comparison.txt").write_text(text)
        (tmp / "comparison.md").write_text(
            f"# Hard-case comparison\n\nWinner: **{cmp.winner}** (decided by {cmp.decided_by})\n\n```\n{text}\n```\n"
        )
        copy_candidate(dirs[cmp.winner], tmp / "winner")  # its spec still finds the members
        record = {
            "winner": cmp.winner,
            "policy": cmp.policy,
            "prior": cmp.prior,
            **(cmp.choice.record() if cmp.choice else {}),
            "candidates": {n: str(Path(d).resolve()) for n, d in dirs.items()},
            "hardcases": len(hard),
            "hardcases_file": verdicts.file,
            "hardcases_verdicts": len(verdicts.rows),
            "hardcases_sha256": verdicts.sha256,
        }
        (tmp / "winner.json").write_text(json.dumps(record, indent=2))
    if summary is not None:
        shutil.copyfile(out / "comparison.md", summary)
    return out


def load_comparison(folder: str | os.PathLike) -> Comparison:
    """Read a comparison folder written by :func:`compare_candidates` back (for the report)."""
    folder = Path(folder)
    for name in ("per_image.csv", "per_candidate.csv", "pairwise.csv", "winner.json"):
        if not (folder / name).is_file():
            raise DocsortError(
                f"not a hard-case comparison folder (no {name}); run `docsort hardcases compare`",
                file=str(folder),
            )
    per_image = read_table(
        folder / "per_image.csv",
        text=lambda c: c in ("note", "kind", "truth") or c.endswith((":pred", ":ok")),
    )
    per_candidate = read_table(folder / "per_candidate.csv", text=("candidate",), ids="candidate")
    pairwise = read_table(folder / "pairwise.csv", text=("a", "b"), ids=None)
    record = json.loads((folder / "winner.json").read_text())
    names = [c[: -len(":pred")] for c in per_image.columns if c.endswith(":pred")] or per_candidate[
        "candidate"
    ].tolist()
    for c in names:
        per_image[f"{c}:pred"] = per_image[f"{c}:pred"].astype(str)
        per_image[f"{c}:ok"] = per_image[f"{c}:ok"].astype(str).str.lower() == "true"
        per_image[f"{c}:conf"] = per_image[f"{c}:conf"].astype(float)
    per_image["scored"] = per_image["scored"].astype(str).str.lower() == "true"
    return Comparison(candidates=names, per_image=per_image, per_candidate=per_candidate, pairwise=pairwise,
                      winner=record["winner"], policy=record["policy"], prior=record.get("prior", ""),
                      choice=choice_from_record(record["winner"], record),
                      folders={str(k): str(v) for k, v in (record.get("candidates") or {}).items()})  # fmt: skip
