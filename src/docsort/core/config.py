"""Hydra configuration: config groups in ``docsort/conf`` composed with overrides.

Every stage takes a list of Hydra-style overrides (``model=convnext_nano
train.epochs=3``), composes them with the packaged defaults through the compose
API (no working-directory changes, no ``@hydra.main``), checks the result
against one declarative schema (:class:`Config`: type and range of every key)
before any work starts, and records the resolved config next to its outputs.

The schema also says which keys are part of a run's identity (what ``train``
records in ``run.json`` and compares on a re-run, see :mod:`docsort.core.identity`):
every key counts unless it is marked :data:`NOT_IDENTITY`, because it changes how
fast a run goes or what it logs, not what it computes (``threads``,
``train.num_workers``, ``tracking.*``, ...), or because it acts in ``prepare``
and is therefore covered by the prepared data's fingerprint (``data.num_folds``,
``data.group_column``, ...).
"""

import difflib
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from docsort.core.atomic import write_text_atomic
from docsort.core.choices import MERGES, VIEW_NAMES
from docsort.core.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp32", "fp16")
DEVICES = ("auto", "cpu", "cuda")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager", "cudagraphs")


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
    unknown = re.search(r"Could not override '([\w.-]+)'", first)
    if unknown:
        return ConfigError(_unknown_key(unknown[1]))
    return ConfigError(f"invalid override: {first}")


def _unknown_key(key: str) -> str:
    """``epochs`` -> "epochs is not a docsort setting; did you mean train.epochs?"."""
    keys = all_keys()
    last = {k.rsplit(".", 1)[-1]: k for k in keys}
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    close += [last[c] for c in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(last), n=3)]
    close = list(dict.fromkeys(close))[:3]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"invalid override: {key} is not a docsort setting{hint}"


def _model_problem(name: str) -> str:
    """Unknown ``model.name``: the closest timm names and packaged presets, not a random slice of timm."""
    import timm

    presets = group_options("model")
    close = difflib.get_close_matches(
        name, sorted(set(timm.list_models()) | set(presets)), n=8, cutoff=0.6
    )
    if close:
        hint = f"presets: model={'|'.join(presets)}; any name of timm.list_models() works"
        return f"is not valid; choose from: {', '.join(close)} ({hint})"
    return (
        f"is not valid; choose from the presets {', '.join(presets)} (model=NAME) "
        "or any name of timm.list_models()"
    )


