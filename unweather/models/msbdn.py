"""MSBDN-RDFF: the paper's teacher and student network (multi-scale boosted dehazing network).

Module names follow the paper's release, so its checkpoints load without remapping; the
reference description is the project's METHOD.md. Input RGB in [0, 1] (N, 3, H, W) with H and W
multiples of 16 (wrap in `PadCrop` for any size); output of the same shape, no clamp.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unweather.models.registry import register_model


class ConvLayer(nn.Module):
    """Reflection pad by k // 2, then a biased convolution named `conv2d`."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(cin, cout, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.pad(x))


class UpsampleConvLayer(nn.Module):
    """Stride-2 transposed convolution (3x3, no padding): 2H + 1 rows, resized by the caller."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.conv2d = nn.ConvTranspose2d(cin, cout, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(x)


class ResidualBlock(nn.Module):
    """x + 0.1 * conv2(prelu(conv1(x)))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, 1)
        self.conv2 = ConvLayer(channels, channels, 3, 1)
        self.relu = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.conv2(self.relu(self.conv1(x)))


class DenseLayer(nn.Module):
    """Concatenates relu(conv(x)) after x."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, F.relu(self.conv(x))), 1)


class RDB(nn.Module):
    """Residual dense block: dense layers, a 1x1 fusion back to `channels`, plus the input."""

    def __init__(self, channels: int, num_layers: int, growth: int) -> None:
        super().__init__()
        self.dense_layers = nn.Sequential(
            *(DenseLayer(channels + i * growth, growth) for i in range(num_layers))
        )
        self.conv_1x1 = nn.Conv2d(channels + num_layers * growth, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_1x1(self.dense_layers(x)) + x


class ConvBlock(nn.Module):
    """4x4 stride-2 convolution (halves the size), then PReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 4, 2, 1)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class DeconvBlock(nn.Module):
    """4x4 stride-2 transposed convolution (doubles the size), then PReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.deconv = nn.ConvTranspose2d(cin, cout, 4, 2, 1)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.deconv(x))


class EncoderFusion(nn.Module):
    """Dense feature fusion in the encoder: back-projects `low` against every finer feature.

    Args:
        channels: channels of `low` (the finest feature has channels / 2^(n-1)).
        num: number of levels, `low` included.
    """

    def __init__(self, channels: int, num: int) -> None:
        super().__init__()
        m = num - 1
        self.up_convs = nn.ModuleList(DeconvBlock(channels >> i, channels >> (i + 1)) for i in range(m))
        self.down_convs = nn.ModuleList(ConvBlock(channels >> (i + 1), channels >> i) for i in range(m))

    def forward(self, low: torch.Tensor, highs: Sequence[torch.Tensor]) -> torch.Tensor:
        m = len(self.up_convs)
        fused = low
        for i, high in enumerate(highs):
            t = fused
            for j in range(m - i):
                t = self.up_convs[j](t)
            t = t - high
            for j in reversed(range(m - i)):
                t = self.down_convs[j](t)
            fused = fused + t
        return fused


class DecoderFusion(nn.Module):
    """Dense feature fusion in the decoder: the mirror image of `EncoderFusion`.

    Args:
        channels: channels of `low` (the coarsest feature has channels * 2^(n-1)).
        num: number of levels, `low` included.
    """

    def __init__(self, channels: int, num: int) -> None:
        super().__init__()
        m = num - 1
        self.down_convs = nn.ModuleList(ConvBlock(channels << i, channels << (i + 1)) for i in range(m))
        self.up_convs = nn.ModuleList(DeconvBlock(channels << (i + 1), channels << i) for i in range(m))

    def forward(self, low: torch.Tensor, highs: Sequence[torch.Tensor]) -> torch.Tensor:
        m = len(self.down_convs)
        fused = low
        for i, high in enumerate(highs):
            t = fused
            for j in range(m - i):
                t = self.down_convs[j](t)
            t = t - high
            for j in reversed(range(m - i)):
                t = self.up_convs[j](t)
            fused = fused + t
        return fused


def _residual_stack(channels: int, count: int = 3) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock(channels) for _ in range(count)))


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = torch.chunk(x, 2, dim=1)
    return a, b


class MSBDN(nn.Module):
    """MSBDN-RDFF (about 28.7 M parameters, 0.6 MFLOP per pixel with 18 residual blocks).

    Height and width must be multiples of 16 and at least 32; `PadCrop` takes care of both.

    `forward(x, return_feat=True)` also returns four feature taps: after the 4x level (64
    channels, 1/4 size), after the 8x level (128, 1/8), the 16x encoder output (256, 1/16) and
    the bottleneck output (256, 1/16); these feed the collaborative knowledge transfer.
    """

    pad_multiple = 16
    # The 1/16 level is reflection-padded by 1, which needs at least 2 rows there.
    min_size = 32
    tap_channels = (64, 128, 256, 256)

    def __init__(self, res_blocks: int = 18) -> None:
        super().__init__()
        self.conv_input = ConvLayer(3, 16, 11, 1)
        self.dense0 = _residual_stack(16)

        self.conv2x = ConvLayer(16, 32, 3, 2)
        self.conv1 = RDB(16, 4, 16)
        self.fusion1 = EncoderFusion(16, 2)
        self.dense1 = _residual_stack(32)

        self.conv4x = ConvLayer(32, 64, 3, 2)
        self.conv2 = RDB(32, 4, 32)
        self.fusion2 = EncoderFusion(32, 3)
        self.dense2 = _residual_stack(64)

        self.conv8x = ConvLayer(64, 128, 3, 2)
        self.conv3 = RDB(64, 4, 64)
        self.fusion3 = EncoderFusion(64, 4)
        self.dense3 = _residual_stack(128)

        self.conv16x = ConvLayer(128, 256, 3, 2)
        self.conv4 = RDB(128, 4, 128)
        self.fusion4 = EncoderFusion(128, 5)

        self.dehaze = nn.Sequential()
        for i in range(res_blocks):
            self.dehaze.add_module(f"res{i}", ResidualBlock(256))

        self.convd16x = UpsampleConvLayer(256, 128)
        self.dense_4 = _residual_stack(128)
        self.conv_4 = RDB(64, 4, 64)
        self.fusion_4 = DecoderFusion(64, 2)

        self.convd8x = UpsampleConvLayer(128, 64)
        self.dense_3 = _residual_stack(64)
        self.conv_3 = RDB(32, 4, 32)
        self.fusion_3 = DecoderFusion(32, 3)

        self.convd4x = UpsampleConvLayer(64, 32)
        self.dense_2 = _residual_stack(32)
        self.conv_2 = RDB(16, 4, 16)
        self.fusion_2 = DecoderFusion(16, 4)

        self.convd2x = UpsampleConvLayer(32, 16)
        self.dense_1 = _residual_stack(16)
        self.conv_1 = RDB(8, 4, 8)
        self.fusion_1 = DecoderFusion(8, 5)

        self.conv_output = ConvLayer(16, 3, 3, 1)

    def forward(self, x: torch.Tensor, return_feat: bool = False):
        """Restore `x`; with `return_feat`, return `(output, [tap0, tap1, tap2, tap3])`."""
        r1 = self.conv_input(x)
        mem = [_halves(r1)[0]]
        x1 = self.dense0(r1) + r1

        encoder = (
            (self.conv2x, self.fusion1, self.conv1, self.dense1),
            (self.conv4x, self.fusion2, self.conv2, self.dense2),
            (self.conv8x, self.fusion3, self.conv3, self.dense3),
        )
        skips = [x1]
        r = x1
        for down, fusion, rdb, dense in encoder:
            r = down(r)
            a, b = _halves(r)
            a = fusion(a, mem)
            b = rdb(b)
            mem.append(a)
            r = torch.cat((a, b), 1)
            r = dense(r) + r
            skips.append(r)
        taps = [skips[2], skips[3]]

        r16 = self.conv16x(r)
        a, b = _halves(r16)
        a = self.fusion4(a, mem)
        b = self.conv4(b)
        r16 = torch.cat((a, b), 1)
        taps.append(r16)

        doubled = 2 * r16
        r16 = self.dehaze(doubled) + doubled - r16
        taps.append(r16)

        mem_up = [_halves(r16)[0]]
        decoder = (
            (self.convd16x, self.dense_4, self.fusion_4, self.conv_4),
            (self.convd8x, self.dense_3, self.fusion_3, self.conv_3),
            (self.convd4x, self.dense_2, self.fusion_2, self.conv_2),
            (self.convd2x, self.dense_1, self.fusion_1, self.conv_1),
        )
        s = r16
        for (up, dense, fusion, rdb), skip in zip(decoder, reversed(skips)):
            u = up(s)
            u = F.interpolate(u, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            s = skip + u
            s = dense(s) + s - u
            a, b = _halves(s)
            a = fusion(a, mem_up)
            b = rdb(b)
            mem_up.append(a)
            s = torch.cat((a, b), 1)

        out = self.conv_output(s)
        if return_feat:
            return out, taps
        return out


@register_model
def msbdn(res_blocks: int = 18) -> nn.Module:
    """MSBDN-RDFF, the paper's network: the teachers; loads the released checkpoints.

    Args:
        res_blocks: residual blocks in the bottleneck (18 in the release).
    """
    return MSBDN(res_blocks=res_blocks)
