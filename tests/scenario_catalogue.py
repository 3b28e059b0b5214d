"""The catalogue of user mistakes and faults: each one a sequence of CLI commands, with a verdict.

Every scenario is what a user types, in order, on the tiny sample data. Its verdict is
``refused`` (exit 2, one ``docsort: error:`` line naming ``expect``, the user's files
byte-identical, no temporary names left), ``accepted`` (exit 0 and the result is right)
or ``wrong`` (anything else). ``tests/test_scenario_catalogue.py`` requires no ``wrong``;
``bench/bad_inputs.py`` prints the table with its totals.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tests.conftest import TINY, TINY_TRAIN
from tests.scenario import run_cli, snapshot


@dataclass
class Outcome:
    verdict: str  # refused | accepted | wrong
    detail: str  # the one-line message, or what was checked / went wrong


class Workspace:
    """Shared inputs made once through the CLI: sample data, prepared folder, a member, a candidate."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._n = 0

    def fresh(self, name: str) -> Path:
        self._n += 1
        path = self.root / f"w{self._n:02d}-{name}"
        path.mkdir(parents=True)
        return path

    def _once(self, name: str, make: Callable[[Path], None]) -> Path:
        path = self.root / "shared" / name
        if not path.exists():
            make(path)
        return path

    @property
    def data(self) -> Path:
        def make(p: Path) -> None:
            _ok(
                run_cli(
                    "sample-data",
                    "--out",
                    p,
                    "--per-class",
                    "6",
                    "--test-per-class",
                    "2",
                    "--seed",
                    "3",
                )
            )

        return self._once("data", make)

    @property
    def prepared(self) -> Path:
        return self._once("prep", lambda p: _ok(run_cli("prepare", self.data, "--out", p, *TINY)))

    @property
    def member(self) -> Path:
        return self._once(
            "m0",
            lambda p: _ok(
                run_cli("train", "--prepared", self.prepared, "--out", p, *TINY_TRAIN, "fold=0")
            ),
        )

    @property
    def predictions(self) -> Path:
        return self._once(
            "pred0",
            lambda p: _ok(
                run_cli(
                    "predict",
                    "--prepared",
                    self.prepared,
                    "--model",
                    self.member,
                    "--out",
                    p,
                    *TINY,
                )
            ),
        )

    @property
    def candidates(self) -> Path:
        def make(p: Path) -> None:
            _ok(run_cli("ensemble", self.predictions, "--method", "soft", "--name", "soft",
                        "--out", p / "soft"))  # fmt: skip

        return self._once("cands", make)

    def copy(self, src: Path, name: str) -> Path:
        dst = self.fresh(name) / src.name
        shutil.copytree(src, dst)
        return dst


def _ok(result: tuple[int, str, str]) -> None:
    rc, out, err = result
    if rc != 0:
        raise RuntimeError(f"set-up command failed ({rc}): {err.strip()[-800:]}")