def _show(value: object) -> str:
    """A value as it is written in an override (``true``, ``null``, ``[a,b]``, ``0.003``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


# --- the schema: constrained value types ------------------------------------------------------
#
# Each type is a validator that either returns the value or raises ``_bad(problem)``; the problem
# reads after ``key=value`` ("must be in [0, 1)"), so every refusal is one line naming the key,
# the value and what is allowed.


def _bad(problem: str, shown: object = ...) -> PydanticCustomError:
    return PydanticCustomError("docsort", "{problem}", {"problem": problem, "shown": shown})


def _interval(ge=None, gt=None, lt=None, le=None) -> str:
    if (ge is not None or gt is not None) and (lt is not None or le is not None):
        lo = f"[{ge}" if ge is not None else f"({gt}"
        hi = f"{lt})" if lt is not None else f"{le}]"
        return f"in {lo}, {hi}"
    for op, bound in ((">=", ge), (">", gt), ("<", lt), ("<=", le)):
        if bound is not None:
            return f"{op} {bound}"
    return ""


def _ranged(kind: type, what: str, ge=None, gt=None, lt=None, le=None):
    """A value of ``kind`` within the bounds: "must be an integer >= 1" when it is not a number
    of that kind, "must be >= 1" when it is one out of range."""
    rng = _interval(ge, gt, lt, le)
    wrong_type = f"must be {what}" + (f" {rng}" if rng else "")

    def check(v: Any) -> int | float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _bad(wrong_type)
        if kind is int and not float(v).is_integer():
            raise _bad(wrong_type)
        x = kind(v)
        if kind is float and not math.isfinite(x):
            raise _bad(wrong_type)
        low = (ge is not None and x < ge) or (gt is not None and x <= gt)
        if low or (lt is not None and x >= lt) or (le is not None and x > le):
            raise _bad(f"must be {rng}")
        return x

    return check


def Int(**bounds) -> Any:  # noqa: N802 - reads as a type in the schema
    """An integer within ``bounds`` (ge/gt/lt/le)."""
    return Annotated[int, PlainValidator(_ranged(int, "an integer", **bounds))]


def Num(**bounds) -> Any:  # noqa: N802
    """A finite number within ``bounds``."""
    return Annotated[float, PlainValidator(_ranged(float, "a number", **bounds))]


def Choice(*options: object) -> Any:  # noqa: N802
    """One of ``options`` (compared with their type: ``channels=1`` is not ``channels='1'``)."""
    problem = f"is not valid; choose from: {', '.join(_show(o) for o in options)}"

    def check(v: Any) -> Any:
        if any(v == o and type(v) is type(o) for o in options):
            return v
        raise _bad(problem)

    return Annotated[Any, PlainValidator(check)]


def _or(special: object, inner: Callable[[Any], Any]) -> Any:
    """``special`` (``auto``, ``null``) or what ``inner`` accepts: "must be >= 1 or auto"."""

    def check(v: Any) -> Any:
        if v == special and type(v) is type(special):
            return v
        try:
            return inner(v)
        except PydanticCustomError as err:
            raise _bad(f"{err.context['problem']} or {_show(special)}") from None

    return Annotated[Any, PlainValidator(check)]


def AutoOr(inner: Callable[[Any], Any]) -> Any:  # noqa: N802
    """``auto`` or what ``inner`` accepts."""
    return _or("auto", inner)


def Nullable(inner: Callable[[Any], Any]) -> Any:  # noqa: N802
    """``null`` or what ``inner`` accepts."""
    return _or(None, inner)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise _bad("must be true or false")


def _text(v: Any) -> str:
    if isinstance(v, str) and v.strip():
        return v
    raise _bad("must be a non-empty string")


def _model_name(v: Any) -> str:
    import timm

    if isinstance(v, str) and (timm.is_model(v) or v == "feature_probe"):
        return v
    raise _bad(_model_problem(str(v)))


def _pretrained(v: Any) -> Any:
    if v is None or isinstance(v, bool) or (isinstance(v, str) and v.strip()):
        return v
    raise _bad("must be null, true, a timm tag (resnet18.a1_in1k) or a .safetensors file")


def _compile(v: Any) -> Any:
    if isinstance(v, bool) or v is None or v in ("true", "false", "off", "none"):
        return v
    if v in COMPILE_BACKENDS:
        return v
    raise _bad(f"is not valid; choose from: false, true, {', '.join(COMPILE_BACKENDS)}")


def _views(v: Any) -> list[str]:
    if isinstance(v, str):
        raise _bad(f"must be a list, e.g. tta.views=[{v}]; views: {', '.join(VIEW_NAMES)}")
    if not isinstance(v, (list, tuple)) or not v:
        raise _bad(f"must be a non-empty list of views: {', '.join(VIEW_NAMES)}")
    for x in v:
        if x not in VIEW_NAMES:
            raise _bad(f"is not valid; choose from: {', '.join(VIEW_NAMES)}", shown=x)
    return list(v)


Bool = Annotated[bool, PlainValidator(_bool)]
Text = Annotated[str, PlainValidator(_text)]
Fraction = Num(ge=0, lt=1)


class NotIdentity:
    """Marks a key that does not change what a run computes, so a re-run may differ in it."""

    def __repr__(self) -> str:
        return "NOT_IDENTITY"


NOT_IDENTITY = NotIdentity()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    name: Annotated[str, PlainValidator(_model_name)]
    pretrained: Annotated[Any, PlainValidator(_pretrained)] = None
    drop_rate: Fraction = 0.0
    drop_path_rate: Fraction = 0.0
    # model=feature_probe only (docsort.models.feature_probe)
    backbone: Nullable(_text) = None
    layer_sets: dict[str, list[int]] | None = None
    C: list[float] | None = None
    cv_folds: Int(ge=2) = 3
    fit_views: Choice("all", "identity") = "all"
    layers: list[int] | None = None

    @model_validator(mode="after")
    def _probe_complete(self) -> "ModelConfig":
        if self.name == "feature_probe" and not (self.backbone and self.layer_sets and self.C):
            raise _bad("needs model.backbone, model.layer_sets and model.C", shown="feature_probe")
        return self


class TrainConfig(_Section):
    epochs: Int(ge=1)
    batch_size: Int(ge=1)
    optimizer: Choice("adamw", "sgd")
    lr: Num(gt=0)
    weight_decay: Num(ge=0)
    momentum: Num(ge=0, le=1)
    scheduler: Choice("onecycle", "cosine", "constant")
    warmup_epochs: Num(ge=0)
    label_smoothing: Fraction
    mixup_alpha: Num(ge=0)
    cutmix_alpha: Num(ge=0)
    balance: Choice("loss", "sampler", "none")
    grad_clip: Num(ge=0)
    ema_decay: Fraction
    progressive_start: Num(gt=0, le=1)
    progressive_until: Fraction
    early_stop_patience: Int(ge=0)
    num_workers: Annotated[AutoOr(_ranged(int, "an integer", ge=0)), NOT_IDENTITY]
    channels_last: Annotated[Bool, NOT_IDENTITY]  # memory layout only
    compile: Annotated[Annotated[Any, PlainValidator(_compile)], NOT_IDENTITY]  # speed only
    limit_batches: Nullable(_ranged(int, "an integer", ge=1))


class DataConfig(_Section):
    image_size: Int(ge=16)
    resize: Choice("pad", "stretch")
    channels: Choice(1, 3)
    # the keys below act in `prepare`: a run sees their effect through the data fingerprint
    num_folds: Annotated[Int(ge=2), NOT_IDENTITY]
    group_column: Annotated[Nullable(_text), NOT_IDENTITY]
    max_pixels: Annotated[Int(ge=1), NOT_IDENTITY]
    exclude_label_errors: Annotated[Bool, NOT_IDENTITY]
    correct_label_errors: Annotated[Bool, NOT_IDENTITY]


class AugraphyConfig(_Section):
    mode: Choice("off", "online", "offline")
    pipeline: Choice("doc", "full")
    copies: Int(ge=0)
    probability: Num(ge=0, le=1)


class AugConfig(_Section):
    dihedral: Bool
    preset: Choice("none", "light", "strong")
    augraphy: AugraphyConfig


class TTAConfig(_Section):
    views: Annotated[list[str], PlainValidator(_views)]
    merge: Choice(*MERGES)
    batch_size: Annotated[AutoOr(_ranged(int, "an integer", ge=1)), NOT_IDENTITY]
    workers: Annotated[AutoOr(_ranged(int, "an integer", ge=0)), NOT_IDENTITY]
    shard_size: Annotated[Int(ge=1), NOT_IDENTITY]


class OrientationConfig(_Section):
    model: Annotated[str, PlainValidator(_model_name)]
    image_size: Int(ge=32)
    epochs: Int(ge=1)
    batch_size: Int(ge=1)
    lr: Num(gt=0)
    weight_decay: Num(ge=0)
    holdout_fold: Nullable(_ranged(int, "an integer", ge=0))
    tta: Bool


class OCRConfig(_Section):
    engine: Choice("tesseract")
    languages: Text
    psm: Int(ge=0, le=13)
    oem: Int(ge=0, le=3)
    orientation: Choice("osd", "views", "none")
    select: Choice("all", "ambiguous")
    groups: list[list[str]]
    margin: Num(ge=0, le=1)
    workers: Annotated[AutoOr(_ranged(int, "an integer", ge=1)), NOT_IDENTITY]
    cache: Annotated[Nullable(_text), NOT_IDENTITY]


class TrackingConfig(_Section):
    wandb: Annotated[Choice("auto", "offline", "online", "disabled"), NOT_IDENTITY]
    project: Annotated[Text, NOT_IDENTITY]
    group: Annotated[Nullable(_text), NOT_IDENTITY] = None


class Config(_Section):
    """docsort's root config: every key, its type and range, and whether it is part of identity."""

    seed: Int(ge=0, lt=2**32)
    fold: Any  # checked against data.num_folds below
    data: DataConfig
    precision: Choice(*PRECISIONS)
    device: Annotated[Choice(*DEVICES), NOT_IDENTITY]
    threads: Annotated[Nullable(_ranged(int, "an integer", ge=1)), NOT_IDENTITY]
    runtime: Annotated[Choice("torch", "onnx"), NOT_IDENTITY]  # predict's engine
    tta: TTAConfig
    tracking: Annotated[TrackingConfig, NOT_IDENTITY]
    model: ModelConfig
    train: TrainConfig
    aug: AugConfig
    # `docsort orientation` and `predict --orientation` record these in their own run.json
    orientation: Annotated[OrientationConfig, NOT_IDENTITY]
    # `docsort ocr` records these in its own ocr.json (and the cache keys on the engine settings)
    ocr: Annotated[OCRConfig, NOT_IDENTITY]

    @model_validator(mode="after")
    def _fold_in_range(self) -> "Config":
        k = self.data.num_folds
        f = self.fold
        if f in ("all", "none") or (type(f) is int and 0 <= f < k):
            return self
        raise _bad(f"is not valid; choose from: {', '.join(map(str, range(k)))}, all, none")


