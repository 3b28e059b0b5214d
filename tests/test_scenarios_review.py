"""Review-side cases of the user-mistake catalogue, as the CLI sequences a user types.

3: image IDs that pandas reads as missing values (``NA``, ``null``, ``None``, ``nan``)
4: submissions of one candidate at the same moment
5: probability tables that are not distributions
8: hard-case verdicts added after ``prepare``
9: the lineage of every submission route
and EXIF orientation (phone photos of documents).

One tiny member is trained for the whole module, on a dataset whose IDs are the
missing-value words, so every later stage reads those IDs too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from docsort.core import storage
from docsort.core.errors import DocsortError
from docsort.core.probs import write_probs
from docsort.data.contract import decode_image
from docsort.data.prepared import Prepared
from docsort.review.submission import latest, write_submission
from tests.conftest import TINY, TINY_TRAIN
from tests.review_fakes import fake_candidate, one_hot
from tests.scenario import one_line, run_cli, snapshot

NA_IDS = ["NA", "null", "None", "nan"]


def _table(path: Path) -> pd.DataFrame:
    """A CSV exactly as written: every cell a string, nothing read as missing."""
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _ok(*argv) -> str:
    rc, out, err = run_cli(*argv)
    assert rc == 0, err
    return out


def _rename_ids(data: Path) -> None:
    """Rename the first four training and test images to the missing-value words."""
    renamed: dict[str, str] = {}
    for split, csv_name in (("train", "train.csv"), ("test", "sample_submission.csv")):
        frame = _table(data / csv_name)
        for i, new in enumerate(NA_IDS):
            (data / split / frame.loc[i, "ID"]).rename(data / split / new)
            renamed[frame.loc[i, "ID"]] = new
            frame.loc[i, "ID"] = new
        frame.to_csv(data / csv_name, index=False)
    for other in ("hardcases.csv", "test_labels.csv"):
        if (data / other).is_file():
            frame = _table(data / other)
            frame["ID"] = frame["ID"].map(lambda i: renamed.get(i, i))
            frame.to_csv(data / other, index=False)


@pytest.fixture(scope="module")
def world(sample_root: Path, tmp_path_factory) -> SimpleNamespace:
    """data (NA IDs) -> prepare -> train one tiny member -> predict -> soft candidate, by the CLI."""
    root = tmp_path_factory.mktemp("review-scenarios")
    data = shutil.copytree(sample_root, root / "data")
    _rename_ids(data)
    w = SimpleNamespace(root=root, data=data, prep=root / "prep", member=root / "m0",
                        pred=root / "pred0", cand=root / "cands" / "soft")  # fmt: skip
    _ok("prepare", data, "--out", w.prep, *TINY)
    _ok("train", "--prepared", w.prep, "--out", w.member, *TINY_TRAIN, "fold=0")
    _ok(
        "predict",
        "--prepared",
        w.prep,
        "--model",
        w.member,
        "--out",
        w.pred,
        *TINY,
        "tta.views=[identity,flip]",
    )
    _ok("ensemble", w.pred, "--method", "soft", "--name", "soft", "--out", w.cand)
    return w


# ---------------------------------------------------------------- 3: IDs that look missing


def test_3_missing_value_ids_pass_every_stage_intact(world, tmp_path):
    train_ids = _table(world.data / "train.csv")["ID"].tolist()
    test_ids = _table(world.data / "sample_submission.csv")["ID"].tolist()
    assert set(NA_IDS) <= set(Prepared(world.prep).index["ID"])
    assert Prepared(world.prep).test_ids[:4] == NA_IDS
    oof = _table(world.member / "oof.csv")["ID"].tolist()
    assert "" not in oof and set(oof) <= set(train_ids)
    assert _table(world.pred / "probs.csv")["ID"].tolist()[:4] == NA_IDS
    assert _table(world.cand / "probs.csv")["ID"].tolist()[:4] == NA_IDS

    out = _ok("submission", "--prepared", world.prep, "--probs", world.cand / "probs.csv",
              "--out", tmp_path / "subs", "--candidate", "soft")  # fmt: skip
    csv = Path(out.split("submission written to ")[1].strip())
    assert _table(csv)["ID"].tolist() == test_ids  # same strings, same order
    assert csv.read_text().splitlines()[1].split(",")[0] == "NA"


def test_3_a_blank_id_is_refused_with_file_and_row(world, tmp_path):
    data = shutil.copytree(world.data, tmp_path / "data")
    frame = _table(data / "train.csv")
    frame.loc[1, "ID"] = ""
    frame.to_csv(data / "train.csv", index=False)
    before = snapshot(data)
    rc, _, err = run_cli("prepare", data, "--out", tmp_path / "prep", *TINY)
    assert rc == 2 and one_line(err) == f"{data / 'train.csv'} row 2: empty ID"
    assert snapshot(data) == before and not (tmp_path / "prep").exists()

    cand = tmp_path / "cands" / "x"
    cand.mkdir(parents=True)
    probs = _table(world.cand / "probs.csv")
    probs.loc[2, "ID"] = ""
    probs.to_csv(cand / "probs.csv", index=False)
    (cand / "candidate.json").write_text(json.dumps({"name": "x", "members": 1}))
    rc, _, err = run_cli("hardcases", "compare", tmp_path / "cands", "--prepared", world.prep,
                         "--out", tmp_path / "cmp")  # fmt: skip
    assert rc == 2 and one_line(err) == f"{cand / 'probs.csv'} row 3: empty ID"
    assert not (tmp_path / "cmp").exists()


# ---------------------------------------------------------------- 4: concurrent submissions


def _versions(out: str) -> list[str]:
    names = [u.rsplit("/", 1)[1] for u in storage.list_files(storage.join(out, "submissions"))]
    return sorted(n for n in names if n.endswith(".csv"))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_4_six_submissions_in_the_same_second_are_six_versions(world, tmp_path, where, request):
    if where == "s3":
        out = f"s3://{request.getfixturevalue('s3_server').bucket}/results"
    else:
        out = str(tmp_path / "results")
    now = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)  # the same second for all six
    start = threading.Barrier(6)
    uris, errors = [], []

    def one() -> None:
        start.wait()
        try:
            uris.append(write_submission(world.prep, world.cand / "probs.csv", out, now=now))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    versions = _versions(out)
    assert len(set(uris)) == 6 and len(versions) == 6, versions
    assert all(re.fullmatch(r"20260501T120000Z-soft-[0-9a-f]{6}\.csv", v) for v in versions)
    for v in versions:  # every version is complete: its lineage matches its bytes
        data = storage.read_bytes(storage.join(out, "submissions", v))
        lineage = json.loads(
            storage.read_text(storage.join(out, "submissions", v[: -len(".csv")] + ".lineage.json"))
        )
        assert lineage["submission"] == v and lineage["sha256"] == hashlib.sha256(data).hexdigest()
    assert latest(out).rsplit("/", 1)[1] in versions


def test_4_a_colliding_version_name_never_overwrites(world, tmp_path, monkeypatch):
    import docsort.review.submission as sub

    tokens = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(sub.secrets, "token_hex", lambda n: next(tokens))
    now = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)
    out = str(tmp_path / "results")
    first = Path(write_submission(world.prep, world.cand / "probs.csv", out, now=now))
    before = snapshot(tmp_path / "results" / "submissions")
    # a different table, so overwriting the first version would show
    ids = Prepared(world.prep).test_ids
    write_probs(tmp_path / "other.csv", ids, one_hot([1] * len(ids), 17))
    second = Path(
        write_submission(world.prep, tmp_path / "other.csv", out, now=now, candidate="soft")
    )
    assert first.name.endswith("-aaaaaa.csv") and second.name.endswith("-bbbbbb.csv")
    after = snapshot(tmp_path / "results" / "submissions")
    assert {k: after[k] for k in before if k != "latest.json"} == {
        k: v for k, v in before.items() if k != "latest.json"
    }
    assert latest(out) == str(second)
    with pytest.raises(DocsortError, match="exists already; versions are never overwritten"):
        write_submission(
            world.prep, tmp_path / "other.csv", out, version=first.stem
        )  # a reused name
    assert snapshot(tmp_path / "results" / "submissions") == after


@pytest.mark.parametrize("where", ["local", "s3"])
def test_4_write_bytes_new_refuses_an_existing_name(tmp_path, where, request):
    if where == "s3":
        uri = f"s3://{request.getfixturevalue('s3_server').bucket}/x/v1.csv"
    else:
        uri = str(tmp_path / "x" / "v1.csv")
    storage.write_bytes_new(uri, b"first")
    with pytest.raises(FileExistsError):
        storage.write_bytes_new(uri, b"second")
    assert storage.read_bytes(uri) == b"first"
    if where == "local":
        assert [p.name for p in (tmp_path / "x").iterdir()] == ["v1.csv"]  # no temporary left


# ---------------------------------------------------------------- 5: not distributions


@pytest.mark.parametrize(
    ("label", "edit", "expect"),
    [
        ("all zeros", lambda p: p * 0, "row 1: probabilities sum to 0, not 1 (tolerance 0.001;"),
        ("rows summing to 15.3", lambda p: p * 15.3, "row 1: probabilities sum to 15.3, not 1"),
        ("a negative value", lambda p: np.where(p == p[0, 0], -0.5, p), "row 1: p0=-0.5 is not"),
    ],
)
def test_5_submission_refuses_tables_that_are_not_distributions(
    world, tmp_path, label, edit, expect
):
    frame = pd.read_csv(world.cand / "probs.csv", dtype={"ID": str}, keep_default_na=False)
    cols = [c for c in frame.columns if c[:1] == "p" and c[1:].isdigit()]  # not pred_*
    frame[cols] = edit(frame[cols].to_numpy(dtype=float))
    frame.to_csv(tmp_path / "probs.csv", index=False)
    before = snapshot(tmp_path)
    rc, _, err = run_cli("submission", "--prepared", world.prep, "--probs", tmp_path / "probs.csv",
                         "--out", tmp_path / "subs", "--candidate", "x")  # fmt: skip
    msg = one_line(err)
    assert rc == 2 and msg.startswith(f"{tmp_path / 'probs.csv'} ") and expect in msg, (label, msg)
    assert snapshot(tmp_path) == before and not (tmp_path / "subs").exists()


def test_5_every_reader_validates_and_rounding_is_tolerated(world, tmp_path):
    ids = Prepared(world.prep).test_ids
    p = np.full((len(ids), 17), 1 / 17)
    fake_candidate(tmp_path / "cands" / "a", "a", ids, p)
    fake_candidate(tmp_path / "cands" / "b", "b", ids, p * 15.3)
    rc, _, err = run_cli("hardcases", "compare", tmp_path / "cands", "--prepared", world.prep,
                         "--out", tmp_path / "cmp")  # fmt: skip
    bad = tmp_path / "cands" / "b" / "probs.csv"
    assert rc == 2 and one_line(err).startswith(f"{bad} row 1: probabilities sum to 15.3")
    assert not (tmp_path / "cmp").exists()
    # 6 significant digits (how tables are written) leave rows off by ~1e-5: accepted.
    p[:, 0] += 4e-4
    write_probs(tmp_path / "close.csv", ids, p)
    _ok(
        "submission",
        "--prepared",
        world.prep,
        "--probs",
        tmp_path / "close.csv",
        "--out",
        tmp_path / "subs",
    )


# ---------------------------------------------------------------- 8: verdicts that count


@pytest.fixture
def hard_world(sample_root, tmp_path) -> SimpleNamespace:
    """A user's dataset, prepared, and two candidates built directly (no training)."""
    data = shutil.copytree(sample_root, tmp_path / "data")
    _ok("prepare", data, "--out", tmp_path / "prep", *TINY)
    ids = Prepared(tmp_path / "prep").test_ids
    fake_candidate(tmp_path / "cands" / "zero", "zero", ids, one_hot([0] * len(ids), 17))
    fake_candidate(tmp_path / "cands" / "one", "one", ids, one_hot([1] * len(ids), 17))
    hard = set(_table(data / "hardcases.csv")["ID"])
    new_id = next(i for i in ids if i not in hard)
    return SimpleNamespace(data=data, prep=tmp_path / "prep", cands=tmp_path / "cands",
                           n=len(hard), new_id=new_id, root=tmp_path)  # fmt: skip