def _temp_names(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial"))]


def refused(
    result: tuple[int, str, str], expect: tuple[str, ...], *protected: Path
) -> Callable[[dict], Outcome]:
    """A checker for a command that must be refused; ``protected`` were snapshotted before."""
    rc, _, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    msg = lines[-1] if lines else ""

    def check(before: dict) -> Outcome:
        if rc != 2 or len(lines) != 1 or not msg.startswith("docsort: error: "):
            return Outcome("wrong", f"exit {rc}: {msg or '(no message)'} [{len(lines)} lines]")
        missing = [e for e in expect if e.lower() not in msg.lower()]
        if missing:
            return Outcome("wrong", f"message lacks {missing}: {msg}")
        for path in protected:
            if snapshot(path) != before[str(path)]:
                return Outcome("wrong", f"{path.name} changed: {msg}")
        return Outcome("refused", msg.removeprefix("docsort: error: "))

    return check


@dataclass
class Scenario:
    case: int  # the numbered case of the catalogue (issue 13's list)
    label: str
    run: Callable[[Workspace], Outcome]


def _guarded(protect: Callable[[Workspace], list[Path]], act) -> Callable[[Workspace], Outcome]:
    """Snapshot ``protect(ws)``, run ``act(ws, *paths) -> checker``, then judge."""

    def run(ws: Workspace) -> Outcome:
        paths = protect(ws)
        before = {str(p): snapshot(p) for p in paths}
        return act(ws, *paths)(before)

    return run


# ---------------------------------------------------------------- 1: outputs that are inputs


def _data_copy(ws: Workspace) -> list[Path]:
    return [ws.copy(ws.data, "data")]


def _cands_copy(ws: Workspace) -> list[Path]:
    return [ws.copy(ws.candidates, "cands")]


def _member_copy(ws: Workspace) -> list[Path]:
    return [ws.copy(ws.member, "m0")]


SCENARIOS: list[Scenario] = [
    Scenario(1, "`prepare DATA --out DATA`", _guarded(_data_copy, lambda ws, d: refused(
        run_cli("prepare", d, "--out", d, *TINY), ("output", "input"), d))),
    Scenario(1, "`prepare DATA --out` the parent of DATA", _guarded(_data_copy, lambda ws, d: refused(
        run_cli("prepare", d, "--out", d.parent, *TINY), ("output", "input"), d))),
    Scenario(1, "`prepare DATA --out DATA/prep` (inside the input)", _guarded(_data_copy, lambda ws, d: refused(
        run_cli("prepare", d, "--out", d / "prep", *TINY), ("output", "input"), d))),
    Scenario(1, "`hardcases compare CANDS --prepared P --out CANDS`", _guarded(_cands_copy, lambda ws, c: refused(
        run_cli("hardcases", "compare", c, "--prepared", ws.prepared, "--out", c), ("output", "input"), c))),
    Scenario(1, "`predict P --model M --out M`", _guarded(_member_copy, lambda ws, m: refused(
        run_cli("predict", "--prepared", ws.prepared, "--model", m, "--out", m, *TINY), ("output", "input"), m))),
]  # fmt: skip


# ---------------------------------------------------------------- 2: a finished run under another name


def _retrain(*overrides: str, expect: tuple[str, ...]):
    return _guarded(_member_copy, lambda ws, m: refused(
        run_cli("train", "--prepared", ws.prepared, "--out", m, *TINY_TRAIN, "fold=0", *overrides), expect, m))  # fmt: skip


def _same_rerun(ws: Workspace) -> Outcome:
    m = ws.copy(ws.member, "m0")
    before = snapshot(m)
    rc, out, err = run_cli("train", "--prepared", ws.prepared, "--out", m, *TINY_TRAIN, "fold=0")
    if rc != 0:
        return Outcome("wrong", f"exit {rc}: {err.strip()[-300:]}")
    changed = sorted(k for k in before if snapshot(m).get(k) != before[k])
    if changed:
        return Outcome("wrong", f"re-run rewrote {changed}")
    return Outcome("accepted", "identical re-run: nothing trained, files unchanged")


SCENARIOS += [
    Scenario(2, "re-run `train` on a finished m0 with `train.lr=0.0001`",
             _retrain("train.lr=0.0001", expect=("train.lr",))),
    Scenario(2, "re-run `train` on a finished m0 with `model=resnet10t`",
             _retrain("model=resnet10t", expect=("model",))),
    Scenario(2, "re-run `train` on m0 (fold 0) with `fold=1` (would leak OOF)",
             _retrain("fold=1", expect=("fold",))),
    Scenario(2, "re-run `train` on a finished m0 with the same config", _same_rerun),
]  # fmt: skip


# ---------------------------------------------------------------- 3: IDs pandas reads as missing

NA_IDS = ["NA", "null", "None", "nan"]


def _na_ids(ws: Workspace) -> Outcome:
    work = ws.fresh("na-ids")
    data = work / "data"
    shutil.copytree(ws.data, data)
    for split, csv_name in (("test", "sample_submission.csv"), ("train", "train.csv")):
        frame = pd.read_csv(data / csv_name, dtype=str, keep_default_na=False)
        for i, new in enumerate(NA_IDS):
            (data / split / frame.loc[i, "ID"]).rename(data / split / new)
            frame.loc[i, "ID"] = new
        frame.to_csv(data / csv_name, index=False)
    train_ids = set(pd.read_csv(data / "train.csv", dtype=str, keep_default_na=False)["ID"])
    steps = [
        ("prepare", data, "--out", work / "prep", *TINY),
        ("train", "--prepared", work / "prep", "--out", work / "m", *TINY_TRAIN, "fold=0"),
        ("predict", "--prepared", work / "prep", "--model", work / "m", "--out", work / "pred", *TINY),
        ("submission", "--prepared", work / "prep", "--probs", work / "pred" / "probs.csv", "--out",
         work / "subs", "--candidate", "m"),
    ]  # fmt: skip
    for argv in steps:
        rc, _, err = run_cli(*argv)
        if rc != 0:
            return Outcome("wrong", f"`{argv[0]}` exit {rc}: {err.strip().splitlines()[-1:]}")
    csvs = [p for p in (work / "subs").rglob("*.csv")]
    got = pd.read_csv(csvs[0], dtype=str, keep_default_na=False)["ID"].tolist()
    oof = pd.read_csv(work / "m" / "oof.csv", dtype=str, keep_default_na=False)["ID"].tolist()
    if got[: len(NA_IDS)] != NA_IDS or "" in oof or not set(oof) <= train_ids:
        return Outcome("wrong", f"IDs came out as {got[:4]} / OOF blanks {oof.count('')}")
    return Outcome(
        "accepted", "IDs NA, null, None, nan kept through prepare, train, predict, submission"
    )


SCENARIOS.append(Scenario(3, "IDs `NA`, `null`, `None`, `nan` from prepare to submission", _na_ids))


# ---------------------------------------------------------------- 4: concurrent submissions


def _concurrent(ws: Workspace) -> Outcome:
    work = ws.fresh("concurrent")
    probs = ws.candidates / "soft" / "probs.csv"
    argv = [sys.executable, "-m", "docsort.cli.main", "submission", "--prepared", str(ws.prepared), "--probs",
            str(probs), "--out", str(work / "subs"), "--candidate", "soft"]  # fmt: skip
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)
    ]
    codes = [p.wait(timeout=600) for p in procs]
    files = sorted((work / "subs").rglob("*.csv"))
    latest = json.loads(next((work / "subs").rglob("latest.json")).read_text())
    names = {p.name for p in files}
    pointed = [v for v in latest.values() if isinstance(v, str) and v.endswith(".csv")]
    if codes != [0] * 6 or len(files) != 6 or not any(Path(p).name in names for p in pointed):
        return Outcome("wrong", f"exits {codes}, {len(files)} files, latest {latest}")
    return Outcome("accepted", "6 concurrent runs: 6 distinct versions, latest on a complete one")


