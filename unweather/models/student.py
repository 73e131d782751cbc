"""The real-time student family: a small U-Net with a global residual and a global-context path.

One configurable class; the registered sizes are two-line factories over it. Design:
- the frame is folded 2x2 into channels (SpaceToDepth) so no convolution runs at full resolution,
  yet every pixel reaches the network; the correction is unfolded (DepthToSpace) at the end;
- output = input + predicted correction, so a clean frame passes nearly untouched;
- pooled bottleneck features produce a per-channel scale and shift for every decoder level,
  because haze (airlight, transmission) is a global effect that local convolutions see poorly;
- optionally (`haze_head`), the scattering model I = J t + A (1 - t) is inverted explicitly:
  J = A + (I - A) k with a global airlight A from the pooled features and a per-pixel gain
  k = 1/t from the last decoder level. An additive correction must otherwise learn a product of
  a global and a local quantity, which a small network does poorly; k starts at 1 (no change);
- only operators that ONNX export and TensorRT run natively: Conv, Relu, Add, Sub, Mul, Min, Sigmoid,
  Exp, Clip, Pad, Slice, Concat, ReduceMin/Max/Mean, Resize (bilinear), DepthToSpace and SpaceToDepth.

Feature taps follow MSBDN's interface (1/4, 1/8, 1/16 and 1/16 of the input size) so that the
collaborative knowledge transfer can compare them spatially with a teacher's.
"""

from __future__ import annotations

