"""A frozen VGG19 feature network for the contrastive losses, loaded from a local torchvision file.

The layers are laid out as torchvision's `vgg19().features`, so `features.<index>.weight/bias` of
torchvision's ImageNet file (vgg19-dcbb9e9d.pth) load directly; torchvision itself is not needed.
The file is never downloaded: its path comes from `--vgg19-weights` or `UNWEATHER_VGG19_WEIGHTS`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from unweather.errors import UnweatherError

ENV_VAR = "UNWEATHER_VGG19_WEIGHTS"
FILE_NAME = "vgg19-dcbb9e9d.pth"
# torchvision's configuration "E": channel counts, "M" for max pooling.
_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# relu1_1, relu2_1, relu3_1, relu4_1, relu5_1: features[0:2], [2:7], [7:12], [12:21], [21:30].
_SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _features() -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in _LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=True)]
            channels = int(item)
    return nn.Sequential(*layers)


def resolve_weights(path: str | Path | None) -> Path:
    """Return the VGG19 weights file named by `path` or the environment; raise if there is none."""
    chosen = str(path) if path else os.environ.get(ENV_VAR, "")
    if not chosen:
        raise UnweatherError(
            f"--mcr vgg19 needs torchvision's ImageNet VGG19 weights ({FILE_NAME}): pass --vgg19-weights PATH "
            f"or set {ENV_VAR}; nothing is downloaded (or use --mcr teacher, which needs no file)")
    file = Path(chosen).expanduser()
    if not file.is_file():
        raise UnweatherError(f"VGG19 weights file {file} does not exist (expected torchvision's {FILE_NAME})")
    return file


class VGG19Features(nn.Module):
    """Frozen VGG19 returning relu1_1..relu5_1 of ImageNet-normalised RGB inputs in [0, 1].

    Args:
        weights: torchvision's vgg19 state dict file (or its `features.*` entries); None leaves the
            layers randomly initialised (for tests only).
    """

    weights = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        # Only the layers up to relu5_1 are used; the rest of torchvision's file is ignored.
        features = _features()[:_SLICES[-1][1]]
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in _SLICES)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        if weights is not None:
            self._load(Path(weights), features)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def _load(self, path: Path, features: nn.Sequential) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise UnweatherError(f"cannot read VGG19 weights {path}: {exc}") from exc
        if not isinstance(state, dict):
            raise UnweatherError(f"VGG19 weights {path} do not hold a state dict")
        wanted = features.state_dict()
        mine = {k: v for k, v in state.items() if k.startswith("features.")}
        mine = {k.removeprefix("features."): v for k, v in mine.items()}
        used = {k: mine[k] for k in wanted if k in mine}
        missing = sorted(set(wanted) - set(used))
        if missing:
            raise UnweatherError(f"VGG19 weights {path} lack {', '.join('features.' + k for k in missing[:4])}"
                                 f"{' ...' if len(missing) > 4 else ''}; expected torchvision's {FILE_NAME}")
        bad = [k for k in used if tuple(used[k].shape) != tuple(wanted[k].shape)]
        if bad:
            raise UnweatherError(f"VGG19 weights {path} have unexpected shapes for {', '.join(bad[:4])}")
        features.load_state_dict(used)

    def train(self, mode: bool = True) -> VGG19Features:
        # Always eval: the network is a fixed measuring instrument.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = (x - self.mean) / self.std
        out = []
        for block in self.slices:
            h = block(h)
            out.append(h)
        return out


def load_vgg19(path: str | Path | None = None) -> VGG19Features:
    """Build the frozen VGG19 from the weights file named by `path` or `UNWEATHER_VGG19_WEIGHTS`."""
    return VGG19Features(resolve_weights(path))
