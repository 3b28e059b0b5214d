"""Fast TTA inference: batched views equal the per-view loop, sensible defaults, cache reads."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from docsort.core.config import load_config
from docsort.core.errors import ConfigError
from docsort.data.augment import to_tensor
from docsort.data.prepared import Prepared
from docsort.models.factory import create_model, save_member
from docsort.models.tta import VIEWS, TorchTTA, auto_batch_size, auto_workers
from tests.conftest import TINY


def make_member(
    folder: Path, prepared_root: Path, seed: int = 0, overrides: tuple[str, ...] = ()
) -> Path:
    """An untrained (randomly initialised) member matching the tiny prepared data: enough to compare runtimes."""
    cfg = load_config([*TINY, *overrides])
    torch.manual_seed(seed)
    model = create_model(cfg, Prepared(prepared_root).num_classes)
    return save_member(folder, model, cfg, Prepared(prepared_root).class_names)


@pytest.fixture(scope="module")
def member_dir(prepared_root, tmp_path_factory) -> Path:
    return make_member(tmp_path_factory.mktemp("speed") / "m", prepared_root)


def _loop_logits(model: torch.nn.Module, images: np.ndarray, views: list[str]) -> np.ndarray:
    """The reference: one image, one view at a time, default memory layout."""
    out = np.zeros((len(views), len(images), model.num_classes), np.float32)
    with torch.no_grad():
        for i, img in enumerate(images):
            x = to_tensor(img)[None]
            for v, name in enumerate(views):
                out[v, i] = model(VIEWS[name](x)).numpy()[0]
    return out


@pytest.mark.slow  # `make test-slow`
def test_batched_tta_equals_per_view_loop(member_dir, prepared_root):
    from docsort.models.factory import load_member

    images = np.array(Prepared(prepared_root).images("test")[:5])
    views = list(VIEWS)
    ref = _loop_logits(load_member(member_dir).model, images, views)
    runner = TorchTTA(load_member(member_dir).model, torch.device("cpu"), "fp32")
    got = runner(torch.from_numpy(images).unsqueeze(1), views)
    assert got.shape == (8, 5, 17) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    p_ref, p_got = torch.from_numpy(ref).softmax(-1), torch.from_numpy(got).softmax(-1)
    assert float((p_ref - p_got).abs().max()) < 1e-5
    # the views really differ (a broken stack_views that repeated identity would pass the check above for symmetric inputs)
    assert np.abs(got[0] - got[1]).max() > 1e-4


def test_views_are_the_eight_dihedral_transforms():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    outs = {name: f(x) for name, f in VIEWS.items()}
    assert len({tuple(o.flatten().tolist()) for o in outs.values()}) == 8
    a = x[0, 0].numpy()
    np.testing.assert_array_equal(outs["rot90"][0, 0].numpy(), np.rot90(a, 1))
    np.testing.assert_array_equal(outs["flip_rot270"][0, 0].numpy(), np.rot90(a[:, ::-1], 3))


def test_bf16_tta_stays_close_to_fp32(member_dir, prepared_root):
    from docsort.models.factory import load_member

    x = torch.from_numpy(np.array(Prepared(prepared_root).images("test")[:6])).unsqueeze(1)
    views = ["identity", "rot90"]
    fp32 = TorchTTA(load_member(member_dir).model, torch.device("cpu"), "fp32")(x, views)
    bf16 = TorchTTA(load_member(member_dir).model, torch.device("cpu"), "bf16")(x, views)
    assert bf16.dtype == np.float32  # logits leave autocast as fp32
    p32, p16 = torch.from_numpy(fp32).softmax(-1), torch.from_numpy(bf16).softmax(-1)
    assert 0 < float((p32 - p16).abs().max()) < 0.02


def test_batch_size_and_workers_follow_the_device_unless_set():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert auto_batch_size("auto", cpu, 8, 160) == 8  # 64 views of 160 px per forward pass
    assert auto_batch_size("auto", cpu, 1, 160) == 64
    assert auto_batch_size(None, cpu, 8, 32) == 200
    assert auto_batch_size("auto", gpu, 8, 224) == 64
    assert auto_batch_size("auto", cpu, 8, 4096) == 1
    assert auto_batch_size(12, cpu, 8, 160) == 12
    with pytest.raises(ConfigError, match="tta.batch_size=0 must be >= 1 or auto"):
        auto_batch_size(0, cpu, 8, 160)
    assert (
        auto_workers("auto", cpu, decode=False) == 0
    )  # cache rows cost microseconds: no worker steals a core
    assert auto_workers("auto", cpu, decode=True) >= 1  # JPEGs are decoded while the model runs
    assert auto_workers("auto", gpu, decode=True) >= 2
    assert auto_workers(3, cpu, decode=False) == 3
    with pytest.raises(ConfigError, match="tta.workers=-1"):
        auto_workers(-1, cpu, decode=True)


def test_cache_reader_reads_rows_without_mapping_and_survives_pickling(prepared_root):
    from docsort.predict.predict import CacheImages

    prep = Prepared(prepared_root)
    ref = prep.images("test")
    src = CacheImages(prepared_root / "cache" / prep.info["cache"]["test"])
    assert len(src) == len(ref)
    np.testing.assert_array_equal(src.read(3, 9), ref[3:9])
    clone = pickle.loads(pickle.dumps(src))  # what a DataLoader worker receives
    np.testing.assert_array_equal(clone.read(len(ref) - 2, len(ref)), ref[-2:])
    assert clone.read(0, 1).flags.writeable


def test_predict_with_loader_workers_equals_in_process(member_dir, prepared_root, tmp_path):
    from docsort.core.probs import read_probs
    from docsort.predict.predict import predict

    base = [*TINY, "precision=fp32", "tta.batch_size=5", "tta.views=[identity,rot180]"]
    predict(prepared_root, member_dir, tmp_path / "w0", [*base, "tta.workers=0"])
    predict(prepared_root, member_dir, tmp_path / "w1", [*base, "tta.workers=1"])
    _, p0, _ = read_probs(tmp_path / "w0" / "probs.csv")
    _, p1, _ = read_probs(tmp_path / "w1" / "probs.csv")
    np.testing.assert_array_equal(p0, p1)


def test_invalid_prediction_settings_fail_before_any_work(member_dir, prepared_root, tmp_path):
    from docsort.predict.predict import predict

    for override, message in (
        ("runtime=tensorflow", "runtime='tensorflow' is not valid; choose from: torch, onnx"),
        ("tta.shard_size=0", "tta.shard_size=0 must be >= 1"),
        ("tta.batch_size=-3", "tta.batch_size=-3 must be >= 1 or auto"),
    ):
        with pytest.raises(ConfigError, match=message):
            predict(prepared_root, member_dir, tmp_path / "out", [*TINY, override])
        assert not (tmp_path / "out").exists()


@pytest.mark.slow  # 6-10 s on 2 cores: `make test-slow`
def test_cache_key_covers_the_whole_resize_spec(sample_root, tmp_path):
    """Besides image_size (tests/test_prepare_train_predict.py), resize mode and channels give a new cache, with new pixels."""
    from docsort.data.prepare import prepare

    out = tmp_path / "p"
    caches = {}
    for name, extra in (
        ("pad", []),
        ("stretch", ["data.resize=stretch"]),
        ("rgb", ["data.channels=3"]),
    ):
        prepare(str(sample_root), out, [*TINY, *extra])
        prep = Prepared(out)
        caches[name] = (set(prep.info["cache"].values()), np.array(prep.images("test")))
        assert {p.name for p in (out / "cache").iterdir()} >= set(prep.info["cache"].values())
    assert caches["pad"][0].isdisjoint(caches["stretch"][0]) and caches["pad"][0].isdisjoint(
        caches["rgb"][0]
    )
    assert caches["rgb"][1].shape[1:] == (48, 48, 3) and caches["pad"][1].shape[1:] == (48, 48)
    assert not np.array_equal(caches["pad"][1], caches["stretch"][1])
