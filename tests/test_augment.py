"""Augmentation: Augraphy offline copies (made in prepare, keyed, reused), online mode, augment-preview."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from docsort.core.config import load_config
from docsort.data.prepared import Prepared
from tests.conftest import TINY
from tests.scenario import run_cli

OFFLINE = ["aug.augraphy.mode=offline", "aug.augraphy.copies=1", "aug.augraphy.probability=1.0"]


@pytest.fixture(scope="module")
def augraphy_prepared(sample_root, tmp_path_factory):
    from docsort.data.prepare import prepare

    return prepare(str(sample_root), tmp_path_factory.mktemp("aug") / "prepared", [*TINY, *OFFLINE])


@pytest.mark.slow  # 6-10 s on 2 cores: `make test-slow`
def test_offline_copies_are_made_in_prepare_and_reused_on_the_second(
    augraphy_prepared, sample_root
):
    from docsort.data.prepare import prepare

    prep = Prepared(augraphy_prepared)
    info = prep.info["augraphy"]
    assert info["reused"] is False and info["copies"] == 1 and info["seconds_per_copy"] > 0
    clean, copies = prep.images("train"), prep.images("augraphy")
    assert copies.shape == (len(clean), 1, 48, 48) and copies.dtype == np.uint8
    changed = np.mean([not np.array_equal(clean[i], copies[i, 0]) for i in range(len(clean))])
    assert changed > 0.5  # most images are degraded (a draw may leave one untouched)
    name = prep.info["cache"]["augraphy"]
    inode = (augraphy_prepared / "cache" / name).stat().st_ino
    prepare(str(sample_root), augraphy_prepared, [*TINY, *OFFLINE])
    again = Prepared(augraphy_prepared)
    assert again.info["cache"]["augraphy"] == name and again.info["augraphy"]["reused"] is True
    assert (augraphy_prepared / "cache" / name).stat().st_ino == inode  # linked, not rebuilt


def test_copies_key_covers_settings_and_seed():
    from docsort.data.augraphy_copies import copies_key

    def key(*over):
        return copies_key("abc", load_config([*OFFLINE, *over]))

    base = key()
    assert base == key()
    assert (
        len({base, key("aug.augraphy.copies=2"), key("aug.augraphy.pipeline=full"), key("seed=1")})
        == 4
    )
    assert (
        copies_key("abd", load_config(OFFLINE)) != base
    )  # another clean cache (images or resize spec)


@pytest.mark.slow  # over 9 s on 2 cores: `make test-slow`
def test_copies_depend_on_the_seed_not_on_the_number_of_workers(tmp_path):
    """Same seed: the same bytes however many processes draw them; another seed: other draws."""
    from docsort.data.augraphy_copies import build_copies

    rng = np.random.default_rng(0)
    clean = np.full((4, 40, 40), 235, np.uint8)
    clean[:, 10:30:4, 5:35] = rng.integers(0, 60, size=(4, 5, 30))  # lines of "text"
    np.save(tmp_path / "train.npy", clean)
    cfg = load_config([*OFFLINE, "aug.augraphy.copies=2"])
    build_copies(tmp_path / "train.npy", tmp_path / "one.npy", cfg, workers=1)
    build_copies(tmp_path / "train.npy", tmp_path / "two.npy", cfg, workers=2)
    one = np.load(tmp_path / "one.npy")
    assert one.shape == (4, 2, 40, 40) and np.array_equal(one, np.load(tmp_path / "two.npy"))
    assert not np.array_equal(one[:, 0], clean)  # the copies are degraded, not the clean images
    build_copies(
        tmp_path / "train.npy",
        tmp_path / "seed1.npy",
        load_config([*OFFLINE, "aug.augraphy.copies=2", "seed=1"]),
        workers=1,
    )
    assert not np.array_equal(one, np.load(tmp_path / "seed1.npy"))


@pytest.mark.slow  # `make test-slow`
def test_training_draws_from_the_offline_copies(augraphy_prepared, tmp_path):
    from docsort.data.augment import to_tensor
    from docsort.train.train import Run

    cfg = load_config(
        [
            *TINY,
            *OFFLINE,
            "aug.preset=none",
            "aug.dihedral=false",
            "fold=0",
            "tracking.wandb=disabled",
            "model=resnet10t",
        ]
    )
    run = Run(Prepared(augraphy_prepared), cfg, 0, tmp_path / "m")
    ds = run.train_loader.dataset
    copies = Prepared(augraphy_prepared).images("augraphy")
    x, _ = ds[0]
    assert torch.equal(
        x, to_tensor(copies[run.tr_rows[0], 0])
    )  # probability 1: always a degraded copy
    ds.copy_p = 0.0
    assert torch.equal(ds[0][0], to_tensor(run.images[run.tr_rows[0]]))


def test_offline_mode_without_copies_fails_before_training(prepared_root, tmp_path):
    code, _, err = run_cli(
        "train",
        "--prepared",
        prepared_root,
        "--out",
        tmp_path / "m",
        *TINY,
        *OFFLINE,
        "tracking.wandb=disabled",
    )
    assert code == 2 and "has no Augraphy copies" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m" / "checkpoints").exists()


def test_online_augraphy_degrades_samples():
    from docsort.data.augment import TrainTransform, to_tensor

    aug = OmegaConf.create(
        {
            "dihedral": False,
            "preset": "none",
            "augraphy": {"mode": "online", "pipeline": "doc", "copies": 0, "probability": 1.0},
        }
    )
    img = np.full((64, 64), 240, np.uint8)
    img[16:48:6, 8:56] = 20
    t = TrainTransform(aug, 64, seed=0)
    outs = [t(img) for _ in range(16)]
    assert all(o.shape == (1, 64, 64) for o in outs)
    # each stage fires with p 0.2-0.4, so a draw can leave the page untouched; most must not
    assert sum(not torch.equal(o, to_tensor(img)) for o in outs) >= 10


def test_augment_preview_writes_a_grid_from_a_prepared_folder_and_a_dataset_root(
    augraphy_prepared, sample_root, tmp_path
):
    from PIL import Image

    out = tmp_path / "grid.png"
    code, printed, err = run_cli(
        "augment-preview", augraphy_prepared, "--aug", "doc_strong", "--out", out,
        "--images", "3", "--draws", "2", *OFFLINE,
    )  # fmt: skip
    assert code == 0, err
    assert "preview written to" in printed
    with Image.open(out) as im:
        w, h = im.size
    assert (
        w > 700 and 3 * 200 < h < 3 * 400
    )  # 3 rows x (clean + 2 draws), wide enough for the title
    out2 = tmp_path / "grid_root.png"
    code, _, err = run_cli(
        "augment-preview", sample_root, "--aug", "light", "--out", out2,
        "--images", "4", "--draws", "3", "data.image_size=64",
    )  # fmt: skip
    assert code == 0, err
    with Image.open(out2) as im:
        assert im.size[0] > 4 * 100 and im.size[1] > 4 * 100
    code, _, err = run_cli(
        "augment-preview", sample_root, "--aug", "nonsense", "--out", tmp_path / "x.png"
    )
    assert code == 2 and "doc_light" in err and not (tmp_path / "x.png").exists()


def test_prepared_json_records_the_augraphy_timing(augraphy_prepared):
    """The timing describes the run that made the copies: its sizes, and CPU time that fits in
    ``workers`` x wall time; the sidecar beside the copies holds the same record (what a reuse reads)."""
    prep = Prepared(augraphy_prepared)
    info = json.loads((augraphy_prepared / "prepared.json").read_text())["augraphy"]
    n = len(prep.images("train"))
    assert info["images"] == n and info["copies"] == 1 and info["pipeline"] == "doc"
    assert 1 <= info["workers"] <= n
    busy = info["seconds_per_copy"] * n * info["copies"]
    assert 0 < busy <= info["workers"] * (info["wall_s"] + 0.01) + 1e-4 * n  # rounding slack
    sidecar = augraphy_prepared / "cache" / prep.info["cache"]["augraphy"].replace(".npy", ".json")
    assert json.loads(sidecar.read_text()) == {k: v for k, v in info.items() if k != "reused"}