def _error_line(err: dict, data: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "fold"
    if err["type"] == "docsort":
        if not loc:  # the model validator: the fold
            return f"fold={data.get('fold')!r} {err['ctx']['problem']}"
        shown = err["ctx"].get("shown", ...)
        value = err["input"] if shown is ... else shown
        return f"{key}={value!r} {err['ctx']['problem']}"
    if err["type"] == "extra_forbidden":
        return _unknown_key(key)
    if err["type"] == "missing":
        return f"{key} is missing from the config"
    return f"{key}={err.get('input')!r} is not valid: {err['msg']}"


def _keys(model: type[BaseModel], prefix: str, *, identity_only: bool) -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if identity_only and any(m is NOT_IDENTITY for m in field.metadata):
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _keys(ann, f"{prefix}{name}.", identity_only=identity_only)
        else:
            keys.append(f"{prefix}{name}")
    return keys


def all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the schema."""
    return _keys(model, prefix, identity_only=False)


def validate_config(cfg: DictConfig) -> None:
    """Fail fast, before any work, on values that would fail later (naming the key, the value
    and what is allowed), and on ``device=cuda`` where there is no CUDA device."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid config: {str(err).splitlines()[0]}") from None
    assert isinstance(data, dict)
    try:
        Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_error_line(err.errors()[0], data)) from None
    from docsort.core.device import check_device

    check_device(str(cfg.device))


