"""Security: weights never unpickled, YAML only safe-loaded, secrets in no output.

Covered elsewhere (not repeated here): the HTML report escapes class names, IDs and notes
(tests/test_report_html.py::test_report_escapes_user_text, with a class named
``<script>alert(1)</script>`` and an image named ``"><img src=x onerror=...>``); RBAC is
namespace-scoped and pods run non-root with a read-only root filesystem
(tests/test_deploy.py::test_rbac_is_namespaced_and_exactly_what_the_sweep_calls,
::test_pods_run_non_root_with_read_only_root); S3 errors are scrubbed of credentials
(tests/test_storage.py::test_secret_echoed_by_a_server_is_scrubbed_from_the_error).
"""

from __future__ import annotations

import ast
import base64
import contextlib
import http.server
import json
import logging
import os
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from docsort.core import storage
from tests.conftest import TINY, TINY_TRAIN
from tests.scenario import one_line, run_cli

REPO = Path(__file__).resolve().parents[1]
LIBRARY = [
    REPO / "src" / "docsort",
    REPO / "src" / "docsort" / "components",
    REPO / "src" / "docsort" / "pipelines",
]
EVERYTHING = [*LIBRARY, REPO / "tests", REPO / "bench"]


# ---------------------------------------------------------------- static checks


def _py_files(roots: list[Path]) -> list[Path]:
    seen: dict[Path, Path] = {}
    for root in roots:
        if root.is_dir():
            for p in sorted(root.rglob("*.py")):
                seen.setdefault(p.resolve(), p)
    return list(seen.values())


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "yaml.SafeLoader", "yaml.CSafeLoader"}


def unsafe_calls(source: str, *, library: bool) -> list[str]:
    """What in ``source`` could run code from a file: unpickling, unsafe YAML, eval/exec.

    ``library``: also ban importing pickle-like modules at all (tests may pickle on purpose).
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if library and isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            found += [f"{line}: import {n}" for n in names if n.split(".")[0] in UNPICKLERS]
        if isinstance(node, ast.Attribute) and _dotted(node) in {
            "yaml.Loader",
            "yaml.UnsafeLoader",
            "yaml.FullLoader",
            "yaml.CLoader",
        }:
            found.append(f"{line}: {_dotted(node)}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        tail = name.rsplit(".", 1)[-1]
        if name in ("torch.load",) and not _is_true(_kw(node, "weights_only")):
            found.append(f"{line}: torch.load without weights_only=True")
        if tail == "load_from_checkpoint" and not _is_true(_kw(node, "weights_only")):
            found.append(f"{line}: {name} without weights_only=True")
        if (
            tail == "fit"
            and _kw(node, "ckpt_path") is not None
            and not _is_true(_kw(node, "weights_only"))
        ):
            found.append(f"{line}: Lightning fit(ckpt_path=...) without weights_only=True")
        if name.split(".")[0] in UNPICKLERS and tail in ("load", "loads", "Unpickler", "open"):
            found.append(f"{line}: {name}")
        if tail == "read_pickle":
            found.append(f"{line}: {name}")
        if (
            tail == "load"
            and name.split(".")[0] in ("np", "numpy")
            and _is_true(_kw(node, "allow_pickle"))
        ):
            found.append(f"{line}: {name}(allow_pickle=True)")
        if name in (
            "yaml.unsafe_load",
            "yaml.full_load",
            "yaml.unsafe_load_all",
            "yaml.full_load_all",
        ):
            found.append(f"{line}: {name}")
        if name in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or _dotted(loader) not in SAFE_YAML_LOADERS:
                found.append(f"{line}: {name} without SafeLoader")
        if name in ("eval", "exec"):
            found.append(f"{line}: {name}()")
    return found


def test_the_checker_catches_what_it_must():
    bad = """
