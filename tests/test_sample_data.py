"""The sample-data generator writes a valid, deterministic data-contract dataset."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

import cv2
import pytest

from docsort.core.errors import DocsortError
from docsort.data.sample import CLASS_NAMES, generate_sample_data


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sd") / "data"
    assert generate_sample_data(out, per_class=6, test_per_class=4, seed=3, max_side=96) == out
    return out


def test_layout_and_csv_columns(sample: Path) -> None:
    assert {p.name for p in sample.iterdir()} == {
        "train.csv",
        "meta.csv",
        "train",
        "test",
        "sample_submission.csv",
        "test_labels.csv",
        "hardcases.csv",
        ".docsort",  # marks the folder as docsort's own output
    }
    cols, meta = _rows(sample / "meta.csv")
    assert cols == ["target", "class_name"]
    assert [(int(r["target"]), r["class_name"]) for r in meta] == list(enumerate(CLASS_NAMES))
    assert len(CLASS_NAMES) == 17 and CLASS_NAMES[3] == "confirmation_of_admission_and_discharge"

    cols, train = _rows(sample / "train.csv")
    assert cols == ["ID", "target"]
    assert {r["ID"] for r in train} == {p.name for p in (sample / "train").iterdir()}
    assert len({r["ID"] for r in train}) == len(train)
    assert {int(r["target"]) for r in train} == set(range(17))

    assert _rows(sample / "sample_submission.csv")[0] == ["ID", "target"]
    assert _rows(sample / "test_labels.csv")[0] == ["ID", "target"]
    assert _rows(sample / "hardcases.csv")[0] == ["ID", "target", "note", "kind"]


def test_images_are_readable_jpegs_of_bounded_size(sample: Path) -> None:
    files = sorted((sample / "train").iterdir()) + sorted((sample / "test").iterdir())
    for p in files:
        assert p.suffix == ".jpg"
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        assert img is not None, p
        assert img.ndim == 3 and img.shape[2] == 3
        assert 16 <= max(img.shape[:2]) <= 96


def test_test_ids_agree_across_files(sample: Path) -> None:
    _, sub = _rows(sample / "sample_submission.csv")
    _, labels = _rows(sample / "test_labels.csv")
    files = {p.name for p in (sample / "test").iterdir()}
    assert {r["ID"] for r in sub} == files == {r["ID"] for r in labels}
    assert len(sub) == 17 * 4
    assert all(r["target"] == "0" for r in sub)
    assert Counter(int(r["target"]) for r in labels) == dict.fromkeys(range(17), 4)
    # the submission order is shuffled, not grouped by class
    order = [int(r["target"]) for r in labels]
    assert order != sorted(order)


def test_hardcases_are_labelled_test_images(sample: Path) -> None:
    _, hard = _rows(sample / "hardcases.csv")
    _, labels = _rows(sample / "test_labels.csv")
    truth = {r["ID"]: int(r["target"]) for r in labels}
    assert hard, "hardcases.csv has no rows"
    for r in hard:
        assert r["ID"] in truth
        assert int(r["target"]) == truth[r["ID"]]
        assert r["kind"] == "hard"
        assert r["note"].startswith("looks like ")
    # only the confusable classes, at most two each
    per_class = Counter(int(r["target"]) for r in hard)
    assert set(per_class) == {3, 4, 7, 14}
    assert max(per_class.values()) <= 2


def test_ids_do_not_reveal_the_class(sample: Path) -> None:
    ids = [p.name for p in (sample / "train").iterdir()] + [
        p.name for p in (sample / "test").iterdir()
    ]
    words = {w for name in CLASS_NAMES for w in name.split("_") if len(w) > 3}
    for image_id in ids:
        assert image_id.startswith("doc_") and len(image_id) == len("doc_") + 12 + len(".jpg")
        int(image_id[4:16], 16)  # hex
        assert not any(w in image_id for w in words)


def test_train_counts_are_imbalanced_around_the_mean(tmp_path: Path) -> None:
    out = generate_sample_data(tmp_path / "d", per_class=20, test_per_class=1, max_side=64)
    _, train = _rows(out / "train.csv")
    counts = Counter(int(r["target"]) for r in train)
    assert set(counts) == set(range(17))
    assert 14 <= min(counts.values()) < max(counts.values()) <= 26
    assert max(counts.values()) - min(counts.values()) >= 8


def test_tiny_per_class_keeps_at_least_two(tmp_path: Path) -> None:
    out = generate_sample_data(tmp_path / "d", per_class=3, max_side=64)
    _, train = _rows(out / "train.csv")
    counts = Counter(int(r["target"]) for r in train)
    assert min(counts.values()) == 2 and max(counts.values()) == 4
    _, labels = _rows(out / "test_labels.csv")
    assert Counter(int(r["target"]) for r in labels) == dict.fromkeys(range(17), 2)  # default


def test_deterministic_per_seed(tmp_path: Path) -> None:
    kw = {"per_class": 2, "test_per_class": 2, "max_side": 80}
    a = _hashes(generate_sample_data(tmp_path / "a", seed=11, **kw))
    b = _hashes(generate_sample_data(tmp_path / "b", seed=11, **kw))
    c = _hashes(generate_sample_data(tmp_path / "c", seed=12, **kw))
    assert a == b
    assert set(a) != set(c)  # different random IDs
    assert sorted(a.values()) != sorted(c.values())


def test_refuses_non_empty_output_and_leaves_it_alone(tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DocsortError, match="not an empty folder"):
        generate_sample_data(out, per_class=2, max_side=64)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp folder left


def test_empty_output_folder_is_filled(tmp_path: Path) -> None:
    out = tmp_path / "d"
    out.mkdir()
    generate_sample_data(out, per_class=2, test_per_class=1, max_side=64)
    assert (out / "train.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


@pytest.mark.parametrize("kwargs", [{"per_class": 0}, {"test_per_class": 0}, {"max_side": 10}])
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(DocsortError):
        generate_sample_data(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()
