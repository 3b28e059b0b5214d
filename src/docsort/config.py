"""Hydra configuration: config groups in ``docsort/conf`` composed with overrides.

Every stage takes a list of Hydra-style overrides (``model=convnext_nano
train.epochs=3``), composes them with the packaged defaults through the compose
API (no working-directory changes, no ``@hydra.main``), validates the result
before any work starts, and records the resolved config next to its outputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
        raise ConfigError(f"invalid override: {str(err).splitlines()[0]}") from None
    finally:
        GlobalHydra.instance().clear()
    if validate:
        validate_config(cfg)
    return cfg


def _choices(what: str, value: object, valid: Sequence[object]) -> ConfigError:
    return ConfigError(f"{what}={value!r} is not valid; choose from: {', '.join(map(str, valid))}")


def validate_config(cfg: DictConfig) -> None:
    """Fail fast, before any work, on values that would fail later (listing valid choices)."""
    import timm

    name = cfg.model.name
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:12]
        raise _choices("model.name", name, close or ["resnet18", "convnext_nano", "efficientnet_b0"])
    t = cfg.train
    if int(t.epochs) < 1:
        raise ConfigError(f"train.epochs={t.epochs} must be >= 1")
    if int(t.batch_size) < 1:
        raise ConfigError(f"train.batch_size={t.batch_size} must be >= 1")
    if float(t.lr) <= 0:
        raise ConfigError(f"train.lr={t.lr} must be > 0")
    for key, valid in (
        ("optimizer", ("adamw", "sgd")),
        ("scheduler", ("onecycle", "cosine", "constant")),
        ("balance", ("loss", "sampler", "none")),
    ):
        if t[key] not in valid:
            raise _choices(f"train.{key}", t[key], valid)
    d = cfg.data
    if int(d.image_size) < 16:
        raise ConfigError(f"data.image_size={d.image_size} must be >= 16")
    if d.resize not in ("pad", "stretch"):
        raise _choices("data.resize", d.resize, ("pad", "stretch"))
    if int(d.channels) not in (1, 3):
        raise _choices("data.channels", d.channels, (1, 3))
    if int(d.num_folds) < 2:
        raise ConfigError(f"data.num_folds={d.num_folds} must be >= 2")
    if cfg.precision not in PRECISIONS:
        raise _choices("precision", cfg.precision, PRECISIONS)
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise _choices("device", cfg.device, ("auto", "cpu", "cuda"))
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
    if cfg.tracking.wandb not in ("offline", "online", "disabled"):
        raise _choices("tracking.wandb", cfg.tracking.wandb, ("offline", "online", "disabled"))


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
