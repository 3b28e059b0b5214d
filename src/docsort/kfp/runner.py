"""Load, compile and run pipeline files.

A pipeline file is a Python file defining one ``@dsl.pipeline`` function. It
runs locally through ``kfp.local`` (same components, same code, no cluster) or
compiles to the YAML a KFP cluster runs.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import importlib.util
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from docsort.core import console
from docsort.core.errors import ConfigError, DocsortError
from docsort.core.outputs import check_outputs, stage


def packaged_pipeline(name: str) -> Path:
    """Path of a pipeline shipped with docsort (``demo``, ``train``, ``sweep``, ``submission``)."""
    return Path(__file__).resolve().parents[1] / "pipelines" / f"{name}.py"


def load_pipeline(path: str | os.PathLike):
    """The ``@dsl.pipeline`` function defined in ``path``."""
    from kfp.dsl.graph_component import GraphComponent

    path = Path(path)
    if not path.is_file():
        alt = packaged_pipeline(path.stem)
        if alt.is_file() and path.parent == Path("pipelines"):
            path = alt
        else:
            raise DocsortError("pipeline file not found", file=str(path))
    name = f"docsort_pipeline_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's file: report where it broke, in one line
        raise DocsortError(
            f"cannot load pipeline: {type(err).__name__}: {err}", file=str(path)
        ) from err
    found = [
        v
        for v in vars(module).values()
        if isinstance(v, GraphComponent) and getattr(v.pipeline_func, "__module__", "") == name
    ]
    if len(found) != 1:
        raise DocsortError(
            f"expected one @dsl.pipeline function, found {len(found)}", file=str(path)
        )
    return found[0]


def pipeline_inputs(pipeline) -> dict[str, dict[str, Any]]:
    """Declared parameters of a pipeline: name -> ``{type, optional, default?}``.

    ``pipeline``: a loaded ``@dsl.pipeline`` (:func:`load_pipeline`) or a compiled
    pipeline YAML file. Both are read from the compiled spec (``type`` is its
    ``parameterType``: STRING, NUMBER_INTEGER, ...), so ``run``, ``compile``,
    ``submit`` and ``schedule`` check ``--param`` against the same declarations.
    """
    if isinstance(pipeline, (str, os.PathLike)):
        import yaml

        with open(pipeline, encoding="utf-8") as f:
            spec = next(yaml.safe_load_all(f))
    else:
        from google.protobuf import json_format

        spec = json_format.MessageToDict(pipeline.pipeline_spec)
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    out: dict[str, dict[str, Any]] = {}
    for name, p in params.items():
        kind = p.get("parameterType", "STRING")
        out[name] = {"type": kind, "optional": bool(p.get("isOptional")) or "defaultValue" in p}
        if "defaultValue" in p:  # the spec stores every number as a double
            default = p["defaultValue"]
            if kind == "NUMBER_INTEGER" and isinstance(default, float) and default.is_integer():
                default = int(default)
            out[name]["default"] = default
    return out


def input_defaults(inputs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The default values of :func:`pipeline_inputs` that have one."""
    return {name: spec["default"] for name, spec in inputs.items() if "default" in spec}


# What a value of each KFP parameter type must be, for the one-line refusal.
_TYPE_NAMES = {
    "STRING": "a string",
    "NUMBER_INTEGER": "an integer",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "LIST": "a JSON list",
    "STRUCT": "a JSON object",
}
_BOOLS = {"true": True, "1": True, "yes": True, "on": True}
_BOOLS |= {"false": False, "0": False, "no": False, "off": False}


def _convert(name: str, value: str, kind: str) -> Any:
    """A ``--param`` string as the declared type (strings and unknown types stay as given)."""
    try:
        if kind == "NUMBER_INTEGER":
            return int(value)
        if kind == "NUMBER_DOUBLE":
            return float(value)
        if kind == "BOOLEAN":
            return _BOOLS[value.strip().lower()]
        if kind in ("LIST", "STRUCT"):
            parsed = json.loads(value)
            if isinstance(parsed, list if kind == "LIST" else dict):
                return parsed
            raise ValueError(value)
    except (ValueError, KeyError):
        raise DocsortError(
            f"--param {name}={value}: pipeline input {name!r} needs {_TYPE_NAMES[kind]}"
        ) from None
    return value


