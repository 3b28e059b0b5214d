"""The typing contract a KFP 2.17 backend enforces on a compiled pipeline, checked before it runs.

``kfp.local`` hands every value to the next task as Python objects and never
checks a declared type, so a pipeline can pass every local test and still fail
on the cluster at its first task (e.g. a ParallelFor item typed STRING feeding
an ``int`` input). :func:`check` walks the compiled IR (the first YAML document
``docsort compile`` writes) through every DAG, ParallelFor and condition
sub-component and applies the rules the backend applies at run time:

Parameters, as the driver resolves task inputs (kubeflow/pipelines, tag 2.17.0,
``backend/src/v2/driver/resolve.go``: ``resolveInputs`` /
``handleParamTypeValidationAndConversion`` and ``resolveInputParameter``):

- a STRING input accepts any value (the driver turns it into text, so inside
  that component the value *is* a string from then on);
- NUMBER_INTEGER and NUMBER_DOUBLE accept any number;
- BOOLEAN, LIST and STRUCT accept only a bool, a list, a struct;
  TASK_FINAL_STATUS / TASK_CONFIG accept a struct (TASK_CONFIG is not resolved);
- a required input (not optional, no default) must get a value;
- a component input or producer task that does not exist is an error.

What kind of value a source yields:

- a component input: its declared type (the driver validated/converted it when
  the component started, same function);
- a container task's output: its declared output type (the launcher parses the
  output file with ``metadata.TextToPbValue``, ``backend/src/v2/component/launcher_v2.go``
  ``collectOutputParameters`` and ``backend/src/v2/metadata/converter.go``);
- a DAG task's output: the inner producer's (``resolveUpstreamParameters``), and a
  list when the DAG is a ParallelFor (``dsl.Collected``: ``CollectInputs``);
- a ParallelFor item: an element of the items list (``getItems`` in
  ``backend/src/v2/driver/util.go``), checked against the loop item input's type;
- a constant: its JSON kind.

Artifacts (the SDK's compile-time rule, kubeflow/pipelines tag 2.17.0,
``sdk/python/kfp/dsl/types/type_utils.py`` ``check_artifact_type_compatibility``):
an artifact input needs a producer (``resolveInputArtifact`` /
``resolveUpstreamArtifacts``; a required one must be given, as
``sdk/python/kfp/dsl/base_component.py`` demands when a task is created), single
vs list must agree, ``system.Artifact`` on either side matches anything, else the
schema titles and major schema versions must be equal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from docsort.core.errors import DocsortError

# The kind of a protobuf Value at run time (structpb.Value's Kind), or UNKNOWN when the IR alone
# cannot tell (e.g. the elements of a list another task returns).
STRING, NUMBER, BOOL, LIST, STRUCT, NULL, UNKNOWN = (
    "string",
    "number",
    "bool",
    "list",
    "struct",
    "null",
    "unknown",
)

#: Declared parameter type -> the kind a value has once the driver accepted it.
KIND_OF = {
    "STRING": STRING,
    "NUMBER_INTEGER": NUMBER,
    "NUMBER_DOUBLE": NUMBER,
    "BOOLEAN": BOOL,
    "LIST": LIST,
    "STRUCT": STRUCT,
    "TASK_FINAL_STATUS": STRUCT,
    "TASK_CONFIG": STRUCT,
}

#: Declared type -> the kinds the driver accepts for it (STRING: all of them).
ACCEPTS = {
    "NUMBER_INTEGER": {NUMBER},
    "NUMBER_DOUBLE": {NUMBER},
    "BOOLEAN": {BOOL},
    "LIST": {LIST},
    "STRUCT": {STRUCT},
    "TASK_FINAL_STATUS": {STRUCT},
    "TASK_CONFIG": {STRUCT},
}

GENERIC_ARTIFACT = "system.Artifact"
#: The kubeflow/pipelines tag whose backend these rules come from (docs/cluster.md installs it).
KFP_BACKEND_TAG = "2.17.0"


class ContractError(DocsortError):
    """A compiled pipeline the KFP backend would refuse at run time."""


@dataclass(frozen=True)
class Problem:
    """One input the backend would refuse: which task, which input, what it expects and gets."""

    task: str  # path from the root DAG, e.g. "for-loop-1/train-op"
    input: str
    expected: str
    actual: str
    detail: str = ""

    def __str__(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return (
            f"task {self.task}: input {self.input!r} expects {self.expected}, "
            f"gets {self.actual}{extra}"
        )


@dataclass(frozen=True)
class _Value:
    kind: str
    source: str  # where it comes from, for the message


@dataclass(frozen=True)
class _Artifact:
    schema_title: str
    schema_version: str
    is_list: bool
    source: str

    def describe(self) -> str:
        name = f"{self.schema_title}@{self.schema_version}"
        return f"List[{name}]" if self.is_list else name


def _const_kind(value: Any) -> str:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int | float):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, list):
        return LIST
    if isinstance(value, dict):
        return STRUCT
    return UNKNOWN


def accepts(expected: str, kind: str) -> bool:
    """Whether the driver hands a value of ``kind`` to an input declared ``expected``."""
    if expected == "STRING" or kind == UNKNOWN:
        return True
    return kind in ACCEPTS.get(expected, set())


def artifact_compatible(given: _Artifact, expected: Mapping[str, Any]) -> bool:
    """The SDK's ``check_artifact_type_compatibility`` on IR fields."""
    exp_type = expected.get("artifactType") or {}
    exp_title = str(exp_type.get("schemaTitle", GENERIC_ARTIFACT))
    exp_version = str(exp_type.get("schemaVersion", "0.0.1"))
    if bool(expected.get("isArtifactList", False)) != given.is_list:
        return False
    if GENERIC_ARTIFACT in (given.schema_title, exp_title):
        return True
    return (
        given.schema_title == exp_title
        and given.schema_version.split(".")[0] == exp_version.split(".")[0]
    )


