"""The video student: a frame student plus a causal, recurrent temporal fusion.

Rain and snow never stay in one place from frame to frame, while a fixed camera's scene does. The
state holds, per pixel, a running estimate of the clean background `bg`, a running robust estimate
of the input itself `xm` (a median that follows the input by at most a small step per frame, so a
flake or a streak that lasts one frame barely moves it, while a lit window that is there in every
frame is kept) and how much evidence the background holds `W`. Per pixel the fusion decides:

- `g = p_x x + p_f f + p_m xm`: the frame's own best estimate, a convex mix of the input `x`, the
  frame student's output `f` and the input memory (softmax weights `p`): on a fixed camera the
  memory is the scene; where the input agrees with the memory it is clean; elsewhere `f` is used;
- `W' = min(lam W + omega, W_max)` and `bg' = (lam W bg + omega g) / (lam W + omega)`: a running
  weighted mean whose history is kept with `lam` (near 0 where the camera moved beyond the
  alignment, an object moved or the scene changed) and fed with weight `omega` (how good `g` is);
- `xm' = xm + clamp(x - xm, -s, s)` with a per-pixel step `s` up to `memory_step`;
- the output is `bg'`. With no history (`W = 0`, a reset) the memory starts as `f` and then
  follows the input.

The trust maps come from a small network at a quarter of the resolution (context: motion, weather,
scene change) plus a thin full-resolution path (the edges of flakes and streaks).

The state (`bg` and `xm` as one 6-channel tensor, and `W`) goes in and out of the network as
explicit tensors, so an exported graph is a plain function with three inputs and three outputs; the
runtime aligns the state to the new frame with a global motion estimate between frames
(`unweather.engine.session`) and resets it on a cut. Only operators that ONNX export and TensorRT
run natively: Conv, Relu, Sigmoid, Exp, Add, Sub, Mul, Div, Min, Max, AveragePool, Resize
(bilinear), Slice and Concat, plus the frame student's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unweather.models.registry import build, register_model


@dataclass(frozen=True)
class FusionConfig:
    """The shape of the temporal fusion.

    Attributes:
        context_width: channels of the quarter-resolution context path.
        detail_width: channels of the full-resolution path.
        max_weight: the most evidence (in frames) the running mean keeps; bounds its memory.
        memory_step: the most the input memory moves per frame (intensity in [0, 1]).
    """

    context_width: int = 24
    detail_width: int = 8
    max_weight: float = 16.0
    memory_step: float = 0.1


def _clamp(t: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """`t` clamped to [-bound, bound] elementwise (Min and Max: native in ONNX and TensorRT)."""
    return torch.minimum(torch.maximum(t, -bound), bound)


# The inputs of the fusion's first convolutions as combinations of the maps x, f, bg, xm (3 channels each; the
# evidence, one channel, comes last in both): coefficients of (x, f, bg, xm) per 3-channel input group.
_CONTEXT_TERMS = ((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1), (1, -1, 0, 0), (1, 0, -1, 0),
                  (0, 1, -1, 0), (1, 0, 0, -1), (0, 1, 0, -1), (0, 0, 1, -1))
_DETAIL_TERMS = ((1, -1, 0, 0), (1, 0, -1, 0), (1, 0, 0, -1), (0, 1, 0, -1))


def _fold(weight: torch.Tensor, terms: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """A convolution's weight over combinations of the maps, rewritten as a weight over the maps themselves.

    Args:
        weight: (out, 3 * len(terms) + 1, k, k), the input groups in the order of `terms`, the evidence last.
        terms: per 3-channel input group, its coefficient on each of the 3-channel maps.

    Returns:
        (out, 3 * maps + 1, k, k): the same convolution applied to the maps and the evidence.
    """
    groups = weight[:, :-1].unflatten(1, (len(terms), 3))
    mix = torch.tensor(terms, dtype=weight.dtype, device=weight.device)
    folded = torch.einsum("ogckl,gm->omckl", groups, mix).flatten(1, 2)
    return torch.cat([folded, weight[:, -1:]], dim=1)


class TemporalFusion(nn.Module):
    """Per-pixel trust maps from the frame, the frame student's output and the aligned history."""

    scale = 4
    state_channels = 6

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        c = config.context_width
        # x, f, bg, xm, their six differences (3 channels each) and the evidence.
        inputs = 31
        self.context = nn.Sequential(
            nn.Conv2d(inputs, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=4, dilation=4), nn.ReLU(),
            nn.Conv2d(c, 6, 1),
        )
        # x - f, x - bg, x - xm, f - xm and the evidence.
        self.detail = nn.Sequential(
            nn.Conv2d(13, config.detail_width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(config.detail_width, 6, 1),
        )
        with torch.no_grad():
            # Start as a plain running mean of input and frame estimate, the memory nearly unused:
            # p = (0.47, 0.47, 0.06), lam 0.73, omega 0.56, step memory_step / 2.
            last = self.context[-1]
            last.weight.mul_(0.1)
            last.bias.copy_(torch.tensor([0.0, 0.0, -2.0, 1.0, 0.0, 0.0]))
            self.detail[-1].weight.mul_(0.1)
            self.detail[-1].bias.zero_()

    def forward(self, x: torch.Tensor, f: torch.Tensor, state: torch.Tensor, weight: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (output, new state, new weight)."""
        bg, xm = state[:, 0:3], state[:, 3:6]
        # Where there is no history (a reset, what came into view) the memory starts as the frame student's
        # estimate: the input would carry that frame's streaks and flakes into the next frames.
        known = torch.clamp(weight * 8.0, max=1.0)
        xm = f + known * (xm - f)
        evidence = weight * (1.0 / self.config.max_weight)
        # Both paths see the maps and their differences. Pooling and the first convolutions are linear, so
        # the differences are folded into the convolutions' weights: one 13-channel concatenation feeds
        # both paths, the same function at a third of the full-resolution memory traffic.
        maps = torch.cat([x, f, bg, xm, evidence], dim=1)
        first = self.context[0]
        small = F.avg_pool2d(maps, self.scale)
        hidden = F.conv2d(small, _fold(first.weight, _CONTEXT_TERMS), first.bias, padding=1)
        context = F.interpolate(self.context[1:](hidden), scale_factor=float(self.scale), mode="bilinear",
                                align_corners=False)
        detail = self.detail[0]
        hidden = F.conv2d(maps, _fold(detail.weight, _DETAIL_TERMS), detail.bias, padding=1)
        logits = context + self.detail[1:](hidden)
        # A softmax over the three mixing logits, written out: ONNX Runtime's Softmax over the channel axis
        # transposes the whole map and cost a sixth of the video student's time on a CPU.
        top = torch.maximum(torch.maximum(logits[:, 0:1], logits[:, 1:2]), logits[:, 2:3])
        e = torch.exp(logits[:, 0:3] - top)
        e_x, e_f, e_m = e[:, 0:1], e[:, 1:2], e[:, 2:3]
        lam = torch.sigmoid(logits[:, 3:4])
        # At least 1/8 of a frame's evidence, so that a pixel with any history counts as known.
        omega = 0.125 + 0.875 * torch.sigmoid(logits[:, 4:5])
        step = self.config.memory_step * torch.sigmoid(logits[:, 5:6])
        g = (e_x * x + e_f * f + e_m * xm) / (e_x + e_f + e_m)
        kept = lam * weight
        total = kept + omega
        new_bg = (kept * bg + omega * g) / total
        new_xm = xm + _clamp(x - xm, step)
        new_weight = torch.clamp(total, max=self.config.max_weight)
        return new_bg, torch.cat([new_bg, new_xm], dim=1), new_weight


class VideoStudent(nn.Module):
    """A frame student and the temporal fusion; `forward(x, state, weight) -> (y, state', weight')`.

    `state` is (N, `state_channels`, H, W) (the background and the input memory) and `weight`
    (N, 1, H, W), both zero at the start of a stream (`initial_state`). The frame student's weights
    may be frozen while the fusion trains.
    """

    stateful = True
    state_channels = TemporalFusion.state_channels

    def __init__(self, frame: nn.Module, config: FusionConfig | None = None) -> None:
        super().__init__()
        self.frame = frame
        self.fusion = TemporalFusion(config or FusionConfig())
        self.pad_multiple = max(int(getattr(frame, "pad_multiple", 1)), TemporalFusion.scale)

    def forward(self, x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Restore frame `x` given the aligned state; return the output and the next state."""
        f = self.frame(x)
        return self.fusion(x, f, state, weight)

    def step_from_frame(self, x: torch.Tensor, f: torch.Tensor, state: torch.Tensor, weight: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` with the frame student's output `f` already computed (training with a frozen frame)."""
        return self.fusion(x, f, state, weight)

    @classmethod
    def initial_state(cls, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty state for frames shaped like `x`: no background, no memory, no evidence."""
        n, _, h, w = x.shape
        return x.new_zeros(n, cls.state_channels, h, w), x.new_zeros(n, 1, h, w)


def _video(frame_arch: str, frame_options: dict[str, object] | None, overrides: dict[str, object]) -> VideoStudent:
    frame = build(frame_arch, **dict(frame_options or {}))
    return VideoStudent(frame, dataclasses.replace(FusionConfig(), **overrides))


@register_model
def video_small(frame_arch: str = "student_small", frame_options: dict[str, object] | None = None,
                **overrides: object) -> nn.Module:
    """The real-time video student: `fast`'s frame network and a temporal fusion (+4 kFLOP per pixel)."""
    return _video(frame_arch, frame_options, overrides)


@register_model
def video_base(frame_arch: str = "student_base", frame_options: dict[str, object] | None = None,
               **overrides: object) -> nn.Module:
    """The larger video student: `quality`'s frame network and a wider fusion (GPUs and offline work)."""
    return _video(frame_arch, frame_options, {"context_width": 48, "detail_width": 16, **overrides})
