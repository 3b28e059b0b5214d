"""Local paths and ``s3://bucket/prefix`` URIs behind one small API.

Stages take URIs so the same code reads a dataset from a laptop folder or from
S3-compatible storage (AWS, MinIO, Ceph). S3 settings come only from the
environment, the way every AWS tool reads them:

- ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``: a custom endpoint (MinIO);
  path-style addressing is used then, since such endpoints rarely have
  per-bucket DNS names.
- ``AWS_REGION`` or ``AWS_DEFAULT_REGION``: required.
- credentials: boto3's usual chain (``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY``, a web-identity token on a cluster, ...).
- ``AWS_RETRY_MODE`` (``standard`` or ``adaptive``), ``AWS_MAX_ATTEMPTS``:
  retries with backoff for throttling and connection errors (default standard,
  5 attempts in all).

Writes never expose half an object: a local file is written to a temporary
name and renamed; an S3 object becomes visible under its key only when its
single PUT or its multipart upload completes, and a failed multipart upload is
aborted. Every S3 failure becomes a one-line ``DocsortError`` with credentials
scrubbed from the message.
"""

# Not fsspec: its S3 backend (s3fs) is not a dependency, and what this module adds over a
# plain client is docsort's own: atomic local writes and ``.docsort`` markers, conditional
# PUTs (If-None-Match), aborted multipart uploads, manifest-checked mirrors, scrubbed errors.
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from docsort.core.atomic import atomic_path, remove_stale_temps, temp_name
from docsort.core.errors import ConfigError, DocsortError, redact
from docsort.core.outputs import read_marker, write_marker

log = logging.getLogger(__name__)

SCHEME = "s3://"
MANIFEST = ".docsort-manifest.json"
# Objects larger than this go up as a multipart upload (visible only once complete).
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def is_s3(uri: str | os.PathLike) -> bool:
    """True for ``s3://`` URIs, False for local paths."""
    return str(uri).startswith(SCHEME)


def split(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_s3(uri):
        raise DocsortError(f"not an s3:// URI: {uri}")
    bucket, _, key = str(uri)[len(SCHEME) :].partition("/")
    if not bucket:
        raise DocsortError(f"S3 URI has no bucket: {uri}")
    return bucket, key


def join(uri: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or an S3 URI (always with ``/`` for S3)."""
    if not is_s3(uri):
        return str(Path(uri).joinpath(*parts))
    base = str(uri).rstrip("/")
    tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
    return f"{base}/{tail}" if tail else base


# ---------------------------------------------------------------- S3 client


def _retry_config() -> dict[str, Any]:
    mode = os.environ.get("AWS_RETRY_MODE", "standard")
    if mode not in ("standard", "adaptive", "legacy"):
        raise ConfigError(f"AWS_RETRY_MODE={mode!r}: choose standard or adaptive")
    try:
        attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", "5"))
    except ValueError:
        raise ConfigError("AWS_MAX_ATTEMPTS must be an integer") from None
    return {"mode": mode, "total_max_attempts": max(1, attempts)}


def client() -> Any:
    """A boto3 S3 client configured from the environment (cached per setting)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    # A digest of the credentials keys the cache, so a changed environment (tests,
    # a rotated key) gets a fresh client without the secret sitting in the key.
    creds = hashlib.sha256(repr([os.environ.get(n) for n in _SECRET_ENV]).encode()).hexdigest()
    from botocore.exceptions import ProfileNotFound

    try:
        return _client(endpoint, region, os.environ.get("AWS_PROFILE"), creds, **_retry_config())
    except ProfileNotFound as e:
        raise ConfigError(f"S3 ProfileNotFound: {e}") from None


@lru_cache(maxsize=8)
def _client(
    endpoint: str | None,
    region: str | None,
    profile: str | None,
    _creds_digest: str,
    mode: str,
    total_max_attempts: int,
) -> Any:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(profile_name=profile)
    region = region or session.region_name
    if not region:
        raise ConfigError("S3 MissingRegion: set AWS_REGION (or AWS_DEFAULT_REGION)")
    config = Config(
        region_name=region,
        retries={"mode": mode, "total_max_attempts": total_max_attempts},
        s3={"addressing_style": "path" if endpoint else "auto"},
        connect_timeout=10,
        read_timeout=60,
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


@contextlib.contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Turn botocore failures into one scrubbed ``DocsortError`` line naming the URI."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except ClientError as e:
        err = e.response.get("Error", {})
        code = err.get("Code", "Error")
        message = err.get("Message") or e.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode", ""
        )
        if code in ("404", "NoSuchKey"):
            message = "object not found"
        raise DocsortError(redact(f"S3 {code}: {message}"), file=uri) from None
    except NoCredentialsError:
        raise DocsortError(
            "S3 NoCredentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", file=uri
        ) from None
    except (BotoCoreError, Boto3Error) as e:
        raise DocsortError(redact(f"S3 {type(e).__name__}: {e}"), file=uri) from None


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNKSIZE
    )


# ---------------------------------------------------------------- reading


def exists(uri: str | os.PathLike) -> bool:
    """True if the file/object exists, or if ``uri`` is a non-empty folder/prefix."""
    if not is_s3(uri):
        return Path(uri).exists()
    from botocore.exceptions import ClientError

    bucket, key = split(str(uri))
    s3 = client()
    with _s3_errors(str(uri)):
        if key and not key.endswith("/"):
            try:
                s3.head_object(Bucket=bucket, Key=key)
                return True
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey"):
                    raise
        prefix = key.rstrip("/") + "/" if key else ""
        return s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0) > 0


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The whole content of a file or object."""
    if not is_s3(uri):
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError:
            raise DocsortError("file not found", file=str(uri)) from None
    bucket, key = split(str(uri))
    with _s3_errors(str(uri)):
        return client().get_object(Bucket=bucket, Key=key)["Body"].read()


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    """Decoded text of a file or object."""
    data = read_bytes(uri)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise DocsortError(
            f"not {encoding} text ({e.reason} at byte {e.start})", file=str(uri)
        ) from None


def _objects(uri: str) -> dict[str, dict[str, Any]]:
    """Objects under an S3 prefix: relative key -> {size, etag}."""
    bucket, key = split(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    out: dict[str, dict[str, Any]] = {}
    with _s3_errors(uri):
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :]
                if rel and not rel.endswith("/"):  # skip "folder" marker objects
                    out[rel] = {"size": obj["Size"], "etag": obj["ETag"]}
    return out


def list_files(uri: str | os.PathLike) -> list[str]:
    """Sorted URIs (or paths) of every file under a folder or S3 prefix."""
    if not is_s3(uri):
        root = Path(uri)
        return sorted(str(p) for p in root.rglob("*") if p.is_file())
    return [join(uri, rel) for rel in sorted(_objects(str(uri)))]


# ---------------------------------------------------------------- writing


def write_bytes_atomic(uri: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` so that readers see either nothing or all of it.

    Local: temporary file + rename. S3: one PutObject, or for large data a
    multipart upload that S3 shows under the key only once it completes (and
    that is aborted on failure).
    """
    if not is_s3(uri):
        with atomic_path(uri) as tmp:
            tmp.write_bytes(data)
        return str(uri)
    return _upload_stream(io.BytesIO(data), str(uri), len(data))


