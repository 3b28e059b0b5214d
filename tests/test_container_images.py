"""One image setting: compiled pipelines, Katib trials and skaffold name the same images.

``docsort compile/submit --image-registry R --image-tag T`` (or
``DOCSORT_IMAGE_REGISTRY``/``DOCSORT_IMAGE_TAG``, else ``conf/images.yaml``) must give
``R/docsort-{cpu,gpu}:T`` in every executor of the compiled YAML and in the trial
template the sweep step builds in its pod, and ``skaffold run --default-repo=R
--tag=T`` must push and deploy exactly those names (skaffold's rules ported in
``tests/skaffold_rules.py``, with their source files).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from docsort.components import k8s
from docsort.core import container_images as images
from docsort.core.errors import ConfigError
from docsort.kfp.runner import compile_pipeline
from docsort.sweep import katib
from tests.scenario import one_line, run_cli
from tests.skaffold_rules import default_repo, parse, replaced_by

ROOT = Path(__file__).resolve().parents[1]
# ECR (escaped, one level), Artifact Registry (multi-level), a private registry with a port.
REGISTRIES = [
    "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    "europe-west4-docker.pkg.dev/my-project/docsort",
    "registry.internal:5000/ml/docsort",
]
TAG = "0.2.0-rc1"


def _skaffold() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "skaffold.yaml").read_text(encoding="utf-8"))


def _artifacts() -> Iterator[dict[str, Any]]:
    config = _skaffold()
    for build in [config["build"]] + [p["build"] for p in config["profiles"] if "build" in p]:
        yield from build["artifacts"]


def _skaffold_env() -> dict[str, str]:
    lines = (ROOT / "skaffold.env").read_text(encoding="utf-8").splitlines()
    return dict(ln.split("=", 1) for ln in lines if ln.strip() and not ln.startswith("#"))


def _images_in(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from _images_in(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from _images_in(item)


def _compiled(path: Path, tmp_path: Path, **kw: str) -> tuple[dict, dict]:
    out = compile_pipeline(path, tmp_path / f"{path.stem}.yaml", **kw)
    spec = next(yaml.safe_load_all(out.read_text()))
    return spec, spec["deploymentSpec"]["executors"]


@pytest.fixture(autouse=True)
def _no_image_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    monkeypatch.delenv(images.TAG_ENV, raising=False)


@pytest.mark.parametrize("registry", REGISTRIES)
def test_pipeline_trials_and_skaffold_agree_on_a_non_default_registry(
    registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    expected = {v: f"{registry}/{name}:{TAG}" for v, name in images.names().items()}

    # 1. the compiled pipeline: every executor, whatever its component module fixed at import
    spec, executors = _compiled(
        ROOT / "src" / "docsort" / "pipelines" / "sweep.py",
        tmp_path,
        image_registry=registry,
        image_tag=TAG,
    )
    used = {e["container"]["image"] for e in executors.values()}
    assert used == set(expected.values())

    # 2. the Katib trials: the sweep task carries the setting into its pod, where katib.py reads it
    sweep = executors[spec["components"]["comp-sweep-op"]["executorLabel"]]["container"]
    env = {e["name"]: e["value"] for e in sweep["env"]}
    assert (env[images.REGISTRY_ENV], env[images.TAG_ENV]) == (registry, TAG)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for space, variant in (("cpu_small", "cpu"), ("default", "gpu")):
        exp = katib.build_experiment(
            space, namespace="team-a", prepared="s3://docsort-data/prepared"
        )
        assert set(_images_in(exp["spec"]["trialTemplate"])) == {expected[variant]}

    # 3. skaffold: `skaffold run --default-repo=<registry> --tag=<tag>` builds those names
    for artifact in _artifacts():
        variant = images.variant_of(artifact["image"])
        assert variant, f"skaffold builds {artifact['image']}, not a docsort image"
        assert f"{default_repo(registry, artifact['image'])}:{TAG}" == expected[variant]


def test_without_options_everything_is_images_yaml(tmp_path: Path):
    conf = yaml.safe_load((ROOT / "src/docsort/conf/images.yaml").read_text())
    expected = {f"{conf['registry']}/{n}:{conf['tag']}" for n in conf["images"].values()}
    _, executors = _compiled(ROOT / "src" / "docsort" / "pipelines" / "train.py", tmp_path)
    assert {e["container"]["image"] for e in executors.values()} == expected
    # skaffold with no flag: skaffold.env's default repo and the fixed tag give the same names
    repo = _skaffold_env()["SKAFFOLD_DEFAULT_REPO"]
    assert repo == conf["registry"]
    for build in [_skaffold()["build"]] + [
        p["build"] for p in _skaffold()["profiles"] if "build" in p
    ]:
        assert build["tagPolicy"] == {"envTemplate": {"template": str(conf["tag"])}}
        names = {f"{default_repo(repo, a['image'])}:{conf['tag']}" for a in build["artifacts"]}
        assert names == expected


def test_option_beats_env_beats_config(monkeypatch: pytest.MonkeyPatch):
    conf = yaml.safe_load((ROOT / "src/docsort/conf/images.yaml").read_text())
    assert images.settings() == images.ImageSettings(conf["registry"], str(conf["tag"]))
    monkeypatch.setenv(images.REGISTRY_ENV, "env.example.com/x")
    monkeypatch.setenv(images.TAG_ENV, "env-tag")
    assert images.image("gpu") == "env.example.com/x/docsort-gpu:env-tag"
    assert images.image("gpu", "opt.example.com/y", "opt") == "opt.example.com/y/docsort-gpu:opt"
    with images.use_images("opt.example.com/y/") as chosen:  # a trailing slash is dropped
        assert chosen == images.ImageSettings("opt.example.com/y", "env-tag")
        assert images.image("cpu") == "opt.example.com/y/docsort-cpu:env-tag"
    assert images.image("cpu") == "env.example.com/x/docsort-cpu:env-tag"  # restored


def test_k8s_manifests_name_images_skaffold_replaces():
    """The prepull DaemonSets must name skaffold's artifacts, or they would deploy other images."""
    artifact_names = {a["image"] for a in _artifacts()}
    found = set()
    for path in sorted((ROOT / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            for ref in _images_in(doc or {}):
                if images.variant_of(ref):
                    assert replaced_by(ref, artifact_names), f"{path}: skaffold leaves {ref}"
                    assert parse(ref)[1] == str(images.settings().tag), f"{path}: {ref}"
                    found.add(parse(ref)[0])
    assert found == set(images.names().values())


def test_compile_takes_the_image_options_and_refuses_bad_ones(tmp_path: Path):
    out = tmp_path / "train.yaml"
    rc, stdout, stderr = run_cli(
        "compile", ROOT / "src" / "docsort" / "pipelines" / "train.py", "--out", out,
        "--image-registry", REGISTRIES[0], "--image-tag", TAG, "--k8s-profile", "cpu",
    )  # fmt: skip
    assert rc == 0, stderr
    spec = next(yaml.safe_load_all(out.read_text()))
    used = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert used == {f"{REGISTRIES[0]}/docsort-cpu:{TAG}"}  # the cpu profile: no GPU image at all

    rc, _, stderr = run_cli(
        "compile", ROOT / "src" / "docsort" / "pipelines" / "train.py", "--out", tmp_path / "bad.yaml",
        "--image-registry", "https://ghcr.io/me",
    )  # fmt: skip
    assert rc == 2 and not (tmp_path / "bad.yaml").exists()
    assert "image registry 'https://ghcr.io/me' is not a registry path" in one_line(stderr)
    with pytest.raises(ConfigError, match="image tag 'a b' is not a valid tag"):
        images.settings(tag="a b")


def test_pin_images_leaves_other_images_alone():
    spec = {
        "executors": {
            "a": {"container": {"image": "ghcr.io/docsort/docsort-gpu:0.1.0"}},
            "b": {"container": {"image": "python:3.11"}},
            "c": {"importer": {}},
        }
    }
    assert images.pin_images(spec, images.ImageSettings("r.example.com", "9")) == 1
    assert spec["executors"]["a"]["container"]["image"] == "r.example.com/docsort-gpu:9"
    assert spec["executors"]["b"]["container"]["image"] == "python:3.11"


def test_trial_pods_get_the_pipeline_tasks_pull_secrets(tmp_path: Path):
    custom = tmp_path / "private.yaml"
    custom.write_text(yaml.safe_dump({"extends": "default", "image_pull_secrets": ["regcred"]}))
    profile = k8s.load_profile(str(custom))
    pod = k8s.trial_pod(profile)
    assert pod["image_pull_secrets"] == ["regcred"]
    exp = katib.build_experiment(
        "cpu_small",
        namespace="team-a",
        prepared="s3://docsort-data/prepared",
        image_pull_secrets=pod["image_pull_secrets"],
    )
    template = exp["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]
    assert template["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    # the pipeline's own tasks: the same names from the same profile
    with k8s.use_profile(str(custom)):
        out = compile_pipeline(
            ROOT / "src" / "docsort" / "pipelines" / "train.py", tmp_path / "t.yaml"
        )
    platform = list(yaml.safe_load_all(out.read_text()))[1]["platforms"]["kubernetes"]
    for executor in platform["deploymentSpec"]["executors"].values():
        assert [s["secretName"] for s in executor["imagePullSecret"]] == ["regcred"]
