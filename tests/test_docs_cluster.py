"""docs/cluster.md, checked against the code and the manifests it tells the reader to use.

Every ``docsort ...`` command in it parses with docsort's own argument parser;
every bucket its examples (and the README's) name is created by the dev
overlay's MinIO bucket Job; the ``docsort`` namespace exists before kaniko's
registry secret is created in it; the KFP manifests tag is the backend release
whose driver rules ``docsort.kfp.contract`` encodes.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from docsort.cli.main import build_parser
from docsort.kfp import contract as kfp_contract

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "cluster.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")


def shell_commands(text: str) -> list[str]:
    """Commands of the ```bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


DOCSORT_COMMANDS = [c for c in shell_commands(DOC) if c.startswith("docsort ")]


def test_the_guide_has_docsort_commands():
    subcommands = {shlex.split(c)[1] for c in DOCSORT_COMMANDS}
    assert {"submit", "schedule", "compile", "candidate", "sample-data"} <= subcommands


@pytest.mark.parametrize("command", DOCSORT_COMMANDS)
def test_every_docsort_command_in_the_guide_parses(command: str):
    argv = shlex.split(command.replace('"$', '"X').replace("$", "X"))[1:]
    args, extra = build_parser().parse_known_args(argv)  # exits (fails) on an unknown option
    assert not [e for e in extra if e.startswith("-")], f"unknown options in: {command}"


def test_every_bucket_in_the_examples_is_created_by_the_dev_overlay():
    job = yaml.safe_load((ROOT / "k8s/overlays/dev/minio-buckets.yaml").read_text())
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    created = {a.removeprefix("dev/") for a in args if a.startswith("dev/")}
    used = set(re.findall(r"s3://(docsort-[a-z0-9-]+)", DOC + README))
    assert used and used <= created, f"not created on dev: {sorted(used - created)}"


def test_the_namespace_exists_before_the_registry_secret_is_made_in_it():
    commands = shell_commands(DOC)
    secret = next(
        i for i, c in enumerate(commands) if "create secret generic docsort-registry" in c
    )
    namespace = next(
        i for i, c in enumerate(commands) if c == "kubectl apply -f k8s/base/namespace.yaml"
    )
    assert namespace < secret
    ns = yaml.safe_load((ROOT / "k8s/base/namespace.yaml").read_text())
    assert ns["kind"] == "Namespace" and ns["metadata"]["name"] == "docsort"


def test_kfp_manifests_tag_is_the_backend_the_contract_check_encodes():
    (version,) = re.findall(r"export PIPELINE_VERSION=(\S+)", DOC)
    assert version == kfp_contract.KFP_BACKEND_TAG


def test_the_cpu_path_uses_the_cpu_profile_and_the_cpu_space():
    section = DOC[DOC.index("## A CPU-only cluster") :]
    section = section[: section.index("\n## ", 4)]
    submits = [c for c in shell_commands(section) if c.startswith("docsort submit")]
    assert submits and all("--k8s-profile cpu" in c for c in submits)
    assert any("space=cpu_small" in c for c in submits)
    space = yaml.safe_load((ROOT / "src/docsort/conf/hpo/cpu_small.yaml").read_text())
    assert space["trial"]["gpu"] == 0 and space["trial"]["image"] == "cpu"
