"""Models: timm backbones by name, weights in safetensors, never unpickled.

A trained member is a folder with ``model.safetensors`` (weights) and
``model.yaml`` (the resolved config, class names, architecture), so it can be
rebuilt anywhere without the training code's pickles.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from docsort.core import storage
from docsort.core.atomic import atomic_path, write_text_atomic
from docsort.core.errors import ConfigError, DocsortError


def create_model(cfg: DictConfig, num_classes: int) -> torch.nn.Module:
    """Build ``cfg.model.name`` for ``num_classes`` and load ``cfg.model.pretrained`` if set.

    ``pretrained`` may be a timm hub name (clusters with internet), or a local
    or ``s3://`` safetensors file (air-gapped clusters). A classifier head whose
    shape differs from the new task is left freshly initialised.
    """
    m = cfg.model
    from docsort.models import feature_probe as probe

    if str(m.name) == probe.NAME:
        if not m.get("layers"):
            raise ConfigError(
                "model=feature_probe is built by docsort train (model.layers is unset)"
            )
        with tempfile.TemporaryDirectory() as tmp:
            net = probe.load_backbone(probe.backbone_file(m.backbone, Path(tmp)))
        return probe.FeatureProbe(net, list(m.layers), num_classes, int(cfg.data.channels))
    kwargs = dict(
        num_classes=num_classes,
        in_chans=int(cfg.data.channels),
        drop_rate=float(m.get("drop_rate", 0.0)),
        drop_path_rate=float(m.get("drop_path_rate", 0.0)),
    )
    src = m.get("pretrained")
    if src and not _is_weights_file(str(src)):
        # a timm hub name: `true` (timm's default tag), `<model.name>` or `<model.name>.<tag>`;
        # the architecture must stay model.name, since load_member rebuilds that name
        hub = str(m.name) if src is True or str(src).lower() == "true" else str(src)
        if hub.split(".")[0] != str(m.name):
            raise ConfigError(
                f"model.pretrained={src} is not a tag of model.name={m.name}; use {m.name}.<tag>, true, or a .safetensors file"
            )
        return timm.create_model(
            hub, pretrained=True, **kwargs
        )  # downloads (HF hub); in_chans is adapted by timm
    model = timm.create_model(m.name, pretrained=False, **kwargs)
    if src:
        load_pretrained(model, str(src))
    return model


def load_safetensors(
    path: str | os.PathLike, *, name: str | None = None
) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; anything else (a pickle renamed, a torn file) is refused in one line."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise DocsortError(
            f"not a valid safetensors file ({err}); pickled checkpoints are never loaded",
            file=name or str(path),
        ) from None


def _is_weights_file(src: str) -> bool:
    return (
        storage.is_s3(src)
        or src.endswith(".safetensors")
        or os.path.sep in src
        or Path(src).exists()
    )


def load_pretrained(model: torch.nn.Module, src: str) -> list[str]:
    """Load matching tensors from a safetensors file; returns the keys left as initialised."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(src)
        if storage.is_s3(src):
            path = Path(tmp) / "weights.safetensors"
            path.write_bytes(storage.read_bytes(src))
        if not path.is_file():
            raise DocsortError("pretrained weights not found", file=src)
        if path.suffix != ".safetensors":
            raise DocsortError(
                "pretrained weights must be a .safetensors file (pickles are not loaded)", file=src
            )
        state = load_safetensors(path, name=src)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if own and not usable:
        raise DocsortError(f"no tensor in the file matches {type(model).__name__}", file=src)
    in_key = next(iter(own))
    theirs = state.get(in_key)
    if (
        theirs is not None
        and theirs.dim() == 4
        and theirs.shape != own[in_key].shape
        and theirs.shape[0] == own[in_key].shape[0]
    ):
        # stem with another channel count (RGB weights -> grayscale model): adapted as timm does
        from timm.models import adapt_input_conv

        usable[in_key] = adapt_input_conv(own[in_key].shape[1], theirs)
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


@dataclass
class Member:
    """A trained model ready for inference."""

    model: torch.nn.Module
    cfg: DictConfig
    class_names: list[str]
    path: Path