SCENARIOS.append(Scenario(4, "six `submission` runs of one candidate at once", _concurrent))


# ---------------------------------------------------------------- 5: probabilities that are not distributions


def _bad_probs(edit: Callable[[np.ndarray], np.ndarray], expect: tuple[str, ...]):
    def run(ws: Workspace) -> Outcome:
        work = ws.fresh("probs")
        frame = pd.read_csv(ws.candidates / "soft" / "probs.csv", dtype={"ID": str})
        cols = [c for c in frame.columns if c[:1] == "p" and c[1:].isdigit()]  # not pred_*
        frame[cols] = edit(frame[cols].to_numpy(dtype=float))
        frame.to_csv(work / "probs.csv", index=False)
        before = {str(work): snapshot(work)}
        result = run_cli("submission", "--prepared", ws.prepared, "--probs", work / "probs.csv",
                         "--out", work / "subs", "--candidate", "x")  # fmt: skip
        outcome = refused(result, expect, work)(before)
        if (work / "subs").exists() and any((work / "subs").rglob("*.csv")):
            return Outcome("wrong", "a submission file was written anyway")
        return outcome

    return run


SCENARIOS += [
    Scenario(5, "`submission` from a probs.csv of all zeros",
             _bad_probs(lambda p: p * 0, ("probs.csv", "sum"))),
    Scenario(5, "`submission` from a probs.csv whose rows sum to 15.3",
             _bad_probs(lambda p: p * 0 + 0.9, ("probs.csv", "sum"))),
    Scenario(5, "`submission` from a probs.csv with a negative probability",
             _bad_probs(lambda p: np.where(np.arange(p.size).reshape(p.shape) == 0, -0.5, p),
                        ("probs.csv",))),
]  # fmt: skip


