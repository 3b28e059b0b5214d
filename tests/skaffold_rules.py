"""skaffold's image-name rules, ported so tests can check what skaffold will push and deploy.

- ``default_repo``: ``SubstituteDefaultRepoIntoImage`` in GoogleContainerTools/skaffold
  ``pkg/skaffold/docker/default_repo.go`` (v2): a name that already starts with the
  default repo stays; on registries with multi-level repos (``gcr.io``,
  ``-docker.pkg.dev``) the name is appended (a shared project prefix is dropped);
  elsewhere ``/ . _ : @`` in the name become ``_`` and the result is
  ``<default-repo>/<escaped name>``, cut at 255 characters. Tag and digest are kept.
- ``replaced_by``: skaffold's manifest image replacement
  (``pkg/skaffold/kubernetes/manifest/images.go`` ``imageReplacer``) rewrites a manifest
  image whose name without tag/digest equals an artifact's ``image``; images pinned by
  digest are left alone.
"""

from __future__ import annotations

import re

_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?"  # docker/distribution reference.DomainRegexp
_PREFIX = re.compile(rf"^{_DOMAIN}/[a-z][a-z0-9-]{{4,28}}[a-z0-9]/?")  # + gcpProjectIDRegex
_ESCAPE = re.compile(r"[/._:@]")
MAX_LENGTH = 255


def parse(image: str) -> tuple[str, str, str]:
    """``name[:tag][@digest]`` -> (name, tag, digest); a ``:`` in the registry host is no tag."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    else:
        tag = ""
    return name, tag, digest


def _replace(default: str, base: str) -> str:
    if base.startswith(default):
        return base
    m_orig, m_def = _PREFIX.match(base), _PREFIX.match(default)
    original_prefix = m_orig.group(0) if m_orig else ""
    default_prefix = m_def.group(0) if m_def else ""
    if "gcr.io" in default_prefix or "-docker.pkg.dev" in default_prefix:
        if original_prefix == default_prefix:
            return default + "/" + base[len(original_prefix) :]
        return (default + "/" + base)[:MAX_LENGTH]
    return (default + "/" + _ESCAPE.sub("_", base))[:MAX_LENGTH]


def default_repo(default: str, image: str) -> str:
    """The name skaffold builds, pushes and deploys for artifact ``image`` under ``default``."""
    if not default:
        return image
    name, tag, digest = parse(image)
    out = _replace(default, name)
    if tag:
        out += ":" + tag
    if digest:
        out += "@" + digest
    return out


def replaced_by(manifest_image: str, artifact_names: set[str]) -> str | None:
    """The artifact whose build replaces ``manifest_image`` in a deployed manifest, if any."""
    name, _, digest = parse(manifest_image)
    if digest:
        return None
    return name if name in artifact_names else None