def parse_params(
    params: Mapping[str, Any] | Iterable[str] | None, pipeline, *, complete: bool = False
) -> dict[str, Any]:
    """``--param NAME=VALUE`` items (or a mapping) checked and typed by the pipeline's inputs.

    ``pipeline``: what :func:`pipeline_inputs` reads, or its result. Unknown names
    are refused; string values become the declared type (a mapping's other values
    are kept). ``complete``: the values are the run's, so a required input that is
    missing is refused too (``compile`` leaves them for the run).
    """
    inputs = pipeline if isinstance(pipeline, Mapping) else pipeline_inputs(pipeline)
    if params is None:
        params = {}
    elif not isinstance(params, Mapping):
        pairs: dict[str, Any] = {}
        for item in params:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise DocsortError(f"--param {item!r}: expected NAME=VALUE")
            pairs[key.strip()] = value
        params = pairs
    unknown = sorted(set(params) - set(inputs))
    if unknown:
        raise DocsortError(
            f"unknown pipeline parameter(s) {unknown}; the pipeline declares {sorted(inputs)}"
        )
    missing = sorted(n for n, spec in inputs.items() if not spec["optional"] and n not in params)
    if complete and missing:
        raise DocsortError(
            f"missing required pipeline parameter(s) {missing}: add --param NAME=VALUE"
        )
    return {
        name: _convert(name, value, inputs[name]["type"]) if isinstance(value, str) else value
        for name, value in params.items()
    }


@stage("compile", inputs=("path",), files=("out_yaml",))
def compile_pipeline(
    path: str | os.PathLike,
    out_yaml: str | os.PathLike,
    params: Mapping[str, Any] | None = None,
    *,
    image_registry: str | None = None,
    image_tag: str | None = None,
) -> Path:
    """Compile ``path`` to KFP pipeline YAML at ``out_yaml`` (written atomically).

    Every docsort image in it is ``<image_registry>/docsort-*:<image_tag>``
    (default: ``$DOCSORT_IMAGE_REGISTRY``/``$DOCSORT_IMAGE_TAG``, then
    ``conf/images.yaml``), and the result must pass the KFP backend's typing
    contract (:mod:`docsort.kfp.contract`): a pipeline the cluster would refuse at
    its first task is refused here, and nothing is written.
    """
    import yaml
    from kfp import compiler

    from docsort.core import container_images as images
    from docsort.core.atomic import atomic_path
    from docsort.kfp import contract as kfp_contract

    with images.use_images(image_registry, image_tag) as chosen:
        pipeline = load_pipeline(path)  # the tasks read the image setting while being defined
        images.pin_images(pipeline.pipeline_spec.deployment_spec, chosen)
    if params is not None:  # `docsort compile --param ...` (submit checks with its own params)
        check_pipeline_params({**input_defaults(pipeline_inputs(pipeline)), **params})  # deadlines
    with atomic_path(out_yaml) as tmp:
        compiler.Compiler().compile(pipeline, str(tmp), pipeline_parameters=dict(params or {}))
        with open(tmp, encoding="utf-8") as f:
            spec = kfp_contract.first_document(yaml.safe_load_all(f))
        kfp_contract.verify(spec, name=Path(path).name)
    return Path(out_yaml)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The last line of a task's traceback: ``docsort.core.errors.DocsortError: <the one line>``.
_DOCSORT_ERROR = re.compile(r"^\s*docsort(?:\.\w+)+\.\w*(?:Error|Exception): (?P<msg>.+)$")
_ANY_ERROR = re.compile(
    r"^\s*(?:[A-Za-z_]\w*\.)*(?P<name>[A-Za-z_]\w*(?:Error|Exception)): (?P<msg>.*)$"
)


class _TaskOutput:
    """Stands in for ``print`` while kfp.local streams the tasks' output: keeps the last lines."""

    def __init__(self, real_print) -> None:
        self.real_print = real_print
        self.lines: collections.deque[str] = collections.deque(maxlen=5000)

    def __call__(self, *args, **kwargs) -> None:
        if kwargs.get("file") in (None, sys.stdout):
            text = kwargs.get("sep", " ").join(str(a) for a in args)
            self.lines.extend(text.splitlines())
        self.real_print(*args, **kwargs)


