"""The distribution works once installed, as in the images: build the sdist and
the wheel (from the sdist), install the wheel into a clean virtual environment,
and run the installed ``docsort`` from outside the source tree.

The clean venv gets no copy of torch & co.: a ``.pth`` file added after the
install points it at the current environment's site-packages for the
third-party dependencies only (``.pth`` files there, such as the editable
install's, are not processed), so docsort itself can only come from the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str | Path], cwd: Path, **kw) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, **kw
    )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel built straight from the tree (as the Dockerfiles' `pip wheel .`
    does) and the sdist with a wheel built from it (as a release does)."""
    out: dict[str, Path] = {}
    for how, flags in (("tree", ["--wheel"]), ("release", [])):
        outdir = tmp_path_factory.mktemp(how)
        proc = _run(
            [sys.executable, "-m", "build", *flags, "--outdir", outdir, REPO], outdir, timeout=600
        )
        assert proc.returncode == 0, (
            f"{how} build failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
        (out[how],) = outdir.glob("docsort-*.whl")
    (out["sdist"],) = out["release"].parent.glob("docsort-*.tar.gz")
    out["wheel"] = out["tree"]
    return out


@pytest.fixture(scope="module")
def installed(dist: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the wheel installed into it; returns its bin dir."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    python = root / "bin" / "python"
    # This environment's pip installs into the target interpreter's scheme.
    proc = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--no-deps",
            "--no-index",
            "--no-cache-dir",
            "--disable-pip-version-check",
            dist["wheel"],
        ],
        cwd=root,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root)
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site.stdout.strip()) / "_docsort_test_deps.pth").write_text(
        "\n".join(sorted(deps)) + "\n", encoding="utf-8"
    )
    return root / "bin"


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_wheel_carries_components_and_pipelines_inside_docsort(dist: dict[str, Path]):
    names = _names(dist["wheel"])
    assert sorted(names) == sorted(_names(dist["release"])), "tree and sdist builds differ"
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]
    assert {n.split("/")[0] for n in names} == {"docsort", f"docsort-{version}.dist-info"}
    for folder in ("components", "pipelines"):
        shipped = {n for n in names if n.startswith(f"docsort/{folder}/")}
        source = {f"docsort/{folder}/{p.name}" for p in (REPO / folder).glob("*.py")}
        assert f"docsort/{folder}/__init__.py" in shipped
        assert source <= shipped, f"missing from the wheel: {sorted(source - shipped)}"
    assert "docsort/conf/images.yaml" in names
    with zipfile.ZipFile(dist["wheel"]) as zf:
        entry_points = zf.read(f"docsort-{version}.dist-info/entry_points.txt").decode()
    assert "docsort = docsort.cli.main:main" in entry_points


def test_sdist_has_the_sources_the_wheel_is_built_from(dist: dict[str, Path]):
    import tarfile

    with tarfile.open(dist["sdist"]) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for needed in (
        "pyproject.toml",
        "src/docsort/cli/main.py",
        "src/docsort/components/__init__.py",
        "src/docsort/pipelines/__init__.py",
        "src/docsort/conf/images.yaml",
    ):
        assert needed in names


def test_installed_docsort_runs_from_the_wheel(installed: Path, tmp_path: Path):
    python = installed / "python"
    proc = _run([installed / "docsort", "--help"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: docsort")
    assert _run([python, "-m", "docsort.cli.main", "--help"], tmp_path, timeout=300).returncode == 0

    where = _run(
        [
            python,
            "-c",
            "import docsort, docsort.components, docsort.pipelines;"
            "print(docsort.__file__); print(docsort.components.__file__)",
        ],
        tmp_path,
        timeout=300,
    )
    assert where.returncode == 0, where.stderr
    venv_root = installed.parent.resolve()
    for line in where.stdout.split():
        assert Path(line).resolve().is_relative_to(venv_root), f"imported from {line}"
    # no generic top-level packages leak into site-packages
    for generic in ("components", "pipelines"):
        proc = _run([python, "-c", f"import {generic}"], tmp_path, timeout=60)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr


@pytest.mark.slow  # 6-10 s on 2 cores: `make test-slow`
def test_installed_docsort_compiles_its_shipped_pipelines(installed: Path, tmp_path: Path):
    python = installed / "python"
    found = _run(
        [
            python,
            "-c",
            "import docsort.pipelines as p, pathlib;"
            "print('\\n'.join(str(f) for f in sorted(pathlib.Path(p.__file__).parent.glob('*.py'))"
            " if f.name != '__init__.py'))",
        ],
        tmp_path,
        timeout=60,
    )
    assert found.returncode == 0, found.stderr
    pipelines = [Path(line) for line in found.stdout.split()]
    if not pipelines:
        pytest.skip("no pipelines shipped yet")
    for pipeline in pipelines:
        out = tmp_path / f"{pipeline.stem}.yaml"
        proc = _run(
            [installed / "docsort", "compile", pipeline, "--out", out], tmp_path, timeout=300
        )
        assert proc.returncode == 0, f"{pipeline.name}: {proc.stderr[-2000:]}"
        assert out.read_text(encoding="utf-8").startswith("# PIPELINE DEFINITION")
