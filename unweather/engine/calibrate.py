"""Which CPU backend runs a model fastest on this machine: timed once, then read from the cache.

CPUs differ: on one 2-core AMD EPYC with bf16 instructions ONNX Runtime ran `fast` 11 % faster
than torch in fp32, on another with AVX2 only 15 % slower. So `backend="auto"` on the CPU times
the backends that can run the model and precision here, the first time they run on a machine: on a
640x360 frame, in turns (so that a load that comes and goes on a shared machine falls on both), in
a worker thread as the pipeline calls its engine, for about `budget_s` seconds. Each turn starts
with an untimed call: the backend that ran before may keep its worker threads spinning for a while
(ONNX Runtime's pool, torch's OpenMP team), which would count against the next one.

The answer is kept as JSON in the unweather cache, keyed by the CPU's model and flags
(`CpuCapabilities.key()`), the network's architecture and options, the precision, the frame size
and the versions of unweather, torch and onnxruntime; any of them changing times again. The
winner's engine, already open, is the one returned.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unweather.engine.base import Engine
from unweather.fileio import write_text_atomic

logger = logging.getLogger(__name__)

SCHEMA = "unweather.cpu_backend/1"


@dataclass(frozen=True)
class CalibrationConfig:
    """How the CPU backends are timed against each other.

    Attributes:
        width, height: the frame timed (640x360: the size live CPU video runs at).
        calls_per_turn: timed calls in each backend's turn (after one untimed call).
        min_turns: turns per backend at least.
        max_turns: turns per backend at most.
        budget_s: stop once every backend has had `min_turns` and this many seconds have passed.
    """

    width: int = 640
    height: int = 360
    calls_per_turn: int = 2
    min_turns: int = 2
    max_turns: int = 6
    budget_s: float = 3.0


# What `unweather.engine.open` uses; tests replace it with a tiny frame.
DEFAULT = CalibrationConfig()


@dataclass(frozen=True)
class Decision:
    """The backend chosen, why (for the log), and its engine when it was opened while timing."""

    backend: str
    reason: str
    engine: Engine | None = None


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def choice_key(cpu_key: str, net: nn.Module, precision: str, config: CalibrationConfig) -> dict[str, str | None]:
    """Everything a measured choice depends on; a change in any entry times the backends again."""
    return {
        "cpu": cpu_key,
        "arch": str(getattr(net, "arch", type(net).__name__)),
        "arch_options": json.dumps(getattr(net, "arch_options", {}), sort_keys=True, default=str),
        "precision": precision,
        "size": f"{config.width}x{config.height}",
        "unweather": _version("unweather"),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
    }


def choice_path(cache: Path, key: dict[str, str | None]) -> Path:
    """The cache file of one measured choice."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache / "cpu_backend" / f"{key['arch']}-{key['precision']}-{digest}.json"