def test_8_a_verdict_added_after_prepare_counts(hard_world):
    w = hard_world
    copy_before = snapshot(w.prep)
    hc = w.data / "hardcases.csv"
    _ok("hardcases", "add", w.new_id, "--target", "0", "--note", "added after prepare",
        "--file", hc)  # fmt: skip
    out = _ok("hardcases", "compare", w.cands, "--prepared", w.prep, "--out", w.root / "cmp")
    n = w.n + 1
    assert out.splitlines()[0] == f"hard cases: {hc} ({n} verdicts, {n} used)"
    assert w.new_id in _table(w.root / "cmp" / "per_image.csv")["ID"].tolist()
    record = json.loads((w.root / "cmp" / "winner.json").read_text())
    assert record["hardcases_file"] == str(hc) and record["hardcases_verdicts"] == n
    assert record["hardcases_sha256"] == hashlib.sha256(hc.read_bytes()).hexdigest()
    assert snapshot(w.prep) == copy_before  # the prepared copy was neither used nor touched

    out = _ok("report", "--prepared", w.prep, "--comparison", w.root / "cmp", "--on", "hardcases",
              "--out", w.root / "report" / "r.html")  # fmt: skip
    assert f"report on {n} images (hardcases)" in out
    assert f"hard cases: {hc} ({n} verdicts, {n} used)" in out.splitlines()

    # a later verdict: the report says the comparison is out of date
    other = next(i for i in Prepared(w.prep).test_ids if i not in set(_table(hc)["ID"]))
    _ok("hardcases", "add", other, "--target", "1", "--file", hc)
    out = _ok("report", "--prepared", w.prep, "--comparison", w.root / "cmp",
              "--out", w.root / "report2" / "r.html")  # fmt: skip
    assert f"{hc} has changed since: run `docsort hardcases compare` again" in out


