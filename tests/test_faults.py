"""Faults: an S3 endpoint dying mid-submission, full disks and read-only folders in every stage,
a torn cache, a killed run's temporaries.

What must survive: the previous ``latest`` submission (complete, still pointed at), and
no prepared folder or image cache that counts as complete unless it is.

Covered elsewhere (not repeated here): S3 retries with backoff on throttling and dropped
connections, and multipart uploads aborted when the endpoint dies
(tests/test_storage.py::test_throttling_and_dropped_connections_are_retried,
::test_retries_give_up_after_max_attempts, ::test_endpoint_dying_mid_upload_leaves_no_object);
training resumed after SIGKILL (the training tests); pipeline caching (the pipeline tests).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from docsort.core import storage
from docsort.review.submission import latest
from tests.conftest import TINY, TINY_TRAIN
from tests.scenario import one_line, run_cli

REPO = Path(__file__).resolve().parents[1]


def _probs(prepared: Path, path: Path, seed: int) -> Path:
    ids = pd.read_csv(prepared / "test.csv", dtype=str)["ID"].tolist()
    k = len(pd.read_csv(prepared / "meta.csv"))
    p = np.random.default_rng(seed).dirichlet(np.ones(k), size=len(ids))
    df = pd.DataFrame(p, columns=[f"p{j}" for j in range(k)])
    df.insert(0, "ID", ids)
    df.to_csv(path, index=False)
    return path


def _submit(prepared: Path, probs: Path, out: str, candidate: str) -> tuple[int, str]:
    rc, _, err = run_cli(
        "submission",
        "--prepared",
        str(prepared),
        "--probs",
        str(probs),
        "--out",
        out,
        "--candidate",
        candidate,
    )
    return rc, err


def _assert_every_submission_complete(out: str, rows: int) -> list[str]:
    """Every CSV under submissions/ has its lineage, whose sha256 and row count match it."""
    files = [u.rsplit("/", 1)[1] for u in storage.list_files(storage.join(out, "submissions"))]
    csvs = sorted(f for f in files if f.endswith(".csv"))
    for name in csvs:
        data = storage.read_bytes(storage.join(out, "submissions", name))
        lineage = json.loads(
            storage.read_text(
                storage.join(out, "submissions", name.removesuffix(".csv") + ".lineage.json")
            )
        )
        assert lineage["sha256"] == hashlib.sha256(data).hexdigest(), name
        assert data.decode().count("\n") == rows + 1 == lineage["rows"] + 1, name
    return csvs


@pytest.mark.parametrize("dies_during", ["lineage.json", ".csv", "latest.json"])
def test_s3_dying_mid_submission_keeps_latest_on_a_complete_submission(
    dies_during: str,
    s3_server,
    prepared_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv(
        "AWS_MAX_ATTEMPTS", "2"
    )  # retries happen (see test_storage), but keep the backoff short
    out = f"s3://{s3_server.bucket}/runs"
    rows = len(pd.read_csv(prepared_root / "test.csv"))
    assert (
        _submit(prepared_root, _probs(prepared_root, tmp_path / "a.csv", 1), out, "first")[0] == 0
    )
    first = latest(out)
    first_bytes = storage.read_bytes(first)

    def die(request, **_):
        key = request.url.split("?")[0]
        if key.endswith(dies_during) and ("-second" in key or dies_during == "latest.json"):
            s3_server.stop()  # the endpoint goes away while this PUT is on its way

    events = storage.client().meta.events
    events.register("before-send.s3.PutObject", die, unique_id="die-mid-upload")
    try:
        rc, err = _submit(
            prepared_root, _probs(prepared_root, tmp_path / "b.csv", 2), out, "second"
        )
    finally:
        events.unregister("before-send.s3.PutObject", unique_id="die-mid-upload")
    msg = one_line(err)
    assert (
        rc == 2 and msg.startswith(f"{out}/submissions/") and dies_during in msg and "S3 " in msg
    ), msg
    assert s3_server.secret not in err

    s3_server.start()
    assert latest(out) == first and storage.read_bytes(first) == first_bytes
    csvs = _assert_every_submission_complete(out, rows)
    if dies_during != "latest.json":  # the CSV never became visible
        assert not [c for c in csvs if "-second-" in c]
    # With the endpoint back, the same command completes and moves latest.
    assert _submit(prepared_root, tmp_path / "b.csv", out, "third")[0] == 0
    assert re.search(r"-third-[0-9a-f]{6}\.csv$", latest(out))
    _assert_every_submission_complete(out, rows)


def _caches(prepared: Path) -> dict[str, bytes]:
    info = json.loads((prepared / "prepared.json").read_text())
    return {
        split: (prepared / "cache" / name).read_bytes()
        for split, name in info["cache"].items()
        if split in ("train", "test")
    }


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


_LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from docsort.cli.main import main
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.slow  # over 9 s on 2 cores: `make test-slow`
def test_full_disk_during_prepare_keeps_nothing_half_written(
    sample_root: Path, prepared_root: Path, tmp_path: Path
):
    """A file-size limit (EFBIG) hits while the image cache is written: one line, the previous
    complete folder untouched, no temporary left; with space, prepare rebuilds it correctly."""
    out = tmp_path / "prep"
    assert (
        run_cli(
            "prepare",
            str(sample_root),
            "--out",
            str(out),
            "data.image_size=32",
            "data.num_folds=2",
        )[0]
        == 0
    )
    before = _tree(out)

    argv = ["prepare", str(sample_root), "--out", str(out), *TINY]
    proc = subprocess.run(
        [sys.executable, "-c", _LIMITED, "100000", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "out of disk space (File too large); nothing was kept" in one_line(proc.stderr)
    assert _tree(out) == before  # the earlier complete output is still what `out` holds
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "prep"
    ]  # no temporary folder left beside it

    assert run_cli(*argv)[0] == 0
    assert _caches(out) == _caches(prepared_root)
    assert (out / "index.csv").read_bytes() == (prepared_root / "index.csv").read_bytes()


_TMPFS = textwrap.dedent(
    """
    import contextlib, io, json, os, subprocess, sys
    mnt, data = sys.argv[1:3]
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", mnt]).returncode:
        sys.exit(77)
    from docsort.cli.main import main
    def prepare():
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["prepare", data, "--out", mnt + "/prep", *sys.argv[3:]])
        return rc, err.getvalue()
    rc1, err1 = prepare()
    left = sorted(os.listdir(mnt))
    subprocess.run(["mount", "-o", "remount,size=16m", mnt], check=True)
    rc2, err2 = prepare()
    caches = {}
    if rc2 == 0:
        info = json.load(open(mnt + "/prep/prepared.json"))
        caches = {k: open(mnt + "/prep/cache/" + v, "rb").read().hex() for k, v in info["cache"].items()}
    print(json.dumps({"rc1": rc1, "err1": err1, "left": left, "rc2": rc2, "err2": err2, "caches": caches}))
    """
)


def _unshare() -> str:
    """``unshare`` where it can make user and mount namespaces (a private tmpfs); else skip."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -rm (user and mount namespaces) for a private tmpfs")
    return unshare