def save_member(
    folder: Path, model: torch.nn.Module, cfg: DictConfig, class_names: list[str], **info
) -> Path:
    """Write ``model.safetensors`` + ``model.yaml`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"arch": str(cfg.model.name)})
    doc = {"arch": str(cfg.model.name), "class_names": list(class_names), **info,
           "config": OmegaConf.to_container(cfg, resolve=True)}  # fmt: skip
    write_text_atomic(folder / "model.yaml", OmegaConf.to_yaml(OmegaConf.create(doc)))
    return folder


def load_member(folder: str | os.PathLike) -> Member:
    """Rebuild a member from its folder (safetensors only)."""
    folder = Path(folder)
    if not (folder / "model.safetensors").is_file() or not (folder / "model.yaml").is_file():
        raise DocsortError(
            "not a model folder (needs model.safetensors and model.yaml)", file=str(folder)
        )
    try:
        doc = OmegaConf.load(
            folder / "model.yaml"
        )  # OmegaConf's loader is a yaml.SafeLoader: no python tags
        cfg = doc.config
    except Exception as err:  # noqa: BLE001 - any YAML/structure problem of an untrusted file is bad input
        raise DocsortError(
            f"unreadable model.yaml ({type(err).__name__}: {(str(err).splitlines() or [''])[0]})",
            file=str(folder),
        ) from None
    cfg.model.pretrained = None
    from docsort.models import feature_probe as probe

    if cfg.model.name == probe.NAME:  # the graph its weights fit travels with the member
        cfg.model.backbone = str(folder / probe.BACKBONE_FILE)
    model = create_model(cfg, len(doc.class_names))
    state = load_safetensors(folder / "model.safetensors")
    problem = state_mismatch(model.state_dict(), state)
    if problem:
        raise DocsortError(
            f"model.safetensors does not fit arch {cfg.model.name} of model.yaml ({problem})",
            file=str(folder),
        )
    model.load_state_dict(state)
    model.eval()
    return Member(model, cfg, list(doc.class_names), folder)


def state_mismatch(own: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``theirs`` from loading into a model whose state is ``own`` (None: it fits)."""
    missing = [k for k in own if k not in theirs]
    extra = [k for k in theirs if k not in own]
    shapes = [k for k in own if k in theirs and tuple(own[k].shape) != tuple(theirs[k].shape)]
    if shapes:
        k = shapes[0]
        return (
            f"{len(shapes)} tensors differ in shape, e.g. {k}: {list(theirs[k].shape)} in the file, "
            f"{list(own[k].shape)} in the model"
        )
    if missing or extra:
        k = (missing or extra)[0]
        return f"{len(missing)} tensors missing and {len(extra)} unexpected, e.g. {k}"
    return None


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A training checkpoint loaded with ``weights_only=True`` (tensors and plain values only).

    A pickle that needs more (code, arbitrary objects) or a torn or foreign file
    is refused in one line; torch's own text, which suggests loading unsafely, is
    never shown.
    """
    import warnings

    again = "use --overwrite to start again, or another --out"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - whatever an untrusted file makes torch raise is bad input
        # torch's weights-only unpickler names the class or function it blocked ("GLOBAL ...")
        code = type(err).__name__ == "UnpicklingError" and "global" in str(err).lower()
        problem = (
            "checkpoint refers to code or objects other than tensors and plain values, "
            "which docsort never loads"
            if code
            else "not a checkpoint docsort can read (torn, corrupt, or a pickle of more than "
            "tensors and plain values)"
        )
        raise DocsortError(f"{problem}; {again}", file=str(path)) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise DocsortError(
            "not a docsort training checkpoint (no state_dict); use --overwrite to start again",
            file=str(path),
        )
    return ckpt


def check_checkpoint(path: str | os.PathLike, module: torch.nn.Module) -> None:
    """Refuse, in one line, a checkpoint that is unsafe, unreadable or does not fit ``module``."""
    ckpt = read_checkpoint(path)
    problem = state_mismatch(module.state_dict(), ckpt["state_dict"])
    if problem:
        raise DocsortError(
            f"checkpoint does not fit this model ({problem}); use --overwrite to start again, "
            "or another --out",
            file=str(path),
        )