def test_8_hardcases_file_option_and_a_moved_data_root(hard_world):
    w = hard_world
    mine = w.root / "my-verdicts.csv"
    mine.write_text(f"ID,target,note,kind\n{w.new_id},3,,hard\n")
    out = _ok("hardcases", "compare", w.cands, "--prepared", w.prep, "--out", w.root / "cmp",
              "--hardcases", mine)  # fmt: skip
    assert out.splitlines()[0] == f"hard cases: {mine} (1 verdict, 1 used)"
    rc, _, err = run_cli("hardcases", "compare", w.cands, "--prepared", w.prep,
                         "--out", w.root / "cmp2", "--hardcases", w.root / "none.csv")  # fmt: skip
    assert rc == 2 and one_line(err) == f"{w.root / 'none.csv'}: hard-case file not found"

    moved = w.data.rename(w.root / "data-moved")
    out = _ok("hardcases", "compare", w.cands, "--prepared", w.prep, "--out", w.root / "cmp3")
    assert out.splitlines()[0] == (
        f"hard cases: {w.prep / 'hardcases.csv'} ({w.n} verdicts, {w.n} used); the copy made at "
        f"prepare time (data root {w.root / 'data'} not found)"
    )
    assert moved.is_dir()


# ---------------------------------------------------------------- 9: lineage on every route


