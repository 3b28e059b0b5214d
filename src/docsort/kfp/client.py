"""Compile a pipeline file and submit or schedule it on a KFP API server.

kfp's own CLI only accepts compiled YAML; ``docsort submit pipelines/sweep.py``
closes that gap: it compiles the ``@dsl.pipeline`` in a ``.py`` file to a
temporary YAML, checks ``--param k=v`` values against the pipeline's declared
inputs (:func:`docsort.kfp.runner.parse_params`, as ``run`` and ``compile`` do), then
calls ``kfp.Client``.

Authentication: a bearer token from ``KF_PIPELINES_TOKEN`` or
``DOCSORT_KFP_TOKEN`` (e.g. a Kubeflow service-account token behind the
Istio/oauth2-proxy gateway). The token is only handed to ``kfp.Client``; it is
never logged or put into an error message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from docsort.core.errors import ConfigError, DocsortError, redact
from docsort.kfp import runner as pipeline_runner
from docsort.kfp.runner import input_defaults, parse_params, pipeline_inputs

log = logging.getLogger(__name__)

TOKEN_ENV = ("KF_PIPELINES_TOKEN", "DOCSORT_KFP_TOKEN")
#: The runs' pods use this service account (k8s/base): Katib rights in `docsort`, S3 via IRSA.
DEFAULT_SERVICE_ACCOUNT = "docsort-pipeline"
CRON_EXAMPLE = '"0 0 2 * * *" (every day at 02:00:00)'


@dataclass(frozen=True)
class Submitted:
    """What the KFP server created: a run or a recurring run."""

    kind: str  # "run" or "recurring_run"
    id: str
    name: str
    url: str


# ---------------------------------------------------------------- compile


def compile_to(
    pipeline_file: str | os.PathLike,
    out_yaml: str | os.PathLike,
    *,
    image_registry: str | None = None,
    image_tag: str | None = None,
) -> Path:
    """Compile the ``@dsl.pipeline`` in ``pipeline_file`` (``.py``) to ``out_yaml``.

    ``image_registry``/``image_tag``: where the docsort images come from (see
    :mod:`docsort.core.container_images`). A ``.yaml``/``.yml`` file is taken as already compiled
    (its images are final) and copied after the same backend contract check.
    """
    from docsort.kfp import contract as kfp_contract

    path = Path(pipeline_file)
    if path.suffix not in (".yaml", ".yml"):
        return pipeline_runner.compile_pipeline(
            path, out_yaml, image_registry=image_registry, image_tag=image_tag
        )
    if not path.is_file():
        raise DocsortError("pipeline file not found", file=str(path))
    if image_registry or image_tag:
        raise ConfigError(
            f"{path.name} is already compiled: --image-registry/--image-tag apply when a .py "
            "pipeline is compiled (docsort compile ... --image-registry ...)"
        )
    try:
        spec = kfp_contract.first_document(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as err:
        raise DocsortError(f"not valid YAML: {err}".splitlines()[0], file=str(path)) from None
    kfp_contract.verify(spec, name=path.name)
    out = Path(out_yaml)
    out.write_bytes(path.read_bytes())
    return out


# ---------------------------------------------------------------- cron

_CRON_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)
_CRON_NAMES = {
    "month": ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
    "day of week": ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
}
_CRON_ITEM = re.compile(r"^(\*|\?|[0-9A-Za-z]+(?:-[0-9A-Za-z]+)?)(?:/([0-9]+))?$")


def validate_cron(cron: str) -> str:
    """Check a KFP cron expression: 6 fields, seconds first (robfig/cron format)."""
    fields = cron.split()
    if len(fields) != 6:
        hint = f'; did you mean "0 {cron.strip()}"?' if len(fields) == 5 else ""
        raise ConfigError(
            f"cron {cron!r} has {len(fields)} fields; KFP needs 6 "
            f"(second minute hour day-of-month month day-of-week), e.g. {CRON_EXAMPLE}{hint}"
        )
    for value, (what, lo, hi) in zip(fields, _CRON_FIELDS, strict=True):
        for item in value.split(","):
            m = _CRON_ITEM.match(item)
            ok = m is not None and (m.group(2) is None or int(m.group(2)) > 0)
            if ok and m.group(1) == "?":
                ok = what in ("day of month", "day of week")
            elif ok and m.group(1) != "*":
                names = _CRON_NAMES.get(what, [])
                for tok in m.group(1).split("-"):
                    if tok.upper() in names:
                        continue
                    ok = ok and tok.isdigit() and lo <= int(tok) <= hi
            if not ok:
                raise ConfigError(
                    f"cron {cron!r}: bad {what} field {value!r} (allowed {lo}-{hi}, *, ranges, "
                    f"lists, steps), e.g. {CRON_EXAMPLE}"
                )
    return " ".join(fields)


# ---------------------------------------------------------------- client


def _token() -> str | None:
    return next((os.environ[n] for n in TOKEN_ENV if os.environ.get(n)), None)


class _ScrubKfpLogs(logging.Filter):
    """kfp.Client logs its healthz retries on the root logger with a traceback holding the
    server's whole reply, which may echo the Authorization header: keep one scrubbed debug line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        first = (str(record.exc_info[1]).strip().splitlines() or [""])[0]
        log.debug("kfp: %s", redact(f"{record.getMessage()} {first}"))
        return False


