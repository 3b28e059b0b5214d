"""Put a candidate spec and the member models it names where cluster pods can read them.

A spec written by ``docsort ensemble`` names its members' models by local
path; the nightly submission pipeline runs in pods that see only S3. Uploading
copies each member to ``<dest>/members/<name>/`` and writes
``<dest>/candidate.yaml`` naming those URIs, so the pipeline's ``candidates``
parameter is just ``<dest>/candidate.yaml``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from docsort.core import storage
from docsort.core.errors import DocsortError


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def upload_candidate(spec: str | os.PathLike, dest: str) -> str:
    """Upload ``spec`` and its local member models under the prefix ``dest``; returns the new spec's URI.

    Members already on S3 keep their URIs. Nothing at ``dest`` is overwritten: an
    existing ``candidate.yaml`` or member folder there is refused before anything is
    copied (choose a new prefix per candidate version).
    """
    import yaml

    from docsort.ensemble.combiners import load_spec, spec_folder

    target = storage.join(dest, "candidate.yaml")
    with tempfile.TemporaryDirectory(prefix="docsort-upload-") as work:
        local = Path(work) / "candidate.yaml"
        local.write_bytes(storage.read_bytes(spec))
        parsed = load_spec(local, base=spec_folder(spec))  # relative members: beside the spec
        if storage.exists(target):
            raise DocsortError("already exists; upload to a new prefix", file=target)
        plan: list[tuple[Path, str]] = []
        for m in parsed.members:
            if storage.is_s3(m.model):
                continue
            src = Path(m.model)
            if not src.exists():
                raise DocsortError("member model not found", file=m.model)
            uri = storage.join(dest, "members", _slug(m.name))
            if storage.exists(uri):
                raise DocsortError("already exists; upload to a new prefix", file=uri)
            plan.append((src, uri))
            m.model = uri if src.is_dir() else storage.join(uri, src.name)
        for src, uri in plan:
            if src.is_dir():
                storage.upload_dir(src, uri)
            else:
                storage.upload_file(src, storage.join(uri, src.name))
        parsed.validate()
        text = yaml.safe_dump(parsed.to_dict(), sort_keys=False, default_flow_style=None, width=100)
        storage.write_bytes_new(target, text.encode("utf-8"))  # last: a visible spec is complete
    return target
