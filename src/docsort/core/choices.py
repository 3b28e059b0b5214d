"""The fixed vocabularies shared by config, CLI and stages, defined once.

Plain tuples and no heavy imports, so the CLI can offer them as ``choices``
without importing numpy or torch before it has checked its arguments.
"""

from __future__ import annotations

#: The 8 dihedral TTA views, in the order stored in ``oof_views.npz`` (``models.tta.VIEWS`` is built from it).
VIEW_NAMES: tuple[str, ...] = (
    "identity", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270",
)  # fmt: skip
#: How probabilities are merged, across a member's TTA views or across members.
MERGES: tuple[str, ...] = ("mean", "geomean", "logits")
#: Ensemble methods; a default candidate is named after its method.
METHODS: tuple[str, ...] = ("soft", "weighted", "hard", "stacked")
#: What ``docsort ensemble --method`` takes: a method, or ``auto`` (soft unless stacking beats it on OOF).
COMBINERS: tuple[str, ...] = ("auto", *METHODS)
#: The labelled set a report is computed on (``docsort report --on``).
REPORT_SETS: tuple[str, ...] = ("auto", "oof", "test", "hardcases")
#: What weight search and stacking optimise on OOF predictions (``docsort ensemble --objective``).
OBJECTIVES: tuple[str, ...] = ("macro_f1", "log_loss")
#: The verdict kinds of a hard case (``hardcases.csv``'s ``kind`` column).
HARDCASE_KINDS: tuple[str, ...] = ("hard", "model_error", "label_error", "ambiguous")
