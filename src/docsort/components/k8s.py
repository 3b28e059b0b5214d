"""Every Kubernetes setting of docsort's KFP tasks, read from one YAML profile.

Pipelines call :func:`apply` on each task; it sets GPU type and count, CPU and
memory, the GPU pool's node selector and tolerations, S3 and W&B credentials
from Secrets (plus the S3 ConfigMap) as env, emptyDirs at ``/dev/shm`` and
``/tmp``, the pod timeout, retries, caching, image pull policy and secrets,
the non-root security context, labels and annotations. The values live in
``conf/k8s/<profile>.yaml`` (``default`` unless ``DOCSORT_K8S_PROFILE`` names
another profile or a YAML path), so a cluster with other node pools changes a
file, not code. ``kfp.local`` ignores all of it except retries and caching.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from docsort.core.errors import ConfigError
from docsort.sweep.sweep import TRIAL_POD_ENV  # the sweep step reads it; defined once, there

PROFILE_ENV = "DOCSORT_K8S_PROFILE"
#: KFP's own emptyDirs in every task pod (backend argo compiler); mounting there again is invalid.
KFP_RESERVED_PATHS = ("/gcs", "/s3", "/minio", "/.local", "/.cache", "/.config", "/kfp-launcher")

_TOP = {
    "extends",
    "image_pull_policy",
    "image_pull_secrets",
    "security",
    "secrets",
    "config_maps",
    "gpu_pool",
    "labels",
    "annotations",
    "defaults",
    "components",
}
_TASK = {
    "image",
    "cpu",
    "cpu_limit",
    "memory",
    "memory_limit",
    "gpu",
    "timeout_s",
    "retries",
    "retry_backoff",
    "retry_backoff_factor",
    "retry_backoff_max",
    "caching",
    "shm",
    "tmp",
}
_POOL = {"accelerator", "product", "node_selector", "tolerations"}
_SECURITY = {"run_as_user", "run_as_group", "run_as_non_root"}
_TOLERATION = {"key", "operator", "value", "effect", "toleration_seconds"}
_CPU = re.compile(r"^[0-9]+(\.[0-9]+)?m?$")
_MEM = re.compile(r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$")
_DURATION = re.compile(r"^[0-9]+(\.[0-9]+)?(s|m|h)$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")


# ---------------------------------------------------------------- profiles


def profile_names() -> list[str]:
    """Profiles shipped in ``docsort/conf/k8s``."""
    folder = resources.files("docsort").joinpath("conf/k8s")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read(profile: str) -> tuple[dict[str, Any], str]:
    path = Path(profile)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError("k8s profile file not found", file=profile)
        text, where = path.read_text(encoding="utf-8"), profile
    else:
        if profile not in profile_names():
            raise ConfigError(
                f"unknown k8s profile {profile!r}; choose from {profile_names()} or give a YAML path"
            )
        text = resources.files("docsort").joinpath(f"conf/k8s/{profile}.yaml").read_text("utf-8")
        where = f"k8s/{profile}.yaml"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file=where) from None
    if not isinstance(data, dict):
        raise ConfigError("a k8s profile must be a mapping", file=where)
    return data, where


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key (components per setting); anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_profile(profile: str | None = None) -> dict[str, Any]:
    """The validated profile ``profile`` (default: ``$DOCSORT_K8S_PROFILE`` or ``default``)."""
    name = profile or os.environ.get(PROFILE_ENV) or "default"
    seen: list[str] = []
    data: dict[str, Any] = {}
    while name:
        if name in seen:
            raise ConfigError(f"k8s profiles extend each other in a loop: {seen + [name]}")
        seen.append(name)
        raw, where = _read(name)
        unknown = sorted(set(raw) - _TOP)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown}; valid keys: {sorted(_TOP)}", file=where)
        data = _merge(raw, data)  # the profile read later is the base
        name = raw.get("extends")
    data.pop("extends", None)
    return _validate(data, seen[0])


def _quantity(where: str, key: str, value: Any, pattern: re.Pattern, example: str) -> None:
    if value is not None and not pattern.match(str(value)):
        raise ConfigError(f"{key}: {value!r} is not a quantity like {example}", file=where)


def _validate_task(where: str, name: str, task: Mapping[str, Any]) -> None:
    at = f"components.{name}" if name != "defaults" else "defaults"
    if not isinstance(task, Mapping):
        raise ConfigError(f"{at} must be a mapping", file=where)
    unknown = sorted(set(task) - _TASK)
    if unknown:
        raise ConfigError(
            f"{at}: unknown key(s) {unknown}; valid keys: {sorted(_TASK)}", file=where
        )
    for key in ("cpu", "cpu_limit"):
        _quantity(where, f"{at}.{key}", task.get(key), _CPU, "4 or 500m")
    for key in ("memory", "memory_limit", "shm", "tmp"):
        _quantity(where, f"{at}.{key}", task.get(key), _MEM, "8Gi")
    for key in ("retry_backoff", "retry_backoff_max"):
        if task.get(key) is not None and not _DURATION.match(str(task[key])):
            raise ConfigError(f"{at}.{key}: {task[key]!r} is not a duration like 30s", file=where)
    for key in ("gpu", "timeout_s", "retries"):
        v = task.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ConfigError(f"{at}.{key} must be an integer >= 0, got {v!r}", file=where)
    if "caching" in task and not isinstance(task["caching"], bool):
        raise ConfigError(f"{at}.caching must be true or false", file=where)
    if task.get("image") not in (None, "cpu", "gpu"):
        raise ConfigError(f"{at}.image: {task['image']!r}; choose cpu, gpu or null", file=where)


def _validate(data: dict[str, Any], name: str) -> dict[str, Any]:
    where = name if name.endswith((".yaml", ".yml")) else f"k8s/{name}.yaml"
    data.setdefault("defaults", {})
    data.setdefault("components", {})
    _validate_task(where, "defaults", data["defaults"])
    missing = sorted(_TASK - set(data["defaults"]))
    if missing:
        raise ConfigError(f"defaults must set every task key; missing {missing}", file=where)
    for comp, task in (data["components"] or {}).items():
        _validate_task(where, str(comp), task or {})
    if data.get("image_pull_policy") not in (None, *_PULL_POLICIES):
        raise ConfigError(
            f"image_pull_policy: {data['image_pull_policy']!r}; choose from {list(_PULL_POLICIES)}",
            file=where,
        )
    sec = data.get("security") or {}
    unknown = sorted(set(sec) - _SECURITY)
    if unknown:
        raise ConfigError(
            f"security: unknown key(s) {unknown}; valid: {sorted(_SECURITY)}", file=where
        )
    for kind in ("secrets", "config_maps"):
        for i, ref in enumerate(data.get(kind) or []):
            if (
                not isinstance(ref, Mapping)
                or not ref.get("name")
                or not isinstance(ref.get("env"), Mapping)
            ):
                raise ConfigError(
                    f"{kind}[{i}] needs a name and an env mapping (key: ENV_NAME)", file=where
                )
            unknown = sorted(set(ref) - {"name", "env", "optional"})
            if unknown:
                raise ConfigError(f"{kind}[{i}]: unknown key(s) {unknown}", file=where)
            bad = [v for v in ref["env"].values() if not _ENV.match(str(v))]
            if bad:
                raise ConfigError(
                    f"{kind}[{i}]: {bad[0]!r} is not an env variable name", file=where
                )
    pool = data.get("gpu_pool") or {}
    unknown = sorted(set(pool) - _POOL)
    if unknown:
        raise ConfigError(f"gpu_pool: unknown key(s) {unknown}; valid: {sorted(_POOL)}", file=where)
    for i, tol in enumerate(pool.get("tolerations") or []):
        if not isinstance(tol, Mapping) or set(tol) - _TOLERATION:
            raise ConfigError(
                f"gpu_pool.tolerations[{i}] may only use {sorted(_TOLERATION)}", file=where
            )
    for key in ("labels", "annotations"):
        if not isinstance(data.get(key) or {}, Mapping):
            raise ConfigError(f"{key} must be a mapping", file=where)
    return data


@contextlib.contextmanager
def use_profile(profile: str | None) -> Iterator[None]:
    """Compile with ``profile`` inside the block (``None``: leave the environment alone)."""
    if not profile:
        yield
        return
    load_profile(profile)  # fail before compiling anything
    old = os.environ.get(PROFILE_ENV)
    os.environ[PROFILE_ENV] = profile
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PROFILE_ENV, None)
        else:
            os.environ[PROFILE_ENV] = old


# ---------------------------------------------------------------- applying


def component_key(task) -> str:
    """``train-op`` -> ``train``: the profile entry of a task's component."""
    name = task.component_spec.name
    return re.sub(r"[-_]op$", "", name).replace("-", "_")


