"""Orientation learned without labels: view labels, the orientation stage, predict --orientation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from docsort.core.choices import VIEW_NAMES
from docsort.models.orientation import (
    COMPOSE,
    INVERSE,
    UprightRunner,
    apply_views,
    load_orientation,
    orientation_labels,
    undo,
    upright,
    view_log_probs,
)
from docsort.models.tta import VIEWS
from tests.conftest import TINY
from tests.scenario import one_line, run_cli

# An orientation model small and fast enough for the tiny data (it learns nothing in one epoch).
ORI_TINY = [*TINY, "orientation.epochs=1", "orientation.image_size=32",
            "orientation.batch_size=256", "orientation.model=lcnet_035"]  # fmt: skip


def _asymmetric(b: int = 2, c: int = 1, s: int = 6) -> torch.Tensor:
    """Pages whose 8 views all differ (distinct values everywhere)."""
    return torch.arange(b * c * s * s, dtype=torch.int64).reshape(b, c, s, s)


def test_labels_name_the_view_given_and_undo_turns_every_view_upright() -> None:
    x = _asymmetric()
    views, labels = orientation_labels(x)
    assert views.shape == (16, 1, 6, 6) and labels.tolist() == [v for v in range(8) for _ in "ab"]
    seen = set()
    for v, name in enumerate(VIEW_NAMES):
        block = views[labels == v]
        assert torch.equal(block, VIEWS[name](x))  # label v is exactly models.tta's view v
        assert torch.equal(undo(block, [v, v]), x)  # and undoing v gives the upright page back
        seen.add(block[0].numpy().tobytes())
    assert len(seen) == 8  # the array is asymmetric enough to tell all views apart
    mixed = np.array([3, 6])
    assert torch.equal(undo(apply_views(x, mixed), mixed), x)
    assert sorted(INVERSE.tolist()) == list(range(8))
    for w in range(8):  # COMPOSE[w, v] is the view of "view w of view v"
        for v in range(8):
            want = VIEWS[VIEW_NAMES[w]](VIEWS[VIEW_NAMES[v]](x))
            assert torch.equal(want, VIEWS[VIEW_NAMES[int(COMPOSE[w, v])]](x))


def test_sample_data_records_the_view_each_image_was_given() -> None:
    """``_orient``'s view name is the view of models.tta that makes its image (all 8 occur)."""
    from docsort.data.sample import _orient

    img = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    rng = np.random.default_rng(0)
    found = set()
    for _ in range(400):
        out, view = _orient(img.copy(), rng, p_rot=0.75, p_flip=0.5)
        want = VIEWS[view](torch.from_numpy(img.copy()).permute(2, 0, 1)).permute(1, 2, 0)
        assert np.array_equal(out, want.numpy()), view
        found.add(view)
    assert found == set(VIEW_NAMES)


def test_sample_views_replays_the_generated_test_images(sample_root: Path) -> None:
    from docsort.data.sample import sample_views

    views = sample_views(per_class=6, test_per_class=2, seed=3)
    with open(sample_root / "test_labels.csv", newline="") as f:
        ids = {r["ID"] for r in csv.DictReader(f)}
    assert set(views) == ids and set(views.values()) <= set(VIEW_NAMES)
    assert len(set(views.values())) > 2  # test images are turned, not all upright


