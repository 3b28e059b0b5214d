"""docsort.core.storage against a real S3 endpoint over HTTP (moto's server mode)."""

from __future__ import annotations

import http.server
import io
import logging
import threading
import traceback
from collections.abc import Iterator

import boto3
import pytest

from docsort.core import storage
from docsort.core.errors import ConfigError, DocsortError
from docsort.core.outputs import MARKER


def _raw_s3():
    """A plain boto3 client on the same endpoint, to look behind docsort's back."""
    return boto3.client("s3")


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """A writable root: a local folder, or a prefix in the test bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    url = request.getfixturevalue("s3_server")
    return f"s3://{url.bucket}/root"


def test_uri_helpers():
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/data/x")
    assert storage.split("s3://b/a/b.csv") == ("b", "a/b.csv")
    assert storage.join("s3://b/pre/", "train", "x.png") == "s3://b/pre/train/x.png"
    assert storage.join("s3://b", "x") == "s3://b/x"
    assert storage.join("/data", "train", "x.png") == "/data/train/x.png"
    with pytest.raises(DocsortError, match="no bucket"):
        storage.split("s3:///key")


def test_round_trip_bytes_and_text(root):
    blob = bytes(range(256)) * 10
    uri = storage.join(root, "sub", "blob.bin")
    assert not storage.exists(uri)
    storage.write_bytes_atomic(uri, blob)
    assert storage.read_bytes(uri) == blob
    storage.write_text_atomic(storage.join(root, "note.txt"), "Überweisung ✓\n")
    assert storage.read_text(storage.join(root, "note.txt")) == "Überweisung ✓\n"
    assert storage.exists(uri) and storage.exists(storage.join(root, "sub"))
    assert [u.rsplit("/", 2)[-2:] for u in storage.list_files(root)] == [
        ["root", "note.txt"],
        ["sub", "blob.bin"],
    ]


def test_missing_object_is_one_clear_line(root):
    uri = storage.join(root, "absent.csv")
    with pytest.raises(DocsortError) as e:
        storage.read_bytes(uri)
    assert str(e.value).startswith(uri + ": ")
    assert "not found" in str(e.value)


def test_write_to_missing_bucket_fails_clearly(s3_server):
    with pytest.raises(DocsortError, match=r"s3://no-such-bucket/x\.csv: S3 NoSuchBucket"):
        storage.write_text_atomic("s3://no-such-bucket/x.csv", "ID,target\n")


def _put_dataset(bucket: str, prefix: str) -> dict[str, bytes]:
    files = {
        "train.csv": b"ID,target\na.png,0\nb.png,1\n",
        "meta.csv": b"target,class_name\n0,letter\n1,invoice\n",
        "train/a.png": b"\x89PNG fake a",
        "train/b.png": b"\x89PNG fake b",
        "test/c.png": b"\x89PNG fake c",
    }
    s3 = _raw_s3()
    for rel, data in files.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data)
    s3.put_object(Bucket=bucket, Key=f"{prefix}/train/", Body=b"")  # a console "folder" marker
    s3.put_object(Bucket=bucket, Key=f"{prefix}-other/x.csv", Body=b"not part of the root")
    return files


def test_localize_mirrors_a_dataset_prefix_and_reuses_it(s3_server, tmp_path):
    files = _put_dataset(s3_server.bucket, "datasets/docs")
    uri = f"s3://{s3_server.bucket}/datasets/docs"
    cache = tmp_path / "cache"

    local = storage.localize(uri, cache, progress=False)
    assert local == cache / s3_server.bucket / "datasets" / "docs"
    got = {
        p.relative_to(local).as_posix(): p.read_bytes()
        for p in local.rglob("*")
        if p.is_file() and p.name not in (storage.MANIFEST, MARKER)
    }
    assert got == files
    assert [p.name for p in cache.glob(f"{s3_server.bucket}/datasets/.*")] == []  # no temp left

    # An unchanged prefix is not downloaded again ...
    (local / "train.csv").write_bytes(b"edited locally")
    assert storage.localize(uri, cache, progress=False) == local
    assert (local / "train.csv").read_bytes() == b"edited locally"
    # ... but a changed object is.
    _raw_s3().put_object(Bucket=s3_server.bucket, Key="datasets/docs/train.csv", Body=b"v2")
    storage.localize(uri + "/", cache, progress=False)
    assert (local / "train.csv").read_bytes() == b"v2"


def test_localize_ignores_a_mirror_without_manifest(s3_server, tmp_path):
    """A half-downloaded cache (crash, full disk) must never count as complete."""
    _put_dataset(s3_server.bucket, "ds")
    half = tmp_path / "cache" / s3_server.bucket / "ds"
    (half / "train").mkdir(parents=True)
    (half / "train.csv").write_bytes(b"ID,tar")  # truncated
    local = storage.localize(f"s3://{s3_server.bucket}/ds", tmp_path / "cache", progress=False)
    assert (local / "train.csv").read_bytes() == b"ID,target\na.png,0\nb.png,1\n"
    assert (local / "test" / "c.png").exists()


def test_localize_local_path_is_a_no_op(tmp_path):
    assert storage.localize(tmp_path / "data", tmp_path / "cache") == tmp_path / "data"
    assert not (tmp_path / "cache").exists()


def test_localize_refuses_keys_escaping_the_prefix(s3_server, tmp_path):
    _raw_s3().put_object(Bucket=s3_server.bucket, Key="ds/train/../../../evil.txt", Body=b"x")
    with pytest.raises(DocsortError, match="escapes the prefix"):
        storage.localize(f"s3://{s3_server.bucket}/ds", tmp_path / "cache", progress=False)
    assert not list(tmp_path.rglob("evil.txt"))


def test_localize_empty_prefix_fails(s3_server, tmp_path):
    with pytest.raises(DocsortError, match="no objects under this S3 prefix"):
        storage.localize(f"s3://{s3_server.bucket}/nothing", tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache" / s3_server.bucket / "nothing").exists()


class _Source(io.RawIOBase):
    """A readable stream that runs ``hook(bytes_read_so_far)`` on every read."""

    def __init__(self, data: bytes, hook):
        self._buf = io.BytesIO(data)
        self._hook = hook

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        self._hook(self._buf.tell())
        n = self._buf.readinto(b)
        return n


@pytest.fixture
def small_parts(monkeypatch):
    """Multipart uploads with S3's minimum part size, so tests stay small."""
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    return 12 * 1024 * 1024


