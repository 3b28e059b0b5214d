"""docsort.kfp.client against a local HTTP stand-in for the KFP v2beta1 API."""

from __future__ import annotations

import http.server
import json
import logging
import sys
import textwrap
import threading
import traceback
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from docsort.core.errors import ConfigError, DocsortError
from docsort.kfp import client as kfp_client

TOKEN = "kfp-test-token-3fA9qLm2ZxW8"

TINY_PIPELINE = """
from kfp import dsl


@dsl.component(base_image="python:3.11-slim")
def greet(times: int, scale: float, loud: bool, who: str, tags: list) -> str:
    return who * times


@dsl.pipeline(name="tiny-pipeline", description="one component")
def tiny(times: int, scale: float = 0.5, loud: bool = False, who: str = "x", tags: list = []):
    greet(times=times, scale=scale, loud=loud, who=who, tags=tags)
"""


@pytest.fixture
def pipeline_file(tmp_path) -> Path:
    path = tmp_path / "tiny.py"
    path.write_text(TINY_PIPELINE)
    return path


class _KfpApi(http.server.BaseHTTPRequestHandler):
    """Just enough of ml-pipeline's REST API for kfp.Client; records every request."""

    requests: list[dict]
    experiments: list[dict]
    deny: set[str]  # paths answered with 401

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> tuple[str, dict]:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append(
            {
                "method": self.command,
                "path": url.path,
                "query": dict(urllib.parse.parse_qsl(url.query)),
                "headers": dict(self.headers),
                "body": body,
            }
        )
        return url.path, body

    def do_GET(self):  # noqa: N802
        path, _ = self._record()
        if path == "/apis/v2beta1/healthz":
            self._reply(200, {"multi_user": False})
        elif path == "/apis/v2beta1/experiments":
            query = self.requests[-1]["query"]
            name = json.loads(query["filter"])["predicates"][0]["stringValue"]
            found = [e for e in self.experiments if e["display_name"] == name]
            self._reply(200, {"experiments": found, "total_size": len(found)} if found else {})
        else:
            self._reply(404, {"error": "not found", "code": 5})

    def do_POST(self):  # noqa: N802
        path, body = self._record()
        if path in self.deny:
            # like some auth proxies, echo what was sent: the client must scrub it
            sent = self.headers.get("authorization")
            self._reply(401, {"error": f"Unauthorized: bad token {sent}", "code": 16})
        elif path == "/apis/v2beta1/experiments":
            exp = {**body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments.append(exp)
            self._reply(200, exp)
        elif path == "/apis/v2beta1/runs":
            self._reply(200, {**body, "run_id": "run-1", "state": "PENDING"})
        elif path == "/apis/v2beta1/recurringruns":
            self._reply(200, {**body, "recurring_run_id": "rr-1", "status": "ENABLED"})
        else:
            self._reply(404, {"error": "not found", "code": 5})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def kfp_api(monkeypatch, tmp_path) -> Iterator[tuple[str, type[_KfpApi]]]:
    handler = type("Handler", (_KfpApi,), {"requests": [], "experiments": [], "deny": set()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "DOCSORT_KFP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("KF_PIPELINES_DEFAULT_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    import kfp.client.client

    # the user's ~/.config/kfp/context.json must not leak into tests
    monkeypatch.setattr(kfp.client.client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "ctx.json"))
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def _posts(handler, path: str) -> list[dict]:
    return [r for r in handler.requests if r["method"] == "POST" and r["path"] == path]


def _compiled_spec(pipeline_file: Path, tmp_path: Path) -> dict:
    out = kfp_client.compile_to(pipeline_file, tmp_path / "expected.yaml")
    return yaml.safe_load(out.read_text())


def test_submit_sends_the_compiled_pipeline_and_typed_params(kfp_api, pipeline_file, tmp_path):
    host, api = kfp_api
    got = kfp_client.submit(
        pipeline_file,
        host,
        experiment="nightly",
        params=["times=3", "scale=2", "loud=yes", "who=a=b", 'tags=["x", 1]'],
        run_name="tiny run",
    )
    assert got == kfp_client.Submitted("run", "run-1", "tiny run", f"{host}/#/runs/details/run-1")

    (exp,) = _posts(api, "/apis/v2beta1/experiments")
    assert exp["body"]["display_name"] == "nightly"
    (run,) = _posts(api, "/apis/v2beta1/runs")
    body = run["body"]
    assert body["display_name"] == "tiny run"
    assert body["experiment_id"] == "exp-1"
    assert body["pipeline_spec"] == _compiled_spec(pipeline_file, tmp_path)
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "tiny-pipeline"
    params = body["runtime_config"]["parameters"]
    assert params == {"times": 3, "scale": 2.0, "loud": True, "who": "a=b", "tags": ["x", 1]}
    assert isinstance(params["times"], int) and isinstance(params["scale"], float)
    assert all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in api.requests)


def test_submit_reuses_an_existing_experiment_and_accepts_a_mapping(kfp_api, pipeline_file):
    host, api = kfp_api
    kfp_client.submit(pipeline_file, host, experiment="e", params={"times": "1"})
    kfp_client.submit(pipeline_file, host, experiment="e", params={"times": 2, "loud": False})
    assert len(_posts(api, "/apis/v2beta1/experiments")) == 1
    first, second = (r["body"] for r in _posts(api, "/apis/v2beta1/runs"))
    assert first["runtime_config"]["parameters"] == {"times": 1}
    assert second["runtime_config"]["parameters"] == {"times": 2, "loud": False}
    assert second["display_name"].startswith("tiny ")


def test_schedule_creates_a_recurring_run(kfp_api, pipeline_file, tmp_path):
    host, api = kfp_api
    got = kfp_client.schedule(
        pipeline_file, host, "0 0 2 * * *", experiment="nightly", params=["times=7"]
    )
    assert got.kind == "recurring_run" and got.id == "rr-1" and got.name == "tiny"
    assert got.url == f"{host}/#/recurringrun/details/rr-1"
    (job,) = _posts(api, "/apis/v2beta1/recurringruns")
    body = job["body"]
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
    assert "periodic_schedule" not in body["trigger"]
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["experiment_id"] == "exp-1"
    assert body["runtime_config"]["parameters"] == {"times": 7}
    assert body["pipeline_spec"] == _compiled_spec(pipeline_file, tmp_path)
    assert job["headers"]["authorization"] == f"Bearer {TOKEN}"


def test_schedule_options_are_passed_through(kfp_api, pipeline_file):
    host, api = kfp_api
    kfp_client.schedule(
        pipeline_file,
        host,
        "30 15 */6 ? * MON-FRI",
        params={"times": 1},
        job_name="every-6h",
        max_concurrency=3,
        no_catchup=False,
        enable_caching=False,
    )
    (job,) = _posts(api, "/apis/v2beta1/recurringruns")
    body = job["body"]
    assert body["display_name"] == "every-6h"
    assert int(body["max_concurrency"]) == 3
    assert body["no_catchup"] is False
    tasks = body["pipeline_spec"]["root"]["dag"]["tasks"]
    assert tasks and all(
        t["cachingOptions"].get("enableCache", False) is False for t in tasks.values()
    )
    assert _posts(api, "/apis/v2beta1/experiments")[0]["body"]["display_name"] == "Default"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            ["epochs=3", "times=1"],
            r"unknown pipeline parameter\(s\) \['epochs'\]; the pipeline declares",
        ),
        (["times=three"], r"--param times=three: pipeline input 'times' needs an integer"),
        (["times=1", "scale=fast"], "needs a number"),
        (["times=1", "loud=maybe"], "needs true or false"),
        (["times=1", "tags={}"], "needs a JSON list"),
        (["scale=1.5"], r"missing required pipeline parameter\(s\) \['times'\]"),
        (["times"], "expected NAME=VALUE"),
    ],
)
def test_bad_params_are_refused_before_anything_is_sent(kfp_api, pipeline_file, params, message):
    host, api = kfp_api
    with pytest.raises(DocsortError, match=message):
        kfp_client.submit(pipeline_file, host, params=params)
    assert api.requests == []


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        (
            "0 2 * * *",
            r'has 5 fields; KFP needs 6 .*"0 0 2 \* \* \*".*did you mean "0 0 2 \* \* \*"',
        ),
        ("0 0 2 * * * *", "has 7 fields"),
        ("0 0 25 * * *", "bad hour field '25'"),
        ("60 0 2 * * *", "bad second field"),
        ("0 0 2 0 * *", "bad day of month field"),
        ("0 0 2 * FOO *", "bad month field"),
        ("0 0 ? * * *", "bad hour field"),
        ("0 */0 * * * *", "bad minute field"),
    ],
)
def test_cron_must_be_six_valid_fields(kfp_api, pipeline_file, cron, message):
    host, api = kfp_api
    with pytest.raises(ConfigError, match=message):
        kfp_client.schedule(pipeline_file, host, cron, params={"times": 1})
    assert api.requests == []