def _lineage(csv_uri: str | Path) -> dict:
    return json.loads(Path(str(csv_uri)[: -len(".csv")] + ".lineage.json").read_text())


def test_9_the_readme_submission_command_writes_the_full_lineage(world, tmp_path):
    out = _ok("submission", "--prepared", world.prep, "--probs", world.cand / "probs.csv",
              "--out", tmp_path / "results", "--candidate", "soft")  # fmt: skip
    csv = out.split("submission written to ")[1].strip()
    lin = _lineage(csv)
    weights = world.member / "model.safetensors"
    assert lin["spec"]["name"] == "soft" and lin["spec"]["members"][0]["model"] == str(
        world.member.resolve()
    )
    assert lin["spec_file"] == str((world.cand / "candidate.yaml").resolve())
    assert lin["checkpoints"] == {
        str(weights.resolve()): hashlib.sha256(weights.read_bytes()).hexdigest()
    }
    assert lin["tta_views"] and lin["tta_views"] == lin["spec"]["tta_views"]
    info = json.loads((world.prep / "prepared.json").read_text())
    assert lin["data_fingerprint"] == info["fingerprint"] and lin["code_version"]

    # `candidate submission` and the pipelines' route (write_winner_submission) write the same lineage
    keys = ("spec", "checkpoints", "tta_views", "data_fingerprint", "code_version")
    other = _ok("candidate", "submission", world.cand, "--prepared", world.prep,
                "--out", tmp_path / "results2")  # fmt: skip
    lin2 = _lineage(other.split("submission written to ")[1].strip())
    assert {k: lin2[k] for k in keys} == {k: lin[k] for k in keys}
    from docsort.review.compare import compare_candidates
    from docsort.review.submission import write_winner_submission

    cmp = compare_candidates(world.prep, [world.cand], tmp_path / "cmp")
    uri = write_winner_submission(
        world.prep, cmp, tmp_path / "run-artifact", str(tmp_path / "results3")
    )
    lin3 = _lineage(uri)
    assert {k: lin3[k] for k in keys} == {k: lin[k] for k in keys}
    same = Path(uri).name  # the run's artifact and output_root get the same version name
    assert (tmp_path / "run-artifact" / "submissions" / same).is_file()


