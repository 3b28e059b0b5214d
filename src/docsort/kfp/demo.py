"""``docsort demo``: the whole job on generated sample data, locally, in minutes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from docsort.core import console
from docsort.core.csv_tables import read_table
from docsort.core.errors import DocsortError
from docsort.kfp.runner import load_pipeline, packaged_pipeline, parse_params, run_local


def _newest(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise DocsortError(f"the demo run left no {pattern}", file=str(root))
    return found[-1]


def _winner(comparison: Path) -> str:
    """The chosen candidate and how it was chosen (by evidence or by the stated prior)."""
    import json

    record = json.loads((comparison / "winner.json").read_text())
    how = record.get("decided_by")
    return f"{record['winner']}" + (f" (chosen by {how})" if how else "")


def run_demo(out: str, *, per_class: int = 40, params: Sequence[str] = ()) -> dict:
    """Run ``pipelines/demo.py`` locally and print the submission, hard-case table and macro F1."""
    from docsort.core.stats import macro_f1

    path = packaged_pipeline("demo")
    values = {"per_class": per_class, **parse_params(params, load_pipeline(path))}
    t0 = time.time()
    output = run_local(path, out, values)
    wall = time.time() - t0
    run_dir = Path(output.path).parent.parent
    sub_csv = _newest(Path(output.path), "submissions/*.csv")
    prepared = _newest(run_dir, "*/prepared/prepared.json").parent
    comparison = _newest(run_dir, "*/comparison/comparison.txt")
    labels = read_table(prepared / "test_labels.csv").set_index("ID")["target"]
    sub = read_table(sub_csv, required=("target",))
    f1 = macro_f1(labels.loc[sub["ID"]].to_numpy(), sub["target"].to_numpy())
    winner = _winner(comparison.parent)
    # the pairwise McNemar table stays in the file; the winner block quotes the pair that decided
    blocks = comparison.read_text().rstrip().split("\n\n")
    shown = [b for b in blocks if not b.startswith("Pairs")]
    print("\nHard-case comparison\n")
    print("\n\n".join(shown))
    if len(shown) < len(blocks):
        print(f"\n(every pair of candidates: {comparison})")
    console.summary(
        "docsort demo: done",
        [
            ("submission", sub_csv),
            ("macro F1", f"{f1:.4f} on the {len(sub)} sample test images (chance ~ {1 / 17:.3f})"),
            ("candidate", winner),
            ("artifacts", run_dir),
            ("full log", Path(out).resolve() / console.LOG_NAME),
            ("wall time", console.fmt_seconds(wall)),
        ],
    )
    return {"macro_f1": f1, "submission": str(sub_csv), "wall_s": wall}
