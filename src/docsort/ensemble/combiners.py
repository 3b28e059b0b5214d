"""Ensembles of class-probability tables, and the saved candidate spec that names one.

Every function works on in-memory arrays (one N x K probability matrix per
member, rows aligned to the same IDs); reading and writing the tables is the
stages' job (:mod:`docsort.core.probs`).

Why each piece exists:

* soft voting (mean of probabilities) kept the confidence that hard voting
  throws away, and was the seed's decisive move; weighted soft voting lets a
  stronger member count more;
* weights fitted on OOF predictions overfit those predictions, so
  :func:`nested_cv_weights` reports them on folds they were not fitted on,
  next to equal weights: the user sees whether weighting pays out of sample;
* stacking learns a logistic-regression meta-model on the members' OOF
  log-probabilities; it is stored as plain coefficients (no pickle) in the spec;
* a :class:`CandidateSpec` is the named, re-runnable recipe ("candidate 1814"):
  members, their model folders and TTA views, method, weights, temperatures.
"""

from __future__ import annotations

import os
import posixpath
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from docsort.core import storage
from docsort.core.atomic import write_text_atomic
from docsort.core.choices import MERGES, METHODS, OBJECTIVES, VIEW_NAMES
from docsort.core.errors import ConfigError, DocsortError
from docsort.core.stats import EPS, fast_macro_f1, log_loss
from docsort.ensemble.calibration import apply_temperature, fit_temperature

# A hard-vote winner is marked by moving this much mass onto it, so argmax of
# the returned vote shares is the tie-broken prediction.
_TIE_NUDGE = 1e-6


# ---------------------------------------------------------------- input checks


