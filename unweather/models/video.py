"""The video student: a frame student plus a causal, recurrent temporal fusion.

Rain and snow never stay in one place from frame to frame, while a fixed camera's scene does. The
fusion keeps, per pixel, a running estimate of the clean background and how much evidence it holds,
and decides per pixel how far to trust it:

- `g = f + m (x - f)`: the frame's own best estimate, where `f` is the frame student's output and
  `m` the trust that the input pixel is clean (on snow most pixels are untouched; where a flake or a
  streak sits, the frame student's guess is used);
- `W' = min(lam W + omega, W_max)` and `bg' = (lam W bg + omega g) / (lam W + omega)`: a running
  weighted mean whose history is kept with `lam` (near 0 where the camera moved beyond the
  alignment, an object moved or the scene changed) and fed with weight `omega` (how good `g` is);
- the output is `bg'`. With no history (`W = 0`, a reset) it is `g`.

`m`, `lam` and `omega` come from a small network at a quarter of the resolution (context: motion,
weather, scene change) plus a thin full-resolution path (the edges of flakes and streaks).

The state (`bg`, `W`) goes in and out of the network as explicit tensors, so an exported graph is a
plain function with three inputs and three outputs; the runtime aligns the state to the new frame
with a global motion estimate between frames (`unweather.stream.video_state`) and resets it on a
cut. Only operators that ONNX export and TensorRT run natively: Conv, Relu, Sigmoid, Add, Sub, Mul,
Div, Min, AveragePool, Resize (bilinear) and Concat, plus the frame student's.
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
    """

    context_width: int = 24
    detail_width: int = 8
    max_weight: float = 16.0


class TemporalFusion(nn.Module):
    """Per-pixel trust maps from the frame, the frame student's output and the aligned history."""

    scale = 4

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        c = config.context_width
        # x, f, bg, x - f, x - bg, f - bg (3 channels each) and the evidence.
        inputs = 19
        self.context = nn.Sequential(
            nn.Conv2d(inputs, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=4, dilation=4), nn.ReLU(),
            nn.Conv2d(c, 3, 1),
        )
        self.detail = nn.Sequential(
            nn.Conv2d(10, config.detail_width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(config.detail_width, 3, 1),
        )
        with torch.no_grad():
            # Start as a plain running mean that trusts clean-looking input: m, lam, omega = 0.5, 0.73, 0.5.
            last = self.context[-1]
            last.weight.mul_(0.1)
            last.bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
            self.detail[-1].weight.mul_(0.1)
            self.detail[-1].bias.zero_()

    def forward(self, x: torch.Tensor, f: torch.Tensor, bg: torch.Tensor, weight: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (output, new background, new weight)."""
        evidence = weight * (1.0 / self.config.max_weight)
        dxf, dxb, dfb = x - f, x - bg, f - bg
        full = torch.cat([x, f, bg, dxf, dxb, dfb, evidence], dim=1)
        small = F.avg_pool2d(full, self.scale)
        context = F.interpolate(self.context(small), scale_factor=float(self.scale), mode="bilinear",
                                align_corners=False)
        logits = context + self.detail(torch.cat([dxf, dxb, dfb, evidence], dim=1))
        m = torch.sigmoid(logits[:, 0:1])
        lam = torch.sigmoid(logits[:, 1:2])
        omega = torch.sigmoid(logits[:, 2:3]) + 1e-3
        g = f + m * dxf
        kept = lam * weight
        total = kept + omega
        new_bg = (kept * bg + omega * g) / total
        new_weight = torch.clamp(total, max=self.config.max_weight)
        return new_bg, new_bg, new_weight


class VideoStudent(nn.Module):
    """A frame student and the temporal fusion; `forward(x, bg, weight) -> (y, bg', weight')`.

    `bg` is (N, 3, H, W) and `weight` (N, 1, H, W), both zero at the start of a stream
    (`initial_state`). The frame student's weights may be frozen while the fusion trains.
    """

    stateful = True

    def __init__(self, frame: nn.Module, config: FusionConfig | None = None) -> None:
        super().__init__()
        self.frame = frame
        self.fusion = TemporalFusion(config or FusionConfig())
        self.pad_multiple = max(int(getattr(frame, "pad_multiple", 1)), TemporalFusion.scale)

    def forward(self, x: torch.Tensor, bg: torch.Tensor, weight: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Restore frame `x` given the aligned state; return the output and the next state."""
        f = self.frame(x)
        return self.fusion(x, f, bg, weight)

    def step_from_frame(self, x: torch.Tensor, f: torch.Tensor, bg: torch.Tensor, weight: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` with the frame student's output `f` already computed (training with a frozen frame)."""
        return self.fusion(x, f, bg, weight)

    @staticmethod
    def initial_state(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty state for frames shaped like `x`: no background, no evidence."""
        n, _, h, w = x.shape
        return x.new_zeros(n, 3, h, w), x.new_zeros(n, 1, h, w)


def _video(frame_arch: str, frame_options: dict[str, object] | None, overrides: dict[str, object]) -> VideoStudent:
    frame = build(frame_arch, **dict(frame_options or {}))
    return VideoStudent(frame, dataclasses.replace(FusionConfig(), **overrides))


@register_model
def video_small(frame_arch: str = "student_small", frame_options: dict[str, object] | None = None,
                **overrides: object) -> nn.Module:
    """The real-time video student: `fast`'s frame network and a temporal fusion (+3.3 kFLOP per pixel)."""
    return _video(frame_arch, frame_options, overrides)


@register_model
def video_base(frame_arch: str = "student_base", frame_options: dict[str, object] | None = None,
               **overrides: object) -> nn.Module:
    """The larger video student: `quality`'s frame network and a wider fusion (GPUs and offline work)."""
    return _video(frame_arch, frame_options, {"context_width": 48, "detail_width": 16, **overrides})
