"""Container image names, read from ``conf/images.yaml`` (the single source of truth)."""

from __future__ import annotations

import os
from functools import cache
from importlib import resources

import yaml


@cache
def _spec() -> dict:
    text = resources.files("docsort").joinpath("conf/images.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def image(variant: str = "cpu") -> str:
    """Full image reference for ``variant`` (``cpu`` or ``gpu``).

    ``DOCSORT_IMAGE_REGISTRY`` / ``DOCSORT_IMAGE_TAG`` override the registry and
    tag at compile time, e.g. for a private registry on an air-gapped cluster.
    """
    spec = _spec()
    if variant not in spec["images"]:
        raise ValueError(f"unknown image variant {variant!r}; choose from {sorted(spec['images'])}")
    registry = os.environ.get("DOCSORT_IMAGE_REGISTRY", spec["registry"])
    tag = os.environ.get("DOCSORT_IMAGE_TAG", spec["tag"])
    return f"{registry}/{spec['images'][variant]}:{tag}"