def check_member_probs(member_probs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Members as float arrays of one shape N x K with finite, non-negative entries."""
    if len(member_probs) == 0:
        raise DocsortError("an ensemble needs at least one member")
    arrays = [np.asarray(p, dtype=np.float64) for p in member_probs]
    shape = arrays[0].shape
    for i, p in enumerate(arrays):
        if p.ndim != 2 or p.shape != shape:
            raise DocsortError(f"member {i} probabilities have shape {p.shape}, expected {shape}")
        if not np.all(np.isfinite(p)) or (p < 0).any():
            raise DocsortError(f"member {i} probabilities must be finite and non-negative")
    return arrays


def check_choice(value: str, valid: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``valid``, else a ConfigError that lists the valid choices."""
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return value


def normalize_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """Weights as a length-``n`` vector on the simplex (``None`` = equal weights)."""
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ConfigError(f"{len(w)} weights for {n} members")
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ConfigError("weights must be finite, non-negative and not all zero")
    return w / w.sum()


# ---------------------------------------------------------------- merging


def merge_probs(
    member_probs: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    merge: str = "mean",
) -> np.ndarray:
    """Weighted merge of probability matrices (members or TTA views).

    ``mean`` is (weighted) soft voting. ``geomean`` multiplies probabilities,
    so one confident "no" vetoes a class. ``logits`` averages log-probabilities
    and applies softmax; with only probabilities at hand that equals the
    renormalized geometric mean (softmax ignores the per-row constant), and the
    name is kept so specs read the same as the TTA module's options.
    """
    check_choice(merge, MERGES, "merge")
    arrays = check_member_probs(member_probs)
    w = normalize_weights(weights, len(arrays))
    if merge == "mean":
        # No renormalization: the weighted mean of probability rows is one already,
        # and one-hot weights must give back that member exactly.
        return sum(wi * p for wi, p in zip(w, arrays, strict=True))
    logp = sum(wi * np.log(np.clip(p, EPS, 1.0)) for wi, p in zip(w, arrays, strict=True))
    logp = logp - logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def hard_vote(
    member_probs: Sequence[np.ndarray], weights: Sequence[float] | None = None
) -> np.ndarray:
    """Majority vote of the members' top-1 classes, as vote shares (rows sum to 1).

    Each member gives its weight to its argmax class. Classes tied on votes are
    separated by their summed (weighted) probability; the winner gets a tiny
    extra share so ``argmax`` of the result is the tie-broken prediction.
    """
    arrays = check_member_probs(member_probs)
    w = normalize_weights(weights, len(arrays))
    n, k = arrays[0].shape
    rows = np.arange(n)
    votes = np.zeros((n, k))
    for wi, p in zip(w, arrays, strict=True):
        votes[rows, p.argmax(axis=1)] += wi
    summed = sum(wi * p for wi, p in zip(w, arrays, strict=True))
    tied = votes >= votes.max(axis=1, keepdims=True) - 1e-9
    pred = np.where(tied, summed, -np.inf).argmax(axis=1)
    out = votes * (1.0 - _TIE_NUDGE)
    out[rows, pred] += _TIE_NUDGE
    return out


# ---------------------------------------------------------------- objectives


def score(probs: np.ndarray, targets: np.ndarray, objective: str) -> float:
    """The objective in its own units: macro F1 (higher is better) or log loss (lower)."""
    check_choice(objective, OBJECTIVES, "objective")
    if objective == "macro_f1":
        return fast_macro_f1(targets, probs.argmax(axis=1), probs.shape[1])
    return log_loss(targets, probs)


def _gain(value: float, objective: str) -> float:
    """Higher-is-better version of an objective value."""
    return value if objective == "macro_f1" else -value


# ---------------------------------------------------------------- weight search


@dataclass(frozen=True)
class WeightSearch:
    """Fitted weights, their objective value and that of equal weights on the same rows."""

    weights: np.ndarray
    score: float
    equal_score: float
    objective: str

    @property
    def improved(self) -> bool:
        return _gain(self.score, self.objective) > _gain(self.equal_score, self.objective)


def _coordinate_ascent(
    evaluate: Callable[[np.ndarray], float], n: int, grid: np.ndarray, max_rounds: int
) -> tuple[np.ndarray, float]:
    """Move one weight at a time over ``grid`` (others rescaled), keep strict improvements.

    Macro F1 is piecewise constant in the weights, so gradients are useless; a
    coordinate search from equal weights is simple, monotone and fast for the
    handful of members an ensemble has.
    """
    w = np.full(n, 1.0 / n)
    best = evaluate(w)
    for _ in range(max_rounds):
        moved = False
        for i in range(n):
            rest = np.delete(w, i)
            for v in grid:
                cand_rest = (
                    rest / rest.sum() * (1 - v)
                    if rest.sum() > 0
                    else np.full(n - 1, (1 - v) / (n - 1))
                )
                cand = np.insert(cand_rest, i, v)
                g = evaluate(cand)
                if g > best + 1e-12:
                    w, best, moved = cand, g, True
                    rest = np.delete(w, i)
        if not moved:
            break
    return w, best


def search_weights(
    member_probs: Sequence[np.ndarray],
    targets: Sequence[int],
    *,
    objective: str = "macro_f1",
    merge: str = "mean",
    grid_step: float = 0.05,
    max_rounds: int = 10,
) -> WeightSearch:
    """Member weights that optimize ``objective`` on OOF probabilities.

    Starts from equal weights and only accepts improvements, so the result is
    never worse on these rows than equal weights (checked again at the end).
    Macro F1 uses coordinate ascent over a grid on the simplex; log loss is
    smooth, so it is minimized with L-BFGS over softmax-parametrized weights.
    """
    check_choice(objective, OBJECTIVES, "objective")
    check_choice(merge, MERGES, "merge")
    arrays = check_member_probs(member_probs)
    y = np.asarray(targets, dtype=np.int64)
    n = len(arrays)
    equal = np.full(n, 1.0 / n)

    def gain(w: np.ndarray) -> float:
        return _gain(score(merge_probs(arrays, w, merge), y, objective), objective)

    equal_gain = gain(equal)
    if n == 1:
        w = equal
    elif objective == "macro_f1":
        grid = np.round(np.arange(0.0, 1.0 + grid_step / 2, grid_step), 10)
        w, _ = _coordinate_ascent(gain, n, grid, max_rounds)
    else:

        def loss(theta: np.ndarray) -> float:
            e = np.exp(theta - theta.max())
            return -gain(e / e.sum())

        res = minimize(loss, np.zeros(n), method="L-BFGS-B")
        e = np.exp(res.x - res.x.max())
        w = e / e.sum()
    if gain(w) < equal_gain:
        w = equal
    return WeightSearch(
        weights=w,
        score=_gain(gain(w), objective),
        equal_score=_gain(equal_gain, objective),
        objective=objective,
    )


def _outer_folds(
    targets: np.ndarray, folds: Sequence[int] | None, n_splits: int, seed: int
) -> np.ndarray:
    """One fold id per row: the given ones (an OOF table's ``fold`` column) or stratified K-fold."""
    if folds is not None:
        f = np.asarray(folds)
        if f.shape != targets.shape:
            raise DocsortError(f"{len(f)} fold ids for {len(targets)} rows")
        return f
    out = np.zeros(len(targets), dtype=np.int64)
    skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(skf.split(np.zeros(len(targets)), targets)):
        out[test] = k
    return out


@dataclass(frozen=True)
class NestedCV:
    """Weights fitted on the other folds, scored on each held-out fold, next to equal weights.

    ``pooled_*`` score all rows at once, each predicted by weights that never
    saw it: with small folds that is steadier than the mean of fold scores.
    """

    objective: str
    table: pd.DataFrame
    pooled_weighted: float
    pooled_equal: float

    @property
    def weighted_beats_equal(self) -> bool:
        return _gain(self.pooled_weighted, self.objective) > _gain(
            self.pooled_equal, self.objective
        )


def nested_cv_weights(
    member_probs: Sequence[np.ndarray],
    targets: Sequence[int],
    *,
    folds: Sequence[int] | None = None,
    n_splits: int = 5,
    objective: str = "macro_f1",
    merge: str = "mean",
    seed: int = 0,
) -> NestedCV:
    """Out-of-sample check of :func:`search_weights` (outer loop of a nested CV).

    For each outer fold the weights are searched on the remaining rows only and
    scored on the fold; equal weights are scored on the same fold.
    """
    arrays = check_member_probs(member_probs)
    y = np.asarray(targets, dtype=np.int64)
    fold_ids = _outer_folds(y, folds, n_splits, seed)
    weighted = np.zeros_like(arrays[0])
    rows = []
    for f in np.unique(fold_ids):
        test = fold_ids == f
        fit = search_weights([p[~test] for p in arrays], y[~test], objective=objective, merge=merge)
        held = [p[test] for p in arrays]
        weighted[test] = merge_probs(held, fit.weights, merge)
        rows.append(
            {
                "fold": f,
                "n": int(test.sum()),
                "weights": [round(float(x), 4) for x in fit.weights],
                "weighted": score(weighted[test], y[test], objective),
                "equal": score(merge_probs(held, None, merge), y[test], objective),
            }
        )
    return NestedCV(
        objective=objective,
        table=pd.DataFrame(rows),
        pooled_weighted=score(weighted, y, objective),
        pooled_equal=score(merge_probs(arrays, None, merge), y, objective),
    )


# ---------------------------------------------------------------- stacking


def stack_features(member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """Members' log-probabilities side by side (clipped at 1e-6 so no feature explodes)."""
    arrays = check_member_probs(member_probs)
    return np.concatenate([np.log(np.clip(p, 1e-6, 1.0)) for p in arrays], axis=1)


@dataclass(frozen=True)
class Stacker:
    """A fitted multinomial logistic-regression meta-model, stored as plain numbers."""

    coef: np.ndarray  # (K_seen, M*K), or (1, M*K) for two classes
    intercept: np.ndarray
    classes: tuple[int, ...]
    num_classes: int

    def predict_proba(self, member_probs: Sequence[np.ndarray]) -> np.ndarray:
        """N x K probabilities; classes unseen in training get probability 0."""
        x = stack_features(member_probs)
        if x.shape[1] != self.coef.shape[1]:
            raise DocsortError(
                f"stacker expects {self.coef.shape[1]} features, members give {x.shape[1]}"
            )
        z = x @ self.coef.T + self.intercept
        if len(self.classes) == 2:
            p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
            seen = np.stack([1.0 - p1, p1], axis=1)
        else:
            z = z - z.max(axis=1, keepdims=True)
            seen = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        out = np.zeros((x.shape[0], self.num_classes))
        out[:, list(self.classes)] = seen
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "classes": [int(c) for c in self.classes],
            "intercept": [float(v) for v in self.intercept],
            "coef": [[float(v) for v in row] for row in self.coef],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Stacker:
        try:
            coef = np.asarray(d["coef"], dtype=np.float64)
            intercept = np.asarray(d["intercept"], dtype=np.float64)
            classes = tuple(int(c) for c in d["classes"])
            num_classes = int(d["num_classes"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"stacker needs num_classes, classes, intercept, coef ({e})"
            ) from None
        rows = 1 if len(classes) == 2 else len(classes)
        if coef.ndim != 2 or coef.shape[0] != rows or intercept.shape != (rows,):
            raise ConfigError("stacker coef/intercept shapes do not match its classes")
        if any(c < 0 or c >= num_classes for c in classes):
            raise ConfigError("stacker classes must lie in 0..num_classes-1")
        return cls(coef=coef, intercept=intercept, classes=classes, num_classes=num_classes)


def fit_stacker(
    member_probs: Sequence[np.ndarray],
    targets: Sequence[int],
    *,
    num_classes: int | None = None,
    c: float = 1.0,
) -> Stacker:
    """Fit the meta-model on OOF member probabilities (L2-regularized, strength ``1/c``)."""
    x = stack_features(member_probs)
    y = np.asarray(targets, dtype=np.int64)
    k = num_classes or np.asarray(member_probs[0]).shape[1]
    if len(np.unique(y)) < 2:
        raise DocsortError("stacking needs at least two classes in the training rows")
    model = LogisticRegression(C=c, max_iter=2000)
    with warnings.catch_warnings():
        # Small OOF sets (a few rows per class) make sklearn guess "regression?"; the targets are classes.
        warnings.filterwarnings(
            "ignore", message="The number of unique classes is greater than 50%"
        )
        model.fit(x, y)
    return Stacker(
        coef=model.coef_.copy(),
        intercept=model.intercept_.copy(),
        classes=tuple(int(v) for v in model.classes_),
        num_classes=k,
    )


@dataclass(frozen=True)
class StackingCV:
    """Cross-validated stacking: every row predicted by a meta-model that did not see it."""

    oof_probs: np.ndarray
    macro_f1: float
    log_loss: float


def stacking_cv(
    member_probs: Sequence[np.ndarray],
    targets: Sequence[int],
    *,
    folds: Sequence[int] | None = None,
    n_splits: int = 5,
    c: float = 1.0,
    seed: int = 0,
) -> StackingCV:
    """Honest estimate of the stacked ensemble, comparable with :class:`NestedCV`'s pooled scores."""
    arrays = check_member_probs(member_probs)
    y = np.asarray(targets, dtype=np.int64)
    k = arrays[0].shape[1]
    fold_ids = _outer_folds(y, folds, n_splits, seed)
    out = np.zeros_like(arrays[0])
    for f in np.unique(fold_ids):
        test = fold_ids == f
        model = fit_stacker([p[~test] for p in arrays], y[~test], num_classes=k, c=c)
        out[test] = model.predict_proba([p[test] for p in arrays])
    return StackingCV(
        oof_probs=out,
        macro_f1=score(out, y, "macro_f1"),
        log_loss=score(out, y, "log_loss"),
    )


# ---------------------------------------------------------------- candidate spec

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ConfigError(
            f"{what} {value!r} must be 1-100 letters, digits, '.', '_' or '-' (starting with a letter or digit)"
        )
    return value


def _check_views(views: Any, what: str) -> list[str]:
    if not isinstance(views, list) or not views:
        raise ConfigError(
            f"{what} must be a non-empty list of views; valid: {', '.join(VIEW_NAMES)}"
        )
    for v in views:
        check_choice(v, VIEW_NAMES, "TTA view")
    if len(set(views)) != len(views):
        raise ConfigError(f"{what} lists a view twice: {views}")
    return list(views)


def _check_keys(d: Any, cls: type, what: str) -> dict:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(d).__name__}")
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ConfigError(f"{what} has unknown keys {unknown}; valid: {', '.join(valid)}")
    return dict(d)


@dataclass
class MemberSpec:
    """One ensemble member: a trained model and, optionally, its own TTA views."""

    name: str
    model: str  # a model folder or fold bundle: a path or an s3:// URI (in a file: relative to it)
    views: list[str] | None = None


@dataclass
class CandidateSpec:
    """A named, re-runnable ensemble recipe (saved as YAML).

    ``tta_views`` apply to members without their own ``views``; ``tta_merge``
    merges a member's views, ``merge`` merges the members (soft/weighted).
    ``temperatures`` (one per member) are applied before any method.
    ``objective`` is what the weights were searched for; ``oof_macro_f1``
    records the honest (cross-fitted) OOF score at fit time, so a re-run
    candidate keeps its place in the winner policy's tie-break.
    """

    name: str
    members: list[MemberSpec]
    method: str = "soft"
    merge: str = "mean"
    weights: list[float] | None = None
    temperatures: list[float] | None = None
    tta_views: list[str] = field(default_factory=lambda: ["identity"])
    tta_merge: str = "mean"
    stacker: dict[str, Any] | None = None
    description: str = ""
    objective: str = "macro_f1"
    oof_macro_f1: float | None = None

    def views_of(self, member: int) -> list[str]:
        """TTA views used for member number ``member``."""
        return self.members[member].views or self.tta_views

    def validate(self) -> CandidateSpec:
        """Raise :class:`ConfigError` naming the problem and the valid choices."""
        _check_name(self.name, "candidate name")
        check_choice(self.method, METHODS, "method")
        check_choice(self.merge, MERGES, "merge")
        check_choice(self.tta_merge, MERGES, "tta_merge")
        check_choice(self.objective, OBJECTIVES, "objective")
        _check_views(self.tta_views, "tta_views")
        if not self.members:
            raise ConfigError(f"candidate {self.name!r} has no members")
        for m in self.members:
            if (
                not isinstance(m.name, str)
                or not m.name.isprintable()
                or not 0 < len(m.name) <= 200
            ):
                raise ConfigError(f"member name {m.name!r} must be 1-200 printable characters")
            if not isinstance(m.model, str) or not m.model:
                raise ConfigError(f"member {m.name!r} needs a model folder path or URI")
            if m.views is not None:
                _check_views(m.views, f"member {m.name!r} views")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ConfigError(f"member names must be unique: {names}")
        n = len(self.members)
        if self.method == "weighted" and self.weights is None:
            raise ConfigError("method 'weighted' needs weights (fit them with search_weights)")
        if self.method in ("soft", "stacked") and self.weights is not None:
            raise ConfigError(f"method {self.method!r} takes no weights; use method 'weighted'")
        if self.weights is not None:
            normalize_weights(self.weights, n)
        if self.temperatures is not None:
            t = np.asarray(self.temperatures, dtype=np.float64)
            if t.shape != (n,) or not np.all(np.isfinite(t)) or (t <= 0).any():
                raise ConfigError(f"temperatures must be {n} positive numbers, one per member")
        if self.method == "stacked":
            if self.stacker is None:
                raise ConfigError("method 'stacked' needs a fitted stacker (fit_candidate does it)")
            Stacker.from_dict(self.stacker)
        elif self.stacker is not None:
            raise ConfigError(f"method {self.method!r} takes no stacker")
        if self.oof_macro_f1 is not None and not 0.0 <= float(self.oof_macro_f1) <= 1.0:
            raise ConfigError(f"oof_macro_f1={self.oof_macro_f1} must lie in 0..1")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["members"] = [{k: v for k, v in m.items() if v is not None} for m in d["members"]]
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: Any) -> CandidateSpec:
        d = _check_keys(d, cls, "candidate spec")
        for required in ("name", "members"):
            if required not in d:
                raise ConfigError(f"candidate spec needs {required!r}")
        if not isinstance(d["members"], list):
            raise ConfigError("candidate spec 'members' must be a list")
        members = []
        for i, m in enumerate(d["members"]):
            if isinstance(m, Mapping) and "checkpoint" in m and "model" not in m:
                m = {("model" if k == "checkpoint" else k): v for k, v in m.items()}  # an old spec
            m = _check_keys(m, MemberSpec, f"member {i}")
            if "name" not in m or "model" not in m:
                raise ConfigError(f"member {i} needs 'name' and 'model'")
            members.append(MemberSpec(**m))
        d["members"] = members
        for key in ("weights", "temperatures"):
            if d.get(key) is not None:
                try:
                    d[key] = [float(v) for v in d[key]]
                except (TypeError, ValueError):
                    raise ConfigError(f"{key} must be a list of numbers") from None
        if d.get("oof_macro_f1") is not None:
            try:
                d["oof_macro_f1"] = float(d["oof_macro_f1"])
            except (TypeError, ValueError):
                raise ConfigError("oof_macro_f1 must be a number") from None
        return cls(**d).validate()


def spec_folder(spec: str | os.PathLike) -> str:
    """The folder (or ``s3://`` prefix) a spec file's relative member paths start from."""
    if storage.is_s3(spec):
        return str(spec).rsplit("/", 1)[0]
    return str(Path(spec).parent)


def member_path(model: str, base: str | os.PathLike) -> str:
    """A member's model as a usable path: relative ones (as spec files store them) joined to ``base``.

    Absolute paths and URIs (specs written before paths were relative, uploaded
    specs) are kept as they are.
    """
    if storage.is_s3(model) or os.path.isabs(model) or model == "-":
        return model
    if storage.is_s3(base):
        bucket, key = storage.split(str(base))
        joined = posixpath.normpath(posixpath.join("/", key, model)).lstrip("/")
        return f"s3://{bucket}/{joined}"
    return os.path.normpath(os.path.join(Path(base).resolve(), model))


def save_spec(spec: CandidateSpec, path: str | os.PathLike) -> Path:
    """Validate and write the spec as YAML (atomically).

    Local member paths are written relative to the spec's folder, so a
    candidate moved or copied together with its models (a run folder, an
    upload of the whole tree) still finds them; URIs stay as they are.
    """
    spec.validate()
    d = spec.to_dict()
    folder = Path(path).parent.resolve()
    for m in d["members"]:
        if not storage.is_s3(m["model"]):
            m["model"] = Path(os.path.relpath(Path(m["model"]).resolve(), folder)).as_posix()
    text = yaml.safe_dump(d, sort_keys=False, default_flow_style=None, width=100)
    return write_text_atomic(path, text)


def load_spec(path: str | os.PathLike, *, base: str | os.PathLike | None = None) -> CandidateSpec:
    """Read a spec YAML with ``yaml.safe_load`` and validate it; problems name the file.

    Relative member paths are taken from ``base`` (default: the spec's folder;
    the ``s3://`` prefix of a spec fetched to a local copy), so the returned
    spec names usable paths. A member's ``checkpoint:`` key (specs written
    before it was ``model:``) reads as ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("candidate spec not found", file=str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = CandidateSpec.from_dict(data)
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML ({e.__class__.__name__})", file=str(path)) from None
    except ConfigError as e:
        raise ConfigError(str(e), file=str(path)) from None
    start = spec_folder(path) if base is None else base
    for m in spec.members:
        m.model = member_path(m.model, start)
    return spec


# ---------------------------------------------------------------- applying a spec


def combine(spec: CandidateSpec, member_probs: Sequence[np.ndarray]) -> np.ndarray:
    """Apply a candidate spec to its members' probabilities (already TTA-merged), N x K."""
    spec.validate()
    arrays = check_member_probs(member_probs)
    if len(arrays) != len(spec.members):
        raise DocsortError(
            f"candidate {spec.name!r} has {len(spec.members)} members, got {len(arrays)} tables"
        )
    if spec.temperatures is not None:
        arrays = [apply_temperature(p, t) for p, t in zip(arrays, spec.temperatures, strict=True)]
    if spec.method == "soft":
        return merge_probs(arrays, None, spec.merge)
    if spec.method == "weighted":
        return merge_probs(arrays, spec.weights, spec.merge)
    if spec.method == "hard":
        return hard_vote(arrays, spec.weights)
    stacker = Stacker.from_dict(spec.stacker)
    if stacker.num_classes != arrays[0].shape[1]:
        raise DocsortError(
            f"stacker was fitted for {stacker.num_classes} classes, tables have {arrays[0].shape[1]}"
        )
    return stacker.predict_proba(arrays)


def fit_candidate(
    name: str,
    members: Sequence[MemberSpec],
    oof_probs: Sequence[np.ndarray],
    targets: Sequence[int],
    *,
    method: str = "soft",
    merge: str = "mean",
    objective: str = "macro_f1",
    calibrate: bool = False,
    tta_views: Sequence[str] = ("identity",),
    tta_merge: str = "mean",
    description: str = "",
) -> CandidateSpec:
    """Build a spec from OOF probabilities: temperatures (optional), then weights or stacker.

    ``oof_probs`` must come from the same TTA views the spec names, so what is
    fitted matches what :func:`combine` will see at prediction time.
    """
    check_choice(method, METHODS, "method")
    arrays = check_member_probs(oof_probs)
    y = np.asarray(targets, dtype=np.int64)
    temps = None
    if calibrate:
        temps = [fit_temperature(p, y) for p in arrays]
        arrays = [apply_temperature(p, t) for p, t in zip(arrays, temps, strict=True)]
    weights = stacker = None
    if method == "weighted":
        weights = [
            float(w) for w in search_weights(arrays, y, objective=objective, merge=merge).weights
        ]
    elif method == "stacked":
        stacker = fit_stacker(arrays, y, num_classes=arrays[0].shape[1]).to_dict()
    return CandidateSpec(
        name=name,
        members=list(members),
        method=method,
        merge=merge,
        weights=weights,
        temperatures=temps,
        tta_views=list(tta_views),
        tta_merge=tta_merge,
        stacker=stacker,
        description=description,
        objective=objective,
    ).validate()


def cross_fit_oof(
    oof_probs: Sequence[np.ndarray],
    targets: Sequence[int],
    *,
    method: str = "soft",
    merge: str = "mean",
    objective: str = "macro_f1",
    calibrate: bool = False,
    folds: Sequence[int] | None = None,
    n_splits: int = 5,
    seed: int = 0,
) -> np.ndarray:
    """OOF probabilities of a *fitted* candidate, each row from a fit that did not see it.

    Scoring weighted or stacked candidates on the rows their weights were fitted
    on flatters them against plain soft voting; this is the number to put next
    to other candidates' OOF scores (and into the hard-case policy's tie-break).
    """
    arrays = check_member_probs(oof_probs)
    y = np.asarray(targets, dtype=np.int64)
    fold_ids = _outer_folds(y, folds, n_splits, seed)
    members = [MemberSpec(name=f"m{i}", model="-") for i in range(len(arrays))]
    out = np.zeros_like(arrays[0])
    for f in np.unique(fold_ids):
        test = fold_ids == f
        spec = fit_candidate(
            "cross-fit",
            members,
            [p[~test] for p in arrays],
            y[~test],
            method=method,
            merge=merge,
            objective=objective,
            calibrate=calibrate,
        )
        out[test] = combine(spec, [p[test] for p in arrays])
    return out


# ---------------------------------------------------------------- comparing methods


def cv_folds(targets: Sequence[int]) -> np.ndarray:
    """Outer folds for honest scores of fitted combiners: stratified within the OOF rows.

    Not the training folds: each training fold's OOF rows come from a different
    fold model, so a combiner fitted on the other folds would always be applied
    to the outputs of a model it never saw. On two 2-fold bundles of RVL-CDIP
    pages that scored stacking 0.16 on OOF against 0.38 with stratified folds,
    while stacking was the best candidate on the test set (0.41). Every row is
    still scored by a combiner fitted without it.
    """
    y = np.asarray(targets, dtype=np.int64)
    smallest = int(np.bincount(y)[np.bincount(y) > 0].min()) if len(y) else 0
    return _outer_folds(y, None, max(2, min(5, smallest)), 0)


@dataclass(frozen=True)
class MethodReport:
    """Single members vs soft / weighted / stacked / hard voting on the same OOF rows.

    ``table`` scores are honest: every row is predicted by a combiner fitted
    without it (equal-weight methods fit nothing). ``fit_macro_f1`` is the
    in-sample score of a fitted method: the gap to ``macro_f1`` is its overfit.
    ``*_cal`` columns repeat the scores with per-member temperature scaling.
    """

    table: pd.DataFrame
    calibration: pd.DataFrame
    nested: NestedCV | None


@dataclass(frozen=True)
class CombinerChoice:
    """What ``method=auto`` chose, the members' shared OOF scores it chose on, and the evidence."""

    method: str
    oof_scores: dict[str, float]
    record: dict
    text: str


def choose_combiner(
    oof_probs: Sequence[np.ndarray],
    targets: Sequence[int],
    *,
    merge: str = "mean",
    objective: str = "macro_f1",
) -> CombinerChoice:
    """Soft voting, unless stacking beats it on the members' shared OOF rows (``method=auto``).

    Both are cross-fitted on the same outer folds, so stacking is scored by fits
    that never saw the row. Soft is the prior (it fits nothing, so it cannot
    overfit a small OOF set); stacking replaces it only by the evidence rule of
    :mod:`docsort.core.evidence`. Measured on two datasets' fold bundles
    (``bench/results/ensembles_*.json``) stacking won every OOF and test column.
    """
    from docsort.core.evidence import choose
    from docsort.core.stats import paired_compare

    arrays = check_member_probs(oof_probs)
    y = np.asarray(targets, dtype=np.int64)
    f = cv_folds(y)
    probs = {m: cross_fit_oof(arrays, y, method=m, merge=merge, objective=objective, folds=f)
             for m in ("soft", "stacked")}  # fmt: skip
    oof = {m: score(p, y, objective) for m, p in probs.items()}
    better = (lambda m: -oof[m]) if objective == "macro_f1" else (lambda m: oof[m])
    ranked = sorted(oof, key=better)  # stable: soft first on a tie
    right = {m: p.argmax(1) == y for m, p in probs.items()}
    c = choose(ranked, "soft", {"stacked": paired_compare(right["stacked"], right["soft"])},
               noun="combiner", notes={m: f"OOF {objective} {v:.4f}" for m, v in oof.items()},
               prior_reason="soft voting fits nothing")  # fmt: skip
    return CombinerChoice(
        c.name, oof, {"requested": "auto", "chosen": c.name, **c.record()}, c.evidence_text
    )


def evaluate_methods(
    names: Sequence[str],
    oof_probs: Sequence[np.ndarray],
    targets: Sequence[int],
    *,
    objective: str = "macro_f1",
    merge: str = "mean",
) -> MethodReport:
    """Score every member alone and every ensemble method on shared OOF rows."""
    from docsort.ensemble.calibration import calibrate_members, ece

    arrays = check_member_probs(oof_probs)
    y = np.asarray(targets, dtype=np.int64)
    f = cv_folds(y)
    rows = []

    def add(
        label: str, method: str, members: int, probs: np.ndarray, cal: np.ndarray, fit: float | None
    ) -> None:
        # Vote shares are not probabilities: their log loss and calibration would mislead.
        prob = (lambda f: f) if method != "hard" else (lambda f: float("nan"))
        rows.append(
            {
                "candidate": label,
                "method": method,
                "members": members,
                "macro_f1": score(probs, y, "macro_f1"),
                "accuracy": float(np.mean(probs.argmax(1) == y)),
                "log_loss": prob(log_loss(y, probs)),
                "ece": prob(ece(probs, y)),
                "macro_f1_cal": score(cal, y, "macro_f1"),
                "log_loss_cal": prob(log_loss(y, cal)),
                "ece_cal": prob(ece(cal, y)),
                "fit_macro_f1": float("nan") if fit is None else fit,
            }
        )

    for name, p in zip(names, arrays, strict=True):
        add(name, "single", 1, p, cross_fit_oof([p], y, calibrate=True, folds=f), None)
    nested = None
    if len(arrays) > 1:
        methods = ["soft", "weighted", "stacked", "hard"]
        for method in methods:
            kw = dict(method=method, merge=merge, objective=objective, folds=f)
            honest = cross_fit_oof(arrays, y, **kw)
            cal = cross_fit_oof(arrays, y, calibrate=True, **kw)
            fit = None
            if method in ("weighted", "stacked"):
                members = [MemberSpec(name=f"m{i}", model="-") for i in range(len(arrays))]
                spec = fit_candidate(
                    "fit", members, arrays, y, method=method, merge=merge, objective=objective
                )
                fit = score(combine(spec, arrays), y, "macro_f1")
            add(method, method, len(arrays), honest, cal, fit)
        nested = nested_cv_weights(arrays, y, folds=f, objective=objective, merge=merge)
    cal = calibrate_members(list(names), arrays, y)
    calibration = pd.DataFrame([asdict(c) for c in cal]).rename(columns={"name": "member"})
    return MethodReport(table=pd.DataFrame(rows), calibration=calibration, nested=nested)
