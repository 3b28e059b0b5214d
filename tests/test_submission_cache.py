"""The nightly submission pipeline's cache: an unchanged night reuses the prediction step.

KFP's cache key is a task's input parameters, the IDs of its input artifacts and
its container spec (kubeflow/pipelines tag 2.17.0, ``backend/src/v2/cacheutils/cache.go``
``GenerateCacheKey``); it never sees what lies behind a path. So the candidate
steps take two stamps: the data version (``data_version_op``) and the spec
version (``spec_version_op``: spec contents + the listing of each member
checkpoint). ``kfp.local`` caches by the same kind of key, so two local runs
show what the cluster reuses.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from docsort.core import storage
from docsort.core.errors import DocsortError
from docsort.ensemble.spec_version import spec_version
from docsort.kfp.runner import compile_pipeline, run_local

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "src" / "docsort" / "pipelines" / "submission.py"


def write_spec(path: Path, model: str, views: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = {"name": path.parent.name, "members": [{"name": "m0", "model": model}]}
    path.write_text(yaml.safe_dump({**spec, "tta_views": views}))
    return str(path)


def fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "model.yaml").write_text("arch: resnet18\n")
    return folder


def test_spec_version_moves_with_the_spec_and_its_model_not_otherwise(tmp_path: Path):
    member = fake_model(tmp_path / "m0")
    a = write_spec(tmp_path / "a" / "candidate.yaml", str(member), ["identity"])
    b = write_spec(tmp_path / "b" / "candidate.yaml", str(member), ["identity", "rot90"])
    first = spec_version([a, b])
    assert spec_version([a, b]) == first  # same inputs: same key
    assert spec_version([b, a]) != first  # the order is the ParallelFor's order

    write_spec(Path(b), str(member), ["identity", "flip"])  # the spec changed behind its path
    edited = spec_version([a, b])
    assert edited != first

    weights = member / "model.safetensors"
    weights.write_bytes(b"retrained")  # the model was retrained behind the same path
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert spec_version([a, b]) not in (first, edited)


def test_spec_version_reads_specs_and_models_on_s3(s3_server, tmp_path: Path):
    member = fake_model(tmp_path / "m0")
    prefix = f"s3://{s3_server.bucket}/nightly"
    storage.upload_dir(member, f"{prefix}/members/m0")
    local = write_spec(tmp_path / "a" / "candidate.yaml", f"{prefix}/members/m0", ["identity"])
    storage.upload_file(Path(local), f"{prefix}/candidates/a/candidate.yaml")
    uri = f"{prefix}/candidates/a/candidate.yaml"
    first = spec_version([uri])
    assert spec_version([uri]) == first
    (member / "model.safetensors").write_bytes(b"retrained, another size")
    storage.upload_dir(member, f"{prefix}/members/m0")
    assert spec_version([uri]) != first


def test_spec_version_refuses_a_missing_member_model(tmp_path: Path):
    spec = write_spec(tmp_path / "a" / "candidate.yaml", str(tmp_path / "gone"), ["identity"])
    with pytest.raises(DocsortError, match="member model not found"):
        spec_version([spec])


def test_the_candidate_steps_are_cached_and_keyed_on_both_stamps(tmp_path: Path):
    spec = next(yaml.safe_load_all(compile_pipeline(PIPELINE, tmp_path / "s.yaml").read_text()))
    root = spec["root"]["dag"]["tasks"]
    loop = next(t for t in root.values() if "parameterIterator" in t)
    inner = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]["candidate-run-op"]
    for stamp in ("data-version-op", "spec-version-op"):
        assert root[stamp].get("cachingOptions", {}).get("enableCache", False) is False
    assert root["prepare-candidates-op"]["cachingOptions"] == {"enableCache": True}
    assert inner["cachingOptions"] == {"enableCache": True}
    params = root["prepare-candidates-op"]["inputs"]["parameters"]
    assert params["data_version"]["taskOutputParameter"]["producerTask"] == "data-version-op"
    assert params["spec_version"]["taskOutputParameter"]["producerTask"] == "spec-version-op"
    # inside the loop the stamp arrives as the loop DAG's input, fed by the spec-version task
    channel = inner["inputs"]["parameters"]["spec_version"]["componentInputParameter"]
    assert loop["inputs"]["parameters"][channel]["taskOutputParameter"] == {
        "producerTask": "spec-version-op",
        "outputParameterKey": "Output",
    }


@pytest.mark.slow
def test_a_second_night_with_the_same_inputs_reuses_the_predictions(
    trained_member, prepared_root, sample_root, tmp_path
):
    from docsort.ensemble.ensemble import ensemble

    member = tmp_path / "member"
    shutil.copytree(trained_member, member)
    specs = []
    for name, views in (("plain", ["identity"]), ("rot", ["identity", "rot90"])):
        cand = ensemble(
            [], tmp_path / "cands" / name, models=[member], name=name,
            prepared=prepared_root, views=views,
        )  # fmt: skip
        specs.append(str(cand / "candidate.yaml"))
    params = {"data_root": str(sample_root), "candidates": specs}
    out = tmp_path / "runs"

    run_local(PIPELINE, out, params, cache=True)
    predicted = sorted(out.glob("docsort-submission-*/for-loop-*/candidate-run-op/candidate"))
    assert len(predicted) == 2
    run_local(PIPELINE, out, params, cache=True)
    assert len(list(out.glob("docsort-submission-*"))) == 2
    # the second night predicted nothing: the candidate step came from the cache
    assert (
        sorted(out.glob("docsort-submission-*/for-loop-*/candidate-run-op/candidate")) == predicted
    )

    # a retrained checkpoint behind the same path: the candidates are predicted again
    weights = member / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    run_local(PIPELINE, out, params, cache=True)
    again = sorted(out.glob("docsort-submission-*/for-loop-*/candidate-run-op/candidate"))
    assert len(again) == 4


def test_candidate_upload_puts_spec_and_members_on_s3_and_never_overwrites(
    s3_server, tmp_path: Path
):
    from tests.scenario import one_line, run_cli

    member = fake_model(tmp_path / "m0")
    spec = write_spec(tmp_path / "soft" / "candidate.yaml", str(member), ["identity", "rot90"])
    dest = f"s3://{s3_server.bucket}/candidates/soft-1"
    rc, stdout, _ = run_cli("candidate", "upload", spec, dest)
    assert rc == 0 and stdout.strip().endswith(f"{dest}/candidate.yaml")
    uploaded = yaml.safe_load(storage.read_text(f"{dest}/candidate.yaml"))
    assert uploaded["members"] == [{"name": "m0", "model": f"{dest}/members/m0"}]
    assert uploaded["tta_views"] == ["identity", "rot90"]
    assert sorted(storage.list_files(f"{dest}/members/m0")) == [
        f"{dest}/members/m0/model.safetensors",
        f"{dest}/members/m0/model.yaml",
    ]
    stamp = spec_version([f"{dest}/candidate.yaml"])  # what the nightly run computes

    before = storage.list_files(dest)
    rc, _, stderr = run_cli("candidate", "upload", spec, dest)
    assert rc == 2 and "already exists; upload to a new prefix" in one_line(stderr)
    assert storage.list_files(dest) == before
    assert spec_version([f"{dest}/candidate.yaml"]) == stamp
