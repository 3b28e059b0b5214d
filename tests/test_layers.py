"""The import rules of docs/architecture.md, as import-linter contracts in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "docsort"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: Packages without code of their own (Hydra and k8s YAML), outside the layers.
DATA_ONLY = {"conf"}


def _contracts() -> list[dict]:
    return PYPROJECT["tool"]["importlinter"]["contracts"]


def test_the_import_contracts_are_kept():
    """Run as its own process: import-linter in-process leaves the logging configuration changed."""
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Contracts: {len(_contracts())} kept, 0 broken" in proc.stdout


def test_every_package_is_in_a_layer():
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    named = {name.strip() for layer in layers["layers"] for name in layer.split("|")}
    packages = {f"docsort.{p.name}" for p in SRC.iterdir() if (p / "__init__.py").is_file()} - {
        f"docsort.{d}" for d in DATA_ONLY
    }
    assert named == packages


def test_the_source_tree_has_no_symlinks():
    links = [str(p.relative_to(ROOT)) for p in SRC.rglob("*") if p.is_symlink()]
    assert links == []


def test_the_wheel_is_the_source_tree_as_it_is():
    """No ``force-include``: every module ships from where it lies in src/docsort."""
    assert "force-include" not in (ROOT / "pyproject.toml").read_text()
    wheel = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["packages"] == ["src/docsort"]