def write_bytes_new(uri: str | os.PathLike, data: bytes) -> str:
    """Create ``uri`` with ``data``, complete when visible; ``FileExistsError`` if it exists.

    For names that must never be reused (submission versions), written by
    processes that may run at the same moment. Local: a temporary file is
    hard-linked to the name (the link fails if the name exists; where hard
    links are not supported, ``O_CREAT | O_EXCL`` claims the name). S3: one
    PutObject with ``If-None-Match: *`` (a conditional write: the store
    refuses it with 412 when the key exists).
    """
    if not is_s3(uri):
        final = Path(uri)
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(final)  # a killed run's leftovers (dead owner process)
        tmp = temp_name(final)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            except OSError as err:
                err.filename = err.filename or str(final)  # a full disk names the file
                raise
            os.chmod(tmp, 0o666 & ~_umask())
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise
            except OSError:  # no hard links here (some network or FUSE file systems)
                fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
        finally:
            os.unlink(tmp)
        return str(uri)
    from botocore.exceptions import ClientError

    bucket, key = split(str(uri))
    with _s3_errors(str(uri)):
        try:
            client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise FileExistsError(str(uri)) from None
            raise
    log.info("wrote %s (%d bytes)", uri, len(data))
    return str(uri)


def remove(uri: str | os.PathLike) -> None:
    """Remove one file this run wrote (undoing a half-done write); a missing one is fine."""
    if not is_s3(uri):
        Path(uri).unlink(missing_ok=True)
        return
    bucket, key = split(str(uri))
    with _s3_errors(str(uri)):
        client().delete_object(Bucket=bucket, Key=key)


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would, for every thread)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(ln for ln in status if ln.startswith("Umask:")).split()[1], 8)
    return 0o022


def write_text_atomic(uri: str | os.PathLike, text: str) -> str:
    """UTF-8 text variant of :func:`write_bytes_atomic`."""
    return write_bytes_atomic(uri, text.encode("utf-8"))


def upload_file(local: str | os.PathLike, uri: str | os.PathLike) -> str:
    """Copy a local file to ``uri`` (S3 or local) atomically."""
    local = Path(local)
    if not local.is_file():
        raise DocsortError("file not found", file=str(local))
    if not is_s3(uri):
        with atomic_path(uri) as tmp:
            shutil.copyfile(local, tmp)
        return str(uri)
    with local.open("rb") as f:
        return _upload_stream(f, str(uri), local.stat().st_size)