# ---------------------------------------------------------------- 7: overrides and arguments


def _train_override(override: str, expect: tuple[str, ...]):
    def run(ws: Workspace) -> Outcome:
        work = ws.fresh("ovr")
        before = {str(work): snapshot(work)}
        result = run_cli(
            "train", "--prepared", ws.prepared, "--out", work / "m", *TINY_TRAIN, "fold=0", override
        )
        out = refused(result, expect, work)(before)
        return Outcome("wrong", "wrote an output folder") if (work / "m").exists() and \
            out.verdict == "refused" and any((work / "m").iterdir()) else out  # fmt: skip

    return run


def _predict_override(override: str, expect: tuple[str, ...]):
    def run(ws: Workspace) -> Outcome:
        work = ws.fresh("povr")
        before = {str(work): snapshot(work)}
        result = run_cli("predict", "--prepared", ws.prepared, "--model", ws.member, "--out", work / "p",
                         *TINY, override)  # fmt: skip
        return refused(result, expect, work)(before)

    return run


def _corrupt_ckpt(ws: Workspace) -> Outcome:
    work = ws.fresh("ckpt")
    m = work / "m"
    rc, _, err = run_cli(
        "train", "--prepared", ws.prepared, "--out", m, *TINY_TRAIN, "fold=0", "train.epochs=2"
    )
    ckpts = list(m.rglob("last.ckpt"))
    if not ckpts:
        return Outcome("wrong", f"no last.ckpt after training (exit {rc})")
    # keep the checkpoint, drop the finished marks so the next run resumes from it
    for done in ("metrics.json", "model.safetensors"):
        if (m / done).exists():
            (m / done).unlink()
    ckpts[0].write_bytes(b"\x80\x04not a checkpoint")
    before = {str(m): snapshot(m)}
    return refused(
        run_cli(
            "train", "--prepared", ws.prepared, "--out", m, *TINY_TRAIN, "fold=0", "train.epochs=2"
        ),
        ("last.ckpt",),
        m,
    )(before)


def _views_folder(ws: Workspace) -> Outcome:
    work = ws.fresh("views")
    (work / "ablation").mkdir()
    before = {str(work): snapshot(work)}
    return refused(
        run_cli("ensemble", "--model", ws.member, "--prepared", ws.prepared, "--views-from",
                work / "ablation", "--out", work / "c"),
        ("not a TTA ablation folder",), work,
    )(before)  # fmt: skip


def _report_existing(ws: Workspace) -> Outcome:
    work = ws.fresh("report")
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_text("my notes\n")
    before = {str(work): snapshot(work)}
    return refused(
        run_cli("report", "--prepared", ws.prepared, "--candidate", ws.candidates / "soft",
                "--out", work / "mine"),
        ("mine",), work,
    )(before)  # fmt: skip


def _run_param(ws: Workspace) -> Outcome:
    work = ws.fresh("runparam")
    before = {str(work): snapshot(work)}
    return refused(
        run_cli("run", "pipelines/demo.py", "--local", "--param", "per_class=abc", "--out",
                work / "runs"),
        ("per_class",), work,
    )(before)  # fmt: skip


def _mine_top(ws: Workspace) -> Outcome:
    work = ws.fresh("mine")
    before = {str(work): snapshot(work)}
    return refused(
        run_cli("hardcases", "mine", ws.candidates, "--prepared", ws.prepared, "--top", "-1",
                "--out", work / "proposals.csv"),
        ("--top",), work,
    )(before)  # fmt: skip


