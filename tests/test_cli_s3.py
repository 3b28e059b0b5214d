"""S3 in and out through the CLI, against a real S3 endpoint over HTTP (moto's server mode).

``docsort prepare s3://...`` reads a dataset from S3; ``docsort submission ... --out
s3://...`` writes the submission, its lineage and the ``latest`` pointer there;
``docsort train`` / ``docsort predict`` read prepared data by its S3 URI, as Katib
trials do. The data-version stamp that keys KFP's cache follows the objects.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from docsort.cli.main import main
from docsort.core import storage
from docsort.core.probs import write_probs
from docsort.data.prepared import Prepared

from .conftest import TINY, TINY_TRAIN


def _keys(bucket: str, prefix: str) -> list[str]:
    got = storage.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"][len(prefix) :] for o in got)


@pytest.mark.slow  # over 9 s on 2 cores: `make test-slow`
def test_prepare_reads_a_dataset_from_s3(s3_server, sample_root, tmp_path, capsys):
    uri = f"s3://{s3_server.bucket}/datasets/tiny"
    storage.upload_dir(sample_root, uri)
    rc = main(["prepare", uri, "--out", str(tmp_path / "prep"), *TINY])
    out = capsys.readouterr()
    assert rc == 0, out.err
    prep = Prepared(tmp_path / "prep")
    assert prep.info["source"] == uri
    assert prep.index["ID"].tolist() and set(prep.index["ID"]) == set(
        pd.read_csv(sample_root / "train.csv", dtype={"ID": str})["ID"]
    )
    assert len(prep.test_ids) == len(pd.read_csv(sample_root / "sample_submission.csv"))
    assert s3_server.secret not in out.out + out.err


def test_submission_goes_to_s3_with_lineage_and_latest(s3_server, prepared_root, tmp_path, capsys):
    prep = Prepared(prepared_root)
    rng = np.random.default_rng(0)
    probs = tmp_path / "probs.csv"
    write_probs(
        probs, prep.test_ids, rng.dirichlet(np.ones(prep.num_classes), size=len(prep.test_ids))
    )
    results = f"s3://{s3_server.bucket}/results"
    rc = main(
        [
            "submission",
            "--prepared",
            str(prepared_root),
            "--probs",
            str(probs),
            "--out",
            results,
            "--candidate",
            "soft",
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err

    keys = _keys(s3_server.bucket, "results/submissions/")
    csvs = [k for k in keys if k.endswith(".csv")]
    assert len(csvs) == 1 and "latest.json" in keys
    name = csvs[0][: -len(".csv")]
    assert f"{name}.lineage.json" in keys
    latest = json.loads(storage.read_text(f"{results}/submissions/latest.json"))
    assert latest["submission"] == csvs[0]
    from docsort.review.submission import latest as latest_uri

    assert latest_uri(results) == f"{results}/submissions/{csvs[0]}"
    body = storage.read_text(f"{results}/submissions/{csvs[0]}")
    (tmp_path / "sub.csv").write_text(body)
    sub = pd.read_csv(tmp_path / "sub.csv", dtype={"ID": str})
    assert sub["ID"].tolist() == prep.test_ids  # sample_submission order
    assert (
        sub["target"].tolist()
        == np.argmax(
            pd.read_csv(probs, dtype={"ID": str}).filter(regex=r"^p\d+$").to_numpy(), 1
        ).tolist()
    )
    lineage = storage.read_text(f"{results}/submissions/{name}.lineage.json")
    for text in (lineage, out.out, out.err):
        assert s3_server.secret not in text


@pytest.fixture
def s3_prepared(s3_server, prepared_root) -> str:
    uri = f"s3://{s3_server.bucket}/prepared/tiny"
    storage.upload_dir(prepared_root, uri)
    return uri


@pytest.mark.slow  # `make test-slow`
def test_train_and_predict_read_prepared_data_by_s3_uri(s3_prepared, s3_server, tmp_path, capsys):
    """What a Katib trial does: `docsort train s3://.../prepared` (then predict with the result)."""
    model = tmp_path / "trial"
    rc = main(
        [
            "train",
            "--prepared",
            s3_prepared,
            "--out",
            str(model),
            *TINY_TRAIN,
            "fold=0",
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "val_macro_f1=" in out.out  # the lines Katib's collector reads
    assert (model / "metrics.json").is_file() and (model / "oof.csv").is_file()
    assert (
        tmp_path / ".docsort-download" / s3_server.bucket / "prepared" / "tiny" / "prepared.json"
    ).is_file()

    rc = main(
        [
            "predict",
            "--prepared",
            s3_prepared,
            "--model",
            str(model),
            "--out",
            str(tmp_path / "pred"),
            *TINY,
            "tta.views=[identity]",
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    probs = pd.read_csv(tmp_path / "pred" / "probs.csv", dtype={"ID": str})
    test_ids = pd.read_csv(
        tmp_path / ".docsort-download" / s3_server.bucket / "prepared" / "tiny" / "test.csv",
        dtype={"ID": str},
    )["ID"]
    assert probs["ID"].tolist() == test_ids.tolist()
    assert np.allclose(probs.filter(regex=r"^p\d+$").sum(1), 1, atol=1e-4)


def test_data_version_follows_the_objects(s3_server, sample_root, tmp_path):
    uri = f"s3://{s3_server.bucket}/datasets/v"
    storage.upload_dir(sample_root, uri)
    first = storage.fingerprint(uri)
    assert storage.fingerprint(uri) == first  # a listing, stable while nothing changes
    storage.write_text_atomic(f"{uri}/train.csv", (sample_root / "train.csv").read_text() + "\n")
    changed = storage.fingerprint(uri)
    assert changed != first
    storage.write_text_atomic(f"{uri}/extra/note.txt", "x")
    assert storage.fingerprint(uri) not in (first, changed)
    assert storage.fingerprint(uri).startswith(f"{len(storage.list_files(uri))}-")


def test_local_data_version_follows_the_files(sample_root, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(sample_root, root)
    first = storage.fingerprint(root)
    assert storage.fingerprint(root) == first
    img = next((root / "train").iterdir())
    img.write_bytes(img.read_bytes())  # same bytes, new mtime: a (harmless) cache miss
    assert storage.fingerprint(root) != first
