"""The PyTorch backend: eager (optionally compiled) inference on CPU or CUDA."""

from __future__ import annotations

import torch
from torch import nn

from unweather.engine.base import Engine

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchEngine(Engine):
    """Runs an `nn.Module` with torch."""

    backend = "torch"

    def __init__(self, net: nn.Module, device: torch.device | str = "cpu", precision: str = "fp32") -> None:
        super().__init__(torch.device(device), precision, int(getattr(net, "pad_multiple", 1)))
        self.dtype = _DTYPES[precision]
        self.net = net.eval().to(device=self.device, dtype=self.dtype)

    @torch.inference_mode()
    def infer(self, frames: torch.Tensor) -> torch.Tensor:
        out = self.net(frames.to(self.dtype))
        return out.to(frames.dtype)
