"""`docsort report`: the error notebook of a candidate, its labelled set, thumbnails and KFP outputs."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from docsort.cli.main import main
from docsort.core.probs import read_probs
from docsort.data.prepared import Prepared
from docsort.ensemble.tta_ablation import ablate_tta, load_ablation
from docsort.review.compare import compare_candidates
from docsort.review.report import error_report, log_report_metrics
from tests.review_fakes import fake_candidate, fake_member, one_hot
from tests.test_report_html import Dom


def _oof_candidate(prepared_root, tmp_path, name="c1814"):
    """A candidate whose OOF predictions miss every fifth training image (to the next class)."""
    prep = Prepared(prepared_root)
    ids, y = prep.index["ID"].tolist(), prep.index["target"].to_numpy()
    pred = y.copy()
    pred[::5] = (y[::5] + 1) % prep.num_classes
    oof = one_hot(pred, prep.num_classes, 0.7)
    test = one_hot(np.arange(len(prep.test_ids)) % prep.num_classes, prep.num_classes, 0.8)
    return fake_candidate(
        tmp_path / name, name, prep.test_ids, test, oof=(ids, y, oof), oof_macro_f1=0.8
    ), int((pred != y).sum())


def test_report_on_oof_with_comparison_and_ablation(prepared_root, tmp_path, capsys):
    cand, n_wrong = _oof_candidate(prepared_root, tmp_path)
    cmp = compare_candidates(prepared_root, [cand], tmp_path / "cmp")
    ids = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.45, 0.55]])
    member = fake_member(tmp_path / "m", ids, [0, 0, 1, 1], {"identity": p, "rot90": p[:, ::-1]})
    ablate_tta([member], tmp_path / "abl")
    html = tmp_path / "out" / "report.html"
    code, out, err = (
        main(
            [
                "report",
                "--prepared",
                str(prepared_root),
                "--comparison",
                str(cmp),
                "--ablation",
                str(tmp_path / "abl"),
                "--out",
                str(html),
            ]
        ),
        *capsys.readouterr(),
    )
    assert code == 0, err
    assert "(oof)" in out  # the winner's OOF predictions on the training images, by default
    dom = Dom(html.read_text())
    assert len(dom.find("figure", class_="miss")) == n_wrong
    # thumbnails from the original images
    assert len(dom.find("img", class_="thumb", **{"data-where": "gallery"})) == n_wrong
    for sid in (
        "confusion-matrix",
        "per-class",
        "confused-pairs",
        "gallery",
        "hard-cases",
        "tta-ablation",
    ):
        assert dom.find("section", id=sid), sid
    text = html.read_text()
    assert (
        "out-of-fold predictions on the training images" in text
        and f"Recommended views: <b>{'+'.join(load_ablation(tmp_path / 'abl').recommended)}</b>"
        in text
    )
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "Winner: **c1814**" in md and "- misclassified: " + str(n_wrong) in md


@pytest.mark.parametrize("on", ["test", "hardcases"])
def test_report_on_test_labels_or_hard_cases(prepared_root, tmp_path, on):
    cand, _ = _oof_candidate(prepared_root, tmp_path)
    r = error_report(prepared_root, cand, tmp_path / "r.html", on=on)
    prep = Prepared(prepared_root)
    labels = len(pd.read_csv(prep.file("test_labels.csv" if on == "test" else "hardcases.csv")))
    assert r.on == on and r.images == labels
    assert r.confusion.sum() == labels and r.confusion.shape == (17, 17)
    dom = Dom((tmp_path / "r.html").read_text())
    assert len(dom.find("figure", class_="miss")) == labels - int(np.trace(r.confusion))


def test_report_on_hard_cases_with_a_comparison_reads_the_hard_case_file_once(
    prepared_root, tmp_path, monkeypatch
):
    from docsort.review import report as report_module

    cand, _ = _oof_candidate(prepared_root, tmp_path)
    cmp = compare_candidates(prepared_root, [cand], tmp_path / "cmp")
    reads = []
    real = report_module.current_hardcases
    monkeypatch.setattr(report_module, "current_hardcases", lambda *a: reads.append(a) or real(*a))
    r = error_report(prepared_root, None, tmp_path / "r.html", comparison=cmp, on="hardcases")
    assert r.on == "hardcases" and len(reads) == 1
    assert len(r.hardcases) == 2 and "hard cases in the comparison" in r.hardcases[1]


def test_report_falls_back_to_the_cache_and_refuses_unlabelled_sets(
    prepared_root, tmp_path, capsys
):
    prep_copy = shutil.copytree(prepared_root, tmp_path / "prep")
    info = json.loads((prep_copy / "prepared.json").read_text())
    info["source"] = str(
        tmp_path / "moved-away"
    )  # the original images are gone: thumbnails come from the cache
    (prep_copy / "prepared.json").write_text(json.dumps(info))
    cand, n_wrong = _oof_candidate(prep_copy, tmp_path)
    r = error_report(prep_copy, cand, tmp_path / "r.html")
    assert (
        r.on == "oof"
        and len(
            Dom((tmp_path / "r.html").read_text()).find(
                "img", class_="thumb", **{"data-where": "gallery"}
            )
        )
        == n_wrong
    )
    (cand / "oof.csv").unlink()
    (prep_copy / "test_labels.csv").unlink()
    (prep_copy / "hardcases.csv").unlink()
    code = main(
        [
            "report",
            "--prepared",
            str(prep_copy),
            "--candidate",
            str(cand),
            "--out",
            str(tmp_path / "x.html"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2 and "nothing labelled to report on" in err and not (tmp_path / "x.html").exists()
    )


def test_kfp_metrics_and_confusion_matrix(prepared_root, tmp_path):
    from kfp.dsl import ClassificationMetrics, Metrics

    cand, n_wrong = _oof_candidate(prepared_root, tmp_path)
    metrics = Metrics(name="metrics", uri=str(tmp_path / "metrics"), metadata={})
    cm = ClassificationMetrics(name="cm", uri=str(tmp_path / "cm"), metadata={})
    r = error_report(prepared_root, cand, tmp_path / "r.html", metrics=metrics, confusion=cm)
    n = len(Prepared(prepared_root).index)
    assert metrics.metadata["accuracy"] == pytest.approx(1 - n_wrong / n, abs=1e-6)
    assert metrics.metadata["macro_f1"] == pytest.approx(r.macro_f1, abs=1e-6)
    matrix = cm.metadata["confusionMatrix"]
    assert [a["displayName"] for a in matrix["annotationSpecs"]] == Prepared(
        prepared_root
    ).class_names
    assert sum(map(sum, (row["row"] for row in matrix["rows"]))) == n
    assert (
        json.loads((tmp_path / "metrics").read_text())["evaluated_on"] == "oof"
    )  # kfp.local needs the file
    log_report_metrics(r)  # nothing to log to: no error


def test_report_in_headless_chromium(prepared_root, tmp_path):
    from tests.test_report_html import _browse

    cand, n_wrong = _oof_candidate(prepared_root, tmp_path)
    html = error_report(prepared_root, cand, tmp_path / "report.html").html
    dom = Dom(_browse(tmp_path, html, "--dump-dom").stdout)
    (body,) = dom.find("body")
    assert body.get("data-confusion-loaded") == "true"
    n_thumbs = len(dom.find("img", class_="thumb"))  # the gallery's and the hard cases'
    assert n_thumbs > n_wrong and body.get("data-thumbs-loaded") == f"{n_thumbs}/{n_thumbs}"
    assert len(dom.find("figure", class_="miss")) == n_wrong
    shot = tmp_path / "report.png"
    try:
        _browse(tmp_path, html, f"--screenshot={shot}", "--window-size=1280,2000")
    except subprocess.CalledProcessError:
        pytest.fail("chromium could not take the screenshot")
    assert np.asarray(Image.open(shot).convert("L")).std() > 10


def _two_candidates(prepared_root, tmp_path):
    """Candidates 1814 and 1824: the same OOF, test predictions that differ on every third image."""
    prep = Prepared(prepared_root)
    a, _ = _oof_candidate(prepared_root, tmp_path, "c1814")
    ids, probs, _ = read_probs(a / "probs.csv")
    other = probs.copy()
    other[::3] = np.roll(other[::3], 2, axis=1)
    b = fake_candidate(tmp_path / "c1824", "c1824", ids, other, members=2, oof_macro_f1=0.81,
                       oof=(prep.index["ID"].tolist(), prep.index["target"].tolist(), read_probs(a / "oof.csv")[1]))  # fmt: skip
    return a, b, {"c1814": probs, "c1824": other}, ids


def _rows(dom: Dom, table: str) -> list[str]:
    return [r["data-id"] for r in dom.find("tr", inside=table) if r.get("data-id")]


def test_report_with_two_candidates_shows_where_they_disagree(prepared_root, tmp_path):
    a, b, probs, ids = _two_candidates(prepared_root, tmp_path)
    cmp = compare_candidates(prepared_root, [a, b], tmp_path / "cmp")
    html = tmp_path / "r.html"
    r = error_report(prepared_root, None, html, comparison=cmp)
    dom = Dom(html.read_text())
    differ = [
        i for i, x, y in zip(ids, *(p.argmax(1) for p in probs.values()), strict=True) if x != y
    ]
    assert 0 < len(differ) < len(ids)
    assert sorted(_rows(dom, "disagree-table")) == sorted(differ)
    shown = dom.find("img", class_="thumb", **{"data-where": "disagree"})
    assert sorted(t["alt"] for t in shown) == sorted(differ)  # every row has its image
    hard = pd.read_csv(Prepared(prepared_root).file("hardcases.csv"))
    assert _rows(dom, "hardcase-table") == hard["ID"].astype(str).tolist()
    assert len(dom.find("img", class_="thumb", **{"data-where": "hardcases"})) == len(hard)
    # the truth is known for test images with labels: those rows are coloured right/wrong
    labels = pd.read_csv(Prepared(prepared_root).file("test_labels.csv"))
    assert set(differ) & set(labels["ID"]) and 'class="ok"' in html.read_text()
    assert r.hardcases and "hard cases in the comparison" in r.hardcases[-1]
    md = (tmp_path / "summary.md").read_text()
    assert f"{len(differ)} of {len(ids)} test images get different predictions" in md


def test_report_reads_a_comparison_whose_candidate_folders_moved(prepared_root, tmp_path):
    a, b, _, _ = _two_candidates(prepared_root, tmp_path)
    cmp = compare_candidates(prepared_root, [a, b], tmp_path / "cmp")
    shutil.rmtree(b)
    html = tmp_path / "r.html"
    error_report(prepared_root, None, html, comparison=cmp)
    text = html.read_text()
    assert "Not read: c1824" in text and "Needs at least two candidates" in text


@pytest.mark.slow
def test_two_candidate_report_in_headless_chromium(prepared_root, tmp_path):
    """The review tool on real prepared data at 1,400 px: no sideways scroll, pictures decode."""
    from tests.test_report_html import _browse

    a, b, probs, ids = _two_candidates(prepared_root, tmp_path)
    cmp = compare_candidates(prepared_root, [a, b], tmp_path / "cmp")
    html = error_report(prepared_root, None, tmp_path / "report.html", comparison=cmp).html
    dom = Dom(_browse(tmp_path, html, "--dump-dom", "--window-size=1400,1000").stdout)
    (body,) = dom.find("body")
    assert body.get("data-reliability-loaded") == "true"
    assert body.get("data-confusion-loaded") == "true"
    n = len(dom.find("img", class_="thumb"))
    assert body.get("data-thumbs-loaded") == f"{n}/{n}"
    assert int(body["data-scroll-width"]) <= 1400
    differ = sum(x != y for x, y in zip(*(p.argmax(1) for p in probs.values()), strict=True))
    assert len(_rows(dom, "disagree-table")) == differ
    shot = tmp_path / "report-1400.png"
    _browse(tmp_path, html, f"--screenshot={shot}", "--window-size=1400,6000")
    assert np.asarray(Image.open(shot).convert("L")).std() > 10
    print(f"screenshot: {shot}")