def _uploads_in_progress(bucket: str) -> list:
    return _raw_s3().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_multipart_write_is_visible_only_when_complete(s3_server, small_parts):
    uri = f"s3://{s3_server.bucket}/out/submission.csv"
    data = b"x" * small_parts
    seen_mid_upload = []

    def look(pos: int) -> None:
        if pos > 6 * 1024 * 1024 and not seen_mid_upload:
            seen_mid_upload.append(storage.exists(uri))

    storage._upload_stream(_Source(data, look), uri, len(data))
    assert seen_mid_upload == [False]
    assert storage.read_bytes(uri) == data
    etag = _raw_s3().head_object(Bucket=s3_server.bucket, Key="out/submission.csv")["ETag"]
    assert etag.endswith('-3"')  # it really went up as a 3-part multipart upload
    assert _uploads_in_progress(s3_server.bucket) == []


def test_upload_whose_source_fails_midway_leaves_nothing(s3_server, small_parts):
    uri = f"s3://{s3_server.bucket}/out/submission.csv"

    def explode(pos: int) -> None:
        if pos > 6 * 1024 * 1024:
            raise OSError("disk read error")

    with pytest.raises(OSError, match="disk read error"):
        storage._upload_stream(_Source(b"y" * small_parts, explode), uri, small_parts)
    assert not storage.exists(uri)
    assert _uploads_in_progress(s3_server.bucket) == []  # the multipart upload was aborted