def failure_message(error: str, output: Sequence[str]) -> str:
    """``task <name> failed: <reason>`` from kfp.local's failure and the tasks' streamed output.

    kfp.local (kubeflow/pipelines ``sdk/python/kfp/local/pipeline_orchestrator.py``,
    ``log_and_maybe_raise_for_failure``, tag ``sdk-2.17.3``; the task output is printed by
    ``subprocess_task_handler.py``, ``run_local_subprocess``) raises ``RuntimeError("Pipeline X finished with status FAILURE. Inner task
    failed: T inside L.")`` and prints each task subprocess's output (its traceback
    included) through ``print``. The reason is the failing task's last docsort error
    line, else the last exception line of its traceback.
    """
    plain = _ANSI.sub("", error).strip()
    m = re.search(r"Inner task failed: (?P<chain>.+?)\.?$", plain.splitlines()[0] if plain else "")
    task = m["chain"] if m else None
    lines = [_ANSI.sub("", ln) for ln in output]
    reason = next((d["msg"] for ln in reversed(lines) if (d := _DOCSORT_ERROR.match(ln))), None)
    if reason is None:
        last = next((a for ln in reversed(lines) if (a := _ANY_ERROR.match(ln))), None)
        reason = f"{last['name']}: {last['msg']}" if last else None
    if task is None:
        first = plain.splitlines()[0] if plain else "unknown error"
        return f"pipeline failed: {reason or first}"
    return f"task {task} failed: {reason or 'no error line in its output (see the log above)'}"


class _LineHandler(logging.Handler):
    def __init__(self, on_line) -> None:
        super().__init__(logging.INFO)
        self.on_line = on_line

    def emit(self, record: logging.LogRecord) -> None:
        self.on_line(console.plain(record.getMessage()))


class TaskLines:
    """One line per task as it finishes, read from kfp.local's status lines in the log.

    kfp.local (``sdk/python/kfp/local/task_dispatcher.py``, tag ``sdk-2.17.3``) logs
    ``Executing task 'NAME'`` and ``Task 'NAME' finished with status SUCCESS``, and
    ``orchestrator/task_executor.py`` logs ``Task NAME cache hit (key=...)``.
    """

    _START = re.compile(r"Executing task '(?P<name>[^']+)'")
    _END = re.compile(r"Task '(?P<name>[^']+)' finished with status (?P<status>[A-Z]+)")
    _CACHED = re.compile(r"Task '?(?P<name>[\w-]+)'? cache hit")

    def __init__(self) -> None:
        self.clock = time.monotonic
        self.started: dict[str, list[float]] = collections.defaultdict(list)
        self.done = self.cached = 0

    @staticmethod
    def _shown(name: str) -> str:
        return name.removesuffix("-op")

    def line(self, text: str) -> None:
        if m := self._START.search(text):
            self.started[m["name"]].append(self.clock())
        elif m := self._END.search(text):
            starts = self.started[m["name"]]
            took = self.clock() - starts.pop(0) if starts else 0.0
            self.done += 1
            mark = "done" if m["status"] == "SUCCESS" else m["status"].lower()
            console.say(f"  {mark:<6} {self._shown(m['name']):<28} {console.fmt_seconds(took)}")
        elif m := self._CACHED.search(text):
            self.done += 1
            self.cached += 1
            console.say(f"  {'cached':<6} {self._shown(m['name'])}")


def _drop_retries(pipeline) -> None:
    """Clear every task's retry policy: locally a failure is a bug or bad input, and a retry only delays it."""
    spec = pipeline.pipeline_spec
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    for dag in dags:
        for task in dag.tasks.values():
            task.ClearField("retry_policy")


def _path_params(params: Mapping[str, Any]) -> list[str]:
    """Parameter values that name data: ``s3://`` URIs and existing local paths (lists too)."""
    values = [v for p in params.values() for v in (p if isinstance(p, list) else [p])]
    return [
        v
        for v in values
        if isinstance(v, str) and v and (v.startswith("s3://") or Path(v).exists())
    ]


