"""Load, compile and run pipeline files.

A pipeline file is a Python file defining one ``@dsl.pipeline`` function. It
runs locally through ``kfp.local`` (same components, same code, no cluster) or
compiles to the YAML a KFP cluster runs.
"""

from __future__ import annotations

import builtins
import importlib.util
import inspect
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from docsort.errors import DocsortError


def packaged_pipeline(name: str) -> Path:
    """Path of a pipeline shipped with docsort (``demo``, ``train``, ``sweep``, ``submission``)."""
    return Path(__file__).resolve().parent / "pipelines" / f"{name}.py"


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


def pipeline_inputs(pipeline) -> dict[str, Any]:
    """Declared inputs of a pipeline function with their defaults."""
    sig = inspect.signature(pipeline.pipeline_func)
    return {
        k: (None if p.default is inspect.Parameter.empty else p.default)
        for k, p in sig.parameters.items()
    }


def parse_params(pairs: Sequence[str], pipeline=None) -> dict[str, Any]:
    """``k=v`` strings to typed values (JSON where it parses: numbers, booleans, lists)."""
    known = pipeline_inputs(pipeline) if pipeline is not None else None
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DocsortError(f"--param {pair!r} must look like name=value")
        if known is not None and key not in known:
            raise DocsortError(
                f"--param {key}: the pipeline has no such input; inputs: {', '.join(known)}"
            )
        default = known.get(key) if known else None
        if isinstance(default, str):
            out[key] = value
            continue
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def compile_pipeline(
    path: str | os.PathLike, out_yaml: str | os.PathLike, params: Mapping[str, Any] | None = None
) -> Path:
    """Compile ``path`` to KFP pipeline YAML at ``out_yaml`` (written atomically)."""
    from kfp import compiler

    from docsort.atomic import atomic_path

    pipeline = load_pipeline(path)
    with atomic_path(out_yaml) as tmp:
        compiler.Compiler().compile(pipeline, str(tmp), pipeline_parameters=dict(params or {}))
    return Path(out_yaml)


def _drop_retries(pipeline) -> None:
    """Clear every task's retry policy: locally a failure is a bug or bad input, and a retry only delays it."""
    spec = pipeline.pipeline_spec
    dags = [spec.root.dag] + [c.dag for c in spec.components.values() if c.HasField("dag")]
    for dag in dags:
        for task in dag.tasks.values():
            task.ClearField("retry_policy")


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
    try:
        task = pipeline(**dict(params or {}))
    except RuntimeError as err:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(err).splitlines()[0])
        raise DocsortError(f"pipeline failed: {plain}", file=str(path)) from None
    finally:
        builtins.print = real_print
    outputs = getattr(task, "outputs", None) or {}
    return outputs.get("Output") if isinstance(outputs, dict) else outputs
