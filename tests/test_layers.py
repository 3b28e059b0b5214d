"""The import rules of docs/architecture.md, as import-linter contracts in pyproject.toml."""

from __future__ import annotations

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


def test_the_import_contracts_are_kept(capsys):
    pytest.importorskip("importlinter")
    from importlinter.cli import lint_imports

    rc = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"Contracts: {len(_contracts())} kept, 0 broken" in out


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