@stage("run", inputs=("path",), folder="out", mode="add")
def run_local(
    path: str | os.PathLike,
    out: str | os.PathLike,
    params: Mapping[str, Any] | None = None,
    *,
    cache: bool = False,
    retries: bool = False,
):
    """Run the pipeline in ``path`` with kfp.local; artifacts land under ``out``.

    ``cache``: reuse the outputs of tasks that already ran with the same inputs
    under ``out`` (kfp.local's cache in ``out/.kfp_cache``; tasks compiled with
    caching off always run). ``retries``: keep the tasks' compiled retry
    policies (meant for preempted cluster nodes). Returns the pipeline's output
    artifact (or None when it declares none).
    """
    from kfp import local

    params = dict(params or {})
    # ``output_root`` and the like are where the pipeline writes; every other path is read
    written = [v for k, v in params.items() if k.startswith("output")]
    check_outputs(
        [out, *written],
        _path_params({k: v for k, v in params.items() if not k.startswith("output")}),
    )
    pipeline = load_pipeline(path)
    if not retries:
        _drop_retries(pipeline)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(out), raise_on_error=True,
        enable_caching=cache, cache_root=str(out / ".kfp_cache"),
    )  # fmt: skip
    # kfp.local swaps builtins.print per task; two tasks of a ParallelFor running at once
    # can leave its indenting wrapper installed after the run, so restore the real one.
    real_print = builtins.print
    tee = _TaskOutput(real_print)
    builtins.print = tee
    tasks = TaskLines()
    console.say(f"running {Path(path).name} with kfp.local; artifacts under {out}")
    # kfp.local logs through the root logger: inside a task's dispatch to its own stdout
    # handler (the log stream below), elsewhere (cache hits) to the root's handlers
    status = _LineHandler(tasks.line)
    logging.getLogger().addHandler(status)
    try:
        with contextlib.redirect_stdout(console.log_stream(tasks.line)), warnings.catch_warnings():
            # Locally every task runs in this environment by design: kfp.local's notes that
            # resource settings and the docsort image are not used here are noise.
            warnings.filterwarnings("ignore", message=r"Task '.*': settings \[")
            warnings.filterwarnings("ignore", message=r"You may be attemping to run a task")
            task = pipeline(**params)
    except RuntimeError as err:
        raise DocsortError(failure_message(str(err), tee.lines), file=str(path)) from None
    finally:
        builtins.print = real_print
        logging.getLogger().removeHandler(status)
    console.say(f"{tasks.done} tasks finished ({tasks.cached} from cache)")
    outputs = getattr(task, "outputs", None) or {}
    return outputs.get("Output") if isinstance(outputs, dict) else outputs


def check_pipeline_params(
    params: Mapping[str, Any], pod_deadline_s: int | None | str = "profile"
) -> None:
    """Compile/submit check of a pipeline with a sweep step (inputs ``space``, ``n_trials``,
    ``sweep_timeout_s``, as in pipelines/sweep.py; others pass): the step's wait covers the
    Experiment's worst case, and the step's pod deadline (default: the active k8s profile's
    ``components.sweep.timeout_s``) covers the wait."""
    if "space" not in params or "sweep_timeout_s" not in params:
        return
    if str(params.get("backend", "auto")) == "local":
        return
    if pod_deadline_s == "profile":
        from docsort.components import k8s

        pod_deadline_s = int(k8s.task_settings("sweep")["timeout_s"] or 0) or None
    from docsort.sweep.sweep import sweep_wait_s

    wait = sweep_wait_s(
        str(params["space"]), int(params.get("n_trials") or 0) or None, params["sweep_timeout_s"]
    )
    if pod_deadline_s and pod_deadline_s < wait:
        raise ConfigError(
            f"the sweep step's pod deadline ({pod_deadline_s}s, k8s profile components.sweep."
            f"timeout_s) is shorter than its wait for the Experiment ({wait:g}s, space="
            f"{params['space']}): raise it to >= {wait:g}s or use fewer trials"
        )
