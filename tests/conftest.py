"""Shared pytest fixtures."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

S3_TEST_BUCKET = "docsort-test"
S3_TEST_SECRET = "docsort-test-secret-Zq7wX2vK9pL4"  # must never show up in any output


class S3Endpoint(str):
    """The URL of a real S3 endpoint (moto's server mode) on 127.0.0.1.

    It is a plain ``str`` for code that only needs the URL; fault tests can
    ``stop()`` it mid-operation (the socket closes, like a dead endpoint) and
    ``start()`` it again on the same port with its objects kept.
    """

    bucket: str
    secret: str

    @classmethod
    def launch(cls, port: int = 0) -> S3Endpoint:
        """Start a server (``port=0``: any free port) and return its URL."""
        server = _start_moto(port)
        url = cls(f"http://127.0.0.1:{server.get_host_and_port()[1]}")
        url._server = server
        return url

    def start(self) -> None:
        if self._server is None:
            self._server = _start_moto(int(self.rsplit(":", 1)[1]))

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server._server.server_close()  # refuse connections, don't just hang
            self._server = None


def _start_moto(port: int):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch, tmp_path_factory) -> Iterator[S3Endpoint]:
    """A moto S3 server over HTTP with bucket ``docsort-test`` and AWS_* env pointing at it.

    Yields the endpoint URL (an :class:`S3Endpoint`, a ``str``). The AWS config
    files are pointed at nothing so the host's own profiles cannot leak in.
    """
    url = S3Endpoint.launch()
    url.bucket = S3_TEST_BUCKET
    url.secret = S3_TEST_SECRET

    nowhere = tmp_path_factory.mktemp("aws") / "none"
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "docsort-test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_TEST_SECRET)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a host proxy must not intercept
    monkeypatch.delenv("no_proxy", raising=False)

    # moto keeps its state per process: start each test from an empty store.
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"))
    urllib.request.urlopen(urllib.request.Request(f"{url}/{S3_TEST_BUCKET}", method="PUT"))
    try:
        yield url
    finally:
        url.stop()


# --- tiny sample data and its prepared folder, shared by the stage tests -------------------

TINY = ["data.image_size=48", "data.num_folds=2"]
"""Overrides that make ``prepare``/``predict`` fast: small images, two folds."""
TINY_TRAIN = [*TINY, "train.epochs=1", "train.batch_size=16", "tracking.wandb=disabled"]
"""Overrides for a one-epoch training run on the tiny data, never reaching W&B."""


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """A tiny generated dataset (6 images per class on average, 2 test images per class)."""
    from docsort.data.sample import generate_sample_data

    return generate_sample_data(
        tmp_path_factory.mktemp("sample") / "data", per_class=6, test_per_class=2, seed=3
    )


@pytest.fixture(scope="session")
def prepared_root(sample_root, tmp_path_factory) -> Path:
    from docsort.data.prepare import prepare

    return prepare(str(sample_root), tmp_path_factory.mktemp("prep") / "prepared", TINY)


@pytest.fixture(scope="session")
def trained_member(prepared_root, tmp_path_factory) -> Path:
    """One member trained for one short epoch on fold 0 (stdout captured in run.log)."""
    import contextlib
    import io

    from docsort.train.train import train

    out = tmp_path_factory.mktemp("member") / "m0"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        train(
            prepared_root,
            out,
            [*TINY, "fold=0", "train.epochs=2", "train.batch_size=16", "tracking.wandb=disabled"],
        )
    (out / "stdout.log").write_text(buf.getvalue())
    return out


@pytest.fixture(scope="session")
def backbone(tmp_path_factory) -> Path:
    """A tiny ONNX network with 28 HardSwish activations, as many as PP-LCNet, so the default
    ``model.layer_sets`` fit (a ``model.backbone`` for feature_probe)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.Hardswish(), nn.Conv2d(8, 8, 3, 2, 1), nn.Hardswish()]  # fmt: skip
    for _ in range(26):
        layers += [nn.Conv2d(8, 8, 3, 1, 1), nn.Hardswish()]
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    path = tmp_path_factory.mktemp("backbone") / "tiny.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 48, 48),), str(path), input_names=["x"],
                      dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, opset_version=17, dynamo=False)  # fmt: skip
    return path


@pytest.fixture(autouse=True)
def _wandb_never_online(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach W&B's servers, whatever the developer's environment holds."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