def test_9_probabilities_without_a_spec_say_so(world, tmp_path):
    out = _ok(
        "submission",
        "--prepared",
        world.prep,
        "--probs",
        world.pred / "probs.csv",
        "--out",
        tmp_path / "a",
    )
    lin = _lineage(out.split("submission written to ")[1].strip())
    assert lin["spec"] is None and lin["model"] == str(world.member)
    assert lin["checkpoints"] and lin["tta_views"]

    alone = tmp_path / "elsewhere" / "probs.csv"
    alone.parent.mkdir()
    shutil.copyfile(world.cand / "probs.csv", alone)
    rc, out, err = run_cli("submission", "--prepared", world.prep, "--probs", alone, "--out", tmp_path / "b",
                           "--candidate", "ext")  # fmt: skip
    assert rc == 0, err
    lin = _lineage(out.split("submission written to ")[1].strip())
    assert lin["spec"] is None and lin["checkpoints"] == {} and lin["tta_views"] == []
    assert lin["spec_note"].startswith("no candidate.yaml or predict.json beside probs.csv")
    assert lin["probabilities_sha256"] == hashlib.sha256(alone.read_bytes()).hexdigest()
    assert err.strip() == f"lineage: spec null ({lin['spec_note']})"


# ---------------------------------------------------------------- EXIF orientation


def _jpeg(pixels: np.ndarray, orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_exif_orientation_6_is_decoded_upright():
    stored = np.full((20, 40), 255, np.uint8)
    stored[:, :20] = 0  # left half dark as stored; Orientation=6: turn 90 degrees clockwise
    img = decode_image(_jpeg(stored, 6), channels=1, max_pixels=10**6, name="phone.jpg")
    assert img.shape == (40, 20)
    assert img[:18].mean() < 10 and img[22:].mean() > 245  # the left half is now on top
    plain = decode_image(_jpeg(stored), channels=1, max_pixels=10**6, name="scan.jpg")
    assert plain.shape == (20, 40)


def test_exif_orientation_reaches_the_prepared_cache(sample_root, tmp_path):
    data = shutil.copytree(sample_root, tmp_path / "data")
    frame = _table(data / "train.csv")
    page = np.asarray(Image.open(data / "train" / frame.loc[0, "ID"]).convert("L"))
    # the same page twice: stored upright, and stored sideways as a phone does, with the tag
    (data / "train" / "upright.jpg").write_bytes(_jpeg(page))
    (data / "train" / "phone.jpg").write_bytes(_jpeg(np.rot90(page).copy(), 6))
    extra = pd.DataFrame(
        {"ID": ["upright.jpg", "phone.jpg"], "target": [frame.loc[0, "target"]] * 2}
    )
    pd.concat([frame, extra]).to_csv(data / "train.csv", index=False)
    _ok("prepare", data, "--out", tmp_path / "prep", *TINY)
    prep = Prepared(tmp_path / "prep")
    rows = {i: n for n, i in enumerate(prep.index["ID"])}
    cache = prep.images("train")
    a = cache[rows["upright.jpg"]].astype(float)
    b = cache[rows["phone.jpg"]].astype(float)
    sideways = np.rot90(a)
    assert np.abs(a - b).mean() < 3 < np.abs(sideways - b).mean()


@pytest.mark.slow  # over 9 s on 2 cores: `make test-slow`
def test_8_a_data_root_on_s3_gives_its_current_verdicts(s3_server, sample_root, tmp_path):
    uri = f"s3://{s3_server.bucket}/datasets/tiny"
    storage.upload_dir(sample_root, uri)
    _ok("prepare", uri, "--out", tmp_path / "prep", *TINY)
    ids = Prepared(tmp_path / "prep").test_ids
    fake_candidate(tmp_path / "cands" / "zero", "zero", ids, one_hot([0] * len(ids), 17))
    hard = _table(sample_root / "hardcases.csv")
    new_id = next(i for i in ids if i not in set(hard["ID"]))
    # the verdict file changes on S3 after prepare (another reviewer, a sync job)
    rows = pd.concat(
        [hard, pd.DataFrame([{"ID": new_id, "target": "2", "note": "", "kind": "hard"}])]
    )
    storage.write_text_atomic(f"{uri}/hardcases.csv", rows.to_csv(index=False))
    out = _ok("hardcases", "compare", tmp_path / "cands", "--prepared", tmp_path / "prep",
              "--out", tmp_path / "cmp")  # fmt: skip
    n = len(hard) + 1
    assert out.splitlines()[0] == f"hard cases: {uri}/hardcases.csv ({n} verdicts, {n} used)"
    assert s3_server.secret not in out
