"""The EDA picture of ``prepare``: one PNG with class balance, sizes, orientation and examples."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from PIL import Image

from docsort.data.contract import read_meta, upright
from docsort.data.prepare import _eda_plot, _examples, _orientation


def _portrait_share(folder, ids) -> float:
    shares = []
    for i in ids:
        with Image.open(folder / i) as im:
            w, h = upright(im).size
        shares.append(h > w)
    return float(np.mean(shares))


def test_prepare_records_orientation_train_and_test(sample_root, prepared_root):
    stats = json.loads((prepared_root / "stats.json").read_text())
    train = pd.read_csv(sample_root / "train.csv")["ID"].tolist()
    test = pd.read_csv(sample_root / "sample_submission.csv")["ID"].tolist()
    assert stats["portrait_share"]["train"] == _portrait_share(sample_root / "train", train)
    assert stats["portrait_share"]["test"] == _portrait_share(sample_root / "test", test)
    with Image.open(prepared_root / "eda.png") as im:
        assert im.format == "PNG" and im.size[0] >= 1400  # wide enough to read the labels


def test_eda_picture_has_one_example_per_class(sample_root, tmp_path):
    meta = read_meta(sample_root / "meta.csv")
    train = pd.read_csv(sample_root / "train.csv")
    examples = _examples(
        sample_root / "train", train["ID"].tolist(), train["target"].tolist(), meta.num_classes
    )
    assert len(examples) == meta.num_classes and all(e is not None for e in examples)
    assert all(max(e.shape[:2]) <= 240 for e in examples)
    counts = np.bincount(train["target"], minlength=meta.num_classes)
    sizes = np.array([[200, 300], [300, 200], [250, 250]])
    _eda_plot(tmp_path / "with.png", meta, counts, sizes, sizes[:1], examples)
    _eda_plot(tmp_path / "without.png", meta, counts, sizes)
    with Image.open(tmp_path / "with.png") as a, Image.open(tmp_path / "without.png") as b:
        assert a.size[0] == b.size[0] and a.size[1] > b.size[1]  # the example rows below
    assert list(_orientation(sizes)) == [1 / 3, 1 / 3, 1 / 3]
