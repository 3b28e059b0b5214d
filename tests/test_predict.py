"""Prediction at scale: results committed in shards, resumed after an interruption, flat memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from docsort.core.errors import DocsortError
from docsort.core.probs import read_probs
from docsort.predict.predict import predict
from tests.conftest import TINY
from tests.test_tta import make_member

# 34 test images in shards of 8: 5 shards, the last one short.
SHARDED = [
    *TINY,
    "precision=fp32",
    "tta.shard_size=8",
    "tta.batch_size=3",
    "tta.views=[identity,rot90,flip]",
]


@pytest.fixture(scope="module")
def member_dir(prepared_root, tmp_path_factory) -> Path:
    return make_member(tmp_path_factory.mktemp("predict") / "m", prepared_root, seed=1)


@pytest.fixture(scope="module")
def uninterrupted(member_dir, prepared_root, tmp_path_factory) -> Path:
    return predict(prepared_root, member_dir, tmp_path_factory.mktemp("full") / "pred", SHARDED)


class Interrupt(Exception):
    pass


def _stop_after(n: int):
    def hook(done: int, total: int) -> None:
        if done == n:
            raise Interrupt

    return hook


def _assert_same_outputs(a: Path, b: Path, atol: float = 0.0) -> None:
    """Equal outputs; ``atol`` > 0 where a batch size differs (the summation order changes)."""
    ids_a, pa, _ = read_probs(a / "probs.csv")
    ids_b, pb, _ = read_probs(b / "probs.csv")
    assert ids_a == ids_b
    np.testing.assert_allclose(pa, pb, rtol=0, atol=atol)
    va, vb = np.load(a / "views.npz"), np.load(b / "views.npz")
    assert va.files == vb.files
    np.testing.assert_array_equal(va["ids"], vb["ids"])
    for name in va.files:
        if name != "ids":
            np.testing.assert_allclose(va[name], vb[name], rtol=0, atol=atol)


def test_outputs_are_streamed_from_shards(uninterrupted, prepared_root):
    from docsort.data.prepared import Prepared

    info = json.loads((uninterrupted / "predict.json").read_text())
    assert info["shards"] == 5 and info["resumed_shards"] == 0 and info["images"] == 34
    ids, probs, _ = read_probs(uninterrupted / "probs.csv")
    assert ids == Prepared(prepared_root).test_ids
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    views = np.load(uninterrupted / "views.npz")
    assert views.files == ["ids", "identity", "rot90", "flip"]
    assert views["ids"].tolist() == ids and views["rot90"].shape == (34, 17)
    assert not (
        uninterrupted / "partial"
    ).exists()  # the work folder goes once the outputs are complete


def test_interrupted_run_keeps_finished_shards_and_resumes_to_identical_results(
    member_dir, prepared_root, uninterrupted, tmp_path
):
    out = tmp_path / "pred"
    with pytest.raises(Interrupt):
        predict(prepared_root, member_dir, out, SHARDED, on_shard=_stop_after(2))
    assert sorted(p.name for p in (out / "partial").glob("shard-*.npy")) == [
        "shard-00000.npy",
        "shard-00001.npy",
    ]
    progress = json.loads((out / "partial" / "progress.json").read_text())
    assert (
        progress["shards_done"] == 2 and progress["images_done"] == 16 and progress["images"] == 34
    )
    assert (
        not (out / "probs.csv").exists() and not (out / "predict.json").exists()
    )  # nothing passes for complete

    seen = []
    predict(prepared_root, member_dir, out, SHARDED, on_shard=lambda d, t: seen.append(d))
    assert seen == [3, 4, 5]  # only the missing shards ran
    assert json.loads((out / "predict.json").read_text())["resumed_shards"] == 2
    _assert_same_outputs(out, uninterrupted)


@pytest.mark.slow  # 6-10 s on 2 cores: `make test-slow`
def test_sigkilled_run_resumes_to_identical_results(
    member_dir, prepared_root, uninterrupted, tmp_path
):
    """A real SIGKILL after the second shard: no cleanup, no exception handling, then a plain re-run."""
    out = tmp_path / "pred"
    script = (
        "import os, signal, sys\n"
        "from docsort.predict.predict import predict\n"
        "def hook(done, total):\n"
        "    if done == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "predict(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:], on_shard=hook)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(prepared_root), str(member_dir), str(out), *SHARDED],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(list((out / "partial").glob("shard-*.npy"))) == 2
    assert not list(
        (out / "partial").glob("**/*.tmp")
    )  # atomic commits: no torn shard under its final name
    predict(prepared_root, member_dir, out, SHARDED)
    assert json.loads((out / "predict.json").read_text())["resumed_shards"] == 2
    _assert_same_outputs(out, uninterrupted)


def test_partial_results_of_other_settings_are_refused_then_discarded_with_overwrite(
    member_dir, prepared_root, uninterrupted, tmp_path
):
    """Shards of another run's views never pass for this run's: refused, or discarded on request."""
    out = tmp_path / "pred"
    with pytest.raises(Interrupt):
        predict(
            prepared_root,
            member_dir,
            out,
            [*SHARDED, "tta.views=[identity]"],
            on_shard=_stop_after(1),
        )
    with pytest.raises(DocsortError, match=r"tta.views=\[identity\]; this run asks tta.views="):
        predict(prepared_root, member_dir, out, SHARDED)
    assert len(list((out / "partial").glob("shard-*.npy"))) == 1  # kept: the user may resume it
    predict(prepared_root, member_dir, out, SHARDED, overwrite=True)
    assert json.loads((out / "predict.json").read_text())["resumed_shards"] == 0
    _assert_same_outputs(out, uninterrupted)


def test_resume_keeps_the_shard_layout_it_began_with(
    member_dir, prepared_root, uninterrupted, tmp_path
):
    """tta.shard_size is not part of the identity: a resume continues with the recorded layout."""
    out = tmp_path / "pred"
    with pytest.raises(Interrupt):
        predict(prepared_root, member_dir, out, SHARDED, on_shard=_stop_after(2))
    predict(prepared_root, member_dir, out, [*SHARDED, "tta.shard_size=5", "tta.batch_size=2"])
    info = json.loads((out / "predict.json").read_text())
    assert info["resumed_shards"] == 2 and info["shard_size"] == 8
    _assert_same_outputs(out, uninterrupted, atol=1e-6)  # tta.batch_size=2 for the rest


def test_rerun_of_a_complete_prediction_does_nothing(member_dir, prepared_root, tmp_path, capsys):
    out = predict(prepared_root, member_dir, tmp_path / "pred", [*SHARDED, "tta.views=[identity]"])
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    predict(prepared_root, member_dir, out, [*SHARDED, "tta.views=[identity]", "threads=1"])
    assert "already complete" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(DocsortError, match="use --overwrite"):  # other settings: refused
        predict(prepared_root, member_dir, out, [*SHARDED, "tta.views=[rot90]"])
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    predict(prepared_root, member_dir, out, [*SHARDED, "tta.views=[rot90]"], overwrite=True)
    assert np.load(out / "views.npz").files == ["ids", "rot90"]


def test_predict_a_plain_image_folder_decodes_like_prepare(
    member_dir, prepared_root, sample_root, uninterrupted, tmp_path
):
    """Images not in a prepared folder are decoded by loader workers with the model's image spec."""
    out = predict(sample_root / "test", member_dir, tmp_path / "pred", [*SHARDED, "tta.workers=1"])
    info = json.loads((out / "predict.json").read_text())
    assert info["source"] == "FolderImages" and info["workers"] == 1
    ids, probs, _ = read_probs(out / "probs.csv")
    assert ids == sorted(ids)
    ref_ids, ref, _ = read_probs(uninterrupted / "probs.csv")
    pos = {i: n for n, i in enumerate(ids)}
    np.testing.assert_allclose(probs[[pos[i] for i in ref_ids]], ref, atol=1e-5)


def test_bad_image_in_a_folder_fails_in_one_line_from_a_worker(member_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DocsortError) as err:
        predict(folder, member_dir, tmp_path / "pred", [*SHARDED, "tta.workers=1"])
    assert str(err.value).startswith("imgs/a.jpg: ") and "\n" not in str(err.value)
    (folder / "a.jpg").unlink()
    with pytest.raises(DocsortError, match="no images"):
        predict(folder, member_dir, tmp_path / "pred", SHARDED)
