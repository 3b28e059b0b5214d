"""``docsort submit/schedule`` options of the cluster path: the profile namespace and the images.

Against the small fake KFP API of tests/test_kfp_client.py (real HTTP, real
``kfp.Client``): what the server receives is what a cluster would get.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from docsort.cli.main import main
from tests.test_kfp_client import _posts, kfp_api  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"


def test_submit_goes_to_the_given_namespace_with_the_given_images(kfp_api, capsys):  # noqa: F811
    host, api = kfp_api
    rc = main([
        "submit", str(ROOT / "src" / "docsort" / "pipelines" / "sweep.py"), "--host", host, "--namespace", "team-a",
        "--image-registry", REGISTRY, "--image-tag", "0.2.0", "--param", "data_root=s3://d/x",
    ])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    (exp,) = _posts(api, "/apis/v2beta1/experiments")
    assert exp["body"]["namespace"] == "team-a"
    (run,) = _posts(api, "/apis/v2beta1/runs")
    spec = run["body"]["pipeline_spec"]["pipeline_spec"]
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {f"{REGISTRY}/docsort-cpu:0.2.0", f"{REGISTRY}/docsort-gpu:0.2.0"}
    # the Katib Experiment's namespace stays the pipeline's default: the pods' own namespace
    ns = spec["root"]["inputDefinitions"]["parameters"]["namespace"]
    assert (
        ns["defaultValue"] == "" and "namespace" not in run["body"]["runtime_config"]["parameters"]
    )


def test_without_namespace_the_client_decides(kfp_api, capsys):  # noqa: F811
    host, api = kfp_api
    rc = main([
        "schedule", str(ROOT / "src" / "docsort" / "pipelines" / "train.py"), "--host", host, "--cron", "0 0 2 * * *",
        "--param", "data_root=s3://d/x",
    ])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    (exp,) = _posts(api, "/apis/v2beta1/experiments")
    assert not exp["body"].get("namespace")  # single-user KFP: no namespace at all


def test_a_compiled_yaml_keeps_its_images_and_is_checked_too(kfp_api, tmp_path, capsys):  # noqa: F811
    host, api = kfp_api
    compiled = tmp_path / "train.yaml"
    assert (
        main(
            [
                "compile",
                str(ROOT / "src" / "docsort" / "pipelines" / "train.py"),
                "--out",
                str(compiled),
            ]
        )
        == 0
    )
    rc = main([
        "submit", str(compiled), "--host", host, "--image-registry", REGISTRY,
        "--param", "data_root=s3://d/x",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "train.yaml is already compiled: --image-registry" in err
    docs = list(yaml.safe_load_all(compiled.read_text()))
    loop = docs[0]["components"]["comp-for-loop-1"]["inputDefinitions"]["parameters"]
    loop["pipelinechannel--prepare-op-Output-loop-item"]["parameterType"] = "STRING"
    compiled.write_text(yaml.safe_dump_all(docs))
    rc = main(["submit", str(compiled), "--host", host, "--param", "data_root=s3://d/x"])
    err = capsys.readouterr().err
    assert rc == 2 and "input 'fold' expects NUMBER_INTEGER, gets a string" in err
    assert not _posts(api, "/apis/v2beta1/runs")  # nothing was sent