import pickle, yaml, torch, numpy as np, pandas as pd
torch.load("m.pt")
torch.load("m.pt", weights_only=False)
pickle.loads(b"")
yaml.load(open("c.yaml"))
yaml.load(open("c.yaml"), Loader=yaml.FullLoader)
yaml.unsafe_load("")
np.load("a.npy", allow_pickle=True)
pd.read_pickle("x")
trainer.fit(model, ckpt_path="last.ckpt")
Model.load_from_checkpoint("x.ckpt")
eval("1")
"""
    found = unsafe_calls(bad, library=True)
    assert len(found) == 13, found
    ok = """
import yaml, torch, numpy as np
torch.load("m.pt", weights_only=True, map_location="cpu")
yaml.safe_load("a: 1")
yaml.load("a: 1", Loader=yaml.SafeLoader)
np.load("a.npy", allow_pickle=False)
trainer.fit(model, ckpt_path="last.ckpt", weights_only=True)
model.eval()
"""
    assert unsafe_calls(ok, library=True) == []


def test_no_code_loads_weights_or_configs_unsafely():
    """src/, components/, pipelines/ (and tests/, bench/ for YAML and torch.load): weights come from
    safetensors or torch.load(weights_only=True), YAML through safe loaders, nothing is unpickled."""
    problems = []
    for path in _py_files(EVERYTHING):
        library = any(path.resolve().is_relative_to(root.resolve()) for root in LIBRARY)
        found = unsafe_calls(path.read_text(encoding="utf-8"), library=library)
        if not library:  # tests may pickle on purpose (e.g. a malicious checkpoint); not load one
            found = [f for f in found if "import" not in f and "pickle." not in f]
        problems += [f"{path.relative_to(REPO)}:{f}" for f in found]
    assert problems == []


# ---------------------------------------------------------------- malicious files are refused


class _Payload:
    """Unpickling this creates the folder ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _evil_pickle(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Payload(marker)}, path)
    return path


@pytest.fixture
def model_folder(tmp_path: Path, prepared_root: Path) -> Path:
    """A real (untrained) member folder: model.safetensors + model.yaml."""
    from docsort.core.config import load_config
    from docsort.data.prepared import Prepared
    from docsort.models.factory import create_model, save_member

    cfg = load_config([*TINY, "model=resnet10t"])
    names = Prepared(prepared_root).class_names
    return save_member(tmp_path / "model", create_model(cfg, len(names)), cfg, names)


def test_pickle_disguised_as_safetensors_is_refused(
    model_folder: Path, prepared_root: Path, tmp_path: Path
):
    marker = tmp_path / "PWNED"
    _evil_pickle(model_folder / "model.safetensors", marker)
    rc, _, err = run_cli(
        "predict",
        "--prepared",
        str(prepared_root),
        "--model",
        str(model_folder),
        "--out",
        str(tmp_path / "pred"),
        *TINY,
    )
    assert rc == 2 and "not a valid safetensors file" in one_line(err)
    assert not marker.exists() and not (tmp_path / "pred").exists()


def test_model_yaml_with_a_python_tag_is_refused(
    model_folder: Path, prepared_root: Path, tmp_path: Path
):
    marker = tmp_path / "PWNED"
    (model_folder / "model.yaml").write_text(f"!!python/object/apply:os.mkdir ['{marker}']\n")
    rc, _, err = run_cli(
        "predict",
        "--prepared",
        str(prepared_root),
        "--model",
        str(model_folder),
        "--out",
        str(tmp_path / "pred"),
        *TINY,
    )
    assert rc == 2 and "model.yaml" in one_line(err)
    assert not marker.exists()


@pytest.mark.parametrize(
    "suffix, expect",
    [(".pt", "must be a .safetensors file"), (".safetensors", "not a valid safetensors file")],
)
def test_pickled_pretrained_weights_are_refused(
    suffix: str, expect: str, prepared_root: Path, tmp_path: Path
):
    marker = tmp_path / "PWNED"
    weights = _evil_pickle(tmp_path / f"weights{suffix}", marker)
    argv = ["train", "--prepared", str(prepared_root), "--out", str(tmp_path / "m"), *TINY_TRAIN, "model=resnet10t",
            f"model.pretrained={weights}"]  # fmt: skip
    rc, _, err = run_cli(*argv)
    assert rc == 2 and expect in one_line(err)
    assert not marker.exists()