import dataclasses
import math
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
        haze_head: invert the scattering model explicitly (global airlight, per-pixel gain).
        upsample: "shuffle" (1x1 convolution to 4x the channels, then DepthToSpace) or "bilinear"
            (1x1 convolution, then bilinear resize): a shuffle gives each of the 2x2 output phases its
            own weights, so flat or smooth regions can come out with a periodic grid; bilinear cannot.
        phase_balance: the full-resolution outputs (correction and haze gain), made of 2x2 phases,
            respond equally in every phase to spatially constant features: no grid on flat regions.
        haze_gate: the haze head's gain is scaled by a global gate in [0, 1] read from the image's
            haze statistics (k = 1, no change, when it is closed) and bounded by `haze_max_gain`.
        haze_max_gain: the largest gain k = 1/t the gated haze head applies (t down to 1/k).
        haze_prior: the haze head adds the dark channel prior's gain, -log(1 - 0.95 dark(I / A)), scaled by a
            global weight read from the haze statistics (0 at the start: a trained head is unchanged).
        haze_dcp: the haze head's airlight is the image's own (per channel, the brightest of its 14x14-pixel
            minima, as He et al. read it from the haziest region) and its gain adds the dark channel prior's
            -log(1 - w dark(I / A)), with w in [0, 0.95] a global haze strength read from the haze statistics
            (near 0 at the start). A learned airlight was too dark on heavy haze, where inverting the
            scattering model needs it most; the learned per-pixel gain refines the prior's.
    """

    widths: tuple[int, int, int, int] = (16, 32, 48, 64)
    encoder_depths: tuple[int, int, int, int] = (0, 1, 1, 1)
    bottleneck_depth: int = 2
    decoder_depths: tuple[int, int, int] = (1, 1, 0)
    context_channels: int = 32
    haze_head: bool = False
    upsample: str = "shuffle"
    phase_balance: bool = False
    haze_gate: bool = False
    haze_max_gain: float = 5.0
    haze_prior: bool = False
    haze_dcp: bool = False

    def __post_init__(self) -> None:
        # Options may come back from JSON metadata as lists.
        for name in ("widths", "encoder_depths", "decoder_depths"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.widths) != 4 or len(self.encoder_depths) != 4 or len(self.decoder_depths) != 3:
            raise ValueError("a student has 4 widths, 4 encoder depths and 3 decoder depths")
        if self.upsample not in ("shuffle", "bilinear"):
            raise ValueError(f"upsample must be shuffle or bilinear, not {self.upsample!r}")
        if self.haze_max_gain <= 1.0:
            raise ValueError("haze_max_gain must be above 1")
        if self.haze_dcp and (self.haze_prior or not self.haze_head):
            raise ValueError("haze_dcp needs haze_head and replaces haze_prior")


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
    """Double the size: a 1x1 convolution, then DepthToSpace (`shuffle`) or a bilinear resize.

    With `bilinear` the convolution runs before the resize (they commute), at a quarter of the cost.
    """

    def __init__(self, cin: int, cout: int, mode: str = "shuffle") -> None:
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(cin, 4 * cout if mode == "shuffle" else cout, 1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "shuffle":
            return self.shuffle(self.conv(x))
        return F.interpolate(self.conv(x), scale_factor=2.0, mode="bilinear", align_corners=False)


def phase_balanced(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of a convolution feeding DepthToSpace(2) whose 4 phases share their constant response.

    Output channel c * 4 + p is phase p of channel c. Each phase's kernel keeps its shape but its sum
    over the taps (its response to constant features) and its bias become the mean over the phases, so a
    flat region gives the same value in all 4 phases. Detail (the kernels' zero-sum part) is untouched.
    """
    cout, cin, kh, kw = weight.shape
    w = weight.reshape(cout // 4, 4, cin, kh * kw)
    total = w.sum(dim=3, keepdim=True)
    w = w - (total - total.mean(dim=1, keepdim=True)) / (kh * kw)
    b = bias.reshape(cout // 4, 4).mean(dim=1, keepdim=True).expand(cout // 4, 4)
    return w.reshape(cout, cin, kh, kw), b.reshape(cout)


def shuffle_to_bilinear(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An `Up(mode="shuffle")` convolution's weights as the nearest `bilinear` one: the mean of the phases."""
    cout4, cin = weight.shape[:2]
    w = weight.reshape(cout4 // 4, 4, cin, *weight.shape[2:]).mean(dim=1)
    return w, bias.reshape(cout4 // 4, 4).mean(dim=1)


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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Return the pooled hidden vector and the (scale, shift) of each level."""
        g = F.relu(self.reduce(x.mean(dim=(2, 3), keepdim=True)))
        return g, [(2 * torch.sigmoid(s(g)), b(g)) for s, b in zip(self.scales, self.shifts)]


def _min_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """Minimum over a size x size window (stride 1, same size) of an NCHW tensor.

    Shifted minima along each axis, the border repeated (which leaves a minimum unchanged): the
    same result as a negated max pooling, about 20x faster on a CPU, and in ONNX only Slice with
    constant bounds, Concat and Min.
    """
    r = size // 2
    for dim in (3, 2):
        def cut(t: torch.Tensor, start: int, stop: int | None, dim: int = dim) -> torch.Tensor:
            return t[(slice(None),) * dim + (slice(start, stop),)]

        padded = torch.cat([cut(x, 0, 1)] * r + [x] + [cut(x, -1, None)] * r, dim=dim)
        for i in range(2 * r + 1):
            shifted = cut(padded, i, (i - 2 * r) or None)
            x = shifted if i == 0 else torch.minimum(x, shifted)
    return x


def _half_min(m: torch.Tensor) -> torch.Tensor:
    """The minimum of each 2x2 block of an NCHW tensor (height and width even): half the resolution."""
    return torch.minimum(torch.minimum(m[..., 0::2, 0::2], m[..., 1::2, 0::2]),
                         torch.minimum(m[..., 0::2, 1::2], m[..., 1::2, 1::2]))


class HazeHead(nn.Module):
    """J = A + (I - A) k: airlight A (RGB, global) and gain k = 1/t (per pixel).

    A haze-free patch has a dark pixel in some channel (He et al.'s dark channel prior), so the
    dark channel of I (minimum over channels and 14x14 pixels) measures the veil. Its global mean
    and maximum, with the image's, join the pooled features for A and a global gain offset; the
    local dark channel joins the last decoder level for the per-pixel gain. k = exp(z) with z
    clipped to [-1, 2.5] (t down to 0.08). Every output starts at k = 1, which changes nothing:
    the head can be added to a trained student.
    """

    stats = 8

    def __init__(self, features: int, hidden: int, gate: bool = False, max_gain: float = math.exp(2.5),
                 prior: bool = False, dcp: bool = False) -> None:
        super().__init__()
        self.dcp = dcp
        self.airlight = None if dcp else nn.Conv2d(hidden + self.stats, 3, 1)
        self.prior = nn.Conv2d(hidden + self.stats, 1, 1) if prior or dcp else None
        self.offset = nn.Conv2d(hidden + self.stats, 1, 1)
        self.gain = nn.Conv2d(features + 1, 4, 3, padding=1)
        self.unfold = nn.PixelShuffle(2)
        self.gate = nn.Conv2d(hidden + self.stats, 1, 1) if gate else None
        self.max_z = math.log(max_gain)
        with torch.no_grad():
            if self.airlight is not None:
                nn.init.normal_(self.airlight.weight, std=0.01)
                self.airlight.bias.fill_(1.4)  # sigmoid(1.4) = 0.8, a typical airlight
            for conv in (self.offset, self.gain, self.prior):
                if conv is not None:
                    conv.weight.zero_()
                    conv.bias.zero_()
            if dcp:
                # Strength 0.95 sigmoid(-4) = 0.017 at the start: nearly neutral, yet with a gradient to learn from.
                self.prior.bias.fill_(-4.0)
            if self.gate is not None:
                # Open at start (sigmoid(4) = 0.98), so a trained head keeps working until it learns to close.
                self.gate.weight.zero_()
                self.gate.bias.fill_(4.0)

    def forward(self, x: torch.Tensor, g: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Dehaze `x` given the pooled vector `g` and half-resolution `features`."""
        least, dark, h = self.read(x, g)
        if self.dcp:
            airlight = self.image_airlight(least)
        else:
            airlight = torch.sigmoid(self.airlight(h))
        # gain(concat(features, dark)) as two convolutions: CPU kernels are slow on odd channel counts.
        w, b = self.gain.weight, self.gain.bias
        z = F.conv2d(features, w[:, :-1], b, padding=1) + F.conv2d(dark, w[:, -1:], padding=1)
        if self.prior is not None and not self.dcp:
            z = z + self.prior(h) * self._prior_gain(x, airlight)
        z = torch.clamp(self.unfold(z) + self.offset(h), -1.0, self.max_z)
        if self.gate is not None:
            z = z * torch.sigmoid(self.gate(h))
        if self.dcp:
            strength = 0.95 * torch.sigmoid(self.prior(h))
            z = torch.clamp(z - self.dcp_log_t(least, airlight, strength, x.shape[-2:]), -1.0, self.max_z)
        return airlight + (x - airlight) * torch.exp(z)

    def read(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The 2x2 minima of `x` per channel, its dark channel (half resolution) and the global vector h: `g`
        and the haze statistics, what the airlight, the gate and the strength read."""
        # Minima commute: the 2x2 minimum per channel serves the dark channel and the image's own airlight.
        least = _half_min(x)
        dark = _min_filter(least.amin(dim=1, keepdim=True), 7)
        stats = torch.cat([x.mean(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True),
                           dark.mean(dim=(2, 3), keepdim=True), dark.amax(dim=(2, 3), keepdim=True)], dim=1)
        return least, dark, torch.cat([g, stats], dim=1)

    def image_airlight(self, least: torch.Tensor) -> torch.Tensor:
        """He et al.'s airlight from the 2x2 minima: per channel, the brightest 14x14-pixel minimum."""
        return _min_filter(least, 7).amax(dim=(2, 3), keepdim=True).clamp(min=0.05)

    def dcp_log_t(self, least: torch.Tensor, airlight: torch.Tensor, strength: torch.Tensor | float,
                  size: torch.Size) -> torch.Tensor:
        """log t (minus the gain) at full resolution (bilinear), He et al.'s t = 1 - w dark(I / A), w the strength.

        Outside the gate, which scales only the learned gain: the strength decides alone how much of the prior
        applies. Dividing by A per channel commutes with the minima, so the half-resolution minima serve.
        """
        t = 1.0 - strength * _min_filter((least / airlight).amin(dim=1, keepdim=True), 7)
        log_t = torch.log(t.clamp(min=math.exp(-self.max_z)))
        return F.interpolate(log_t, size=size, mode="bilinear", align_corners=False)

    def _prior_gain(self, x: torch.Tensor, airlight: torch.Tensor) -> torch.Tensor:
        """He et al.'s gain -log t, t = 1 - 0.95 dark(I / A), at half resolution (t at least 1 / `max_gain`)."""
        t = 1.0 - 0.95 * _min_filter(_half_min((x / airlight.clamp(min=0.05)).amin(dim=1, keepdim=True)), 7)
        return -torch.log(t.clamp(min=math.exp(-self.max_z)))


def _unshuffled_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution's weight over `PixelUnshuffle(2)`'s 12 channels as a 6x6 stride-2 one over the RGB frame.

    Unshuffled channel c * 4 + 2 dy + dx at (i, j) is pixel (2 i + dy, 2 j + dx) of colour c, so tap (u, v) of that
    channel is tap (2 u + dy, 2 v + dx) of colour c; padding 1 there is padding 2 here.
    """
    out = weight.shape[0]
    return weight.reshape(out, 3, 2, 2, 3, 3).permute(0, 1, 4, 2, 5, 3).reshape(out, 3, 6, 6)


class Student(nn.Module):
    """A real-time restoration network; see the module docstring for the design.

    `forward(x, return_feat=True)` returns `(output, [tap0, tap1, tap2, tap3])` with taps at 1/4
    (widths[1] channels), 1/8 (widths[2]), 1/16 (widths[3], encoder output) and 1/16 (widths[3],
    after the bottleneck and its global modulation).
    """

    pad_multiple = 16
    # Layers an option adds; a checkpoint without them may initialise the network (they start neutral).
    optional_prefixes = ("haze.",)

    def __init__(self, config: StudentConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or StudentConfig()
        c0, c1, c2, c3 = config.widths
        self.tap_channels = (c1, c2, c3, c3)

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

        self.up2 = Up(c3, c2, config.upsample)
        self.dec2 = _stack(c2, config.decoder_depths[0])
        self.up1 = Up(c2, c1, config.upsample)
        self.dec1 = _stack(c1, config.decoder_depths[1])
        self.up0 = Up(c1, c0, config.upsample)
        self.dec0 = _stack(c0, config.decoder_depths[2])
        self.head = nn.Conv2d(c0, 12, 3, padding=1)
        self.unfold = nn.PixelShuffle(2)
        self.haze = HazeHead(c0, config.context_channels, config.haze_gate,
                             config.haze_max_gain if config.haze_gate else math.exp(2.5), config.haze_prior,
                             config.haze_dcp) \
            if config.haze_head else None
        # A small initial correction: an untrained student starts near the identity.
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
        self.project_()

    def forward(self, x: torch.Tensor, return_feat: bool = False):
        """Restore `x` (height and width multiples of 16); optionally also return the 4 taps."""
        # The stem reads the 2x2-unshuffled frame; as one stride-2 convolution of the frame itself (the same
        # function) it needs no transpose, which cost ONNX Runtime a tenth of `fast`'s time.
        stem = F.conv2d(x, _unshuffled_weight(self.stem.weight), self.stem.bias, stride=2, padding=2)
        e0 = self.enc0(F.relu(stem))
        e1 = self.enc1(self.down1(e0))
        e2 = self.enc2(self.down2(e1))
        e3 = self.enc3(self.down3(e2))
        g, ((s3, b3), (s2, b2), (s1, b1), (s0, b0)) = self.context(e3)
        d3 = self.bottleneck(e3) * s3 + b3
        d2 = self.dec2((self.up2(d3) + e2) * s2 + b2)
        d1 = self.dec1((self.up1(d2) + e1) * s1 + b1)
        d0 = self.dec0(F.relu((self.up0(d1) + e0) * s0 + b0))
        base = x if self.haze is None else self.haze(x, g, d0)
        out = base + self.unfold(self.head(d0))
        if return_feat:
            return out, [e1, e2, e3, d3]
        return out

    def _balanced(self) -> list[nn.Conv2d]:
        if not self.config.phase_balance:
            return []
        return [self.head] + ([self.haze.gain] if self.haze is not None else [])

    @torch.no_grad()
    def project_(self) -> None:
        """Put the phase-balanced convolutions back on their constraint (after an optimiser step).

        The constraint lives in the weights, not in the forward pass, so exported graphs are plain Conv.
        """
        for conv in self._balanced():
            w, b = phase_balanced(conv.weight, conv.bias)
            conv.weight.copy_(w)
            conv.bias.copy_(b)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D102
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.project_()
        return result

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return `state` (from a student with other `upsample` or haze options) in this network's layout.

        A `shuffle` checkpoint starts a `bilinear` network with each Up's phases averaged: the nearest
        grid-free function, to be fine-tuned; a learned airlight is dropped where `haze_dcp` reads the image's.
        Other weights pass unchanged.
        """
        out = dict(state)
        if self.config.haze_dcp:
            # The image's own airlight replaces the learned one.
            out = {k: v for k, v in out.items() if not k.startswith("haze.airlight.")}
        if self.config.upsample == "bilinear":
            for name in ("up2", "up1", "up0"):
                key = f"{name}.conv.weight"
                if key in out and out[key].shape[0] == 4 * getattr(self, name).conv.out_channels:
                    out[key], out[f"{name}.conv.bias"] = shuffle_to_bilinear(out[key], out[f"{name}.conv.bias"])
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
