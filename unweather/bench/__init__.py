"""Latency benchmarking: FPS and latency of every backend against the PyTorch baseline.

`unweather bench` measures, for each model, backend, precision, resolution and batch, the engine
alone and the whole pipeline, on a synthetic clip or the user's footage, and compares each with
torch fp32 eager on the same frames. `unweather.bench.runner.run_bench(BenchConfig(...))` is the
same from Python; `unweather.bench.report` writes the markdown table and the figure.
"""

from unweather.bench.config import BackendSpec, BenchConfig, ModelSpec, Resolution

__all__ = ["BackendSpec", "BenchConfig", "ModelSpec", "Resolution"]

