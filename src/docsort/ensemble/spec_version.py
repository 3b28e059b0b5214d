"""A version stamp of candidate specs and the member models they name.

The nightly submission pipeline is keyed on it (with the data version): KFP's
cache key sees a spec's path, not what is behind it, so without this stamp an
edited spec or a retrained model at the same path would be served the old
predictions, and without any stamp nothing could be cached at all.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from docsort.core import storage
from docsort.core.errors import DocsortError


def _model_stamp(model: str) -> str:
    """Listing stamp of a member's model: names, sizes, mtimes (S3: ETags), like the data's."""
    if storage.is_s3(model):
        return storage.fingerprint(model)
    path = Path(model)
    if path.is_dir():
        return storage.fingerprint(path)
    if path.is_file():
        st = path.stat()
        return f"1-{st.st_size}-{st.st_mtime_ns}"
    raise DocsortError("member model not found", file=model)


def spec_version(specs: Sequence[str | os.PathLike]) -> str:
    """Changes when any spec's bytes or any member model it names changes (order counts).

    Specs are hashed by content (they are small); models by their file
    listing, so a stamp never downloads a model.
    """
    from docsort.ensemble.combiners import load_spec, spec_folder

    if not specs:
        raise DocsortError("no candidate specs given")
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="docsort-spec-version-") as work:
        for i, spec in enumerate(specs):
            data = storage.read_bytes(spec)
            local = Path(work) / f"{i}.yaml"
            local.write_bytes(data)
            parsed = load_spec(local if storage.is_s3(spec) else spec, base=spec_folder(spec))
            h.update(f"spec\0{spec}\0{hashlib.sha256(data).hexdigest()}\n".encode())
            for member in parsed.members:
                stamp = _model_stamp(member.model)
                h.update(f"member\0{member.model}\0{stamp}\n".encode())
    return f"{len(specs)}-{h.hexdigest()[:24]}"
