"""Print the Markdown table of bad inputs and the one-line message each one gets.

The cases are those of tests/test_bad_input.py (PREPARE_CASES, SUBMISSION_CASES,
CONFIG_CASES), run through the real CLI on copies of the tiny sample dataset, then the
scenario catalogue of tests/scenario_catalogue.py (mistakes as sequences of commands:
outputs that are inputs, re-runs under another config, concurrent submissions, faults)::

    python bench/bad_inputs.py > bad_inputs.md
    python bench/bad_inputs.py --scenarios-only --json bench/results/bad_inputs.json

The last lines give the totals: refused cleanly / accepted correctly / wrong.

Temporary paths are shown as ``<root>`` (the dataset), ``<prepared>`` and ``<work>``.
A row whose ``ok`` column is not ``yes`` did not get exit status 2 with one line
naming what the test expects.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import TINY  # noqa: E402 - after making the repo importable
from tests.scenario import run_cli  # noqa: E402
from tests.test_bad_input import (  # noqa: E402
    CONFIG_CASES,
    PREPARE_CASES,
    SUBMISSION_CASES,
    Case,
    config_argv,
    image_bytes,
    prepare_argv,
    put_image,
    submission_argv,
)


def _row(label: str, command: str, rc: int, err: str, case: Case, paths: dict[str, str]) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    msg = lines[-1] if lines else ""
    for path, alias in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        msg = msg.replace(path, alias)
    ok = (
        rc == 2
        and len(lines) == 1
        and msg.startswith("docsort: error: ")
        and all(part in lines[0] for part in case.expect)
    )
    cell = msg.replace("|", "\\|")
    return f"| {label} | `{command}` | {rc} | `{cell}` | {'yes' if ok else 'NO'} |"


def _accepted(sample: Path, work: Path) -> list[str]:
    """Inputs that must be accepted and converted, not refused."""
    from PIL import Image

    rows = []
    data = work / "bom"
    shutil.copytree(sample, data)
    for name in ("train.csv", "meta.csv", "sample_submission.csv"):
        text = (data / name).read_text(encoding="utf-8")
        (data / name).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n\r\n").encode())
    rc, _, err = run_cli(*prepare_argv(data, work / "bom-prep", Case("", ())))
    rows.append(
        f"| CSVs with a UTF-8 BOM, CRLF line ends and blank lines | `prepare` | {rc} | accepted | {'yes' if rc == 0 else 'NO'} |"
    )

    data = work / "modes"
    shutil.copytree(sample, data)
    import numpy as np

    images = [
        Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)),
        Image.new("RGBA", (64, 64), (0, 0, 0, 128)),
        Image.new("LA", (64, 64), (0, 0)),
    ]
    pal = Image.new("P", (64, 64), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    for row, im in enumerate(images, start=2):
        put_image(data, row, image_bytes(im))
    put_image(data, 5, image_bytes(pal, transparency=1))
    rc, _, err = run_cli(*prepare_argv(data, work / "modes-prep", Case("", ())))
    rows.append(
        f"| 16-bit gray, RGBA, LA and palette-with-transparency images | `prepare` | {rc} | "
        f"accepted: scaled to 8 bits, composited on white | {'yes' if rc == 0 else 'NO'} |"
    )
    return rows


def _scenario_rows(tmp: Path) -> tuple[list[str], list[dict]]:
    from tests.scenario_catalogue import run_all

    rows = [
        "",
        "| case | scenario (CLI sequence) | verdict | message or check |",
        "|---|---|---|---|",
    ]
    records = []
    for scenario, outcome in run_all(tmp / "scenarios"):
        detail = (
            " ".join(outcome.detail.split()).replace(str(tmp), "<work>").replace("|", "\\|")[:240]
        )
        rows.append(f"| {scenario.case} | {scenario.label} | {outcome.verdict} | `{detail}` |")
        records.append({"case": scenario.case, "scenario": scenario.label,
                        "verdict": outcome.verdict, "detail": detail})  # fmt: skip
    return rows, records


def _totals(verdicts: list[str]) -> str:
    n = {v: verdicts.count(v) for v in ("refused", "accepted", "wrong", "skipped")}
    return (f"\n{len(verdicts)} cases: {n['refused']} refused cleanly, {n['accepted']} accepted "
            f"correctly, {n['wrong']} wrong" + (f", {n['skipped']} skipped" if n["skipped"] else ""))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios-only", action="store_true", help="only the scenario catalogue")
    ap.add_argument("--json", type=Path, help="also write the verdicts here")
    args = ap.parse_args(argv)
    from docsort.data.prepare import prepare
    from docsort.data.sample import generate_sample_data

    with tempfile.TemporaryDirectory(prefix="docsort-bad-") as tmp:
        tmp = Path(tmp)
        if args.scenarios_only:
            rows, records = _scenario_rows(tmp)
            print("\n".join([*rows, _totals([r["verdict"] for r in records])]))
            if args.json:
                args.json.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
            return 0
        sample = generate_sample_data(tmp / "sample", per_class=6, test_per_class=2, seed=3)
        prepared = prepare(str(sample), tmp / "prepared", TINY)
        rows = ["| bad input | command | exit | message | ok |", "|---|---|---|---|---|"]
        for n, case in enumerate(PREPARE_CASES):
            work = tmp / f"p{n}"
            data = work / "data"
            shutil.copytree(sample, data)
            if case.breaks:
                case.breaks(data)
            rc, _, err = run_cli(*prepare_argv(data, work / "out" / "prepared", case))
            rows.append(
                _row(
                    case.label, "prepare", rc, err, case, {str(data): "<root>", str(work): "<work>"}
                )
            )
        for n, case in enumerate(SUBMISSION_CASES):
            work = tmp / f"s{n}"
            work.mkdir()
            rc, _, err = run_cli(*submission_argv(prepared, work, case))
            rows.append(
                _row(
                    case.label,
                    "submission",
                    rc,
                    err,
                    case,
                    {str(prepared): "<prepared>", str(work): "<work>"},
                )
            )
        for n, case in enumerate(CONFIG_CASES):
            work = tmp / f"c{n}"
            work.mkdir()
            rc, _, err = run_cli(*config_argv(sample, prepared, work, case))
            rows.append(_row(case.label, f"{case.command} {' '.join(case.overrides)}", rc, err, case,
                             {str(sample): "<root>", str(prepared): "<prepared>", str(work): "<work>"}))  # fmt: skip
        rows += _accepted(sample, tmp / "ok")
        verdicts = [
            ("accepted" if "| accepted" in r else "refused") if r.endswith("| yes |") else "wrong"
            for r in rows[2:]
        ]
        scen_rows, records = _scenario_rows(tmp)
        verdicts += [r["verdict"] for r in records]
    print("\n".join([*rows, *scen_rows, _totals(verdicts)]))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
