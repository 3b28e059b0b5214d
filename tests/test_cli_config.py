"""`docsort config show|list`, and the dated run folder a stage writes to without --out."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from docsort.cli.args import run_folder
from docsort.core.config import load_config
from tests.conftest import TINY, TINY_TRAIN
from tests.scenario import one_line, run_cli

STAMP = re.compile(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}(-\d+)?")
OVERRIDES = ["experiment=cpu_fast", "model=convnext_nano", "train.lr=0.01"]


def test_show_prints_the_config_the_stages_compose():
    rc, out, _ = run_cli("config", "show", *OVERRIDES)
    assert rc == 0
    shown = yaml.safe_load(out)
    assert shown == OmegaConf.to_container(load_config(OVERRIDES), resolve=True)
    assert shown["train"]["lr"] == 0.01 and shown["model"]["name"] == "convnext_nano"
    assert shown["data"]["image_size"] == 160  # from experiment=cpu_fast
    default = yaml.safe_load(run_cli("config", "show")[1])
    assert default["model"]["name"] != "convnext_nano" and default["train"]["lr"] != 0.01


def test_show_one_section_with_overrides_after_the_option():
    rc, out, _ = run_cli("config", "show", "--section", "train", "train.epochs=3")
    assert rc == 0
    cfg = load_config(["train.epochs=3"])
    assert yaml.safe_load(out) == OmegaConf.to_container(cfg.train, resolve=True)
    rc, _, err = run_cli("config", "show", "--section", "trian")
    assert rc == 2 and "choose from: train" in one_line(err)


@pytest.mark.parametrize(
    ("override", "piece"),
    [
        ("train.lrr=1", "train.lrr is not a docsort setting"),
        ("model=nope", "model='nope' is not valid"),
        ("train.lr=-1", "train.lr=-1 must be > 0"),
    ],
)
def test_show_refuses_a_bad_override_as_the_stages_do(override, piece, prepared_root, tmp_path):
    rc, out, err = run_cli("config", "show", override)
    assert rc == 2 and out == ""
    line = one_line(err)
    assert piece in line
    rc, _, train_err = run_cli(
        "train", "--prepared", prepared_root, "--out", tmp_path / "m", override
    )
    assert rc == 2 and one_line(train_err) == line


def _blocks(text: str) -> dict[str, list[str]]:
    """``config list`` output: group header -> its option lines."""
    blocks: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and line[0] != " " and not line.startswith("*"):
            blocks[line] = []
            current = blocks[line]
        elif line.startswith("  "):
            current.append(line)
    return blocks


def test_list_shows_groups_options_and_defaults():
    rc, out, _ = run_cli("config", "list")
    assert rc == 0
    conf = Path(load_config.__code__.co_filename).parent.parent / "conf"
    blocks = {h.split(" ", 1)[0]: (h, lines) for h, lines in _blocks(out).items()}
    folders = [p for p in conf.iterdir() if p.is_dir() and any(p.glob("*.yaml"))]
    assert {p.name for p in folders} == set(blocks)
    for folder in folders:
        listed = {ln[4:].split()[0] for ln in blocks[folder.name][1]}
        assert listed == {f.stem for f in folder.glob("*.yaml")}
    # defaults: the root config's defaults list; `default` for the folders outside it
    root = yaml.safe_load((conf / "config.yaml").read_text())["defaults"]
    expected = {k: v for e in root if isinstance(e, dict) for k, v in e.items()}
    expected |= {"hpo": "default", "k8s": "default"}
    for group, default in expected.items():
        header, lines = blocks[group]
        marked = [ln[4:].split()[0] for ln in lines if ln.startswith("  * ")]
        assert marked == ([default] if default else []), group
        assert f"(default: {default or 'none'};" in header
    assert "choose with model=NAME" in blocks["model"][0]
    # a preset with a leading comment is described by (the start of) that comment
    first = (conf / "aug" / "doc_strong.yaml").read_text().splitlines()[0].lstrip("# ")
    assert any(ln.split(None, 1)[1].startswith(first[:30]) for ln in blocks["aug"][1]
               if "doc_strong" in ln)  # fmt: skip


def test_run_folder_never_reuses_an_existing_one(tmp_path):
    now = datetime(2026, 12, 2, 5, 10, 0, tzinfo=UTC)
    first = run_folder("train", root=tmp_path, now=now)
    assert first == tmp_path / "train" / "2026-12-02_05-10-00" and first.is_dir()
    (tmp_path / "train" / "2026-12-02_05-10-00-2").write_text("a file, not ours")
    assert run_folder("train", root=tmp_path, now=now).name == "2026-12-02_05-10-00-3"
    assert run_folder("train", root=tmp_path, now=now).name == "2026-12-02_05-10-00-4"
    assert (tmp_path / "train" / "2026-12-02_05-10-00-2").read_text() == "a file, not ours"


def _runs(tmp_path: Path, argv: list, times: int) -> list[Path]:
    """Run ``docsort ARGV`` (no --out) ``times`` times; the folder each one said it chose."""
    folders = []
    for _ in range(times):
        rc, out, err = run_cli(*argv)
        assert rc == 0, err
        said = re.search(r"^writing to (\S+)$", err, re.M)
        assert said, err
        folder = Path(said[1])
        assert folder.parent == Path("runs", argv[0]) and STAMP.fullmatch(folder.name)
        assert str(folder) in out + err  # the stage's own "written to" names it too
        folders.append(folder)
    made = sorted(p.name for p in (tmp_path / "runs" / argv[0]).iterdir())
    assert len(set(folders)) == times and made == sorted(f.name for f in folders)
    return folders


def test_prepare_without_out_writes_a_new_dated_folder_each_time(
    sample_root, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    for folder in _runs(tmp_path, ["prepare", sample_root, *TINY], times=2):
        assert (folder / "prepared.json").is_file()
        assert yaml.safe_load((folder / "config.yaml").read_text())["data"]["num_folds"] == 2


@pytest.mark.slow
def test_train_without_out_writes_a_new_dated_folder(prepared_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--prepared", prepared_root, *TINY_TRAIN, "fold=0", "model=resnet10t",
            "precision=fp32"]  # fmt: skip
    for folder in _runs(tmp_path, argv, times=2):
        assert (folder / "run.json").is_file()


def test_refused_inputs_make_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli("train", "--prepared", tmp_path / "missing")
    assert rc == 2 and "prepared folder not found" in one_line(err)
    assert not (tmp_path / "runs").exists()
