"""The real-time student family: a small U-Net with a global residual and a global-context path.

One configurable class; the registered sizes are two-line factories over it. Design:
- the frame is folded 2x2 into channels (SpaceToDepth) so no convolution runs at full resolution,
  yet every pixel reaches the network; the correction is unfolded (DepthToSpace) at the end;
- output = input + predicted correction, so a clean frame passes nearly untouched;
- pooled bottleneck features produce a per-channel scale and shift for every decoder level,
  because haze (airlight, transmission) is a global effect that local convolutions see poorly;
- only operators that ONNX export and TensorRT run natively: Conv, Relu, Add, Mul, Sigmoid,
  GlobalAveragePool, DepthToSpace and SpaceToDepth.

Feature taps follow MSBDN's interface (1/4, 1/8, 1/16 and 1/16 of the input size) so that the
collaborative knowledge transfer can compare them spatially with a teacher's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unweather.models.registry import register_model


@dataclass(frozen=True)
class StudentConfig:
    """The shape of a student network.

    Attributes:
        widths: channels at 1/2, 1/4, 1/8 and 1/16 of the input size.
        encoder_depths: residual blocks per level on the way down.
        bottleneck_depth: residual blocks at 1/16 after the third tap.
        decoder_depths: residual blocks at 1/8, 1/4 and 1/2 on the way up.
        context_channels: width of the global-context path.
    """

    widths: tuple[int, int, int, int] = (16, 32, 48, 64)
    encoder_depths: tuple[int, int, int, int] = (0, 1, 1, 1)
    bottleneck_depth: int = 2
    decoder_depths: tuple[int, int, int] = (1, 1, 0)
    context_channels: int = 32

    def __post_init__(self) -> None:
        # Options may come back from JSON metadata as lists.
        for name in ("widths", "encoder_depths", "decoder_depths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.widths) != 4 or len(self.encoder_depths) != 4 or len(self.decoder_depths) != 3:
            raise ValueError("a student has 4 widths, 4 encoder depths and 3 decoder depths")


class ResBlock(nn.Module):
    """x + conv(relu(conv(x))), 3x3 convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


def _stack(channels: int, depth: int) -> nn.Sequential:
    return nn.Sequential(*(ResBlock(channels) for _ in range(depth)))


class Down(nn.Module):
    """Halve the size with a stride-2 3x3 convolution, then ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class Up(nn.Module):
    """Double the size: a 1x1 convolution to 4x the output channels, then DepthToSpace."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, 4 * cout, 1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class GlobalContext(nn.Module):
    """Pooled features -> per-channel (scale, shift) for each modulated level.

    The scale is 2 * sigmoid(.), near 1 at initialisation, so modulation starts close to neutral.
    """

    def __init__(self, cin: int, hidden: int, out_channels: Sequence[int]) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(cin, hidden, 1)
        self.scales = nn.ModuleList(nn.Conv2d(hidden, c, 1) for c in out_channels)
        self.shifts = nn.ModuleList(nn.Conv2d(hidden, c, 1) for c in out_channels)
        for conv in (*self.scales, *self.shifts):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = F.relu(self.reduce(x.mean(dim=(2, 3), keepdim=True)))
        return [(2 * torch.sigmoid(s(g)), b(g)) for s, b in zip(self.scales, self.shifts)]


class Student(nn.Module):
    """A real-time restoration network; see the module docstring for the design.

    `forward(x, return_feat=True)` returns `(output, [tap0, tap1, tap2, tap3])` with taps at 1/4
    (widths[1] channels), 1/8 (widths[2]), 1/16 (widths[3], encoder output) and 1/16 (widths[3],
    after the bottleneck and its global modulation).
    """

    pad_multiple = 16

    def __init__(self, config: StudentConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or StudentConfig()
        c0, c1, c2, c3 = config.widths
        self.tap_channels = (c1, c2, c3, c3)

        self.fold = nn.PixelUnshuffle(2)
        self.stem = nn.Conv2d(12, c0, 3, padding=1)
        self.enc0 = _stack(c0, config.encoder_depths[0])
        self.down1 = Down(c0, c1)
        self.enc1 = _stack(c1, config.encoder_depths[1])
        self.down2 = Down(c1, c2)
        self.enc2 = _stack(c2, config.encoder_depths[2])
        self.down3 = Down(c2, c3)
        self.enc3 = _stack(c3, config.encoder_depths[3])
        self.bottleneck = _stack(c3, config.bottleneck_depth)
        self.context = GlobalContext(c3, config.context_channels, (c3, c2, c1, c0))

        self.up2 = Up(c3, c2)
        self.dec2 = _stack(c2, config.decoder_depths[0])
        self.up1 = Up(c2, c1)
        self.dec1 = _stack(c1, config.decoder_depths[1])
        self.up0 = Up(c1, c0)
        self.dec0 = _stack(c0, config.decoder_depths[2])
        self.head = nn.Conv2d(c0, 12, 3, padding=1)
        self.unfold = nn.PixelShuffle(2)
        # A small initial correction: an untrained student starts near the identity.
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor, return_feat: bool = False):
        """Restore `x` (height and width multiples of 16); optionally also return the 4 taps."""
        e0 = self.enc0(F.relu(self.stem(self.fold(x))))
        e1 = self.enc1(self.down1(e0))
        e2 = self.enc2(self.down2(e1))
        e3 = self.enc3(self.down3(e2))
        (s3, b3), (s2, b2), (s1, b1), (s0, b0) = self.context(e3)
        d3 = self.bottleneck(e3) * s3 + b3
        d2 = self.dec2((self.up2(d3) + e2) * s2 + b2)
        d1 = self.dec1((self.up1(d2) + e1) * s1 + b1)
        d0 = self.dec0(F.relu((self.up0(d1) + e0) * s0 + b0))
        out = x + self.unfold(self.head(d0))
        if return_feat:
            return out, [e1, e2, e3, d3]
        return out


def _config(base: StudentConfig, overrides: dict[str, object]) -> StudentConfig:
    return dataclasses.replace(base, **overrides)


@register_model
def student_small(**overrides: object) -> nn.Module:
    """The real-time student: at most 20 kFLOP per pixel (`fast` weights; CPU real time)."""
    return Student(_config(StudentConfig(), overrides))


@register_model
def student_base(**overrides: object) -> nn.Module:
    """The larger student: about 100 kFLOP per pixel (`quality` weights; GPUs and offline work)."""
    base = StudentConfig(
        widths=(32, 64, 96, 128),
        encoder_depths=(1, 2, 2, 2),
        bottleneck_depth=4,
        decoder_depths=(2, 2, 1),
        context_channels=64,
    )
    return Student(_config(base, overrides))