class _Matcher(torch.nn.Module):
    """A 'model' that knows the 8 views of one template page: logits = -distance to each."""

    def __init__(self, template: torch.Tensor):
        super().__init__()
        views, _ = orientation_labels(template)
        self.register_buffer("views", views.flatten(1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -torch.cdist(x.flatten(1).float(), self.views)


def test_eight_view_voting_maps_each_answer_back_to_the_page_view() -> None:
    page = (torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(
        torch.uint8
    )
    model = _Matcher(page.float() / 127.5 - 1.0)
    x, labels = orientation_labels(page)
    for tta in (False, True):
        lp = view_log_probs(model, x, size=16, device=torch.device("cpu"), tta=tta)
        assert lp.argmax(-1).tolist() == labels.tolist()


@pytest.fixture(scope="module")
def orientation_model(prepared_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ori") / "ori"
    rc, _, err = run_cli("orientation", "--prepared", prepared_root, "--out", out, *ORI_TINY)
    assert rc == 0, err
    return out


@pytest.mark.slow  # trains the module's orientation model (~30 s on 2 cores)
def test_orientation_cli_writes_a_model_folder_with_held_out_accuracy(
    orientation_model: Path, prepared_root: Path
) -> None:
    assert {"model.safetensors", "model.yaml", "metrics.json", "run.json"} <= {
        p.name for p in orientation_model.iterdir()
    }
    m = json.loads((orientation_model / "metrics.json").read_text())
    assert m["held_out_fold"] == 0 and m["held_out_pages"] > 0 and m["train_pages"] > 0
    assert 0.0 <= m["held_out"]["view_accuracy"] <= 1.0
    assert set(m["held_out"]["per_view_accuracy"]) == set(VIEW_NAMES)
    orienter = load_orientation(orientation_model)
    assert orienter.size == 32 and orienter.member.class_names == list(VIEW_NAMES)
    rc, _, err = run_cli(
        "orientation", "--prepared", prepared_root, "--out", orientation_model, *ORI_TINY,
        "orientation.epochs=2",
    )  # fmt: skip
    assert rc == 2 and "orientation.epochs=1" in one_line(err)  # other work: refused


@pytest.mark.slow  # trains the module's orientation model (~30 s on 2 cores)
def test_upright_runner_hands_the_classifier_upright_pages(orientation_model: Path) -> None:
    orienter = load_orientation(orientation_model)
    x = (torch.rand(5, 1, 48, 48, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    got = []

    def inner(batch: torch.Tensor, views) -> np.ndarray:
        got.append(batch)
        return np.zeros((len(views), batch.shape[0], 3), dtype=np.float32)

    runner = UprightRunner(inner, orienter)
    runner(x, ["identity"])
    found, want = upright(orienter, x)
    assert torch.equal(got[0], want) and torch.equal(undo(want, INVERSE[found]), x)


@pytest.mark.slow  # trains the module's orientation model (~30 s on 2 cores)
def test_predict_with_orientation_records_the_views(
    orientation_model: Path, trained_member: Path, prepared_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred"
    rc, _, err = run_cli(
        "predict", "--prepared", prepared_root, "--model", trained_member, "--out", out,
        "--orientation", orientation_model, *TINY, "tta.views=[identity]",
    )  # fmt: skip
    assert rc == 0, err
    info = json.loads((out / "predict.json").read_text())
    assert info["orientation"]["model"] == str(orientation_model)
    assert info["views"] == ["identity"]
    with open(out / "orientation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out / "probs.csv", newline="") as f:
        ids = [r["ID"] for r in csv.DictReader(f)]
    assert [r["ID"] for r in rows] == ids and {r["view"] for r in rows} <= set(VIEW_NAMES)
    assert sum(info["orientation"]["found"].values()) == len(ids)
    ident = json.loads((out / "run.json").read_text())["identity"]
    assert ident["orientation"] != "none"


@pytest.mark.parametrize("kind", ["missing", "empty", "classifier"])
def test_bad_orientation_folder_is_one_line_and_exit_2(
    kind: str, trained_member: Path, prepared_root: Path, tmp_path: Path
) -> None:
    bad = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "classifier": trained_member}
    (tmp_path / "empty").mkdir()
    out = tmp_path / "pred"
    rc, _, err = run_cli(
        "predict", "--prepared", prepared_root, "--model", trained_member, "--out", out,
        "--orientation", bad[kind], *TINY,
    )  # fmt: skip
    line = one_line(err)
    assert rc == 2
    assert {"missing": "not found", "empty": "not a model folder",
            "classifier": "not an orientation model"}[kind] in line  # fmt: skip
    assert not (out / "probs.csv").exists()


def test_orientation_settings_are_checked() -> None:
    from docsort.core.config import load_config
    from docsort.core.errors import ConfigError

    with pytest.raises(ConfigError, match="orientation.image_size=8"):
        load_config(["orientation.image_size=8"])
    with pytest.raises(ConfigError, match="orientation.model"):
        load_config(["orientation.model=no_such_net"])