@contextlib.contextmanager
def _kfp_errors(host: str, action: str) -> Iterator[None]:
    """kfp/HTTP failures -> one ``DocsortError`` line, token scrubbed; kfp's prints -> log."""
    import kfp_server_api
    import urllib3

    printed = io.StringIO()
    scrub = _ScrubKfpLogs()
    logging.getLogger().addFilter(scrub)
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "This client only works with..."
            yield
    except kfp_server_api.ApiException as e:
        body = " ".join(str(e.body or "").split())[:300]
        hint = " (set KF_PIPELINES_TOKEN)" if e.status in (401, 403) else ""
        raise DocsortError(
            redact(f"KFP API {host}: {action} failed: HTTP {e.status} {e.reason}{hint}: {body}")
        ) from None
    except (urllib3.exceptions.HTTPError, TimeoutError, OSError) as e:
        raise DocsortError(
            redact(f"KFP API {host}: {action} failed: {type(e).__name__}: {e}")
        ) from None
    finally:
        logging.getLogger().removeFilter(scrub)
        for line in printed.getvalue().splitlines():
            log.info("kfp: %s", redact(line))


def _client(host: str, namespace: str | None) -> Any:
    import kfp

    class _Client(kfp.Client):
        def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
            return super().get_kfp_healthz(sleep_duration=1)  # fail in ~5 s, not 25

    return _Client(host=host, existing_token=_token(), namespace=namespace or "kubeflow")


def set_caching(package: str | os.PathLike, enabled: bool) -> None:
    """Turn caching on or off for every task of a compiled pipeline, nested DAGs included.

    ``kfp.Client``'s own ``enable_caching`` reaches only the top-level tasks, not
    those inside a ParallelFor or a sub-pipeline.
    """
    path = Path(package)
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    spec = docs[0]
    dags = [spec["root"]["dag"]] + [
        c["dag"] for c in spec.get("components", {}).values() if "dag" in c
    ]
    for dag in dags:
        for task in dag.get("tasks", {}).values():
            task.setdefault("cachingOptions", {})["enableCache"] = enabled
    path.write_text(yaml.safe_dump_all(docs, sort_keys=True), encoding="utf-8")


def _prepare(
    pipeline_file: str | os.PathLike,
    params: Any,
    tmp: str,
    enable_caching: bool | None = None,
    images: Mapping[str, str | None] | None = None,
) -> tuple[Path, dict]:
    from docsort.kfp.runner import check_pipeline_params

    package = compile_to(pipeline_file, Path(tmp) / "pipeline.yaml", **dict(images or {}))
    if enable_caching is not None:
        set_caching(package, enable_caching)
    inputs = pipeline_inputs(package)
    arguments = parse_params(params, inputs, complete=True)
    check_pipeline_params(
        {**input_defaults(inputs), **arguments}
    )  # e.g. the sweep step's deadlines
    return package, arguments


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H-%M-%S")


