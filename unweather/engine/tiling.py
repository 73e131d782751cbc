"""Tiled inference: restore a frame in overlapping tiles and blend the seams.

For frames larger than a TensorRT profile allows or than a GPU's memory holds. Tiles are spread
evenly so the last one ends exactly at the frame's edge (edge clamping: no tile reaches outside
the frame, so no tile needs padding there). Each tile's output is weighted by a ramp that is zero
in a margin of a quarter of the overlap next to an inner tile edge, where a convolution sees the
tile's border instead of the neighbouring pixels, and rises linearly to one across the rest of the
overlap; outputs are summed with their weights and divided by the summed weights. For a fully
convolutional network whose receptive radius is within the margin, the result equals whole-frame
inference up to rounding. Networks with a global path (pooled context, as in our students) see
slightly different statistics per tile, so their tiled output differs a little.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering `size` pixels, overlapping by at least `overlap`.

    The tiles are spread evenly; the first starts at 0 and the last ends at `size`.
    """
    if size <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((size - overlap) / stride) if stride > 0 else 2
    count = max(count, 2)
    last = size - tile
    return [round(i * last / (count - 1)) for i in range(count)]


def _ramp(length: int, left: int | None, right: int | None, device: torch.device) -> torch.Tensor:
    """Blend weights along one axis of a tile; `left`/`right` are the overlaps with its neighbours."""
    weight = torch.ones(length, dtype=torch.float32, device=device)
    pos = torch.arange(length, dtype=torch.float32, device=device) + 0.5
    for shared, dist in ((left, pos), (right, length - pos)):
        if shared:
            margin = shared // 4
            span = max(shared - 2 * margin, 1)
            weight = weight * ((dist - margin) / span).clamp(0.0, 1.0)
    return weight


def _neighbour_overlaps(starts: list[int], tile: int, size: int) -> list[tuple[int | None, int | None]]:
    lengths = [min(tile, size - s) for s in starts]
    result = []
    for i, s in enumerate(starts):
        left = starts[i - 1] + lengths[i - 1] - s if i > 0 else None
        right = s + lengths[i] - starts[i + 1] if i + 1 < len(starts) else None
        result.append((left, right))
    return result


def tiled(run: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Apply `run` (any size in, same size out) to `frames` in overlapping tiles and blend them."""
    n, _, h, w = frames.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    y_shared, x_shared = _neighbour_overlaps(ys, tile, h), _neighbour_overlaps(xs, tile, w)
    out: torch.Tensor | None = None
    total = torch.zeros(h, w, dtype=torch.float32, device=frames.device)
    for y, (top, bottom) in zip(ys, y_shared):
        th = min(tile, h - y)
        wy = _ramp(th, top, bottom, frames.device)
        for x, (left, right) in zip(xs, x_shared):
            tw = min(tile, w - x)
            weight = wy[:, None] * _ramp(tw, left, right, frames.device)[None, :]
            piece = run(frames[:, :, y:y + th, x:x + tw]).float()
            if out is None:
                out = torch.zeros(n, piece.shape[1], h, w, dtype=torch.float32, device=frames.device)
            out[:, :, y:y + th, x:x + tw] += piece * weight
            total[y:y + th, x:x + tw] += weight
    assert out is not None
    return (out / total).to(frames.dtype)
