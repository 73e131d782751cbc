"""Decode -> infer -> encode over files, folders, cameras and network streams.

`run(input, output, config)` is the entry point; `RunConfig` holds its settings and `RunStats` what
it measured. Heavy modules (torch, PyAV) load on first use, so importing this package stays cheap.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from unweather.stream.config import RunConfig, WarmUp

if TYPE_CHECKING:
    from unweather.engine.base import Engine
    from unweather.stream.multi import EngineClient, MultiStats
    from unweather.stream.stats import RunStats


def run(input: str, output: str | None = None, config: RunConfig | None = None,
        engine: Engine | EngineClient | None = None, stop_event: threading.Event | None = None,
        warmup: WarmUp | None = None) -> RunStats:
    """Restore `input` into `output`; see `unweather.stream.runner.run`."""
    from unweather.stream.runner import run as _run

    return _run(input, output, config, engine=engine, stop_event=stop_event, warmup=warmup)


def run_many(inputs: list[str], output: str | None = None, config: RunConfig | None = None,
             **kwargs: Any) -> MultiStats:
    """Restore several inputs at once, sharing one engine; see `unweather.stream.multi.run_many`."""
    from unweather.stream.multi import run_many as _run_many

    return _run_many(inputs, output, config, **kwargs)


def open_engine(config: RunConfig, video: bool = False) -> Engine:
    """The engine `config` asks for (`video`: for videos and streams); see `unweather.stream.runner.open_engine`."""
    from unweather.stream.runner import open_engine as _open

    return _open(config, video)


def __getattr__(name: str) -> Any:
    if name == "RunStats":
        from unweather.stream.stats import RunStats

        return RunStats
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RunConfig", "RunStats", "WarmUp", "open_engine", "run", "run_many"]
