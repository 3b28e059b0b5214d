"""The KFP backend's typing contract on compiled pipelines, and the golden compiled YAML.

The rules are those of the KFP 2.17 driver (kubeflow/pipelines tag 2.17.0,
``backend/src/v2/driver/resolve.go``: ``resolveInputs`` checks every resolved input
parameter against the callee's declared type; ``backend/src/v2/driver/util.go``
``getItems`` for ParallelFor items; ``backend/src/v2/metadata/converter.go``
``TextToPbValue`` for the kind of a task's output) and, for artifacts, of the SDK
(``sdk/python/kfp/dsl/types/type_utils.py`` ``check_artifact_type_compatibility``).
``kfp.local`` checks none of them, so these tests stand in for the cluster.
"""

# No ``from __future__ import annotations``: KFP reads the components' annotations as types.
import copy
import functools
from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl
from kfp.dsl import Input, Model, Output

from docsort.core.errors import DocsortError
from docsort.kfp import contract as kfp_contract
from docsort.kfp.runner import compile_pipeline
from tests.golden_ir import GOLDEN, PIPELINES, REGENERATE, ROOT, render
from tests.scenario import one_line, run_cli

# ----------------------------------------------------------------- tiny pipelines

component = functools.partial(dsl.component, base_image="python:3.11")


@component
def folds_untyped() -> list:
    return [0, 1]


@component
def folds_typed() -> list[int]:
    return [0, 1]


@component
def train_fold(fold: int) -> float:
    return float(fold)


@component
def mean_of(values: list) -> float:
    return sum(values) / len(values)


@component
def make_model(model: Output[Model]):
    open(model.path, "w").close()


@component
def read_model(model: Input[Model]):
    pass


@component
def read_models(models: Input[list[Model]]):
    pass


@dsl.pipeline(name="bare-list-loop")
def bare_list_loop():
    """The old defect: ``-> list`` makes the loop item a STRING, ``fold: int`` refuses it."""
    folds = folds_untyped()
    with dsl.ParallelFor(folds.output) as fold:
        train_fold(fold=fold)


@dsl.pipeline(name="typed-list-loop")
def typed_list_loop():
    folds = folds_typed()
    with dsl.ParallelFor(folds.output) as fold:
        scored = train_fold(fold=fold)
    mean_of(values=dsl.Collected(scored.output))


@dsl.pipeline(name="raw-list-loop")
def raw_list_loop():
    with dsl.ParallelFor([0, 1, 2]) as fold, dsl.If(fold == 1):
        train_fold(fold=fold)


def ir_of(pipeline, tmp_path: Path) -> dict:
    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipeline, str(out))
    return next(yaml.safe_load_all(out.read_text()))


# ----------------------------------------------------------------- the shipped pipelines


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_shipped_pipeline_meets_the_backend_contract(path: Path, tmp_path: Path):
    out = compile_pipeline(path, tmp_path / f"{path.stem}.yaml")
    spec = next(yaml.safe_load_all(out.read_text()))
    assert kfp_contract.check(spec) == []
    # and the check really looked inside the ParallelFor: its tasks have typed inputs
    loops = [n for n in spec["components"] if n.startswith("comp-for-loop")]
    assert loops, "every shipped pipeline fans out in a ParallelFor"


def test_the_fold_loop_hands_train_an_integer(tmp_path: Path):
    out = compile_pipeline(
        ROOT / "src" / "docsort" / "pipelines" / "train.py", tmp_path / "train.yaml"
    )
    spec = next(yaml.safe_load_all(out.read_text()))
    loop = spec["components"]["comp-for-loop-1"]
    item = loop["inputDefinitions"]["parameters"]["pipelinechannel--prepare-op-Output-loop-item"]
    assert item["parameterType"] == "NUMBER_INTEGER"
    train = loop["dag"]["tasks"]["train-op"]["inputs"]["parameters"]["fold"]
    assert train == {"componentInputParameter": "pipelinechannel--prepare-op-Output-loop-item"}