def task_settings(component: str, profile: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings one component gets: ``defaults`` overlaid with its own entry."""
    prof = profile if profile is not None else load_profile()
    return {**prof["defaults"], **((prof.get("components") or {}).get(component) or {})}


def trial_pod(profile: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Pod settings for Katib trials: the GPU pool, pull policy and pull secrets of the pipeline's tasks."""
    prof = profile if profile is not None else load_profile()
    pool = prof.get("gpu_pool") or {}
    selector = dict(pool.get("node_selector") or {})
    if pool.get("product"):
        selector["nvidia.com/gpu.product"] = str(pool["product"])
    return {
        "node_selector": selector,
        "tolerations": [dict(t) for t in pool.get("tolerations") or []],
        "image_pull_policy": prof.get("image_pull_policy"),
        "image_pull_secrets": [str(n) for n in prof.get("image_pull_secrets") or []],
    }


def apply(task, component: str | None = None, *, profile: str | Mapping[str, Any] | None = None):
    """Set every Kubernetes setting of the profile on ``task``; returns the task.

    ``component`` picks the profile entry (default: from the component's name,
    ``train_op`` -> ``train``).
    """
    from kfp import kubernetes

    from docsort.core import container_images as images

    prof = load_profile(profile) if profile is None or isinstance(profile, str) else profile
    key = component or component_key(task)
    s = task_settings(key, prof)

    if s["image"]:
        task.set_container_image(images.image(s["image"]))
    task.set_cpu_request(str(s["cpu"]))
    if s["cpu_limit"]:
        task.set_cpu_limit(str(s["cpu_limit"]))
    task.set_memory_request(str(s["memory"]))
    if s["memory_limit"]:
        task.set_memory_limit(str(s["memory_limit"]))

    pool = prof.get("gpu_pool") or {}
    if s["gpu"]:
        task.set_accelerator_type(pool.get("accelerator") or "nvidia.com/gpu")
        task.set_accelerator_limit(int(s["gpu"]))
        pod = trial_pod(prof)
        for label, value in pod["node_selector"].items():
            kubernetes.add_node_selector(task, label_key=label, label_value=str(value))
        for tol in pod["tolerations"]:
            kubernetes.add_toleration(task, **tol)

    for ref in prof.get("secrets") or []:
        kubernetes.use_secret_as_env(
            task, secret_name=ref["name"], secret_key_to_env=dict(ref["env"]),
            optional=bool(ref.get("optional", False)),
        )  # fmt: skip
    for ref in prof.get("config_maps") or []:
        kubernetes.use_config_map_as_env(
            task, config_map_name=ref["name"], config_map_key_to_env=dict(ref["env"]),
            optional=bool(ref.get("optional", False)),
        )  # fmt: skip

    if s["shm"]:
        kubernetes.empty_dir_mount(
            task,
            volume_name="dshm",
            mount_path="/dev/shm",
            medium="Memory",
            size_limit=str(s["shm"]),
        )
    kubernetes.empty_dir_mount(
        task, volume_name="tmp", mount_path="/tmp", size_limit=str(s["tmp"]) if s["tmp"] else None
    )

    if s["timeout_s"]:
        kubernetes.set_timeout(task, int(s["timeout_s"]))
    if s["retries"]:
        task.set_retry(
            num_retries=int(s["retries"]), backoff_duration=str(s["retry_backoff"]),
            backoff_factor=float(s["retry_backoff_factor"]), backoff_max_duration=str(s["retry_backoff_max"]),
        )  # fmt: skip
    task.set_caching_options(enable_caching=bool(s["caching"]))

    if prof.get("image_pull_policy"):
        kubernetes.set_image_pull_policy(task, prof["image_pull_policy"])
    if prof.get("image_pull_secrets"):
        kubernetes.set_image_pull_secrets(task, [str(n) for n in prof["image_pull_secrets"]])
    sec = prof.get("security") or {}
    if sec:
        kubernetes.set_security_context(task, **sec)
    for label, value in {
        **(prof.get("labels") or {}),
        "docsort.io/component": key.replace("_", "-"),
    }.items():
        kubernetes.add_pod_label(task, label, str(value))
    for name, value in (prof.get("annotations") or {}).items():
        kubernetes.add_pod_annotation(task, name, str(value))
    if key == "sweep":
        # The sweep step starts Katib trials: they go to the same GPU pool as the pipeline's GPU
        # tasks and run the image this pipeline was compiled for.
        task.set_env_variable(TRIAL_POD_ENV, json.dumps(trial_pod(prof), sort_keys=True))
        chosen = images.settings()
        task.set_env_variable(images.REGISTRY_ENV, chosen.registry)
        task.set_env_variable(images.TAG_ENV, chosen.tag)
    return task