def read_choice(path: Path, key: dict[str, str | None], candidates: list[str]) -> dict[str, Any] | None:
    """The choice cached at `path` when it was measured under `key` among `candidates`, else None."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.debug("ignoring the unreadable CPU backend choice %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or data.get("key") != key or data.get("backend") not in candidates:
        return None
    return data


def _summary(data: dict[str, Any]) -> str:
    times = ", ".join(f"{name} {ms:.1f} ms" for name, ms in data.get("median_ms", {}).items())
    failed = "; ".join(f"{name} failed: {why}" for name, why in data.get("failed", {}).items())
    return "; ".join(part for part in (times, failed) if part)


def measure(openers: dict[str, Callable[[], Engine]], config: CalibrationConfig
            ) -> tuple[dict[str, Engine], dict[str, list[float]], dict[str, str]]:
    """Open every backend and time them on one frame, in turns; in a worker thread.

    Returns:
        The open engines, each one's call times in milliseconds, and why each that failed did.
    """
    frame = torch.rand(1, 3, config.height, config.width, generator=torch.Generator().manual_seed(0))

    def call(engine: Engine) -> None:
        # A video network is timed one step at a time, with an empty state: every step costs the same.
        if getattr(engine, "stateful", False):
            engine.step(frame, engine.empty_state(frame))
        else:
            engine(frame)

    def work() -> tuple[dict[str, Engine], dict[str, list[float]], dict[str, str]]:
        engines: dict[str, Engine] = {}
        failed: dict[str, str] = {}
        with torch.inference_mode():
            for name, opener in openers.items():
                try:
                    engine = opener()
                    call(engine)  # untimed: lazy initialisation, first allocations
                except Exception as exc:  # a backend that cannot run here loses; the others are timed
                    failed[name] = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                    logger.debug("calibration: %s failed", name, exc_info=True)
                    continue
                engines[name] = engine
            times: dict[str, list[float]] = {name: [] for name in engines}
            start = time.perf_counter()
            for turn in range(config.max_turns if len(engines) > 1 else 0):
                for name, engine in engines.items():
                    call(engine)  # untimed: the previous backend's threads may still be spinning
                    for _ in range(config.calls_per_turn):
                        t = time.perf_counter()
                        call(engine)
                        times[name].append((time.perf_counter() - t) * 1000.0)
                if turn + 1 >= config.min_turns and time.perf_counter() - start >= config.budget_s:
                    break
        return engines, times, failed

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="unweather-calibrate") as pool:
        return pool.submit(work).result()


def calibrated_choice(net: nn.Module, precision: str, openers: dict[str, Callable[[nn.Module], Engine]],
                      cache: Path, cpu_key: str, cpu_name: str, config: CalibrationConfig | None = None
                      ) -> Decision | None:
    """The CPU backend for `net` at `precision`: cached, or timed now and cached.

    Args:
        net: the network (each opener gets its own copy, as backends may convert it in place).
        precision: the precision every candidate runs.
        openers: candidate backends, each a function that opens its engine from a network.
        cache: the unweather cache folder.
        cpu_key: `CpuCapabilities.key()` of this machine.
        cpu_name: the CPU as the log names it.
        config: how to time (default: `DEFAULT`).

    Returns:
        The decision (with the winner's engine when it was just timed), or None when no candidate
        ran here, for the caller to fall back on.
    """
    config = config or DEFAULT
    key = choice_key(cpu_key, net, precision, config)
    path = choice_path(cache, key)
    cached = read_choice(path, key, list(openers))
    if cached is not None:
        return Decision(cached["backend"], f"timed fastest on this CPU ({_summary(cached)} at {key['size']}; "
                                           f"cached in {path.name})")
    start = time.perf_counter()
    engines, times, failed = measure({name: (lambda o=opener: o(copy.deepcopy(net))) for name, opener in
                                      openers.items()}, config)
    if not engines:
        logger.warning("calibration: no CPU backend ran %s %s here (%s)", key["arch"], precision,
                       "; ".join(f"{n}: {why}" for n, why in failed.items()))
        return None
    medians = {name: statistics.median(values) for name, values in times.items() if values}
    best = min(medians, key=medians.__getitem__) if medians else next(iter(engines))
    for name, engine in engines.items():
        if name != best:
            engine.close()
    data = {"schema": SCHEMA, "key": key, "backend": best, "median_ms": {n: round(v, 2) for n, v in medians.items()},
            "calls": {n: len(v) for n, v in times.items()}, "failed": failed,
            "seconds": round(time.perf_counter() - start, 2)}
    try:
        write_text_atomic(path, json.dumps(data, indent=2) + "\n")
        where = f"kept in {path}"
    except OSError as exc:
        where = f"not kept: {exc.strerror or exc}"
    logger.info("calibrated the CPU backend for %s %s on %s at %s: %s -> %s (%.1f s; %s)", key["arch"], precision,
                cpu_name, key["size"], _summary(data), best, data["seconds"], where)
    return Decision(best, f"timed fastest on this CPU just now ({_summary(data)} at {key['size']})", engines[best])