def identity_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Dotted keys that are part of a run's identity (every key not marked NOT_IDENTITY)."""
    return _keys(model, prefix, identity_only=True)


def identity_of(cfg: DictConfig) -> dict[str, str]:
    """The identity keys of ``cfg`` with their values as overrides write them."""
    data = OmegaConf.to_container(cfg, resolve=True)
    out = {}
    for key in identity_keys():
        v: Any = data
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        out[key] = _show(v)
    return out


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: str | os.PathLike) -> Path:
    """Record the resolved config beside a stage's outputs."""
    return write_text_atomic(path, to_yaml(cfg))


# --- what a person can look at: the resolved config and the packaged presets -----------------

#: How a preset of a config folder that is not a Hydra group is chosen.
_CHOSEN_BY = {"hpo": "docsort sweep --space NAME", "k8s": "--k8s-profile NAME"}


@dataclass(frozen=True)
class ConfigGroup:
    """A folder of presets under ``docsort/conf``: its options, its default, how to pick one."""

    name: str
    options: tuple[str, ...]
    default: str | None
    descriptions: dict[str, str]
    chosen_by: str


def config_sections(cfg: DictConfig) -> list[str]:
    """The top-level keys of ``cfg`` that hold a mapping (``data``, ``train``, ``model``, ...)."""
    return [str(k) for k, v in cfg.items() if isinstance(v, DictConfig)]


def config_text(overrides: Sequence[str] = (), *, section: str | None = None) -> str:
    """The resolved, validated config the stages would use for ``overrides`` (or one section
    of it), as YAML: what ``train`` records beside its outputs, before any work is done."""
    cfg = load_config(overrides)
    if section is None:
        return to_yaml(cfg)
    sections = config_sections(cfg)
    if section not in sections:
        raise ConfigError(
            f"--section {section!r} is not a config section; choose from: "
            + ", ".join(_close_first(section, sections))
        )
    return to_yaml(cfg[section])


def _root_defaults() -> dict[str, str | None]:
    """``group -> option`` of the root config's defaults list (``experiment: null`` -> None)."""
    text = resources.files("docsort.conf").joinpath("config.yaml").read_text("utf-8")
    entries = OmegaConf.to_container(OmegaConf.create(text)).get("defaults", [])
    return {k: v for e in entries if isinstance(e, dict) for k, v in e.items()}


def _description(text: str) -> str:
    """The first sentence of a YAML file's leading ``#`` comment ("" when it has none)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        if body.startswith("@package"):
            continue
        if not body:
            if lines:
                break
            continue
        lines.append(body)
    para = " ".join(lines)
    m = re.match(r"(.+?\.)(\s|$)", para)
    return m[1] if m else para


def config_groups() -> list[ConfigGroup]:
    """Every folder of presets under ``docsort/conf``, the root config's groups first, each with
    its options, its default (the root defaults list; ``default`` for hpo and k8s) and the
    first sentence of each preset's leading comment."""
    root = resources.files("docsort.conf")
    defaults = _root_defaults()
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and group_options(p.name))
    order = [g for g in defaults if g in folders] + [g for g in folders if g not in defaults]
    groups = []
    for name in order:
        options = tuple(group_options(name))
        default = defaults.get(name, "default" if "default" in options else None)
        texts = {o: root.joinpath(name, f"{o}.yaml").read_text("utf-8") for o in options}
        groups.append(
            ConfigGroup(
                name=name,
                options=options,
                default=default,
                descriptions={o: _description(t) for o, t in texts.items()},
                chosen_by=_CHOSEN_BY.get(name, f"{name}=NAME"),
            )
        )
    return groups
