"""The one small interface every inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from unweather.errors import UnweatherError
from unweather.models.padding import pad_to_multiple


class Engine(ABC):
    """Restores a batch of frames: (N, 3, H, W) float in [0, 1] on `device` -> the same.

    Subclasses implement `infer` on frames already padded to `multiple`; the base class pads
    and crops, so every backend takes any frame size.

    Attributes:
        backend: the backend's name ("torch", "onnxruntime", "tensorrt").
        device: where input and output tensors live.
        precision: the arithmetic precision the network runs in ("fp32", "fp16", "bf16").
        multiple: the size multiple the network needs.
    """

    backend: str = ""

    def __init__(self, device: torch.device, precision: str, multiple: int) -> None:
        self.device = torch.device(device)
        self.precision = precision
        self.multiple = multiple

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise UnweatherError(f"expected frames of shape (N, 3, H, W), got {tuple(frames.shape)}")
        h, w = frames.shape[-2:]
        out = self.infer(pad_to_multiple(frames, self.multiple))
        return out[..., :h, :w]

    @abstractmethod
    def infer(self, frames: torch.Tensor) -> torch.Tensor:
        """Run the network on frames whose height and width are multiples of `multiple`."""

    def close(self) -> None:
        """Release what the engine holds."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """One line naming backend, precision and device, for logs."""
        return f"{self.backend} {self.precision} on {self.device}"