@pytest.mark.parametrize(
    "cron", ["0 0 2 * * *", "0 */15 8-18 * * MON-FRI", "0 0 0 1,15 JAN-JUN ?", " 5 4 3 2 1 0 "]
)
def test_valid_crons(cron):
    assert kfp_client.validate_cron(cron) == " ".join(cron.split())


def test_token_never_in_logs_or_errors(kfp_api, pipeline_file, caplog, capsys):
    host, api = kfp_api
    caplog.set_level(logging.DEBUG)
    kfp_client.submit(pipeline_file, host, params=["times=1"])
    api.deny.add("/apis/v2beta1/runs")
    with pytest.raises(DocsortError) as e:
        kfp_client.submit(pipeline_file, host, params=["times=1"])
    assert "HTTP 401" in str(e.value) and "KF_PIPELINES_TOKEN" in str(e.value)
    out = capsys.readouterr()
    assert "Run details" not in out.out  # kfp's prints go to the log, not our stdout
    assert "kfp: Experiment details" in caplog.text
    everything = [str(e.value), "".join(traceback.format_exception(e.value)), caplog.text]
    for text in [*everything, out.out, out.err]:
        assert TOKEN not in text
    # the token did reach the server, so it was really in play
    assert api.requests[-1]["headers"]["authorization"] == f"Bearer {TOKEN}"


