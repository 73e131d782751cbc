"""Inference engines behind one interface: torch, ONNX Runtime and TensorRT backends.

    engine = unweather.engine.open("student_small", backend="auto")
    restored = engine(frames)        # (N, 3, H, W) float in [0, 1] on engine.device
"""

from __future__ import annotations

import os
from typing import Any

import torch

from unweather.engine.base import Engine
from unweather.engine.sources import default_model


def open(model: str | os.PathLike[str] | None = None, backend: str = "auto",
         precision: str | None = None, device: str | torch.device | None = None, **options: Any) -> Engine:
    """Open an engine for `model`.

    Args:
        model: a registry name ("student_small", "msbdn", ...), shipped weights ("fast",
            "quality", "video", "video_quality"), a checkpoint (.safetensors, .pth, .pt), an ONNX file (.onnx) or a
            TensorRT engine (.plan, .engine). None: `default_model(device)`. A video network's
            engine is `stateful`: run it over a stream with `unweather.engine.session.VideoSession`.
        backend: "auto", "torch", "onnxruntime" or "tensorrt". "auto" picks TensorRT when it and a
            GPU are present, else torch on CUDA, else the CPU backend timed fastest on this machine
            (the first time a model and precision run here; then cached, see
            `unweather.engine.calibrate`); it never changes a device or precision that was asked
            for. The choice is logged.
        precision: "fp32", "fp16" or "bf16"; None: fp16 on CUDA, fp32 on the CPU, or what an ONNX
            or engine file computes in.
        device: "cpu", "cuda" or "cuda:N"; None: CUDA when the backend can use it.
        **options: tile, tile_overlap (tiled inference); trusted (pickled checkpoints);
            cache_dir (exported graphs, engines, CPU backend timings); allow_slow_precision (run
            bf16 on a CPU that only emulates it, many times slower than fp32); torch:
            channels_last, compile, cuda_graph;
            onnxruntime: threads, providers ("cuda" or "tensorrt"), opset; tensorrt: min_shape,
            opt_shape, max_shape ("NxCxHxW"), workspace (MB), opset.

    Raises:
        UnweatherError: a model that cannot be found or loaded, or a request that cannot be
            honoured as asked (e.g. device "cuda" without a GPU, bf16 on a CPU without native bf16).
    """
    from unweather.engine.loader import open_engine

    return open_engine(model, backend=backend, precision=precision, device=device, **options)


__all__ = ["Engine", "default_model", "open"]