@pytest.mark.slow  # over 9 s on 2 cores: `make test-slow`
def test_really_full_disk_fails_cleanly_not_with_sigbus(
    sample_root: Path, prepared_root: Path, tmp_path: Path
):
    """A real ENOSPC: a 300 KiB tmpfs in a private mount namespace. The memory-mapped cache is
    allocated up front, so a full disk is one error line, not a SIGBUS that leaves a temporary behind."""
    unshare = _unshare()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        [unshare, "-rm", sys.executable, "-c", _TMPFS, str(mnt), str(sample_root), *TINY],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    if proc.returncode == 77:
        pytest.skip("tmpfs cannot be mounted here")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["rc1"] == 2, res["err1"]
    assert "out of disk space (No space left on device); nothing was kept" in one_line(res["err1"])
    assert res["left"] == []  # neither `prep` nor a temporary folder
    assert res["rc2"] == 0, res["err2"]
    assert {
        k: bytes.fromhex(v) for k, v in res["caches"].items() if k in ("train", "test")
    } == _caches(prepared_root)


def test_torn_cache_in_a_complete_folder_is_rebuilt_not_reused(
    sample_root: Path, prepared_root: Path, tmp_path: Path
):
    """A cache file cut short (a copy interrupted, a disk error) is not linked into the next run as if complete."""
    out = tmp_path / "prep"
    argv = ["prepare", str(sample_root), "--out", str(out), *TINY]
    assert run_cli(*argv)[0] == 0
    info = json.loads((out / "prepared.json").read_text())
    torn = out / "cache" / info["cache"]["train"]
    data = torn.read_bytes()
    torn.unlink()  # not truncate(): other folders may share this file through hard links
    torn.write_bytes(data[: len(data) // 2])
    assert run_cli(*argv)[0] == 0
    assert _caches(out) == _caches(prepared_root)


# ---------------------------------------------------------------- every stage: full disks, read-only folders

_MOUNTED = textwrap.dedent(
    """
    import contextlib, io, json, os, subprocess, sys
    from pathlib import Path
    mnt, size, steps = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt]).returncode:
        sys.exit(77)
    from docsort.cli.main import main
    results = []
    for step in steps:
        if step.get("remount"):
            subprocess.run(["mount", "-o", "remount," + step["remount"], mnt], check=True)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(step["argv"])
        left = sorted(str(p.relative_to(mnt)) for p in Path(mnt).rglob("*"))
        results.append({"rc": rc, "err": err.getvalue(), "left": left})
    print(json.dumps(results))
    """
)


def _on_tmpfs(tmp_path: Path, size: str, steps: list[dict]) -> list[dict]:
    """Run docsort commands (``{"argv": [...], "remount": "ro" | "size=..."}``) with ``tmp_path/mnt``
    a real tmpfs of ``size`` in a private mount namespace: real ENOSPC and EROFS, even for root."""
    unshare = _unshare()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        [unshare, "-rm", sys.executable, "-c", _MOUNTED, str(mnt), size, json.dumps(steps)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    if proc.returncode == 77:
        pytest.skip("tmpfs cannot be mounted here")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _temps(left: list[str]) -> list[str]:
    return [p for p in left if p.endswith(".tmp")]


@pytest.mark.slow  # over 9 s on 2 cores: `make test-slow`
def test_full_disk_during_train_is_one_line_and_the_checkpoint_temp_is_removed(
    prepared_root: Path, tmp_path: Path
):
    """The epoch-end checkpoint hits ENOSPC: one line naming last.ckpt, no temporary checkpoint left
    filling the disk; with space the same command trains the member."""
    mnt = tmp_path / "mnt"
    argv = ["train", "--prepared", str(prepared_root), "--out", str(mnt / "m"), *TINY_TRAIN, "fold=0",
            "model=resnet10t"]  # fmt: skip
    full, again = _on_tmpfs(
        tmp_path, "12m", [{"argv": argv}, {"argv": argv, "remount": "size=256m"}]
    )
    assert full["rc"] == 2, full["err"]
    # training's own progress lines come first; the failure is one line, no traceback
    assert "Traceback" not in full["err"]
    msg = one_line(full["err"].strip().splitlines()[-1])
    assert msg.endswith("no space left on device; free space and run again"), msg
    assert str(mnt / "m") in msg
    assert _temps(full["left"]) == [], full["left"]
    assert again["rc"] == 0, again["err"]
    assert "m/model.safetensors" in again["left"] and _temps(again["left"]) == []


@pytest.mark.slow  # 6-10 s on 2 cores: `make test-slow`
@pytest.mark.parametrize("stage", ["predict", "submission"])
def test_full_disk_during_predict_and_submission_is_one_line(
    stage: str, prepared_root: Path, trained_member: Path, tmp_path: Path
):
    mnt = tmp_path / "mnt"
    probs = _probs(prepared_root, tmp_path / "p.csv", 0)
    argv = {
        "predict": ["predict", "--prepared", str(prepared_root), "--model", str(trained_member), "--out",
                    str(mnt / "pred"), *TINY],
        "submission": ["submission", "--prepared", str(prepared_root), "--probs", str(probs), "--out",
                       str(mnt / "subs"), "--candidate", "soft"],
    }[stage]  # fmt: skip
    full, again = _on_tmpfs(tmp_path, "8k", [{"argv": argv}, {"argv": argv, "remount": "size=16m"}])
    assert full["rc"] == 2, full["err"]
    msg = one_line(full["err"])
    assert msg.startswith(str(mnt)) and "no space left on device" in msg, msg
    assert _temps(full["left"]) == [], full["left"]
    assert not [f for f in full["left"] if f.endswith(".lineage.json")], full["left"]  # no orphan
    assert again["rc"] == 0, again["err"]
    if stage == "submission":  # with space, latest points at a complete submission
        assert "subs/submissions/latest.json" in again["left"]


READ_ONLY = {
    "prepare": lambda data, prep, model, probs, mnt: ["prepare", data, "--out", mnt / "prep", *TINY],
    "train": lambda data, prep, model, probs, mnt: ["train", "--prepared", prep, "--out", mnt / "m", *TINY, "fold=0"],
    "predict": lambda data, prep, model, probs, mnt: ["predict", "--prepared", prep, "--model", model, "--out", mnt / "pred", *TINY],
    "submission": lambda data, prep, model, probs, mnt: ["submission", "--prepared", prep, "--probs", probs, "--out", mnt / "s"],
    "tta-ablation": lambda data, prep, model, probs, mnt: ["tta-ablation", model, "--out", mnt / "abl"],
}  # fmt: skip


@pytest.mark.slow  # 6-10 s on 2 cores: `make test-slow`
@pytest.mark.parametrize("stage", sorted(READ_ONLY))
def test_read_only_output_folder_is_one_line(
    stage: str, sample_root: Path, prepared_root: Path, trained_member: Path, tmp_path: Path
):
    """A read-only output file system (root ignores chmod, so a real read-only tmpfs): one line
    ``<path>: read-only file system``, exit 2."""
    mnt = tmp_path / "mnt"
    probs = _probs(prepared_root, tmp_path / "p.csv", 0)
    argv = READ_ONLY[stage](sample_root, prepared_root, trained_member, probs, mnt)
    (res,) = _on_tmpfs(tmp_path, "1m", [{"argv": [str(a) for a in argv], "remount": "ro"}])
    assert res["rc"] == 2, res["err"]
    msg = one_line(res["err"])
    assert msg.startswith(str(mnt)) and msg.endswith(": read-only file system"), msg


# ---------------------------------------------------------------- a killed run's temporaries


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow  # over 9 s on 2 cores: `make test-slow`
def test_a_killed_prepare_leaves_a_temporary_that_the_next_run_removes(
    sample_root: Path, tmp_path: Path
):
    """SIGKILL while the prepared folder is being built: its temporary stays (nothing can clean up
    after SIGKILL); the next prepare removes it, but not a live run's temporary, nor names docsort
    does not make."""
    import signal
    import time

    from docsort.core.atomic import owner_tag

    out = tmp_path / "prep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "docsort.cli.main", "prepare", str(sample_root), "--out", str(out), *TINY],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".prep.*.tmp")) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = list(tmp_path.glob(".prep.*.tmp"))
    if not killed:
        pytest.skip("prepare finished before it could be killed")
    assert not out.exists()
    host = owner_tag().rsplit("-", 1)[0]
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        kept = [
            tmp_path / f".prep.{host}-{live.pid}.abcd1234.tmp",  # a concurrent run, alive
            tmp_path / ".prep.notes.tmp",  # not a name docsort makes
            tmp_path / f".prep.otherhost-{_dead_pid()}.abcd1234.tmp",  # another machine's run
        ]
        for k in kept:
            k.mkdir()
        rc, _, err = run_cli("prepare", str(sample_root), "--out", str(out), *TINY)
        assert rc == 0, err
        assert not any(p.exists() for p in killed)
        assert all(k.is_dir() for k in kept)
    finally:
        live.kill()
        live.wait()


def test_a_killed_submission_leaves_no_temporary_for_long(prepared_root: Path, tmp_path: Path):
    """Temporaries of a submission killed mid-write (named for a dead process) are removed by the
    next submission to the same folder."""
    from docsort.core.atomic import owner_tag

    probs = _probs(prepared_root, tmp_path / "p.csv", 0)
    out = tmp_path / "subs"
    assert _submit(prepared_root, probs, str(out), "first")[0] == 0
    host = owner_tag().rsplit("-", 1)[0]
    dead = _dead_pid()
    stale = [
        out / "submissions" / f".latest.json.{host}-{dead}.0a1b2c3d.tmp",
        out / "submissions" / f".latest.json.{host}-{dead}.9f8e7d6c.tmp",
    ]
    stale[0].mkdir()
    (stale[0] / "latest.json").write_text("{")
    stale[1].write_text("{")
    assert _submit(prepared_root, probs, str(out), "second")[0] == 0
    assert not any(p.exists() for p in stale)
    assert [p.name for p in (out / "submissions").iterdir() if p.name.startswith(".")] == []