def test_docsort_token_env_is_used(kfp_api, pipeline_file, monkeypatch):
    host, api = kfp_api
    monkeypatch.delenv("KF_PIPELINES_TOKEN")
    monkeypatch.setenv("DOCSORT_KFP_TOKEN", "other-token")
    kfp_client.submit(pipeline_file, host, params=["times=1"])
    assert api.requests[-1]["headers"]["authorization"] == "Bearer other-token"


def test_unreachable_host_is_one_clear_line(pipeline_file, tmp_path):
    with pytest.raises(DocsortError, match=r"KFP API http://127.0.0.1:9: submit run failed"):
        kfp_client.submit(pipeline_file, "http://127.0.0.1:9", params=["times=1"])


def test_compile_to_needs_exactly_one_pipeline(tmp_path, pipeline_file, monkeypatch):
    two = tmp_path / "two.py"
    two.write_text(
        TINY_PIPELINE + "\n\n@dsl.pipeline(name='other')\ndef other():\n    tiny(times=1)\n"
    )
    with pytest.raises(DocsortError, match=r"@dsl.pipeline.*found 2"):
        kfp_client.compile_to(two, tmp_path / "out.yaml")
    importer = tmp_path / "importer.py"  # a pipeline imported from elsewhere doesn't count
    importer.write_text(
        textwrap.dedent(
            """
            from kfp import dsl
            from tiny import tiny

            @dsl.pipeline(name="wrapper")
            def wrapper(times: int = 2):
                tiny(times=times)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        out = kfp_client.compile_to(importer, tmp_path / "wrapper.yaml")
    finally:
        sys.modules.pop("tiny", None)
    assert yaml.safe_load(out.read_text())["pipelineInfo"]["name"] == "wrapper"
    with pytest.raises(DocsortError, match="pipeline file not found"):
        kfp_client.compile_to(tmp_path / "absent.py", tmp_path / "x.yaml")


def test_submit_accepts_compiled_yaml(kfp_api, pipeline_file, tmp_path):
    host, api = kfp_api
    compiled = kfp_client.compile_to(pipeline_file, tmp_path / "tiny.yaml")
    assert kfp_client.pipeline_inputs(compiled)["scale"] == {
        "type": "NUMBER_DOUBLE",
        "optional": True,
        "default": 0.5,
    }
    kfp_client.submit(compiled, host, params=["times=4"])
    (run,) = _posts(api, "/apis/v2beta1/runs")
    assert run["body"]["pipeline_spec"] == yaml.safe_load(compiled.read_text())
