"""Container image names: one setting for the registry and the tag.

``settings()`` resolves them, in order, from the ``docsort compile/submit
--image-registry/--image-tag`` options, ``$DOCSORT_IMAGE_REGISTRY`` /
``$DOCSORT_IMAGE_TAG``, then ``conf/images.yaml``. Everything that names a docsort
image goes through it: the compiled pipelines' executors (:func:`pin_images`),
the Katib trial template (``docsort.sweep.katib``, inside the sweep task, which gets
the same two env variables) and the prepull DaemonSets (skaffold rewrites
``docsort-cpu``/``docsort-gpu`` with ``--default-repo=<registry>``, so
``<registry>/docsort-cpu:<tag>`` is the name both sides use).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from docsort.core.errors import ConfigError

REGISTRY_ENV = "DOCSORT_IMAGE_REGISTRY"
TAG_ENV = "DOCSORT_IMAGE_TAG"
# A registry host (optionally :port) and path, as in <registry>/<name>:<tag> (no scheme, no tag).
_REGISTRY = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(\.[a-z0-9-]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # the OCI distribution spec's tag


@dataclass(frozen=True)
class ImageSettings:
    """Where docsort's images live: ``<registry>/<name>:<tag>``."""

    registry: str
    tag: str


@cache
def _spec() -> dict:
    text = resources.files("docsort").joinpath("conf/images.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def names() -> dict[str, str]:
    """Variant -> image name without registry and tag (``cpu`` -> ``docsort-cpu``)."""
    return dict(_spec()["images"])


def settings(registry: str | None = None, tag: str | None = None) -> ImageSettings:
    """Registry and tag: the arguments, else the env variables, else ``conf/images.yaml``."""
    spec = _spec()
    reg = registry or os.environ.get(REGISTRY_ENV) or spec["registry"]
    tg = tag or os.environ.get(TAG_ENV) or str(spec["tag"])
    reg = reg.rstrip("/")
    if not _REGISTRY.match(reg):
        raise ConfigError(
            f"image registry {reg!r} is not a registry path like ghcr.io/docsort or "
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com (no scheme, no tag)"
        )
    if not _TAG.match(tg):
        raise ConfigError(f"image tag {tg!r} is not a valid tag (letters, digits, _ . -)")
    return ImageSettings(reg, tg)


def image(variant: str = "cpu", registry: str | None = None, tag: str | None = None) -> str:
    """Full image reference for ``variant`` (``cpu`` or ``gpu``), e.g. ``ghcr.io/docsort/docsort-cpu:0.1.0``."""
    known = names()
    if variant not in known:
        raise ValueError(f"unknown image variant {variant!r}; choose from {sorted(known)}")
    s = settings(registry, tag)
    return f"{s.registry}/{known[variant]}:{s.tag}"


@contextlib.contextmanager
def use_images(registry: str | None = None, tag: str | None = None) -> Iterator[ImageSettings]:
    """Inside the block, ``settings()`` answers ``registry``/``tag`` (given ones win over the env).

    Compiling runs the pipeline file, whose tasks read the setting (the sweep task
    passes it on to the Katib trials), so it must be in place before that.
    """
    chosen = settings(registry, tag)
    old = {k: os.environ.get(k) for k in (REGISTRY_ENV, TAG_ENV)}
    os.environ[REGISTRY_ENV], os.environ[TAG_ENV] = chosen.registry, chosen.tag
    try:
        yield chosen
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def variant_of(ref: str) -> str | None:
    """``cpu``/``gpu`` when ``ref`` names a docsort image (any registry, any tag), else None."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    repo = last.split(":", 1)[0]
    return next((v for v, n in names().items() if n == repo), None)


def pin_images(deployment_spec: MutableMapping[str, Any], chosen: ImageSettings) -> int:
    """Point every docsort executor image of a compiled pipeline at ``chosen``; returns how many.

    KFP fixes a component's base image when the component module is imported,
    which may be before the setting was chosen; this rewrites the compiled IR's
    ``deploymentSpec.executors.*.container.image`` instead, so the setting always
    wins. Works on the YAML dict and on the protobuf Struct alike. Images that
    are not docsort's are left alone.
    """
    count = 0
    if "executors" not in deployment_spec:  # a protobuf Struct has no .get()
        return 0
    executors = deployment_spec["executors"]
    for label in list(executors.keys()):
        executor = executors[label]
        if "container" not in executor:
            continue
        container = executor["container"]
        variant = variant_of(str(container["image"])) if "image" in container else None
        if variant:
            container["image"] = image(variant, chosen.registry, chosen.tag)
            count += 1
    return count
