"""Size handling shared by every caller: reflect-pad to the multiple a network needs, crop back."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def padded_size(size: int, multiple: int, min_size: int = 1) -> int:
    """Return the smallest multiple of `multiple` that is at least `size` and `min_size`."""
    target = max(size, min_size, 1)
    return -(-target // multiple) * multiple


def single_reflect_fits(size: int, multiple: int, min_size: int = 1) -> bool:
    """Whether one reflection pads `size` to `padded_size` (the padding is smaller than `size`).

    Then `pad_to_multiple` is a single reflect pad, which an ONNX `Pad` in reflect mode computes
    the same way; smaller sizes need several steps (or replication) and are padded before such a graph.
    """
    return padded_size(size, multiple, min_size) - size <= size - 1


def min_single_reflect_side(multiple: int, min_size: int = 1) -> int:
    """The smallest side from which every larger side passes `single_reflect_fits`."""
    # Beyond max(multiple, min_size) the padding is under `multiple`, hence under the size.
    side = max(multiple, min_size, 1)
    while side > 1 and single_reflect_fits(side - 1, multiple, min_size):
        side -= 1
    return side


def pad_to_multiple(x: torch.Tensor, multiple: int, min_size: int = 1) -> torch.Tensor:
    """Pad the last two dimensions of `x` at the bottom and right to a multiple of `multiple`.

    Both dimensions are also padded to at least `min_size` (some networks need more rows than
    one multiple at their coarsest level). Reflection is used wherever the frame is large enough;
    a dimension too small to reflect (1 pixel) is replicated. No pixel that is kept afterwards
    changes.
    """
    h, w = x.shape[-2:]
    pad_h = padded_size(h, multiple, min_size) - h
    pad_w = padded_size(w, multiple, min_size) - w
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


def pad_for_graph(x: torch.Tensor, multiple: int, min_size: int = 1) -> torch.Tensor:
    """`x` for a graph that reflect-pads frames itself (see `unweather.engine.export`).

    Such a graph pads with one reflection, which covers frames whose sides pass
    `single_reflect_fits`; those are returned as they are. Smaller frames are padded here with
    `pad_to_multiple` (the graph then pads nothing), so the result is the same either way.
    """
    h, w = x.shape[-2:]
    if single_reflect_fits(h, multiple, min_size) and single_reflect_fits(w, multiple, min_size):
        return x
    return pad_to_multiple(x, multiple, min_size)


class PadCrop(nn.Module):
    """Wrap a network so it takes any frame size: pad to its `pad_multiple`, run, crop back.

    A network may also declare `min_size`, the smallest height and width it accepts.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.multiple = int(getattr(net, "pad_multiple", 1))
        self.min_size = int(getattr(net, "min_size", 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self.net(pad_to_multiple(x, self.multiple, self.min_size))[..., :h, :w]