def test_endpoint_dying_mid_upload_leaves_no_object(s3_server, small_parts, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # keep the retry backoff short
    uri = f"s3://{s3_server.bucket}/out/submission.csv"

    def kill(pos: int) -> None:
        if pos > 6 * 1024 * 1024:
            s3_server.stop()

    with pytest.raises(DocsortError) as e:
        storage._upload_stream(_Source(b"z" * small_parts, kill), uri, small_parts)
    assert str(e.value).startswith(uri + ": S3 ")
    assert s3_server.secret not in str(e.value)
    s3_server.start()
    assert not storage.exists(uri)
    # A later write (after the endpoint is back) works and is complete.
    storage.write_text_atomic(uri, "ID,target\n")
    assert storage.read_text(uri) == "ID,target\n"


def test_endpoint_down_before_small_write(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    uri = f"s3://{s3_server.bucket}/latest.json"
    s3_server.stop()
    with pytest.raises(DocsortError, match="EndpointConnectionError"):
        storage.write_text_atomic(uri, "{}")
    s3_server.start()
    assert not storage.exists(uri)


def test_upload_file_and_local_copy(s3_server, tmp_path):
    src = tmp_path / "lineage.json"
    src.write_text('{"run": 1}')
    uri = f"s3://{s3_server.bucket}/runs/1/lineage.json"
    storage.upload_file(src, uri)
    assert storage.read_text(uri) == '{"run": 1}'
    storage.upload_file(src, tmp_path / "copy" / "lineage.json")
    assert (tmp_path / "copy" / "lineage.json").read_text() == '{"run": 1}'
    with pytest.raises(DocsortError, match="file not found"):
        storage.upload_file(tmp_path / "absent", uri)
    with pytest.raises(DocsortError, match="needs an object key"):
        storage.upload_file(src, f"s3://{s3_server.bucket}/runs/")


def test_retries_are_configured(s3_server, monkeypatch):
    cfg = storage.client().meta.config
    assert cfg.retries == {"mode": "standard", "total_max_attempts": 5}
    assert cfg.s3["addressing_style"] == "path"
    assert cfg.region_name == "us-east-1"
    assert storage.client().meta.endpoint_url == s3_server
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "8")
    assert storage.client().meta.config.retries == {"mode": "adaptive", "total_max_attempts": 8}
    monkeypatch.setenv("AWS_RETRY_MODE", "sometimes")
    with pytest.raises(ConfigError, match="AWS_RETRY_MODE"):
        storage.client()


def test_endpoint_url_s3_wins(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    storage.write_text_atomic(f"s3://{s3_server.bucket}/k", "v")
    assert storage.read_text(f"s3://{s3_server.bucket}/k") == "v"


def test_missing_region(s3_server, monkeypatch):
    monkeypatch.delenv("AWS_REGION")
    with pytest.raises(ConfigError, match=r"S3 MissingRegion: set AWS_REGION"):
        storage.read_bytes(f"s3://{s3_server.bucket}/x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert storage.client().meta.region_name == "eu-west-1"


def test_missing_credentials(s3_server, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(DocsortError, match="S3 NoCredentials: set AWS_ACCESS_KEY_ID"):
        storage.read_bytes(f"s3://{s3_server.bucket}/x")


# ------------------------------------------------ a scripted S3 stand-in for faults


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers GETs from a script: 'reset' (drop the connection), 'slowdown' (503), 'ok'."""

    script: list[str]
    seen: list[str]
    body: bytes = b"payload"
    echo_secret: str = ""

    def do_GET(self):  # noqa: N802
        action = self.script.pop(0) if self.script else "ok"
        self.seen.append(action)
        if action == "reset":
            self.close_connection = True
            return
        if action == "ok":
            self._send(200, self.body, "application/octet-stream")
            return
        code, status = ("SlowDown", 503) if action == "slowdown" else ("AccessDenied", 403)
        msg = f"Please reduce your request rate. {self.echo_secret}".strip()
        xml = f"<Error><Code>{code}</Code><Message>{msg}</Message></Error>".encode()
        self._send(status, xml, "application/xml")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted_s3(monkeypatch) -> Iterator[type[_Scripted]]:
    handler = type("Handler", (_Scripted,), {"script": [], "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "scripted-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "scripted-secret-9f8e7d6c5b4a")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("no_proxy", raising=False)
    yield handler
    server.shutdown()
    server.server_close()


def test_throttling_and_dropped_connections_are_retried(scripted_s3):
    scripted_s3.script[:] = ["reset", "slowdown", "ok"]
    assert storage.read_bytes("s3://bucket/key") == b"payload"
    assert scripted_s3.seen == ["reset", "slowdown", "ok"]


def test_retries_give_up_after_max_attempts(scripted_s3, monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    scripted_s3.script[:] = ["slowdown"] * 5
    with pytest.raises(DocsortError, match="S3 SlowDown"):
        storage.read_bytes("s3://bucket/key")
    assert scripted_s3.seen == ["slowdown", "slowdown"]


def test_secret_echoed_by_a_server_is_scrubbed_from_the_error(scripted_s3):
    secret = "scripted-secret-9f8e7d6c5b4a"
    scripted_s3.echo_secret = secret
    scripted_s3.script[:] = ["denied"]
    with pytest.raises(DocsortError) as e:
        storage.read_bytes("s3://bucket/key")
    assert "S3 AccessDenied" in str(e.value) and "***" in str(e.value)
    assert secret not in "".join(traceback.format_exception(e.value))


def test_secrets_never_in_errors_or_logs(scripted_s3, caplog, capsys, monkeypatch):
    secret = "scripted-secret-9f8e7d6c5b4a"
    caplog.set_level(logging.DEBUG)
    scripted_s3.script[:] = ["denied"]
    with pytest.raises(DocsortError) as e:
        storage.read_bytes("s3://bucket/key")
    text = "".join(traceback.format_exception(e.value))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(DocsortError) as e2:
        storage.read_bytes("s3://bucket/key")
    text += "".join(traceback.format_exception(e2.value))
    out = capsys.readouterr()
    assert "AccessDenied" in text and "EndpointConnectionError" in text
    assert "Authorization" in caplog.text  # botocore logged the signed request at DEBUG
    for where in (text, caplog.text, out.out, out.err):
        assert secret not in where
