"""The ONNX Runtime backend: CPU by default; CUDA and TensorRT execution providers with onnxruntime-gpu.

On the CPU, frames go to ONNX Runtime as NumPy views of the torch tensors (no copy). On a GPU,
inputs and outputs are torch tensors bound with IO binding, and the session runs on the torch
stream that was current when the engine was opened (`user_compute_stream`), so work queued by
torch before a call is ordered before it without a device-wide synchronisation.

A video network's graph has three inputs and three outputs (the frame and its state in, the output and
the next state out, see `unweather.engine.export.VIDEO_INPUTS`): the engine is then `stateful` and runs
it with `step`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from unweather.engine.base import Engine
from unweather.errors import UnweatherError

logger = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_TORCH = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers (empty when it is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


class OnnxRuntimeEngine(Engine):
    """Runs an ONNX graph with ONNX Runtime.

    Args:
        path: the .onnx file.
        device: "cpu" or a CUDA device (needs onnxruntime-gpu).
        precision: the graph's precision (read from the file by `unweather.engine.open`).
        threads: intra-op threads on the CPU (default: ONNX Runtime's choice, one per core).
        providers: on CUDA, "cuda" (default) or "tensorrt" (TensorRT EP, CUDA as its fallback).
        multiple: the size multiple the graph needs (default: the file's metadata, else 1).
        min_size: the smallest height and width (default: the file's metadata, else 1).
        cache: a folder for the TensorRT EP's engine cache.
        spin: let idle intra-op threads spin for work (ONNX Runtime's default). Off by default: in a stream the
            decoder and the encoder share the cores, and spinning threads took their time (`fast` end to end at
            640x360 on 2 cores, interleaved runs: 32.7 FPS spinning, 37.2 not).
    """

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], device: torch.device | str = "cpu", precision: str = "fp32",
                 threads: int | None = None, providers: str | None = None, multiple: int | None = None,
                 min_size: int | None = None, cache: str | os.PathLike[str] | None = None,
                 spin: bool = False) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise UnweatherError("ONNX Runtime is not installed (pip install onnxruntime)") from exc
        from unweather.engine.export import INPUT_NAME, VIDEO_INPUTS, VIDEO_OUTPUTS, read_onnx_metadata

        meta = read_onnx_metadata(path)
        multiple = int(meta.get("unweather.pad_multiple", 1)) if multiple is None else int(multiple)
        min_size = int(meta.get("unweather.min_size", 1)) if min_size is None else int(min_size)
        super().__init__(torch.device(device), precision, multiple, min_size)
        # Our graphs since format 2 pad, crop and clamp themselves; other graphs get frames padded here.
        self.pads_in_graph = meta.get("unweather.pads_in_graph") == "reflect"
        self.output_clamped = bool(meta.get("unweather.clamped"))
        self.path = Path(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if threads is not None:
            if int(threads) < 1:
                raise UnweatherError(f"threads must be at least 1, got {threads}")
            options.intra_op_num_threads = int(threads)
        self.threads = threads
        self._stream: torch.cuda.Stream | None = None
        session_providers = self._providers(providers, cache, available_providers())
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=session_providers)
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise UnweatherError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.stateful = len(inputs) == len(outputs) == len(VIDEO_INPUTS)
        if self.stateful:
            # Named as our exports name them; a graph made elsewhere is taken in that order.
            by_name = {arg.name: arg for arg in inputs}, {arg.name: arg for arg in outputs}
            if set(VIDEO_INPUTS) <= set(by_name[0]) and set(VIDEO_OUTPUTS) <= set(by_name[1]):
                inputs = [by_name[0][n] for n in VIDEO_INPUTS]
                outputs = [by_name[1][n] for n in VIDEO_OUTPUTS]
            channels = inputs[1].shape[1] if len(inputs[1].shape) == 4 else None
            if not isinstance(channels, int):
                raise UnweatherError(f"{path}: the state input {inputs[1].name} needs a fixed number of channels, "
                                     f"not {channels!r}")
            self.state_channels = channels
        elif len(inputs) != 1 or len(outputs) != 1:
            raise UnweatherError(f"{path} has {len(inputs)} inputs and {len(outputs)} outputs; an engine needs one "
                                 f"each (a frame network) or three each (a video network: {', '.join(VIDEO_INPUTS)})")
        self.inputs, self.outputs = inputs, outputs
        self.input, self.output = inputs[0], outputs[0]
        if self.input.name not in (INPUT_NAME, VIDEO_INPUTS[0]):
            logger.info("%s: input %r (not %r)", path, self.input.name, INPUT_NAME)
        for arg in (*inputs, *outputs):
            if arg.type not in _NUMPY:
                raise UnweatherError(f"{path}: {arg.name} is {arg.type}; an engine needs float or float16 frames")
        logger.debug("ONNX Runtime providers: %s", self.session.get_providers())

    def _providers(self, requested: str | None, cache: str | os.PathLike[str] | None,
                   available: list[str]) -> list[object]:
        if self.device.type == "cpu":
            if requested not in (None, "cpu"):
                raise UnweatherError(f"the {requested!r} execution provider needs a CUDA device, not the CPU")
            return ["CPUExecutionProvider"]
        if self.device.type != "cuda":
            raise UnweatherError(f"ONNX Runtime runs on cpu or cuda, not {self.device}")
        if not torch.cuda.is_available():
            raise UnweatherError("device 'cuda' was asked for, but torch sees no CUDA GPU")
        if "CUDAExecutionProvider" not in available:
            raise UnweatherError("ONNX Runtime on CUDA needs onnxruntime-gpu (pip install 'unweather[gpu]'); "
                                 f"this build offers {', '.join(available) or 'nothing'}")
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        self._stream = torch.cuda.current_stream(self.device)
        stream = str(self._stream.cuda_stream)
        cuda = ("CUDAExecutionProvider", {"device_id": index, "user_compute_stream": stream})
        if requested in (None, "cuda"):
            return [cuda]
        if requested == "tensorrt":
            if "TensorrtExecutionProvider" not in available:
                raise UnweatherError("this onnxruntime build has no TensorRT execution provider")
            folder = Path(cache) if cache is not None else self.path.parent
            trt = ("TensorrtExecutionProvider", {
                "device_id": index, "user_compute_stream": stream,
                "trt_engine_cache_enable": True, "trt_engine_cache_path": str(folder / "ort-trt"),
                "trt_timing_cache_enable": True})
            return [trt, cuda]
        raise UnweatherError(f"unknown execution provider {requested!r}; use one of {', '.join(PROVIDERS)}")

    def infer(self, frames: torch.Tensor) -> torch.Tensor:
        if self.stateful:
            raise UnweatherError(f"{self.path} is a video network: run it over a stream with "
                                 "unweather.engine.session.VideoSession (or Engine.step with its state)")
        if self.device.type == "cpu":
            x = frames.detach().to(_TORCH[self.input.type]).contiguous()
            out = self.session.run([self.output.name], {self.input.name: x.numpy()})[0]
            return torch.from_numpy(out).to(frames.dtype)
        return self._infer_cuda(frames)

    def _infer_cuda(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.detach().to(_TORCH[self.input.type]).contiguous()
        out = torch.empty(self._output_shape(tuple(x.shape)), dtype=_TORCH[self.output.type], device=self.device)
        binding = self.session.io_binding()
        binding.bind_input(self.input.name, "cuda", self.device.index, _NUMPY[self.input.type], tuple(x.shape),
                           x.data_ptr())
        binding.bind_output(self.output.name, "cuda", self.device.index, _NUMPY[self.output.type],
                            tuple(out.shape), out.data_ptr())
        self._order_after_caller([x, out])
        self.session.run_with_iobinding(binding)
        return out.to(frames.dtype)

    def infer_step(self, frames: torch.Tensor, bg: torch.Tensor, weight: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.stateful:
            raise UnweatherError(f"{self.path} is not a video network; it has no state")
        given = (frames, bg, weight)
        xs = [t.detach().to(_TORCH[arg.type]).contiguous() for t, arg in zip(given, self.inputs)]
        if self.device.type == "cpu":
            outs = self.session.run([arg.name for arg in self.outputs],
                                    {arg.name: x.numpy() for arg, x in zip(self.inputs, xs)})
            return tuple(torch.from_numpy(o).to(t.dtype) for o, t in zip(outs, given))
        # Each output has the shape of the input it follows: the output and background of the frame's,
        # the weight of the weight's.
        outs = [torch.empty(tuple(x.shape), dtype=_TORCH[arg.type], device=self.device)
                for x, arg in zip(xs, self.outputs)]
        binding = self.session.io_binding()
        for arg, x in zip(self.inputs, xs):
            binding.bind_input(arg.name, "cuda", self.device.index, _NUMPY[arg.type], tuple(x.shape), x.data_ptr())
        for arg, out in zip(self.outputs, outs):
            binding.bind_output(arg.name, "cuda", self.device.index, _NUMPY[arg.type], tuple(out.shape),
                                out.data_ptr())
        self._order_after_caller(xs + outs)
        self.session.run_with_iobinding(binding)
        return tuple(out.to(t.dtype) for out, t in zip(outs, given))

    def _order_after_caller(self, tensors: list[torch.Tensor]) -> None:
        if self._stream is not None and torch.cuda.current_stream(self.device) != self._stream:
            # The session runs on the stream current at open(); order it after the caller's work.
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            for tensor in tensors:
                tensor.record_stream(self._stream)

    def _output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        declared = self.output.shape
        if all(isinstance(d, int) for d in declared):
            return tuple(declared)
        # Our graphs (and restoration graphs generally) return frames of the input's shape.
        return input_shape

    def close(self) -> None:
        self.session = None
