"""`identity`: returns its input, for testing the video path without a network's cost."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unweather.models.registry import register_model


class Identity(nn.Module):
    """A network that returns its input; its feature taps are the input pooled to 1/4..1/16."""

    pad_multiple = 16
    tap_channels = (3, 3, 3, 3)

    def forward(self, x: torch.Tensor, return_feat: bool = False):
        if not return_feat:
            return x
        taps = [F.avg_pool2d(x, s) for s in (4, 8, 16, 16)]
        return x, taps


@register_model
def identity() -> nn.Module:
    """The identity network."""
    return Identity()