def submit(
    pipeline_file: str | os.PathLike,
    host: str,
    experiment: str | None = None,
    params: Mapping[str, Any] | Iterable[str] | None = None,
    run_name: str | None = None,
    namespace: str | None = None,
    enable_caching: bool | None = None,
    service_account: str | None = DEFAULT_SERVICE_ACCOUNT,
    image_registry: str | None = None,
    image_tag: str | None = None,
) -> Submitted:
    """Compile ``pipeline_file`` and start one run of it; returns the run's id and UI link.

    ``namespace``: the Kubeflow profile namespace of the run (multi-user Kubeflow;
    ``None``: the client's own, i.e. its saved context or, inside a pod, the pod's
    namespace; single-user KFP has none). ``enable_caching=None`` keeps each task's
    compile-time caching setting; ``service_account=None`` leaves the choice to KFP
    (its ``pipeline-runner``). ``image_registry``/``image_tag``: see :mod:`docsort.core.container_images`.
    """
    images = {"image_registry": image_registry, "image_tag": image_tag}
    with tempfile.TemporaryDirectory(prefix="docsort-kfp-") as tmp:
        package, arguments = _prepare(pipeline_file, params, tmp, enable_caching, images)
        name = run_name or f"{Path(pipeline_file).stem} {_now()}"
        with _kfp_errors(host, "submit run"):
            result = _client(host, namespace).create_run_from_pipeline_package(
                str(package),
                arguments=arguments,
                run_name=name,
                experiment_name=experiment,
                namespace=namespace,
                enable_caching=enable_caching,
                service_account=service_account,
            )
    run_id = result.run_id
    log.info("submitted run %s (%s) to %s", run_id, name, host)
    return Submitted("run", run_id, name, f"{host.rstrip('/')}/#/runs/details/{run_id}")


def schedule(
    pipeline_file: str | os.PathLike,
    host: str,
    cron: str,
    experiment: str | None = None,
    params: Mapping[str, Any] | Iterable[str] | None = None,
    job_name: str | None = None,
    max_concurrency: int = 1,
    no_catchup: bool = True,
    namespace: str | None = None,
    enable_caching: bool | None = None,
    service_account: str | None = DEFAULT_SERVICE_ACCOUNT,
    image_registry: str | None = None,
    image_tag: str | None = None,
) -> Submitted:
    """Compile ``pipeline_file`` and create a recurring run on a 6-field cron schedule.

    Defaults suit a nightly batch job: one run at a time, and no backfill of
    runs missed while the schedule was paused. ``namespace`` and the image
    settings as for :func:`submit`.
    """
    images = {"image_registry": image_registry, "image_tag": image_tag}
    cron = validate_cron(cron)
    if max_concurrency < 1:
        raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
    with tempfile.TemporaryDirectory(prefix="docsort-kfp-") as tmp:
        package, arguments = _prepare(pipeline_file, params, tmp, enable_caching, images)
        name = job_name or Path(pipeline_file).stem
        with _kfp_errors(host, "create recurring run"):
            client = _client(host, namespace)
            exp = client.create_experiment(name=experiment or "Default", namespace=namespace)
            job = client.create_recurring_run(
                experiment_id=exp.experiment_id,
                job_name=name,
                cron_expression=cron,
                max_concurrency=max_concurrency,
                no_catchup=no_catchup,
                params=arguments,
                pipeline_package_path=str(package),
                enable_caching=enable_caching,
                service_account=service_account,
            )
    job_id = job.recurring_run_id
    log.info("created recurring run %s (%s, cron %r) on %s", job_id, name, cron, host)
    return Submitted(
        "recurring_run", job_id, name, f"{host.rstrip('/')}/#/recurringrun/details/{job_id}"
    )