SCENARIOS += [
    Scenario(7, "`train.label_smoothing=5`", _train_override("train.label_smoothing=5", ("train.label_smoothing",))),
    Scenario(7, "`train.ema_decay=2`", _train_override("train.ema_decay=2", ("train.ema_decay",))),
    Scenario(7, "`threads=abc`", _train_override("threads=abc", ("threads",))),
    Scenario(7, "`train.num_workers=abc`", _train_override("train.num_workers=abc", ("train.num_workers",))),
    Scenario(7, "`device=cuda` on a machine without CUDA", _train_override("device=cuda", ("cuda",))),
    Scenario(7, "`predict ... tta.batch_size=abc`", _predict_override("tta.batch_size=abc", ("tta.batch_size",))),
    Scenario(7, "resume from a corrupt `last.ckpt`", _corrupt_ckpt),
    Scenario(7, "`ensemble --views-from FOLDER` that is not a TTA ablation", _views_folder),
    Scenario(7, "`report --out` an existing folder of the user's", _report_existing),
    Scenario(7, "`run --param per_class=abc`", _run_param),
    Scenario(7, "`hardcases mine --top -1`", _mine_top),
]  # fmt: skip


# ---------------------------------------------------------------- 8, 9: verdicts and lineage


def _verdict_counts(ws: Workspace) -> Outcome:
    work = ws.fresh("verdicts")
    data = work / "data"
    shutil.copytree(ws.data, data)
    _ok(run_cli("prepare", data, "--out", work / "prep", *TINY))
    _ok(
        run_cli(
            "predict",
            "--prepared",
            work / "prep",
            "--model",
            ws.member,
            "--out",
            work / "pred",
            *TINY,
        )
    )
    _ok(run_cli("ensemble", work / "pred", "--method", "soft", "--name", "soft",
                "--out", work / "cands" / "soft"))  # fmt: skip
    hc = data / "hardcases.csv"
    n_before = len(pd.read_csv(hc, dtype=str, keep_default_na=False)) if hc.exists() else 0
    test_id = pd.read_csv(data / "sample_submission.csv", dtype=str)["ID"].iloc[-1]
    _ok(run_cli("hardcases", "add", test_id, "--target", "0", "--kind", "hard", "--note",
                "added after prepare", "--file", hc))  # fmt: skip
    rc, out, err = run_cli("hardcases", "compare", work / "cands", "--prepared", work / "prep",
                           "--out", work / "cmp")  # fmt: skip
    said = out + err
    if rc != 0:
        return Outcome("wrong", f"compare exit {rc}: {err.strip()[-300:]}")
    if str(hc) not in said or f"{n_before + 1} verdict" not in said:
        return Outcome(
            "wrong", f"compare did not say it used {hc.name} with {n_before + 1} verdicts"
        )
    return Outcome("accepted", f"compare used the current hardcases.csv ({n_before + 1} verdicts)")


def _lineage(ws: Workspace) -> Outcome:
    work = ws.fresh("lineage")
    rc, _, err = run_cli("submission", "--prepared", ws.prepared, "--probs", ws.candidates / "soft" / "probs.csv",
                         "--out", work / "subs", "--candidate", "soft")  # fmt: skip
    if rc != 0:
        return Outcome("wrong", f"exit {rc}: {err.strip()[-300:]}")
    lineage = json.loads(next((work / "subs").rglob("*.lineage.json")).read_text())
    empty = [k for k in ("spec", "checkpoints", "tta_views") if not lineage.get(k)]
    if empty:
        return Outcome("wrong", f"lineage has empty {empty}")
    return Outcome(
        "accepted", "the README's `submission --candidate soft` records spec, checkpoints, views"
    )


SCENARIOS += [
    Scenario(8, "`hardcases add` after prepare, then `hardcases compare`", _verdict_counts),
    Scenario(9, "`submission ... --candidate soft` writes the full lineage", _lineage),
]


# ---------------------------------------------------------------- 10: secrets and terminals


def _password(ws: Workspace) -> Outcome:
    rc, out, err = run_cli("submit", "pipelines/train.py", "--host",
                           "http://user:hunter2pw@127.0.0.1:9", "--param", "data_root=s3://b/d")  # fmt: skip
    if "hunter2pw" in out + err:
        return Outcome("wrong", "the password was printed")
    if rc == 0:
        return Outcome("wrong", "a submission to a dead host succeeded")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return Outcome("refused", lines[-1].removeprefix("docsort: error: ") if lines else "")