@pytest.mark.parametrize("stem", ["train", "sweep"])
def test_the_old_untyped_fold_list_is_refused_on_the_shipped_pipelines(stem: str, tmp_path: Path):
    """What ``prepare_op -> list`` compiled to: the same IR with the loop item typed STRING."""
    out = compile_pipeline(
        ROOT / "src" / "docsort" / "pipelines" / f"{stem}.py", tmp_path / f"{stem}.yaml"
    )
    spec = next(yaml.safe_load_all(out.read_text()))
    spec["components"]["comp-prepare-op"]["outputDefinitions"]["parameters"]["Output"] = {
        "parameterType": "LIST"
    }
    loop = spec["components"]["comp-for-loop-1"]["inputDefinitions"]["parameters"]
    loop["pipelinechannel--prepare-op-Output-loop-item"]["parameterType"] = "STRING"
    (p,) = kfp_contract.check(spec)
    assert (p.task, p.input, p.expected, p.actual) == (
        "for-loop-1/train-op",
        "fold",
        "NUMBER_INTEGER",
        "a string",
    )


# ----------------------------------------------------------------- the rules


def test_a_bare_list_loop_into_an_int_input_is_refused(tmp_path: Path):
    problems = kfp_contract.check(ir_of(bare_list_loop, tmp_path))
    assert len(problems) == 1
    (p,) = problems
    assert (p.task, p.input, p.expected, p.actual) == (
        "for-loop-1/train-fold",
        "fold",
        "NUMBER_INTEGER",
        "a string",
    )
    assert "pipelinechannel--folds-untyped-Output-loop-item" in p.detail
    assert "STRING" in p.detail


def test_typed_loops_collected_fan_ins_and_conditions_pass(tmp_path: Path):
    assert kfp_contract.check(ir_of(typed_list_loop, tmp_path)) == []
    assert kfp_contract.check(ir_of(raw_list_loop, tmp_path)) == []


def test_a_collected_list_into_a_number_input_is_refused(tmp_path: Path):
    spec = ir_of(typed_list_loop, tmp_path)
    spec["components"]["comp-mean-of"]["inputDefinitions"]["parameters"]["values"][
        "parameterType"
    ] = "NUMBER_DOUBLE"
    (p,) = kfp_contract.check(spec)
    assert (p.task, p.input, p.expected, p.actual) == (
        "mean-of",
        "values",
        "NUMBER_DOUBLE",
        "a list",
    )
    assert "dsl.Collected" in p.detail


def test_numbers_accept_either_number_type_and_string_accepts_anything(tmp_path: Path):
    spec = ir_of(typed_list_loop, tmp_path)
    loop_item = spec["components"]["comp-for-loop-1"]["inputDefinitions"]["parameters"]
    params = spec["components"]["comp-train-fold"]["inputDefinitions"]["parameters"]
    params["fold"]["parameterType"] = "NUMBER_DOUBLE"
    assert kfp_contract.check(spec) == []
    params["fold"]["parameterType"] = "STRING"
    loop_item["pipelinechannel--folds-typed-Output-loop-item"]["parameterType"] = "STRUCT"
    assert kfp_contract.check(spec) == []  # STRING takes a struct as its JSON text
    params["fold"]["parameterType"] = "BOOLEAN"
    (p,) = kfp_contract.check(spec)
    assert (p.expected, p.actual) == ("BOOLEAN", "a struct")


def test_raw_loop_items_are_checked_against_the_item_type(tmp_path: Path):
    spec = ir_of(raw_list_loop, tmp_path)
    loop = next(t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t)
    loop["parameterIterator"]["items"]["raw"] = '["a", 1]'
    (p,) = kfp_contract.check(spec)
    assert p.expected == "NUMBER_INTEGER" and p.actual == "a string" and "loop item 0" in p.detail


def test_an_artifact_type_mismatch_is_refused(tmp_path: Path):
    @dsl.pipeline(name="model-into-model")
    def model_into_model():
        read_model(model=make_model().outputs["model"])

    spec = ir_of(model_into_model, tmp_path)
    assert kfp_contract.check(spec) == []
    # The SDK refuses this when it compiles; a component YAML loaded from elsewhere, an older
    # SDK or an edited IR does not go through that check.
    decl = spec["components"]["comp-read-model"]["inputDefinitions"]["artifacts"]["model"]
    decl["artifactType"]["schemaTitle"] = "system.Dataset"
    (p,) = kfp_contract.check(spec)
    assert (p.task, p.input, p.expected, p.actual) == (
        "read-model",
        "model",
        "system.Dataset@0.0.1",
        "system.Model@0.0.1",
    )
    decl["artifactType"] = {"schemaTitle": "system.Model", "schemaVersion": "1.0.0"}
    (p,) = kfp_contract.check(spec)  # another major schema version
    assert p.expected == "system.Model@1.0.0"


