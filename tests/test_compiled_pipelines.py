"""Kubernetes task settings read back from the compiled pipeline YAML.

The first YAML document is the pipeline spec (tasks, retry and caching options,
container resources); the second is the Kubernetes platform spec
(``platforms.kubernetes.deploymentSpec.executors``: secrets, volumes, node
selectors, tolerations, timeouts). Every setting comes from conf/k8s/*.yaml
through docsort.components.k8s.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import textwrap
from pathlib import Path

import pytest
import yaml

from docsort.components import k8s
from docsort.core.errors import ConfigError
from docsort.kfp.runner import compile_pipeline

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted(
    p for p in (ROOT / "src" / "docsort" / "pipelines").glob("*.py") if p.name != "__init__.py"
)
GPU_TASKS = {"train-op", "predict-op", "candidate-run-op"}
EXPECTED_GPU = {
    "train": {"train-op"},
    "sweep": {"train-op"},
    "demo": {"train-op", "predict-op"},
    "submission": {"candidate-run-op"},
}


def compiled(path: Path, tmp_path: Path, profile: str | None = None) -> tuple[dict, dict]:
    with k8s.use_profile(profile):
        out = compile_pipeline(
            path, tmp_path / f"{path.stem}-{Path(profile or 'default').stem}.yaml"
        )
    docs = list(yaml.safe_load_all(out.read_text()))
    assert len(docs) == 2, "no platform spec: the k8s settings were not applied"
    return docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def tasks(spec: dict) -> dict[str, dict]:
    """Every container task in every DAG: name -> {task, executor, component}."""
    out = {}
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    for dag in dags:
        for name, task in dag["tasks"].items():
            comp = spec["components"][task["componentRef"]["name"]]
            if "executorLabel" in comp:
                out[name] = {"task": task, "executor": comp["executorLabel"]}
    return out


def container(spec: dict, executor: str) -> dict:
    return spec["deploymentSpec"]["executors"][executor]["container"]


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_task_gets_secrets_volumes_security_and_labels(path, tmp_path):
    spec, platform = compiled(path, tmp_path)
    found = tasks(spec)
    assert found
    for name, t in found.items():
        ex = platform[t["executor"]]
        secrets = {
            s["secretName"]: {m["secretKey"]: m["envVar"] for m in s["keyToEnv"]}
            for s in ex["secretAsEnv"]
        }
        assert secrets == {
            "docsort-s3": {
                "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
            },
            "docsort-wandb": {"WANDB_API_KEY": "WANDB_API_KEY"},
        }, name
        assert all(
            s["optional"] for s in ex["secretAsEnv"]
        )  # IRSA / offline W&B: pods start without them
        (cm,) = ex["configMapAsEnv"]
        assert cm["configMapName"] == "docsort-s3-config" and cm["optional"]
        assert {m["envVar"] for m in cm["keyToEnv"]} >= {"AWS_REGION", "AWS_ENDPOINT_URL"}
        mounts = {m["mountPath"]: m for m in ex["emptyDirMounts"]}
        assert "/tmp" in mounts  # read-only root filesystem: writable scratch
        assert not set(mounts) & set(k8s.KFP_RESERVED_PATHS)  # KFP mounts those itself
        assert ex["securityContext"] == {
            "runAsUser": "10001",
            "runAsGroup": "10001",
            "runAsNonRoot": True,
        }
        assert ex["imagePullPolicy"] == "IfNotPresent"
        assert ex["podMetadata"]["labels"]["app.kubernetes.io/part-of"] == "docsort"
        assert int(ex["activeDeadlineSeconds"]) > 0
        # credentials are never plain values in the spec
        env = container(spec, t["executor"]).get("env", [])
        assert not {e["name"] for e in env} & {
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "WANDB_API_KEY",
        }


@pytest.mark.parametrize(
    "path", [p for p in PIPELINES if p.stem in EXPECTED_GPU], ids=lambda p: p.stem
)
def test_gpu_tasks_ask_for_the_gpu_pool_and_cpu_tasks_do_not(path, tmp_path):
    spec, platform = compiled(path, tmp_path)
    found = tasks(spec)
    assert GPU_TASKS & set(found) == EXPECTED_GPU[path.stem]
    for name, t in found.items():
        res = container(spec, t["executor"])["resources"]
        ex = platform[t["executor"]]
        if name in GPU_TASKS:
            assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert int(res["accelerator"]["resourceCount"]) == 1
            assert ex["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
            assert ex["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
            shm = next(m for m in ex["emptyDirMounts"] if m["mountPath"] == "/dev/shm")
            assert shm["medium"] == "Memory" and shm["sizeLimit"] == "8Gi"
            assert "/docsort-gpu:" in container(spec, t["executor"])["image"]
        else:
            assert "accelerator" not in res
            assert "tolerations" not in ex and "nodeSelector" not in ex
        assert (
            res["resourceMemoryRequest"]
            and res["resourceMemoryLimit"]
            and res["resourceCpuRequest"]
        )


def test_train_task_retries_and_caching_settings(tmp_path):
    spec, platform = compiled(ROOT / "src" / "docsort" / "pipelines" / "train.py", tmp_path)
    found = tasks(spec)
    train = found["train-op"]["task"]
    assert train["retryPolicy"] == {
        "maxRetryCount": 2,
        "backoffDuration": "30s",
        "backoffFactor": 2.0,
        "backoffMaxDuration": "600s",
    }
    assert train["cachingOptions"] == {"enableCache": True}
    assert found["prepare-op"]["task"]["cachingOptions"] == {"enableCache": True}
    # the data-version step always runs; prepare's cache key includes its output
    assert (
        found["data-version-op"]["task"].get("cachingOptions", {}).get("enableCache", False)
        is False
    )
    assert found["prepare-op"]["task"]["inputs"]["parameters"]["data_version"] == {
        "taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "data-version-op"}
    }
    assert int(platform[found["train-op"]["executor"]]["activeDeadlineSeconds"]) == 21600
    # K folds in parallel, from prepare's fold list
    loop = next(t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t)
    assert loop["parameterIterator"]["items"]["inputParameter"].endswith("prepare-op-Output")
    assert loop["iteratorPolicy"]["parallelismLimit"] == 5


@pytest.mark.parametrize(
    "path", [p for p in PIPELINES if p.stem in ("demo", "submission")], ids=lambda p: p.stem
)
def test_the_submission_step_is_never_served_from_cache(path, tmp_path):
    spec, _ = compiled(path, tmp_path)
    found = tasks(spec)
    sub = [t for n, t in found.items() if n.startswith("submission")]
    assert sub and all(
        t["task"].get("cachingOptions", {}).get("enableCache", False) is False for t in sub
    )
    if "prepare-candidates-op" in found:  # keyed on the data and spec versions, so cacheable
        for stamp in ("data-version-op", "spec-version-op"):
            assert found[stamp]["task"].get("cachingOptions", {}).get("enableCache", False) is False
        assert found["prepare-candidates-op"]["task"]["cachingOptions"] == {"enableCache": True}


def test_the_sweep_step_tells_katib_trials_the_gpu_pool(tmp_path):
    spec, platform = compiled(ROOT / "src" / "docsort" / "pipelines" / "sweep.py", tmp_path)
    t = tasks(spec)["sweep-op"]
    env = {e["name"]: e["value"] for e in container(spec, t["executor"]).get("env", [])}
    pod = json.loads(env[k8s.TRIAL_POD_ENV])
    assert pod["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert (
        "accelerator" not in container(spec, t["executor"])["resources"]
    )  # the sweep step itself needs none
    assert (
        int(platform[t["executor"]]["activeDeadlineSeconds"]) > 6 * 3600
    )  # outlives its sweep_timeout_s


def test_cpu_profile_runs_training_on_cpu_nodes(tmp_path):
    spec, platform = compiled(
        ROOT / "src" / "docsort" / "pipelines" / "train.py", tmp_path, profile="cpu"
    )
    t = tasks(spec)["train-op"]
    c = container(spec, t["executor"])
    assert "accelerator" not in c["resources"] and "docsort-cpu:" in c["image"]
    assert "tolerations" not in platform[t["executor"]]
    assert c["resources"]["resourceMemoryLimit"] == "12Gi"
    assert (
        tasks(spec)["data-version-op"]["task"].get("cachingOptions", {}) == {}
    )  # the rest comes from default


def test_a_custom_profile_extends_default(tmp_path):
    custom = tmp_path / "a100.yaml"
    custom.write_text(
        yaml.safe_dump({
            "extends": "default",
            "gpu_pool": {"product": "NVIDIA-A100-SXM4-80GB"},
            "image_pull_secrets": ["ghcr-pull"],
            "components": {"train": {"gpu": 2, "retries": 0, "caching": False}},
        })
    )  # fmt: skip
    spec, platform = compiled(
        ROOT / "src" / "docsort" / "pipelines" / "train.py", tmp_path, profile=str(custom)
    )
    t = tasks(spec)["train-op"]
    ex = platform[t["executor"]]
    assert int(container(spec, t["executor"])["resources"]["accelerator"]["resourceCount"]) == 2
    assert ex["nodeSelector"]["labels"] == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
    }
    assert [s["secretName"] for s in ex["imagePullSecret"]] == ["ghcr-pull"]
    assert "retryPolicy" not in t["task"] and t["task"].get("cachingOptions", {}) == {}
    assert container(spec, t["executor"])["resources"]["resourceMemoryLimit"] == "32Gi"  # inherited


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"components": {"train": {"gpus": 1}}}, r"components.train: unknown key\(s\) \['gpus'\]"),
        (
            {"components": {"train": {"memory": "lots"}}},
            "components.train.memory: 'lots' is not a quantity",
        ),
        ({"components": {"train": {"retries": -1}}}, "retries must be an integer >= 0"),
        ({"components": {"train": {"image": "tpu"}}}, "choose cpu, gpu or null"),
        ({"image_pull_policy": "Sometimes"}, "image_pull_policy: 'Sometimes'"),
        ({"gpu_pool": {"taints": []}}, r"gpu_pool: unknown key\(s\) \['taints'\]"),
        ({"secrets": [{"name": "x", "env": {"k": "not an env"}}]}, "is not an env variable name"),
        ({"nodepools": {}}, r"unknown key\(s\) \['nodepools'\]"),
        ({"extends": "nope"}, r"unknown k8s profile 'nope'; choose from \['cpu', 'default'"),
    ],
)
def test_bad_profiles_fail_naming_the_problem(tmp_path, change, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"extends": "default", **change}))
    with pytest.raises(ConfigError, match=message):
        k8s.load_profile(str(path))


def test_profiles_only_name_real_components():
    import docsort.components

    names = set()
    for info in pkgutil.iter_modules(docsort.components.__path__, "docsort.components."):
        module = __import__(info.name, fromlist=["_"])
        names |= {
            k8s.component_key(type("T", (), {"component_spec": v.component_spec}))
            for v in vars(module).values()
            if hasattr(v, "component_spec")
        }
    assert {"prepare", "train", "sweep", "oof_report", "data_version"} <= names
    for profile in k8s.profile_names():
        unknown = set(k8s.load_profile(profile)["components"]) - names
        assert not unknown, f"{profile}: {unknown} are not components"


def test_unknown_profile_lists_the_shipped_ones(monkeypatch):
    monkeypatch.setenv(k8s.PROFILE_ENV, "gpu-huge")
    with pytest.raises(
        ConfigError, match=r"unknown k8s profile 'gpu-huge'; choose from \['cpu', 'default'\]"
    ):
        k8s.load_profile()


def test_katib_trials_use_the_same_secrets_and_config_map_as_the_pipeline_tasks():
    from docsort.sweep import katib

    profile = k8s.load_profile("default")
    assert {
        s["name"]: tuple(s["env"].values()) for s in profile["secrets"]
    } == katib.DEFAULT_SECRETS
    assert [c["name"] for c in profile["config_maps"]] == [katib.S3_CONFIG_MAP]
    assert profile["security"]["run_as_user"] == katib.RUN_AS_USER


def _component_functions():
    import docsort.components

    for info in pkgutil.iter_modules(docsort.components.__path__, "docsort.components."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if hasattr(value, "component_spec"):
                yield f"{info.name}.{name}", value.python_func


def test_a_component_body_is_imports_and_one_stage_call():
    """Logic belongs in a plain function in src: a component body has no control flow and
    one statement that calls docsort (besides logging what came back)."""
    seen = 0
    for name, func in _component_functions():
        seen += 1
        (fn,) = ast.parse(textwrap.dedent(inspect.getsource(func))).body
        flow = [
            type(n).__name__
            for n in ast.walk(fn)
            if isinstance(n, ast.If | ast.For | ast.While | ast.Try | ast.With)
        ]
        assert not flow, f"{name} has {flow}"
        imported = {
            alias.asname or alias.name
            for n in fn.body
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("docsort.")
            and not n.module.startswith("docsort.components")
            for alias in n.names
        }  # fmt: skip
        assert imported, f"{name} calls no docsort stage"
        calls = [
            s
            for s in fn.body
            if any(
                isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in imported
                for n in ast.walk(s)
            )
        ]
        assert len(calls) == 1, f"{name} makes {len(calls)} stage calls"
    assert seen >= 15
