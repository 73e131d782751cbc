"""The TensorRT backend: a deserialised engine run on torch tensors on the current torch CUDA stream.

No pycuda and no CUDA context of our own: torch owns the context, the memory and the streams.
Inputs and outputs are torch tensors whose addresses are handed to the execution context with
`set_tensor_address`; `execute_async_v3` enqueues the engine on torch's current stream, so it is
ordered after the torch work that produced the frames and before the work that consumes the
result, without synchronising the device.

A video network's engine has three inputs and three outputs (`unweather.engine.export.VIDEO_INPUTS`,
`VIDEO_OUTPUTS`): the engine is then `stateful`, and `step` sets each input's shape and every tensor's
address by name before the one `execute_async_v3`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from unweather.engine.base import Engine
from unweather.engine.tensorrt_build import (
    EngineLoadError,
    format_shape,
    gpu_identity,
    import_tensorrt,
    make_logger,
    profile_error,
    read_sidecar,
)
from unweather.errors import UnweatherError

logger = logging.getLogger(__name__)

__all__ = ["EngineLoadError", "TensorRTEngine", "video_io"]


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if hasattr(trt.DataType, "BF16"):
        table[trt.DataType.BF16] = torch.bfloat16
    if dtype not in table:
        raise UnweatherError(f"the engine's frames are {dtype}; an engine needs float, half or bfloat16 frames")
    return table[dtype]


def video_io(inputs: list[str], outputs: list[str], plan: str | os.PathLike[str] = "the engine"
             ) -> tuple[list[str], list[str]]:
    """The engine's input and output tensor names in the order `step` passes them.

    One of each (a frame network), or a video network's three of each, by our exports' names
    (`VIDEO_INPUTS`, `VIDEO_OUTPUTS`) when it has them, else in the engine's order.

    Raises:
        UnweatherError: any other number of inputs or outputs.
    """
    from unweather.engine.export import VIDEO_INPUTS, VIDEO_OUTPUTS

    if len(inputs) == len(outputs) == 1:
        return list(inputs), list(outputs)
    if len(inputs) == len(outputs) == len(VIDEO_INPUTS):
        if sorted(inputs) == sorted(VIDEO_INPUTS) and sorted(outputs) == sorted(VIDEO_OUTPUTS):
            return list(VIDEO_INPUTS), list(VIDEO_OUTPUTS)
        return list(inputs), list(outputs)
    raise UnweatherError(f"{plan} has {len(inputs)} inputs and {len(outputs)} outputs; an engine needs one each "
                         f"(a frame network) or three each (a video network: {', '.join(VIDEO_INPUTS)})")


class TensorRTEngine(Engine):
    """Runs a serialised TensorRT engine.

    Args:
        plan: the engine file.
        device: the CUDA device it runs on (the one it was built for).
        precision: the precision it computes in (from its sidecar; default "fp16").
        multiple: the size multiple (default: from the sidecar, else 16).
        min_size: the smallest height and width (default: from the sidecar, else 1).

    Raises:
        EngineLoadError: the file does not deserialise with this TensorRT on this GPU.
    """

    backend = "tensorrt"

    def __init__(self, plan: str | os.PathLike[str], device: torch.device | str = "cuda",
                 precision: str | None = None, multiple: int | None = None, min_size: int | None = None) -> None:
        trt = import_tensorrt()
        meta = read_sidecar(plan) or {}
        device = torch.device(device)
        if device.type != "cuda":
            raise UnweatherError(f"TensorRT runs on CUDA devices, not {device}")
        if not torch.cuda.is_available():
            raise UnweatherError("TensorRT needs a CUDA GPU, and torch sees none")
        index = device.index if device.index is not None else torch.cuda.current_device()
        super().__init__(torch.device("cuda", index), precision or meta.get("precision", "fp16"),
                         int(multiple or meta.get("pad_multiple", 16)), int(min_size or meta.get("min_size", 1)))
        # Engines built from graphs that pad, crop and clamp themselves take frames as they are.
        self.pads_in_graph = bool(meta.get("pads_in_graph", False))
        self.output_clamped = bool(meta.get("clamped", False))
        self.plan = Path(plan)
        self._logger = make_logger(trt)
        data = self.plan.read_bytes()
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(data) if data else None
            if engine is None:
                raise EngineLoadError(self._load_failure(meta, str(trt.__version__)))
            self._engine = engine
            self._context = engine.create_execution_context()
        if self._context is None:
            raise UnweatherError(f"TensorRT could not create an execution context for {plan} (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_names, self.output_names = video_io(inputs, outputs, plan)
        self.stateful = len(self.input_names) > 1
        if self.stateful:
            self.state_channels = int(engine.get_tensor_shape(self.input_names[1])[1])
        self.input_name, self.output_name = self.input_names[0], self.output_names[0]
        self.dtypes = {n: _torch_dtype(trt, engine.get_tensor_dtype(n)) for n in (*self.input_names,
                                                                                  *self.output_names)}
        self.input_dtype = self.dtypes[self.input_name]
        self.output_dtype = self.dtypes[self.output_name]
        low, opt, high = engine.get_tensor_profile_shape(self.input_name, 0)
        self.profile = (tuple(low), tuple(opt), tuple(high))
        self._keep: tuple[torch.Tensor, ...] | None = None
        logger.debug("TensorRT engine %s: %s -> %s, profile min %s opt %s max %s", plan, self.input_name,
                     self.output_name, format_shape(self.profile[0]), format_shape(self.profile[1]),
                     format_shape(self.profile[2]))

    def _load_failure(self, meta: dict[str, Any], version: str) -> str:
        here = f"TensorRT {version}"
        try:
            gpu, capability = gpu_identity(self.device)
            here += f" on {gpu} (compute {capability})"
        except UnweatherError:
            pass
        built = ""
        if meta:
            built = (f", built with TensorRT {meta.get('tensorrt')} for {meta.get('gpu')} "
                     f"(compute {meta.get('compute_capability')})")
        return f"{here} cannot deserialise {self.plan}{built}; it is from another TensorRT or GPU, or damaged"

    def infer(self, frames: torch.Tensor) -> torch.Tensor:
        if self.stateful:
            raise UnweatherError(f"{self.plan} is a video network: run it over a stream with "
                                 "unweather.engine.session.VideoSession (or Engine.step with its state)")
        shape = tuple(frames.shape)
        error = profile_error(shape, self.profile[0], self.profile[2], padded=not self.pads_in_graph)
        if error is not None:
            raise error
        x = frames.detach().to(self.input_dtype).contiguous()
        context = self._context
        if not context.set_input_shape(self.input_name, shape):
            raise UnweatherError(f"TensorRT refused input shape {format_shape(shape)}")
        out_shape = tuple(context.get_tensor_shape(self.output_name))
        out = torch.empty(out_shape, dtype=self.output_dtype, device=self.device)
        context.set_tensor_address(self.input_name, x.data_ptr())
        context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to enqueue {self.plan} (see the TensorRT errors above)")
        # Both tensors were allocated on this stream, so the caching allocator cannot hand their memory
        # to other streams' work before the engine is done; keep them alive until the next call anyway.
        self._keep = (x, out)
        return out.to(frames.dtype)

    def infer_step(self, frames: torch.Tensor, bg: torch.Tensor, weight: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.stateful:
            raise UnweatherError(f"{self.plan} is not a video network; it has no state")
        error = profile_error(tuple(frames.shape), self.profile[0], self.profile[2], padded=not self.pads_in_graph)
        if error is not None:
            raise error
        given = (frames, bg, weight)
        context = self._context
        xs = []
        for name, t in zip(self.input_names, given):
            x = t.detach().to(self.dtypes[name]).contiguous()
            if not context.set_input_shape(name, tuple(x.shape)):
                raise UnweatherError(f"TensorRT refused {name} of shape {format_shape(tuple(x.shape))}")
            context.set_tensor_address(name, x.data_ptr())
            xs.append(x)
        outs = []
        for name in self.output_names:
            out = torch.empty(tuple(context.get_tensor_shape(name)), dtype=self.dtypes[name], device=self.device)
            context.set_tensor_address(name, out.data_ptr())
            outs.append(out)
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to enqueue {self.plan} (see the TensorRT errors above)")
        self._keep = (*xs, *outs)
        return tuple(out.to(t.dtype) for out, t in zip(outs, given))

    def close(self) -> None:
        self._keep = None
        self._context = None
        self._engine = None
