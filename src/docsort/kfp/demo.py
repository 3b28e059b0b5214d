"""``docsort demo``: the whole job on generated sample data, locally, in minutes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from docsort.core.csv_tables import read_table
from docsort.core.errors import DocsortError
from docsort.kfp.runner import load_pipeline, packaged_pipeline, parse_params, run_local


def _newest(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise DocsortError(f"the demo run left no {pattern}", file=str(root))
    return found[-1]


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
    print("\n" + "=" * 72)
    print("Hard-case comparison\n")
    print(comparison.read_text())
    print(f"\nsubmission:  {sub_csv}")
    print(
        f"macro F1 on the sample test labels: {f1:.4f}  ({len(sub)} test images, chance ~ {1 / 17:.3f})"
    )
    print(f"wall time: {wall:.0f} s; artifacts under {run_dir}")
    return {"macro_f1": f1, "submission": str(sub_csv), "wall_s": wall}