def test_single_versus_list_artifacts_and_a_missing_producer(tmp_path: Path):
    @dsl.pipeline(name="models-fan-in")
    def fan_in():
        with dsl.ParallelFor([0, 1]):
            made = make_model()
        read_models(models=dsl.Collected(made.outputs["model"]))

    spec = ir_of(fan_in, tmp_path)
    assert kfp_contract.check(spec) == []
    bad = copy.deepcopy(spec)
    decl = bad["components"]["comp-read-models"]["inputDefinitions"]["artifacts"]["models"]
    decl["artifactType"]["schemaTitle"] = "system.Artifact"  # the generic type matches any title
    assert kfp_contract.check(bad) == []
    del decl["isArtifactList"]
    (p,) = kfp_contract.check(bad)  # ... but a list is not a single artifact
    assert p.expected == "system.Artifact@0.0.1" and p.actual == "List[system.Model@0.0.1]"
    del spec["root"]["dag"]["tasks"]["read-models"]["inputs"]["artifacts"]["models"]
    (p,) = kfp_contract.check(spec)
    assert p.actual == "no artifact" and "without a producer" in p.detail


def test_a_missing_required_input_and_an_unknown_producer(tmp_path: Path):
    spec = ir_of(typed_list_loop, tmp_path)
    inner = spec["components"]["comp-for-loop-1"]["dag"]["tasks"]["train-fold"]
    inner["inputs"]["parameters"]["fold"] = {
        "taskOutputParameter": {"producerTask": "nope", "outputParameterKey": "Output"}
    }
    (p,) = kfp_contract.check(spec)
    assert p.actual == "no value" and "'nope' is not in the same DAG" in p.detail
    del inner["inputs"]["parameters"]["fold"]
    (p,) = kfp_contract.check(spec)
    assert p.input == "fold" and "required input without a default" in p.detail


# ----------------------------------------------------------------- compile refuses it


def test_compile_refuses_a_pipeline_the_backend_would_refuse(tmp_path: Path):
    src = tmp_path / "bad.py"
    src.write_text(
        "from kfp import dsl\n\nBASE = 'python:3.11'\n\n"
        "@dsl.component(base_image=BASE)\ndef folds() -> list:\n    return [0, 1]\n\n"
        "@dsl.component(base_image=BASE)\ndef train(fold: int):\n    pass\n\n"
        "@dsl.pipeline(name='bad')\ndef bad():\n"
        "    with dsl.ParallelFor(folds().output) as fold:\n        train(fold=fold)\n",
        encoding="utf-8",
    )
    out = tmp_path / "bad.yaml"
    with pytest.raises(DocsortError, match="input 'fold' expects NUMBER_INTEGER, gets a string"):
        compile_pipeline(src, out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.py"]
    rc, stdout, stderr = run_cli("compile", str(src), "--out", str(out))
    assert rc == 2 and not out.exists()
    line = one_line(stderr)
    assert line.startswith("bad.py: the KFP backend would refuse 1 input(s)")
    assert "task for-loop-1/train" in line


# ----------------------------------------------------------------- golden YAML


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_compiled_pipeline_matches_its_golden_yaml(path: Path):
    golden = GOLDEN / f"{path.stem}.yaml"
    assert golden.is_file(), f"no {golden.name}: run `{REGENERATE}` and commit it"
    assert render(path) == golden.read_text(encoding="utf-8"), (
        f"the compiled {path.name} differs from tests/golden/{golden.name}; if the change is "
        f"intended, run `{REGENERATE}` and review the diff"
    )


def test_golden_files_pass_the_contract_and_name_no_other_pipelines():
    assert sorted(p.stem for p in GOLDEN.glob("*.yaml")) == sorted(p.stem for p in PIPELINES)
    for golden in GOLDEN.glob("*.yaml"):
        assert kfp_contract.check(next(yaml.safe_load_all(golden.read_text()))) == []
