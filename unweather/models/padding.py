"""Size handling shared by every caller: reflect-pad to the multiple a network needs, crop back."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the last two dimensions of `x` at the bottom and right to a multiple of `multiple`.

    Reflection is used wherever the frame is large enough; a dimension too small to reflect
    (1 pixel) is replicated. No pixel that is kept afterwards changes.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    while pad_h or pad_w:
        # Reflection needs pad < size: grow in steps for frames smaller than the padding.
        step_h = min(pad_h, x.shape[-2] - 1)
        step_w = min(pad_w, x.shape[-1] - 1)
        if step_h == 0 and step_w == 0:
            return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        x = F.pad(x, (0, step_w, 0, step_h), mode="reflect")
        pad_h -= step_h
        pad_w -= step_w
    return x


class PadCrop(nn.Module):
    """Wrap a network so it takes any frame size: pad to its `pad_multiple`, run, crop back."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.multiple = int(getattr(net, "pad_multiple", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.net(pad_to_multiple(x, self.multiple))[..., :h, :w]
