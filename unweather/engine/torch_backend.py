"""The PyTorch backend: eager inference on CPU or CUDA, optionally compiled or replayed as CUDA graphs."""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import nn

from unweather.engine.base import Engine
from unweather.errors import UnweatherError

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# CUDA graphs kept for this many input shapes; each holds its own input, output and memory pool.
_MAX_GRAPHS = 4


class TorchEngine(Engine):
    """Runs an `nn.Module` with torch.

    Args:
        net: the network (a registry model; `pad_multiple` and `min_size` are read from it).
        device: "cpu", "cuda" or "cuda:N".
        precision: "fp32", "fp16" or "bf16"; weights and arithmetic in that type, frames converted
            at the edges. fp16 on the CPU works but is slow (few CPU kernels are native in fp16).
        channels_last: store activations NHWC (default: on CUDA, where cuDNN's tensor-core kernels
            prefer it; off on the CPU).
        compile: `torch.compile` the network (True, or a mode such as "max-autotune").
        cuda_graph: capture one CUDA graph per input shape and replay it (CUDA only); each call
            copies the frames into the graph's input and returns a copy of its output.

    The output is clamped to [0, 1], as the exported graphs clamp theirs.
    """

    backend = "torch"
    output_clamped = True

    def __init__(
        self,
        net: nn.Module,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        channels_last: bool | None = None,
        compile: bool | str = False,
        cuda_graph: bool = False,
    ) -> None:
        super().__init__(torch.device(device), precision, int(getattr(net, "pad_multiple", 1)),
                         int(getattr(net, "min_size", 1)))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UnweatherError("device 'cuda' was asked for, but torch sees no CUDA GPU")
        if cuda_graph and self.device.type != "cuda":
            raise UnweatherError("cuda_graph needs a CUDA device")
        if precision == "fp16" and self.device.type == "cpu":
            logger.warning("fp16 on the CPU with torch is slow (few native kernels); fp32 or bf16 run faster")
        self.dtype = DTYPES[precision]
        self.channels_last = self.device.type == "cuda" if channels_last is None else bool(channels_last)
        self.stateful = bool(getattr(net, "stateful", False))
        self.state_channels = int(getattr(net, "state_channels", 0))
        self.net = net.eval().to(device=self.device, dtype=self.dtype)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._forward = self.net
        if compile:
            mode = compile if isinstance(compile, str) else None
            self._forward = torch.compile(self.net, mode=mode, dynamic=False)
        self.cuda_graph = bool(cuda_graph)
        self._graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = OrderedDict()

    def _prepare(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @torch.inference_mode()
    def infer(self, frames: torch.Tensor) -> torch.Tensor:
        x = self._prepare(frames)
        if self.cuda_graph:
            out = self._replay(x).clamp_(0.0, 1.0)  # the caller's own copy
        else:
            # Out of place: a network may hand back its input (identity), which may be the caller's frames.
            out = self._forward(x).clamp(0.0, 1.0)
        return out.to(frames.dtype).contiguous()

    @torch.inference_mode()
    def infer_step(self, frames: torch.Tensor, bg: torch.Tensor, weight: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, new_bg, new_weight = self._forward(self._prepare(frames), self._prepare(bg), self._prepare(weight))
        return (out.clamp(0.0, 1.0).to(frames.dtype).contiguous(), new_bg.to(bg.dtype).contiguous(),
                new_weight.to(weight.dtype).contiguous())

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(x)
            self._graphs[key] = entry
            if len(self._graphs) > _MAX_GRAPHS:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        # The next replay overwrites static_out: hand the caller its own copy.
        return static_out.clone()

    def _capture(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        logger.info("capturing a CUDA graph for input shape %s", tuple(x.shape))
        static_in = x.clone()
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up outside the capture: cuDNN autotuning, lazy init
                self._forward(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._forward(static_in)
        return graph, static_in, static_out

    def close(self) -> None:
        self._graphs.clear()