def _escapes(ws: Workspace) -> Outcome:
    work = ws.fresh("escapes")
    data = work / "data"
    shutil.copytree(ws.data, data)
    meta = pd.read_csv(data / "meta.csv", dtype=str, keep_default_na=False)
    meta.loc[0, "class_name"] = "evil\x1b[2J\x1b]0;owned\x07name"
    meta.to_csv(data / "meta.csv", index=False)
    rc, out, err = run_cli("prepare", data, "--out", work / "prep", *TINY)
    if "\x1b" in out + err or "\x07" in out + err:
        return Outcome("wrong", "a terminal escape sequence was printed raw")
    return Outcome("accepted" if rc == 0 else "refused", f"exit {rc}; no raw control characters")


SCENARIOS += [
    Scenario(10, "`submit --host http://user:PASSWORD@...` to a dead host", _password),
    Scenario(10, "a class name holding terminal escape sequences", _escapes),
]


# ---------------------------------------------------------------- 6: faults and leftovers


def _killed_prepare(ws: Workspace) -> Outcome:
    """A prepare killed mid-way leaves its temporary folder; the next run must clear it."""
    work = ws.fresh("killed")
    argv = [sys.executable, "-m", "docsort.cli.main", "prepare", str(ws.data), "--out",
            str(work / "prep"), *TINY, "data.image_size=96"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _temp_names(work) and proc.poll() is None:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    left = _temp_names(work)
    if not left:
        return Outcome("wrong", "could not catch prepare mid-way (it finished or wrote no temp)")
    rc, _, err = run_cli("prepare", ws.data, "--out", work / "prep", *TINY, "data.image_size=96")
    still = _temp_names(work)
    if rc != 0 or still:
        return Outcome("wrong", f"exit {rc}; temporary names left: {still}")
    return Outcome("accepted", f"the next run removed {len(left)} stale temporary name(s)")


def _read_only_out(ws: Workspace) -> Outcome:
    """An output folder on a read-only mount (root ignores permission bits)."""
    work = ws.fresh("ro")
    ro = work / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        return Outcome("skipped", "no tmpfs mount here")
    try:
        return refused(run_cli("prepare", ws.data, "--out", ro / "prep", *TINY),
                       ("read-only",), ws.data)({str(ws.data): snapshot(ws.data)})  # fmt: skip
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


SCENARIOS += [
    Scenario(6, "a `prepare` killed mid-way, then run again", _killed_prepare),
    Scenario(6, "`prepare --out` on a read-only file system", _read_only_out),
]


# ---------------------------------------------------------------- 11: a failed pipeline task


def _failed_task(ws: Workspace) -> Outcome:
    work = ws.fresh("failed-task")
    data = work / "data"
    shutil.copytree(ws.data, data)
    (data / "meta.csv").write_text("target,class_name\n0,only\n")
    rc, out, err = run_cli("run", "pipelines/train.py", "--local", "--param", f"data_root={data}",
                           "--out", work / "runs")  # fmt: skip
    lines = [ln for ln in err.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if rc == 0 or "prepare" not in last or "train.csv" not in last:
        return Outcome("wrong", f"exit {rc}: {last or '(no message)'}")
    return Outcome("refused", last.removeprefix("docsort: error: "))


SCENARIOS.append(Scenario(11, "`docsort run pipelines/train.py` on a broken dataset", _failed_task))


def run_all(
    root: Path, only: Callable[[Scenario], bool] = lambda s: True
) -> list[tuple[Scenario, Outcome]]:
    """Run the catalogue under ``root``; a scenario that raises counts as ``wrong``."""
    ws = Workspace(root)
    results = []
    for scenario in sorted(SCENARIOS, key=lambda s: s.case):
        if not only(scenario):
            continue
        try:
            outcome = scenario.run(ws)
        except Exception as exc:  # noqa: BLE001 - a crash is a verdict here
            outcome = Outcome("wrong", f"{type(exc).__name__}: {str(exc)[:300]}")
        results.append((scenario, outcome))
    return results