def _declared(decl: Mapping[str, Any], source: str) -> _Artifact:
    """The artifact an input or output declaration in the IR stands for."""
    t = decl.get("artifactType") or {}
    return _Artifact(
        str(t.get("schemaTitle", GENERIC_ARTIFACT)),
        str(t.get("schemaVersion", "0.0.1")),
        bool(decl.get("isArtifactList", False)),
        source,
    )


def _describe_artifact(spec: Mapping[str, Any]) -> str:
    t = spec.get("artifactType") or {}
    name = f"{t.get('schemaTitle', GENERIC_ARTIFACT)}@{t.get('schemaVersion', '0.0.1')}"
    return f"List[{name}]" if spec.get("isArtifactList") else name


class _Checker:
    def __init__(self, ir: Mapping[str, Any]):
        self.ir = ir
        self.components: Mapping[str, Any] = ir.get("components") or {}
        self.problems: list[Problem] = []
        self.seen: set[str] = set()

    # ------------------------------------------------------------ sources

    def _component(self, name: str) -> Mapping[str, Any]:
        return self.components.get(name) or {}

    def _task_component(self, task: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
        name = (task.get("componentRef") or {}).get("name", "")
        return name, self._component(name)

    def _output_value(
        self, dag: Mapping[str, Any], producer: str, key: str, where: str
    ) -> list[_Value] | str:
        """Kinds a task's output parameter yields (several for dsl.OneOf), or why there is none."""
        task = (dag.get("tasks") or {}).get(producer)
        if task is None:
            return f"producer task {producer!r} is not in the same DAG"
        comp_name, comp = self._task_component(task)
        if "dag" not in comp:
            decl = ((comp.get("outputDefinitions") or {}).get("parameters") or {}).get(key)
            if decl is None:
                return f"{comp_name} has no output parameter {key!r}"
            t = decl.get("parameterType", "STRING")
            return [_Value(KIND_OF.get(t, UNKNOWN), f"output {key!r} of {producer} ({t})")]
        if "parameterIterator" in task:
            return [_Value(LIST, f"dsl.Collected output {key!r} of ParallelFor {producer}")]
        out = ((comp["dag"].get("outputs") or {}).get("parameters") or {}).get(key)
        if out is None:
            return f"DAG {comp_name} has no output parameter {key!r}"
        selectors = (
            [out["valueFromParameter"]]
            if "valueFromParameter" in out
            else list((out.get("valueFromOneof") or {}).get("parameterSelectors") or [])
        )
        values: list[_Value] = []
        for sel in selectors:
            got = self._output_value(
                comp["dag"],
                sel.get("producerSubtask", ""),
                sel.get("outputParameterKey", ""),
                where,
            )
            if isinstance(got, str):
                return got
            values += got
        return values

    def _param_values(
        self, parent: Mapping[str, Any], spec: Mapping[str, Any], where: str
    ) -> list[_Value] | str:
        if spec.get("parameterExpressionSelector"):
            return [_Value(UNKNOWN, "a field selected from a struct")]
        if "componentInputParameter" in spec:
            name = spec["componentInputParameter"]
            decl = ((parent.get("inputDefinitions") or {}).get("parameters") or {}).get(name)
            if decl is None:
                return f"the parent DAG does not have input parameter {name!r}"
            t = decl.get("parameterType", "STRING")
            return [_Value(KIND_OF.get(t, UNKNOWN), f"input {name!r} of {where} ({t})")]
        if "taskOutputParameter" in spec:
            out = spec["taskOutputParameter"]
            return self._output_value(
                parent.get("dag") or {},
                out.get("producerTask", ""),
                out.get("outputParameterKey", ""),
                where,
            )
        if "runtimeValue" in spec:
            value = (spec["runtimeValue"] or {}).get("constant")
            return [_Value(_const_kind(value), f"the constant {json.dumps(value)[:60]}")]
        if "taskFinalStatus" in spec:
            return [_Value(STRUCT, "a task's final status")]
        return [_Value(UNKNOWN, "an input kind this check does not know")]

    def _output_artifact(self, dag: Mapping[str, Any], producer: str, key: str) -> _Artifact | str:
        task = (dag.get("tasks") or {}).get(producer)
        if task is None:
            return f"producer task {producer!r} is not in the same DAG"
        comp_name, comp = self._task_component(task)
        if "dag" not in comp:
            decl = ((comp.get("outputDefinitions") or {}).get("artifacts") or {}).get(key)
            if decl is None:
                return f"{comp_name} has no output artifact {key!r}"
            return _declared(decl, f"output {key!r} of {producer}")
        out = ((comp["dag"].get("outputs") or {}).get("artifacts") or {}).get(key)
        selectors = (out or {}).get("artifactSelectors") or []
        if not selectors:
            return f"DAG {comp_name} has no output artifact {key!r}"
        sel = selectors[0]
        inner = self._output_artifact(
            comp["dag"], sel.get("producerSubtask", ""), sel.get("outputArtifactKey", "")
        )
        if isinstance(inner, str) or "parameterIterator" not in task:
            return inner
        return _Artifact(
            inner.schema_title,
            inner.schema_version,
            True,
            f"dsl.Collected output {key!r} of ParallelFor {producer}",
        )

    def _artifact(
        self, parent: Mapping[str, Any], spec: Mapping[str, Any], where: str
    ) -> _Artifact | str:
        if "componentInputArtifact" in spec:
            name = spec["componentInputArtifact"]
            decl = ((parent.get("inputDefinitions") or {}).get("artifacts") or {}).get(name)
            if decl is None:
                return f"the parent DAG does not have input artifact {name!r}"
            return _declared(decl, f"input {name!r} of {where}")
        if "taskOutputArtifact" in spec:
            out = spec["taskOutputArtifact"]
            return self._output_artifact(
                parent.get("dag") or {},
                out.get("producerTask", ""),
                out.get("outputArtifactKey", ""),
            )
        return "no producer (neither a component input nor a task output)"

    # ------------------------------------------------------------ checks

    def _problem(self, task: str, name: str, expected: str, actual: str, detail: str = "") -> None:
        self.problems.append(Problem(task, name, expected, actual, detail))

    def _loop_items(
        self, task: Mapping[str, Any], parent: Mapping[str, Any], where: str
    ) -> list[Any] | None:
        """The items a ParallelFor iterates, when the IR fixes them (raw or a constant input)."""
        items = (task.get("parameterIterator") or {}).get("items") or {}
        if "raw" in items:
            raw = items["raw"]
            try:
                parsed = json.loads(raw) if isinstance(raw, str) else raw
            except json.JSONDecodeError:
                return None
            return parsed if isinstance(parsed, list) else None
        name = items.get("inputParameter")
        spec = ((task.get("inputs") or {}).get("parameters") or {}).get(name or "")
        if spec and "runtimeValue" in spec:
            value = (spec["runtimeValue"] or {}).get("constant")
            return value if isinstance(value, list) else None
        return None

    def check_dag(self, comp_name: str, comp: Mapping[str, Any], path: str) -> None:
        if comp_name in self.seen:
            return
        self.seen.add(comp_name)
        where = comp_name or "the root DAG"
        for task_name, task in sorted(((comp.get("dag") or {}).get("tasks") or {}).items()):
            at = f"{path}/{task_name}" if path else task_name
            callee_name, callee = self._task_component(task)
            if not callee:
                self._problem(at, "-", f"component {callee_name!r}", "nothing", "no such component")
                continue
            declared = (callee.get("inputDefinitions") or {}).get("parameters") or {}
            given = (task.get("inputs") or {}).get("parameters") or {}
            iterator = task.get("parameterIterator") or {}
            item_input = iterator.get("itemInput")
            for name, spec in sorted(given.items()):
                decl = declared.get(name)
                if decl is None:
                    continue  # the driver ignores extra inputs (resolve.go: "TODO ... verify")
                expected = decl.get("parameterType", "STRING")
                if expected == "TASK_CONFIG":
                    continue  # resolved after the pod spec, not here
                values = self._param_values(comp, spec, where)
                if isinstance(values, str):
                    self._problem(at, name, expected, "no value", values)
                    continue
                for value in values:
                    if not accepts(expected, value.kind):
                        self._problem(at, name, expected, f"a {value.kind}", f"from {value.source}")
            if item_input:
                decl = declared.get(item_input)
                if decl is None:
                    self._problem(
                        at, item_input, "a loop item input", "nothing",
                        f"{callee_name} declares no input {item_input!r}",
                    )  # fmt: skip
                else:
                    expected = decl.get("parameterType", "STRING")
                    for i, item in enumerate(self._loop_items(task, comp, where) or []):
                        kind = _const_kind(item)
                        if not accepts(expected, kind):
                            self._problem(
                                at, item_input, expected, f"a {kind}", f"loop item {i}: {item!r}"
                            )
            for name, decl in sorted(declared.items()):
                if name in given or name == item_input:
                    continue
                if not decl.get("isOptional") and "defaultValue" not in decl:
                    self._problem(
                        at, name, decl.get("parameterType", "STRING"), "no value",
                        "a required input without a default",
                    )  # fmt: skip
            art_declared = (callee.get("inputDefinitions") or {}).get("artifacts") or {}
            art_given = (task.get("inputs") or {}).get("artifacts") or {}
            for name, spec in sorted(art_given.items()):
                decl = art_declared.get(name)
                if decl is None:
                    continue
                got = self._artifact(comp, spec, where)
                if isinstance(got, str):
                    self._problem(at, name, _describe_artifact(decl), "no artifact", got)
                elif not artifact_compatible(got, decl):
                    self._problem(
                        at, name, _describe_artifact(decl), got.describe(), f"from {got.source}"
                    )
            for name, decl in sorted(art_declared.items()):
                if name not in art_given and not decl.get("isOptional"):
                    self._problem(
                        at, name, _describe_artifact(decl), "no artifact",
                        "a required artifact input without a producer",
                    )  # fmt: skip
            if "dag" in callee:
                self.check_dag(callee_name, callee, at)


def check(ir: Mapping[str, Any]) -> list[Problem]:
    """Every input in the compiled pipeline ``ir`` the KFP 2.17 backend would refuse."""
    if not isinstance(ir, Mapping) or "root" not in ir:
        raise ContractError("not a compiled KFP pipeline (no 'root' DAG)")
    checker = _Checker(ir)
    checker.check_dag("", ir["root"], "")
    return checker.problems


def verify(ir: Mapping[str, Any], name: str = "pipeline") -> None:
    """Raise :class:`ContractError` naming every refused input (one line, ``;``-separated)."""
    problems = check(ir)
    if problems:
        listed = "; ".join(str(p) for p in problems)
        raise ContractError(
            f"{name}: the KFP backend would refuse {len(problems)} input(s): {listed}"
        )


def first_document(docs: Iterable[Any]) -> Mapping[str, Any]:
    """The pipeline spec of a compiled YAML stream (the platform spec follows it)."""
    for doc in docs:
        return doc
    raise ContractError("empty pipeline YAML")