def test_malicious_resume_checkpoint_does_not_run(prepared_root: Path, tmp_path: Path):
    """A ``last.ckpt`` planted in the output folder is loaded with weights_only=True: its code never runs."""
    marker = tmp_path / "PWNED"
    out = tmp_path / "m"
    (out / "checkpoints").mkdir(parents=True)
    _evil_pickle(out / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever it is, it is not the payload running
        torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    argv = [
        "train",
        "--prepared",
        str(prepared_root),
        "--out",
        str(out),
        *TINY_TRAIN,
        "model=resnet10t",
    ]
    # Refusing it (however worded) or starting afresh are both fine; running its code is not.
    with contextlib.suppress(Exception):
        run_cli(*argv)
    assert not marker.exists()


# ---------------------------------------------------------------- secrets never leak

FAKE = {
    "AWS_SESSION_TOKEN": "FAKEsessionTOKEN-b71c3e5a9d2f4e68a0c1",
    "WANDB_API_KEY": "fakewandbkey0c3e5a9d2f4e68a0c1b71c3e5a9d2f",
    "KF_PIPELINES_TOKEN": "kfp-FAKE-token-5d2c8b1e9f4a7c3e60aa",
    "DOCSORT_KFP_TOKEN": "docsort-FAKE-kfp-token-77e0b9c4d1a3",
}


def _forms(secret: str) -> set[bytes]:
    """The secret as raw text, base64 (as in a Basic auth header) and URL-encoded."""
    raw = secret.encode()
    return {
        raw,
        base64.b64encode(raw).rstrip(b"="),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
        urllib.parse.quote(secret).encode(),
    }


def _leaks(blob: bytes, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if any(f in blob for f in _forms(value))]


class _EchoingKFP(http.server.BaseHTTPRequestHandler):
    """A hostile/misconfigured API server: answers 401 and echoes the request headers back."""

    def _answer(self) -> None:
        body = json.dumps({"error": "unauthorized", "headers": dict(self.headers)}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def echoing_kfp() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoingKFP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow  # over 9 s on 2 cores: `make test-slow`
def test_secrets_appear_in_no_output_log_or_message(
    s3_server,
    echoing_kfp: str,
    sample_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd,
    caplog,
):
    """Every stage run with fake secrets in the environment; then every file written (W&B's offline
    run included), every S3 object, stdout/stderr (this process and its children) and the logs are
    searched for them, raw, base64- and URL-encoded."""
    secrets = {**FAKE, "AWS_SECRET_ACCESS_KEY": s3_server.secret}
    for name, value in FAKE.items():
        monkeypatch.setenv(name, value)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # anything written relative to the working directory is searched too
    for var, sub in (("WANDB_DIR", "wandb"), ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_CONFIG_DIR", "wandb-config"),
                     ("WANDB_DATA_DIR", "wandb-data"), ("WANDB_ARTIFACT_DIR", "wandb-artifacts")):  # fmt: skip
        monkeypatch.setenv(var, str(work / sub))
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="docsort")
    data = f"s3://{s3_server.bucket}/ds"
    storage.upload_dir(sample_root, data)

    steps = [
        ["prepare", data, "--out", "prep", *TINY],
        ["train", "--prepared", "prep", "--out", "m0", *TINY, "fold=0", "model=resnet10t", "train.epochs=1", "train.batch_size=16", "tracking.wandb=offline"],
        ["predict", "--prepared", "prep", "--model", "m0", "--out", "pred0", *TINY, "tta.views=[identity,rot90]"],
        ["ensemble", "pred0", "--model", "m0", "--out", "cands/soft"],
        ["hardcases", "compare", "cands/soft", "--prepared", "prep", "--out", "review"],
        ["report", "--prepared", "prep", "--candidate", "cands/soft", "--out", "report/report.html"],
        ["submission", "--prepared", "prep", "--probs", "cands/soft/probs.csv", "--out", f"s3://{s3_server.bucket}/runs", "--candidate", "soft"],
    ]  # fmt: skip
    for argv in steps:
        rc, out, err = run_cli(*argv)
        assert rc == 0, f"{argv[0]} failed:\n{err}"
        print(out)
        print(err, file=sys.stderr)
    assert list((work / "m0").rglob("wandb/offline-run-*")), "W&B wrote no offline run to search"

    # Failures whose messages could carry a credential.
    failures = [
        ["prepare", f"s3://no-such-bucket-{os.getpid()}/ds", "--out", "prep2", *TINY],
        [
            "submit",
            str(REPO / "src" / "docsort" / "pipelines" / "train.py"),
            "--host",
            echoing_kfp,
            "--param",
            f"data_root={data}",
        ],
    ]
    for argv in failures:
        rc, out, err = run_cli(*argv)
        assert rc == 2, f"{argv[0]} should fail cleanly:\n{err}"
        print(out)
        print(err, file=sys.stderr)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    s3_server.stop()
    rc, out, err = run_cli(
        "submission",
        "--prepared",
        "prep",
        "--probs",
        "cands/soft/probs.csv",
        "--out",
        f"s3://{s3_server.bucket}/runs",
        "--candidate",
        "x",
    )
    assert rc == 2 and "EndpointConnectionError" in one_line(err)
    print(err, file=sys.stderr)
    s3_server.start()

    leaks = []
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(files) > 30, "the stages wrote less than expected"
    for p in files:
        leaks += [f"{p.relative_to(tmp_path)}: {n}" for n in _leaks(p.read_bytes(), secrets)]
    for uri in storage.list_files(f"s3://{s3_server.bucket}"):
        leaks += [f"{uri}: {n}" for n in _leaks(storage.read_bytes(uri), secrets)]
    captured = capfd.readouterr()
    leaks += [f"stdout: {n}" for n in _leaks(captured.out.encode(), secrets)]
    leaks += [f"stderr: {n}" for n in _leaks(captured.err.encode(), secrets)]
    leaks += [f"log: {n}" for n in _leaks(caplog.text.encode(), secrets)]
    assert leaks == []
    # The echoing server really was asked (its 401 is logged, scrubbed, at debug level).
    assert "KFP API" in captured.err and "(401)" in caplog.text


def test_saved_configs_do_not_resolve_environment_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Configs are recorded resolved: an ``${oc.env:...}`` secret interpolation in the packaged config
    would be written out in clear, so there must be none."""
    hits = []
    for p in (REPO / "src" / "docsort" / "conf").rglob("*.yaml"):
        text = p.read_text(encoding="utf-8")
        hits += [
            str(p.relative_to(REPO))
            for name in (*FAKE, "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
            if name in text and "oc.env" in text
        ]
    assert hits == []
    from docsort.core.config import load_config, to_yaml

    for name, value in FAKE.items():
        monkeypatch.setenv(name, value)
    assert _leaks(to_yaml(load_config([])).encode(), FAKE) == []


def test_leak_search_would_find_a_leak():
    """The search itself: a secret written raw, base64 or URL-encoded is found."""
    s = FAKE["WANDB_API_KEY"]
    assert _leaks(f"key={s}".encode(), FAKE) == ["WANDB_API_KEY"]
    assert _leaks(
        b"Authorization: Basic " + base64.b64encode(f"api:{s}".encode()), {"k": f"api:{s}"}
    ) == ["k"]
    assert _leaks(urllib.parse.quote(FAKE["KF_PIPELINES_TOKEN"] + "/x").encode(), FAKE) == [
        "KF_PIPELINES_TOKEN"
    ]


# ---------------------------------------------------------------- what reaches the terminal


def test_a_password_in_the_host_url_is_not_echoed():
    """`docsort submit --host http://user:pw@...` to an endpoint that is down: the error names the
    host with the password replaced."""
    password = "pw-Hq83nVx"
    rc, out, err = run_cli(
        "submit", REPO / "src" / "docsort" / "pipelines" / "train.py", "--host", f"http://user:{password}@127.0.0.1:9/",
        "--param", "data_root=s3://bucket/data",
    )  # fmt: skip
    assert rc == 2
    msg = one_line(err)
    assert "http://user:***@127.0.0.1:9/" in msg, msg
    assert password not in err + out


def test_redact_and_printable(monkeypatch: pytest.MonkeyPatch, caplog):
    from docsort.core.errors import printable, redact, safe_log_records, safe_text

    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-5oTq0Zr1")
    caplog.set_level(logging.DEBUG)
    with safe_log_records():
        logging.getLogger("botocore.x").debug(
            "GET %s key %s", "https://h/k?Signature=s1g", "wandb-key-5oTq0Zr1"
        )
    assert "GET https://h/k?Signature=*** key ***" in caplog.text and "s1g" not in caplog.text

    assert redact("s3://AKIA:sec/ret@minio:9000/b and https://u:p@h/x") == (
        "s3://AKIA:***@minio:9000/b and https://u:***@h/x"
    )
    url = (
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=abc123&token=t0k&x=1"
    )
    assert redact(url) == (
        "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&token=***&x=1"
    )
    assert redact("http://127.0.0.1:9/x and user@example.com") == (
        "http://127.0.0.1:9/x and user@example.com"
    )
    assert printable("a\x1b[2Jb\rc\x07d\te\nf") == "a\\x1b[2Jb\\rc\\x07d\te\nf"
    assert safe_text("\x1b[31mred\x1b[0m \x1b]0;title\x07", keep_color=True) == (
        "\x1b[31mred\x1b[0m \\x1b]0;title\\x07"
    )
    assert printable(printable("\x1b")) == printable("\x1b")  # escaping twice changes nothing


HOSTILE = "account\x1b]0;pwned\x07\x1b[2J\x1b[1A_number"


@pytest.fixture
def hostile_data(sample_root: Path, tmp_path: Path) -> Path:
    """The sample dataset with a class name carrying terminal escapes (title, clear, cursor up)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(sample_root, data)
    meta = (data / "meta.csv").read_text(encoding="utf-8")
    (data / "meta.csv").write_text(meta.replace(",account_number", f",{HOSTILE}"), encoding="utf-8")
    assert HOSTILE in (data / "meta.csv").read_text(encoding="utf-8")
    return data


def _no_raw_escapes(text: str) -> None:
    assert "\x1b]" not in text and "\x1b[2J" not in text and "\x07" not in text and "\r" not in text


def test_class_names_with_terminal_escapes_are_printed_escaped(hostile_data: Path, tmp_path: Path):
    """The class name reaches the terminal as ``\\x1b]0;pwned...`` text: in a one-line error
    (fewer images than folds) and in the hard-case table that `hardcases compare` prints."""
    from tests.review_fakes import fake_candidate, one_hot

    rc, out, err = run_cli(
        "prepare", str(hostile_data), "--out", str(tmp_path / "p0"), "data.num_folds=40"
    )
    assert rc == 2
    msg = one_line(err)
    _no_raw_escapes(err + out)
    assert "class 0 (account\\x1b]0;pwned\\x07\\x1b[2J\\x1b[1A_number)" in msg, msg

    prep = tmp_path / "prep"
    rc, out, err = run_cli("prepare", str(hostile_data), "--out", str(prep), *TINY)
    assert rc == 0, err
    ids = [line.split(",")[0] for line in (prep / "test.csv").read_text().splitlines()[1:]]
    k = len((prep / "meta.csv").read_text(encoding="utf-8").splitlines()) - 1
    target = 0  # every test image predicted as the hostile class
    cand = fake_candidate(tmp_path / "cands" / "c", "c", ids, one_hot([target] * len(ids), k))
    rc, out, err = run_cli(
        "hardcases", "compare", str(cand), "--prepared", str(prep), "--out", str(tmp_path / "cmp")
    )
    assert rc == 0, err
    assert "account" in out and "pwned" in out  # the table shows the name, made harmless
    _no_raw_escapes(out + err)
