"""Counting a network's arithmetic: FLOPs for one frame, per pixel."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from unweather.models.padding import padded_size


def count_flops(model: nn.Module, height: int, width: int) -> int:
    """Return the FLOPs of one forward pass on a (1, 3, height, width) frame.

    A multiply-add counts as 2 FLOPs; convolutions and matrix products are counted, cheap
    elementwise operations are not. The frame is first padded as `PadCrop` would, so the count
    is what a caller pays for that frame size. A video network (`stateful`) gets its state too. Nothing
    is computed: the network is copied to the meta device.
    """
    multiple = int(getattr(model, "pad_multiple", 1))
    min_size = int(getattr(model, "min_size", 1))
    h = padded_size(height, multiple, min_size)
    w = padded_size(width, multiple, min_size)
    meta_model = copy.deepcopy(model).to("meta").eval()
    x = torch.zeros(1, 3, h, w, device="meta")
    counter = FlopCounterMode(display=False)
    inputs = (x, *meta_model.initial_state(x)) if getattr(meta_model, "stateful", False) else (x,)
    with counter, torch.no_grad():
        meta_model(*inputs)
    return int(counter.get_total_flops())

