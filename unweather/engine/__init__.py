"""Inference engines behind one interface: torch, ONNX Runtime and TensorRT backends."""

from __future__ import annotations

import torch

from unweather.engine.base import Engine


def open(model: str = "identity", backend: str = "torch", precision: str = "fp32",  # noqa: A001
         device: str | torch.device = "cpu") -> Engine:
    """Open an engine for `model` (a registry name for now) on `backend`."""
    from unweather.engine.torch_backend import TorchEngine
    from unweather.models import build

    return TorchEngine(build(model), device=device, precision=precision)


__all__ = ["Engine", "open"]