def _upload_stream(f: BinaryIO, uri: str, size: int) -> str:
    bucket, key = split(uri)
    if not key or key.endswith("/"):
        raise DocsortError("S3 URI needs an object key, not a prefix", file=uri)
    s3 = client()
    with _s3_errors(uri):
        if size < MULTIPART_THRESHOLD:
            s3.put_object(Bucket=bucket, Key=key, Body=f.read())
        else:
            s3.upload_fileobj(f, bucket, key, Config=_transfer_config())
    log.info("wrote %s (%d bytes)", uri, size)
    return uri


# ---------------------------------------------------------------- datasets


def _safe_relpath(rel: str, uri: str) -> PurePosixPath:
    """Refuse keys that would land outside the download folder."""
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise DocsortError(f"object key escapes the prefix: {rel!r}", file=uri)
    return p


def download_to(
    uri: str, local_dir: str | os.PathLike, *, progress: bool = True, workers: int = 8
) -> Path:
    """Download every object under an S3 prefix into ``local_dir`` (keeps sub-folders).

    Files are fetched in parallel with a byte-count progress bar. The caller
    makes the folder atomic (see :func:`localize`).
    """
    return _download(uri, Path(local_dir), _objects(uri), progress=progress, workers=workers)


def _download(
    uri: str, local_dir: Path, objects: dict[str, dict[str, Any]], *, progress: bool, workers: int
) -> Path:
    from tqdm.auto import tqdm

    if not objects:
        raise DocsortError("no objects under this S3 prefix", file=uri)
    bucket, key = split(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    s3 = client()
    total = sum(o["size"] for o in objects.values())
    log.info("downloading %d objects (%d bytes) from %s", len(objects), total, uri)

    # disable=None: no bar when stderr is not a terminal (pipeline logs, captured output)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=uri, disable=None if progress else True
    ) as bar:

        def fetch(rel: str) -> None:
            dest = local_dir / _safe_relpath(rel, uri)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with _s3_errors(join(uri, rel)):
                s3.download_file(bucket, prefix + rel, str(dest), Callback=bar.update)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(fetch, sorted(objects)):
                pass
    return local_dir


def localize(
    uri: str | os.PathLike, cache_dir: str | os.PathLike, *, progress: bool = True
) -> Path:
    """A local folder holding the dataset root ``uri`` (a no-op for local paths).

    S3 prefixes are mirrored to ``cache_dir/<bucket>/<prefix>``. The mirror is
    built in a temporary folder and renamed into place with a manifest of keys,
    sizes and ETags, so an interrupted download (full disk, preemption) never
    leaves a mirror that counts as complete, and an unchanged prefix is not
    downloaded again.
    """
    if not is_s3(uri):
        return Path(uri)
    uri = str(uri).rstrip("/")
    bucket, key = split(uri)
    target = Path(cache_dir, bucket, *_safe_relpath(key, uri).parts)
    listing = _objects(uri)
    manifest = target / MANIFEST
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text(encoding="utf-8")) == listing:
                log.info("using cached copy of %s at %s", uri, target)
                return target
        except json.JSONDecodeError:
            pass
    if target.is_dir() and read_marker(target) is None:
        # a mirror under docsort's own download cache, torn by an older docsort or a crash:
        # the folder is docsort's by where it is, so it may be replaced
        write_marker(target, "download")
    with atomic_path(target, is_dir=True, kind="download") as tmp:
        _download(uri, tmp, listing, progress=progress, workers=8)
        (tmp / MANIFEST).write_text(json.dumps(listing, sort_keys=True), encoding="utf-8")
    return target


def fingerprint(uri: str | os.PathLike) -> str:
    """A cheap version stamp of a dataset root: changes when any file is added, removed or rewritten.

    Built from a listing, never from contents: relative path, size and mtime of
    each local file, or key, size and ETag of each S3 object. KFP's cache key
    sees parameters, not the data behind a URI; passing this stamp to
    ``prepare`` makes changed data a cache miss (a touched but unchanged file
    costs one needless re-run, never a stale result).
    """
    h = hashlib.sha256()
    if is_s3(uri):
        listing = _objects(str(uri).rstrip("/"))
        for rel in sorted(listing):
            h.update(f"{rel}\0{listing[rel]['size']}\0{listing[rel]['etag']}\n".encode())
        n = len(listing)
    else:
        root = Path(uri)
        if not root.is_dir():
            raise DocsortError("dataset folder not found", file=str(root))
        n = 0
        for p in sorted(root.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(
                    f"{p.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
                )
                n += 1
    if n == 0:
        raise DocsortError("no files under the dataset root", file=str(uri))
    return f"{n}-{h.hexdigest()[:24]}"


def upload_dir(
    local: str | os.PathLike, uri: str, *, workers: int = 8, exclude: Sequence[str] = ()
) -> list[str]:
    """Copy every file under the folder ``local`` to the prefix ``uri`` (each object atomically),
    except those under the top-level folders named in ``exclude``."""
    root = Path(local)
    if not root.is_dir():
        raise DocsortError("folder not found", file=str(root))
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in exclude
    )
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(
            pool.map(lambda p: upload_file(p, join(uri, p.relative_to(root).as_posix())), files)
        )
