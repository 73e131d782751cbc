"""The one small interface every inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from typing_extensions import Self

from unweather.errors import UnweatherError
from unweather.models.padding import pad_for_graph, pad_to_multiple

# int8: a QDQ graph (convolutions in INT8, see unweather.engine.quantize), run by ONNX Runtime.
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


class Engine(ABC):
    """Restores a batch of frames: (N, 3, H, W) float in [0, 1] on `device` -> the same.

    Subclasses implement `infer` on frames already padded to `multiple` (and to `min_size`); the
    base class pads and crops, so every backend takes any frame size. A backend whose graph pads
    frames itself (`pads_in_graph`: our ONNX exports, and TensorRT engines built from them) gets
    them as they are, padded here only when they are too small for the graph's single reflection,
    so the result is the same. Outputs are clamped to [0, 1] (by the backend when
    `output_clamped`, else here). With `set_tiling`, frames larger than the tile are restored tile
    by tile (see `unweather.engine.tiling`).

    Attributes:
        backend: the backend's name ("torch", "onnxruntime", "tensorrt").
        device: where input and output tensors live.
        precision: the arithmetic precision the network runs in ("fp32", "fp16", "bf16", "int8").
        multiple: the size multiple the network needs.
        min_size: the smallest height and width the network takes.
        pads_in_graph: `infer` takes frames of any size (the graph pads and crops them itself).
        output_clamped: `infer` already returns values in [0, 1].
        model: what the engine was opened from (a registry name or a file), for logs.
    """

    backend: str = ""
    pads_in_graph: bool = False
    output_clamped: bool = False
    # A video network: `step` carries its state from frame to frame (see `unweather.engine.session`),
    # `state_channels` channels of it beside the one-channel weight.
    stateful: bool = False
    state_channels: int = 0

    def __init__(self, device: torch.device | str, precision: str, multiple: int, min_size: int = 1) -> None:
        if precision not in PRECISIONS:
            raise UnweatherError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        self.device = torch.device(device)
        self.precision = precision
        self.multiple = max(1, int(multiple))
        self.min_size = max(1, int(min_size))
        self.model = ""
        self.tile: int | None = None
        self.tile_overlap = 0

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise UnweatherError(f"expected frames of shape (N, 3, H, W), got {tuple(frames.shape)}")
        if frames.device != self.device and not _same_device(frames.device, self.device):
            raise UnweatherError(f"frames are on {frames.device} but the engine runs on {self.device}; "
                                 "move them with .to(engine.device)")
        h, w = frames.shape[-2:]
        if self.stateful:
            # Frames taken one by one with no history (a still image, a benchmark call); a stream carries
            # its state through `unweather.engine.session.VideoSession` instead.
            return self.step(frames, self.empty_state(frames))[0]
        if self.tile is not None and (h > self.tile or w > self.tile):
            from unweather.engine.tiling import tiled

            return tiled(self._whole, frames, self.tile, self.tile_overlap)
        return self._whole(frames)

    def _whole(self, frames: torch.Tensor) -> torch.Tensor:
        h, w = frames.shape[-2:]
        pad = pad_for_graph if self.pads_in_graph else pad_to_multiple
        out = self.infer(pad(frames, self.multiple, self.min_size))[..., :h, :w]
        return out if self.output_clamped else out.clamp(0.0, 1.0)

    @abstractmethod
    def infer(self, frames: torch.Tensor) -> torch.Tensor:
        """Run the network on frames whose height and width are multiples of `multiple`."""

    def step(self, frames: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One step of a video network: restore `frames` (N, 3, H, W) given its aligned state.

        `state` is (state (N, `state_channels`, H, W), weight (N, 1, H, W)) at the frames' size, zeros for
        a new stream (`empty_state`); the new state comes back at the same size. Frames are padded and
        cropped as in `__call__`.
        """
        if not self.stateful:
            raise UnweatherError(f"{self.model or 'this network'} is not a video network; it has no state")
        h, w = frames.shape[-2:]
        pad = pad_for_graph if self.pads_in_graph else pad_to_multiple
        bg, weight = state
        out, bg, weight = self.infer_step(*(pad(t, self.multiple, self.min_size) for t in (frames, bg, weight)))
        out = out[..., :h, :w]
        return (out if self.output_clamped else out.clamp(0.0, 1.0)), (bg[..., :h, :w], weight[..., :h, :w])

    def empty_state(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A video network's state for a new stream of frames shaped like `frames`: all zeros."""
        n, _, h, w = frames.shape
        return frames.new_zeros(n, self.state_channels, h, w), frames.new_zeros(n, 1, h, w)

    def infer_step(self, frames: torch.Tensor, bg: torch.Tensor, weight: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A video network's step on padded tensors; backends that run video networks implement it."""
        raise UnweatherError(f"the {self.backend} backend does not run video networks yet")

    def set_tiling(self, tile: int | None, overlap: int = 32) -> None:
        """Restore frames larger than `tile` x `tile` in overlapping tiles (None: whole frames).

        Args:
            tile: the tile's height and width, a multiple of `multiple`.
            overlap: pixels shared by neighbouring tiles; seams are blended across it. It should
                be at least four times the network's receptive radius for tiles to match
                whole-frame inference (half of it is a margin where a tile's output is ignored).
        """
        if tile is None:
            self.tile = None
            return
        tile, overlap = int(tile), int(overlap)
        if tile < self.multiple or tile % self.multiple or tile < self.min_size:
            raise UnweatherError(f"tile size {tile} must be a multiple of {self.multiple} and at least "
                                 f"{max(self.multiple, self.min_size)} for this network")
        if not 0 <= overlap <= tile // 2:
            raise UnweatherError(f"tile overlap {overlap} must be between 0 and half the tile ({tile // 2})")
        self.tile, self.tile_overlap = tile, overlap

    def close(self) -> None:  # noqa: B027 - a backend with nothing to release keeps this no-op
        """Release what the engine holds."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """One line naming backend, precision and device, for logs."""
        tiles = f", tiles {self.tile} overlap {self.tile_overlap}" if self.tile else ""
        return f"{self.backend} {self.precision} on {self.device}{tiles}"


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" and "cuda:0" name the same device when 0 is the current one.
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
