"""Hydra configuration: config groups in ``docsort/conf`` composed with overrides.

Every stage takes a list of Hydra-style overrides (``model=convnext_nano
train.epochs=3``), composes them with the packaged defaults through the compose
API (no working-directory changes, no ``@hydra.main``), validates the result
before any work starts, and records the resolved config next to its outputs.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from docsort.atomic import write_text_atomic
from docsort.errors import ConfigError

VIEW_NAMES = (
    "identity", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270",
)  # fmt: skip
PRECISIONS = ("auto", "bf16", "fp32", "fp16")
MERGES = ("mean", "geomean", "logits")


def load_config(overrides: Sequence[str] = (), *, validate: bool = True) -> DictConfig:
    """Compose the root config with ``overrides`` and validate it."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="docsort.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise _override_error(err) from None
    finally:
        GlobalHydra.instance().clear()
    if validate:
        validate_config(cfg)
    return cfg


def _choices(what: str, value: object, valid: Sequence[object]) -> ConfigError:
    return ConfigError(f"{what}={value!r} is not valid; choose from: {', '.join(map(str, valid))}")


def group_options(group: str) -> list[str]:
    """Names of the packaged presets of a config group (``model`` -> resnet18, convnext_nano, ...)."""
    folder = resources.files("docsort.conf").joinpath(group)
    if not folder.is_dir():
        return []
    return sorted(
        f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml")
    )


def _close_first(value: str, options: Sequence[str], n: int = 8) -> list[str]:
    close = difflib.get_close_matches(value, options, n=n, cutoff=0.5)
    return close + [o for o in options if o not in close]


def _override_error(err: Exception) -> ConfigError:
    first = str(err).splitlines()[0]
    m = re.search(r"Could not find '([\w/-]+)/([^'/]*)'", first)
    options = group_options(m[1]) if m else []
    if m and options:
        return _choices(m[1], m[2], _close_first(m[2], options))
    return ConfigError(f"invalid override: {first}")


def _model_error(name: str) -> ConfigError:
    """Unknown ``model.name``: the closest timm names and packaged presets, not a random slice of timm."""
    import timm

    presets = group_options("model")
    close = difflib.get_close_matches(
        name, sorted(set(timm.list_models()) | set(presets)), n=8, cutoff=0.6
    )
    if close:
        hint = f"presets: model={'|'.join(presets)}; any name of timm.list_models() works"
        return ConfigError(
            f"model.name={name!r} is not valid; choose from: {', '.join(close)} ({hint})"
        )
    return ConfigError(
        f"model.name={name!r} is not valid; choose from the presets {', '.join(presets)} (model=NAME) "
        "or any name of timm.list_models()"
    )


def _number(key: str, value: object, kind: type = int) -> int | float:
    try:
        if isinstance(value, bool) or (
            kind is int and isinstance(value, float) and not value.is_integer()
        ):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{key}={value!r} must be {'an integer' if kind is int else 'a number'}"
        ) from None


def validate_config(cfg: DictConfig) -> None:
    """Fail fast, before any work, on values that would fail later (listing valid choices)."""
    import timm

    name = cfg.model.name
    if not isinstance(name, str) or not timm.is_model(name):
        raise _model_error(str(name))
    t = cfg.train
    if _number("train.epochs", t.epochs) < 1:
        raise ConfigError(f"train.epochs={t.epochs} must be >= 1")
    if _number("train.batch_size", t.batch_size) < 1:
        raise ConfigError(f"train.batch_size={t.batch_size} must be >= 1")
    if _number("train.lr", t.lr, float) <= 0:
        raise ConfigError(f"train.lr={t.lr} must be > 0")
    for key, valid in (
        ("optimizer", ("adamw", "sgd")),
        ("scheduler", ("onecycle", "cosine", "constant")),
        ("balance", ("loss", "sampler", "none")),
    ):
        if t[key] not in valid:
            raise _choices(f"train.{key}", t[key], valid)
    d = cfg.data
    if _number("data.image_size", d.image_size) < 16:
        raise ConfigError(f"data.image_size={d.image_size} must be >= 16")
    if _number("data.max_pixels", d.max_pixels) < 1:
        raise ConfigError(f"data.max_pixels={d.max_pixels} must be >= 1")
    if d.resize not in ("pad", "stretch"):
        raise _choices("data.resize", d.resize, ("pad", "stretch"))
    if _number("data.channels", d.channels) not in (1, 3):
        raise _choices("data.channels", d.channels, (1, 3))
    if _number("data.num_folds", d.num_folds) < 2:
        raise ConfigError(f"data.num_folds={d.num_folds} must be >= 2")
    if cfg.precision not in PRECISIONS:
        raise _choices("precision", cfg.precision, PRECISIONS)
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise _choices("device", cfg.device, ("auto", "cpu", "cuda"))
    if isinstance(cfg.tta.views, str):
        raise ConfigError(
            f"tta.views={cfg.tta.views!r} must be a list, e.g. tta.views=[{cfg.tta.views}]; views: {', '.join(VIEW_NAMES)}"
        )
    bad = [v for v in cfg.tta.views if v not in VIEW_NAMES]
    if bad or not cfg.tta.views:
        raise _choices("tta.views", bad[0] if bad else [], VIEW_NAMES)
    if cfg.tta.merge not in MERGES:
        raise _choices("tta.merge", cfg.tta.merge, MERGES)
    if cfg.aug.preset not in ("none", "light", "strong"):
        raise _choices("aug.preset", cfg.aug.preset, ("none", "light", "strong"))
    if cfg.aug.augraphy.mode not in ("off", "online", "offline"):
        raise _choices("aug.augraphy.mode", cfg.aug.augraphy.mode, ("off", "online", "offline"))
    fold = cfg.fold
    if not (str(fold) in ("all", "none") or (isinstance(fold, int) and 0 <= fold < d.num_folds)):
        raise _choices("fold", fold, [*range(int(d.num_folds)), "all", "none"])
    if cfg.tracking.wandb not in ("auto", "offline", "online", "disabled"):
        raise _choices(
            "tracking.wandb", cfg.tracking.wandb, ("auto", "offline", "online", "disabled")
        )


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: str | os.PathLike) -> Path:
    """Record the resolved config beside a stage's outputs."""
    return write_text_atomic(path, to_yaml(cfg))


def config_from_yaml(path: str | os.PathLike) -> DictConfig:
    """Read back a config saved by :func:`save_config`."""
    cfg = OmegaConf.load(Path(path))
    assert isinstance(cfg, DictConfig)
    return cfg
