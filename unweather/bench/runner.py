"""Runs every combination of a benchmark and collects the results with their ratios to the baseline.

For each model, resolution and batch, the torch fp32 eager engine on the run's device is measured
first (the baseline); every other backend and precision is then measured on the same frames and
compared with it. A combination that cannot run, or that would only show how slowly this machine
emulates a precision, is recorded as skipped with its reason and the rest go on; one that runs past
its time limit stops and keeps what it measured ("timed_out").
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.util
import logging
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from unweather.bench.clip import prepare_clip, rgb_frames, write_clip
from unweather.bench.config import (
    BASELINE_BACKEND,
    BASELINE_PRECISION,
    BackendSpec,
    BenchConfig,
    Exclusion,
    ModelSpec,
    Resolution,
)
from unweather.bench.timing import CpuShare, ResourceSampler, spread, summarize, synchronize
from unweather.errors import UnweatherError
from unweather.machine import load_average, machine_info
from unweather.redact import redact

if TYPE_CHECKING:
    from unweather.engine.base import Engine

logger = logging.getLogger(__name__)

SCHEMA = "unweather.bench/1"
T = TypeVar("T")
_BASELINE = BackendSpec(BASELINE_BACKEND)


@dataclass(frozen=True)
class Combination:
    """One measured configuration.

    Attributes:
        model: the model and its resolution limits.
        backend: the backend and its engine options.
        precision: "fp32", "fp16" or "bf16".
        resolution: the frame size.
        batch: frames per engine call.
        baseline: True for the torch fp32 eager reference of its model, resolution and batch.
    """

    model: ModelSpec
    backend: BackendSpec
    precision: str
    resolution: Resolution
    batch: int
    baseline: bool = False

    @property
    def label(self) -> str:
        return f"{self.model.model} {self.backend.label} {self.precision} {self.resolution} b{self.batch}"

    @property
    def group(self) -> tuple[str, str, int]:
        """What a baseline is shared by: model, resolution and batch."""
        return self.model.model, str(self.resolution), self.batch

    def excluded_by(self, exclusions: list[Exclusion]) -> Exclusion | None:
        """The first exclusion that matches this combination (the backend by label or by name)."""
        values = {"model": self.model.model, "backend": self.backend.label, "precision": self.precision,
                  "resolution": str(self.resolution), "batch": str(self.batch)}
        for exclusion in exclusions:
            if exclusion.matches(values) or exclusion.matches({**values, "backend": self.backend.name}):
                return exclusion
        return None


def combinations(config: BenchConfig) -> list[Combination]:
    """Every combination to measure, each group's baseline first (added even when not requested)."""
    combos: list[Combination] = []
    for spec in config.models:
        for res in spec.resolutions or config.resolutions:
            for batch in config.batches:
                combos.append(Combination(spec, _BASELINE, BASELINE_PRECISION, res, batch, baseline=True))
                for backend in config.backends:
                    for precision in config.precisions:
                        if backend == _BASELINE and precision == BASELINE_PRECISION:
                            continue
                        combos.append(Combination(spec, backend, precision, res, batch))
    return combos


def resolve_device(name: str) -> torch.device:
    """"auto" is CUDA when torch sees a GPU, else the CPU; anything else is taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UnweatherError(f"unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from exc


def _split_device(combo: Combination, device: torch.device) -> tuple[torch.device, dict[str, Any]]:
    """The combination's device (a backend's "device=" option overrides the run's) and engine options."""
    options = dict(combo.backend.options)
    if "device" in options:
        device = resolve_device(str(options.pop("device")))
    return device, options


def tensorrt_profile(combo: Combination) -> dict[str, str]:
    """A TensorRT optimisation profile tuned for the combination's frames.

    TensorRT picks its kernels for the profile's "opt" shape, so each resolution and batch gets
    an engine built for exactly its frames; the range around it stays as wide as the defaults.
    Graphs exported by unweather pad frames themselves, so the profile is in frame sizes; an ONNX
    file of the earlier layout (padding outside the graph) gets the padded sizes it runs at.
    """
    from pathlib import Path

    h, w, b = combo.resolution.height, combo.resolution.width, combo.batch
    model = combo.model.model
    if model.lower().endswith(".onnx") and Path(model).is_file():
        from unweather.engine.export import read_onnx_metadata
        from unweather.models.padding import padded_size

        meta = read_onnx_metadata(model)
        if "unweather.pad_multiple" in meta and meta.get("unweather.pads_in_graph") != "reflect":
            multiple, min_size = int(meta["unweather.pad_multiple"]), int(meta.get("unweather.min_size", 1))
            h, w = padded_size(h, multiple, min_size), padded_size(w, multiple, min_size)
    return {"opt_shape": f"{b}x3x{h}x{w}",
            "max_shape": f"{max(b, 4)}x3x{max(h, 1088)}x{max(w, 1920)}"}


def slow_precision_reason(combo: Combination, device: torch.device) -> str | None:
    """Why measuring `combo` here would only show how slowly this machine runs its precision, or None.

    bf16 on a CPU without native bf16 is emulated, and torch has few fp16 kernels on the CPU: both
    run many times slower than fp32 (36x and 25x measured on 2-core AMD EPYCs).
    """
    device, _ = _split_device(combo, device)
    if device.type != "cpu" or combo.backend.name != "torch":
        return None
    if combo.precision == "bf16":
        from unweather.cpu import detect

        caps = detect()
        if not caps.native_bf16:
            return (f"no native bf16 on this CPU ({caps.model}, {caps.kind}: no AVX-512 bf16 or AMX): emulated, "
                    f"many times slower than fp32; --allow-slow-precision measures it")
    if combo.precision == "fp16":
        return "torch has few fp16 kernels on the CPU: many times slower than fp32; --allow-slow-precision measures it"
    return None


def precheck(combo: Combination, device: torch.device, allow_slow_precision: bool = False) -> str | None:
    """Why `combo` cannot run here, or makes no sense here (a reason for the results), or None when it may
    be tried; `allow_slow_precision` tries precisions this machine runs slowly too."""
    if not allow_slow_precision and (reason := slow_precision_reason(combo, device)):
        return reason
    device, options = _split_device(combo, device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        return f"no CUDA device {device.index} ({torch.cuda.device_count()} visible)"
    name = combo.backend.name
    if name == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed (pip install 'unweather[tensorrt]')"
        if device.type != "cuda":
            return "TensorRT needs a CUDA device"
    if name == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
        return "ONNX Runtime is not installed"
    if options.get("cuda_graph") and device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    return redact(message[:300])


def classify_failure(exc: BaseException, combo: Combination, opening: bool = False) -> tuple[str, str]:
    """Return ("skipped" | "failed" | "timed_out", reason) for an exception raised while measuring `combo`.

    "skipped" means not applicable here: a condition of the machine or the backend (out of memory, a
    missing library, an operator or precision the backend lacks, a first call slower than allowed,
    or, while the engine is being opened (`opening`), its refusal of what it cannot honour here).
    Anything else is "failed", an error to look into: an engine that opened and then raised, a
    pipeline that broke, with the exception's type unless it is one of ours.
    """
    message = _first_line(exc)
    if isinstance(exc, torch.OutOfMemoryError):
        return "skipped", f"out of memory: {message}"
    if isinstance(exc, TooSlowError):
        return "skipped", message
    if isinstance(exc, TimeLimitError):
        return "timed_out", message
    if isinstance(exc, UnweatherError):
        return ("skipped" if opening else "failed"), message
    if isinstance(exc, ImportError):
        return "skipped", f"missing library: {message}"
    if isinstance(exc, NotImplementedError) or type(exc).__name__ == "NotImplemented":
        return "skipped", f"not supported: {message}"
    if isinstance(exc, RuntimeError) and combo.precision != "fp32" and "not implemented" in message.lower():
        return "skipped", f"{combo.precision} is not supported by {combo.backend.name} here: {message}"
    return "failed", f"{type(exc).__name__}: {message}"


def make_batches(frames: torch.Tensor, batch: int, device: torch.device) -> list[torch.Tensor]:
    """Split `frames` into batches of exactly `batch` (cycling frames to fill the last) on `device`.

    Every call then has the same shape, which fixed-shape backends (CUDA graphs, TensorRT) need.
    """
    n = frames.shape[0]
    calls = math.ceil(n / batch)
    order = torch.arange(calls * batch) % n
    return [frames[order[i * batch:(i + 1) * batch]].to(device).contiguous() for i in range(calls)]


class TooSlowError(UnweatherError):
    """A combination's first call took longer than the run allows."""


class TimeLimitError(UnweatherError):
    """A combination ran out of time before it measured anything."""


@dataclass(frozen=True)
class Deadline:
    """When a combination stops measuring: `seconds` after it started, at `end` on `time.perf_counter`."""

    seconds: float
    end: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(seconds, time.perf_counter() + seconds)

    def expired(self) -> bool:
        return time.perf_counter() >= self.end

    def remaining(self) -> float:
        return max(0.0, self.end - time.perf_counter())


def _expired(deadline: Deadline | None) -> bool:
    return deadline is not None and deadline.expired()


def time_engine(engine: Engine, batches: list[torch.Tensor], warmup: int, repeats: int,
                max_call_s: float | None = None, stop: threading.Event | None = None,
                deadline: Deadline | None = None) -> dict[str, Any]:
    """Time `engine` alone: `warmup` untimed calls, then `repeats` passes over `batches`.

    Each call is timed between device synchronisations, so queued GPU work is never missed. On a
    GPU, each repetition also makes one pass synchronised only at its end, which lets calls overlap
    as they do in a stream: its FPS is reported as `fps_async`. The garbage collector is paused
    while timing. With `max_call_s`, a first call slower than that raises `TooSlowError`; once
    `stop` is set (Ctrl-C in the main thread), the next call raises `KeyboardInterrupt` instead.
    Once `deadline` has passed no call starts: the result holds the calls timed so far, with
    `timed_out` set (a partial pass counts its own calls), or `TimeLimitError` is raised when none was.
    """
    device = batches[0].device
    batch = batches[0].shape[0]
    frames_per_pass = len(batches) * batch
    samples: list[float] = []
    per_repeat_fps: list[float] = []
    per_repeat_async: list[float] = []
    per_repeat_median: list[float] = []
    timed_out = False
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.inference_mode():
            t0 = time.perf_counter()
            for i in range(warmup):
                _check_stop(stop)
                if _expired(deadline):
                    timed_out = True
                    break
                engine(batches[i % len(batches)])
                synchronize(device)
                if i == 0:
                    _check_first_call(time.perf_counter() - t0, max_call_s)
            warmup_s = time.perf_counter() - t0
            for _ in range(0 if timed_out else repeats):
                times: list[float] = []
                synchronize(device)
                start = time.perf_counter()
                for frames in batches:
                    _check_stop(stop)
                    if _expired(deadline):
                        timed_out = True
                        break
                    t = time.perf_counter()
                    engine(frames)
                    synchronize(device)
                    times.append((time.perf_counter() - t) * 1000.0)
                    if not warmup and len(samples) + len(times) == 1:
                        _check_first_call(times[0] / 1000.0, max_call_s)
                if times:
                    per_repeat_fps.append(len(times) * batch / (time.perf_counter() - start))
                    per_repeat_median.append(summarize(times)["median"])
                    samples.extend(times)
                if timed_out:
                    break
                if device.type == "cuda" and not _expired(deadline):
                    start = time.perf_counter()
                    for frames in batches:
                        engine(frames)
                    synchronize(device)
                    per_repeat_async.append(frames_per_pass / (time.perf_counter() - start))
    finally:
        if gc_was_enabled:
            gc.enable()
    if not samples:
        assert deadline is not None
        raise TimeLimitError(f"the time limit of {deadline.seconds:g} s (--time-limit) ran out during "
                             f"the warm-up, before any timed call")
    fps = summarize(per_repeat_fps)
    result: dict[str, Any] = {
        "latency_ms": summarize(samples),
        "fps": fps["median"],
        "fps_min": fps["min"],
        "fps_max": fps["max"],
        "fps_spread": spread(per_repeat_fps),
        "fps_per_repeat": per_repeat_fps,
        "latency_median_per_repeat_ms": per_repeat_median,
        "calls_per_repeat": len(batches),
        "frames_per_call": batch,
        "warmup_calls": warmup,
        "warmup_s": warmup_s,
        "samples_ms": samples,
        "timed_out": timed_out,
    }
    if per_repeat_async:
        result["fps_async"] = summarize(per_repeat_async)["median"]
        result["fps_async_per_repeat"] = per_repeat_async
    return result


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt


def in_worker_thread(fn: Callable[..., T], *args: Any, stop: threading.Event | None = None) -> T:
    """Call `fn(*args)` in a new thread and return its result (or raise its exception).

    The pipeline runs inference in a worker thread, so the engine is timed in one too: on a busy
    CPU, torch's OpenMP team behaves very differently for the main thread and for others (measured
    here: the same call 5-20x slower from the main thread of a 2-core machine at load 10, equal
    when the CPU is not oversubscribed), and the two numbers must be comparable.

    Ctrl-C reaches only the main thread: it sets `stop` (which `fn` should watch, as `time_engine`
    does) so that the worker ends at its next call, and is raised again once it has.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-engine") as pool:
        future = pool.submit(fn, *args)
        try:
            return future.result()
        except KeyboardInterrupt:
            if stop is not None:
                stop.set()
            raise


def _check_first_call(seconds: float, max_call_s: float | None) -> None:
    if max_call_s is not None and seconds > max_call_s:
        raise TooSlowError(f"too slow: the first call took {seconds:.1f} s (more than --max-call-seconds "
                           f"{max_call_s:g})")


def _pipeline_api() -> tuple[Any, Any]:
    try:
        from unweather.stream import RunConfig, run
    except ImportError as exc:
        raise NotImplementedError("unweather.stream.run is not available in this installation") from exc
    return RunConfig, run


# A frame in the pipeline takes longer than the engine alone: decoding and encoding share the CPU.
_PIPELINE_SLOWDOWN = 1.5


def drain_seconds(frames_in_flight: int, batch: int, call_s: float) -> float:
    """About how long a pipeline takes to finish the frames it already read once told to stop reading:
    the engine calls they need, at `_PIPELINE_SLOWDOWN` times the engine's own time per call `call_s`."""
    return _PIPELINE_SLOWDOWN * math.ceil(frames_in_flight / batch) * call_s


@contextlib.contextmanager
def _stop_at(deadline: Deadline | None, drain_s: float = 0.0) -> Iterator[threading.Event]:
    """An event for `unweather.stream.run`'s `stop_event`, set `drain_s` before `deadline` passes, so
    that the frames already read are finished by then."""
    event = threading.Event()
    timer = None
    if deadline is not None:
        timer = threading.Timer(max(0.0, deadline.remaining() - drain_s), event.set)
        timer.daemon = True
        timer.start()
    try:
        yield event
    finally:
        if timer is not None:
            timer.cancel()


def _timed_out_part(deadline: Deadline | None, what: str) -> dict[str, Any]:
    seconds = deadline.seconds if deadline is not None else 0.0
    return {"status": "timed_out", "reason": f"the time limit of {seconds:g} s (--time-limit) ran out "
                                             f"before {what}"}


def time_pipeline(engine: Engine, clip: Path, batch: int, repeats: int, workdir: Path,
                  deadline: Deadline | None = None, call_s: float = 0.0) -> dict[str, Any]:
    """Time the whole decode -> infer -> encode pipeline through `unweather.stream.run`, `repeats` times.

    With `deadline`, the run under way stops reading early enough to finish the frames in its queues
    by then (`drain_seconds`, from the engine's time per call `call_s`); its frames so far count and
    no other run starts: the result is then "timed_out" with the runs so far.
    """
    run_config_cls, run = _pipeline_api()
    fields = {f.name for f in dataclasses.fields(run_config_cls)}
    # A file in offline mode: every frame is restored (none dropped), without a nested progress bar.
    wanted = {"batch": batch, "mode": "offline", "progress": False}
    kwargs = {k: v for k, v in wanted.items() if k in fields}
    config = run_config_cls(**kwargs)
    drain = drain_seconds(int(getattr(config, "queue_size", 8)) + batch, batch, call_s)
    runs: list[dict[str, Any]] = []
    timed_out = False
    for i in range(repeats):
        if deadline is not None and deadline.remaining() <= drain:
            timed_out = True
            break
        output = workdir / f"pipeline-{i}.mp4"
        with _quiet("unweather.stream"), _stop_at(deadline, drain) as stop:
            stats = run(str(clip), str(output), config=config, engine=engine, stop_event=stop).to_dict()
        output.unlink(missing_ok=True)
        if stats.get("error"):
            raise UnweatherError(f"the pipeline stopped: {stats['error']}")
        # Temporary paths say nothing about the result.
        stats.pop("input", None)
        stats.pop("output", None)
        if stop.is_set():
            timed_out = True
            if stats.get("frames"):
                runs.append(stats)
            break
        runs.append(stats)
    if not runs:
        return _timed_out_part(deadline, "the pipeline restored a frame")
    fps_values = [float(r["fps"]) for r in runs]
    return {
        "status": "timed_out" if timed_out else "ok",
        "fps": summarize(fps_values)["median"],
        "fps_min": min(fps_values),
        "fps_max": max(fps_values),
        "fps_spread": spread(fps_values),
        "fps_per_repeat": fps_values,
        "frames": [r.get("frames") for r in runs],
        "latency_ms": _median_of(runs, "latency_ms"),
        "stage_s": _median_of(runs, "stage_s"),
        "runs": runs,
    }


def time_live(engine: Engine, clip: Path, rate: float, workdir: Path, deadline: Deadline | None = None,
              call_s: float = 0.0) -> dict[str, Any]:
    """Run the pipeline in live mode on `clip`, paced at its own frame rate `rate` as a camera would.

    Returns:
        frames in, out and dropped, the share dropped, FPS, and the end-to-end latency per frame
        (from its due time to written) p50/p95/p99/mean/max in milliseconds; "timed_out" with the
        frames so far when `deadline` came first (see `time_pipeline`; live queues hold 2 frames).
    """
    run_config_cls, run = _pipeline_api()
    drain = drain_seconds(2, 1, call_s)
    if deadline is not None and deadline.remaining() <= drain:
        return _timed_out_part(deadline, "the live run")
    output = workdir / "live.mkv"
    with _quiet("unweather.stream"), _stop_at(deadline, drain) as stop:
        stats = run(str(clip), str(output), config=run_config_cls(mode="live", progress=False),
                    engine=engine, stop_event=stop).to_dict()
    output.unlink(missing_ok=True)
    if stats.get("error"):
        raise UnweatherError(f"the live pipeline stopped: {stats['error']}")
    frames_in = int(stats["frames_in"])
    return {
        "status": "timed_out" if stop.is_set() else "ok",
        "rate": rate,
        "frames_in": frames_in,
        "frames_out": int(stats["frames_out"]),
        "dropped": int(stats["dropped"]),
        "dropped_pct": round(100.0 * stats["dropped"] / frames_in, 2) if frames_in else 0.0,
        "fps": stats["fps"],
        "latency_ms": stats["latency_ms"],
        "stage_s": stats["stage_s"],
    }


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Keep a logger to warnings (the pipeline's per-run messages would repeat for every repetition)."""
    log = logging.getLogger(name)
    level = log.level
    if not logger.isEnabledFor(logging.DEBUG):
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _median_of(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    """For a dict-valued statistic, each entry's median over the repetitions (entries that are None skip)."""
    import statistics

    out: dict[str, float] = {}
    for name in (runs[0].get(key) or {}):
        values = [r[key][name] for r in runs if isinstance((r.get(key) or {}).get(name), (int, float))]
        if values:
            out[name] = statistics.median(values)
    return out


def _open_engine(combo: Combination, device: torch.device, options: dict[str, Any]) -> Any:
    from unweather import engine as engines

    # Past `precheck`, a slow precision was asked for (--allow-slow-precision) or is native here.
    engine = engines.open(combo.model.model, backend=combo.backend.name, precision=combo.precision,
                          device=device, allow_slow_precision=True, **options)
    if getattr(engine, "backend", combo.backend.name) != combo.backend.name:
        name = engine.backend
        engine.close()
        raise NotImplementedError(f"engine.open returned a {name!r} engine for backend {combo.backend.name!r}")
    return engine


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _row_head(combo: Combination) -> dict[str, Any]:
    """What identifies a combination in the results."""
    return {
        "model": combo.model.model,
        "backend": combo.backend.name,
        "backend_label": combo.backend.label,
        "options": dict(combo.backend.options),
        "precision": combo.precision,
        "resolution": str(combo.resolution),
        "width": combo.resolution.width,
        "height": combo.resolution.height,
        "batch": combo.batch,
        "baseline": combo.baseline,
    }


def run_combination(combo: Combination, frames: torch.Tensor, clip: Path, config: BenchConfig,
                    device: torch.device, workdir: Path, live_clip: Path | None = None) -> dict[str, Any]:
    """Measure one combination: the engine alone, then the whole pipeline; never raises for a skip.

    With `live_clip` (written at `config.live_rate`), the pipeline is also run live on it (batch 1,
    so only for the combination's first batch size). With `config.time_limit_s`, measuring stops
    that long after the engine is open (the engine alone stops at half of it when the pipeline is
    measured too); the row is then "timed_out", with what was measured.

    Ctrl-C (`KeyboardInterrupt`) is raised through, after the engine is closed.
    """
    row = _row_head(combo)
    combo_device, options = _split_device(combo, device)
    row["device"] = str(combo_device)
    reason = skip_reason(combo, config, device)
    if reason:
        row.update(status="skipped", reason=reason)
        return row
    try:
        from unweather.engine.sources import resolve

        resolve(combo.model.model)
    except UnweatherError as exc:  # a model that is nowhere is a mistake, not something this machine lacks
        row.update(status="failed", reason=_first_line(exc))
        return row
    engine = None
    row["load_average_start"] = load_average()
    sampler = ResourceSampler(combo_device, config.sample_interval_s)
    try:
        with sampler:
            start = time.perf_counter()
            if combo.backend.name == "tensorrt":
                options = {**tensorrt_profile(combo), **options}
                row["options"] = options
            try:
                engine = _open_engine(combo, combo_device, options)
            except Exception as exc:  # a backend that cannot serve this combination here: a skip
                status, reason = classify_failure(exc, combo, opening=True)
                logger.debug("%s: %s", combo.label, reason, exc_info=True)
                row.update(status=status, reason=reason)
                return row
            row["open_s"] = time.perf_counter() - start
            row["engine_device"] = str(engine.device)
            live = live_clip is not None and config.live_rate and combo.batch == min(config.batches)
            deadline = engine_deadline = Deadline.after(config.time_limit_s) if config.time_limit_s else None
            if deadline is not None and (config.pipeline or live):
                # The engine alone gets half, so that a slow machine still shows its pipeline figures.
                engine_deadline = Deadline.after(config.time_limit_s / 2)
            batches = make_batches(frames, combo.batch, engine.device)
            stop = threading.Event()
            row["engine"] = in_worker_thread(time_engine, engine, batches, config.warmup, config.repeats,
                                             config.max_call_s, stop, engine_deadline, stop=stop)
            del batches
            call_s = row["engine"]["latency_ms"]["median"] / 1000.0
            if config.pipeline:
                row["pipeline"] = _guarded(time_pipeline, combo, engine, clip, combo.batch, config.repeats, workdir,
                                           deadline, call_s)
            if live:
                row["live"] = _guarded(time_live, combo, engine, live_clip, config.live_rate, workdir, deadline,
                                       call_s)
        row["status"] = "ok"
        late = [part for part, result in (("engine timing", row["engine"]), ("pipeline", row.get("pipeline")),
                                          ("live run", row.get("live")))
                if result and (result.get("timed_out") or result.get("status") == "timed_out")]
        if late:
            limit = f"time limit of {config.time_limit_s:g} s (--time-limit)"
            where = (f"the engine timing's half of the {limit} ran out" if late[0] == "engine timing"
                     and engine_deadline is not deadline else f"the {limit} ran out in the {late[0]}")
            row.update(status="timed_out", reason=f"{where}; the figures are from what ran before")
    except Exception as exc:  # a benchmark reports any failure of one combination and goes on
        status, reason = classify_failure(exc, combo)
        logger.debug("%s: %s", combo.label, reason, exc_info=True)
        row.update(status=status, reason=reason)
    finally:
        if engine is not None:
            engine.close()
        del engine
        _release(combo_device)
    if sampler.sampled:
        row["resources"] = sampler.result()
    return row


def skip_reason(combo: Combination, config: BenchConfig, device: torch.device) -> str | None:
    """Why `combo` is not measured in this run (an exclusion, or `precheck`'s reason), or None."""
    exclusion = None if combo.baseline else combo.excluded_by(config.exclude)
    if exclusion:
        return f"excluded by --exclude {exclusion.label}"
    return precheck(combo, device, config.allow_slow_precision)


def measured(row: dict[str, Any]) -> bool:
    """True for a row with engine figures: "ok", or "timed_out" after at least one timed call."""
    return row.get("status") in ("ok", "timed_out") and "engine" in row


def _guarded(measure: Callable[..., dict[str, Any]], combo: Combination, *args: Any) -> dict[str, Any]:
    """`measure(*args)`, or its failure as a status and reason (the engine's numbers stand anyway)."""
    try:
        return measure(*args)
    except Exception as exc:  # the engine's numbers stand even when the pipeline fails
        status, reason = classify_failure(exc, combo)
        logger.debug("%s %s: %s", combo.label, measure.__name__, reason, exc_info=True)
        return {"status": status, "reason": reason}


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Set each row's speed ratio to its group's torch fp32 eager baseline (baseline: exactly 1).

    Engine: baseline median latency / median latency (same frames, same batch). Pipeline:
    median FPS / baseline median FPS. A missing or failed baseline gives None.
    """
    baselines = {(r["model"], r["resolution"], r["batch"]): r for r in rows if r["baseline"] and measured(r)}
    for row in rows:
        if not measured(row):
            continue
        base = baselines.get((row["model"], row["resolution"], row["batch"]))
        engine = row["engine"]
        engine["x_vs_baseline"] = None
        if base is not None:
            engine["x_vs_baseline"] = (base["engine"]["latency_ms"]["median"]
                                       / engine["latency_ms"]["median"])
        pipe = row.get("pipeline")
        if pipe and "fps" in pipe:
            base_pipe = base.get("pipeline") if base is not None else None
            pipe["x_vs_baseline"] = None
            if base_pipe and base_pipe.get("fps"):
                pipe["x_vs_baseline"] = pipe["fps"] / base_pipe["fps"]


def run_bench(config: BenchConfig, progress: bool = True, command: str | None = None,
              on_result: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Measure every combination of `config` and return the results payload (see `save_results`).

    Ctrl-C during the measurements stops them: the payload then holds what was measured, the
    remaining combinations as skipped ("interrupted") and `"interrupted": True`.

    Args:
        config: what to measure.
        progress: show a progress bar over the combinations.
        command: the command line that started the run, recorded in the results.
        on_result: called after each combination with the payload so far (`"partial": True`), e.g.
            to save it, so that a run that is killed keeps what it measured.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    config.validate()
    device = resolve_device(config.device)
    machine = machine_info()
    machine["load_average_start"] = machine.pop("load_average")
    cpu_share = CpuShare().start()
    started = time.perf_counter()
    combos = combinations(config)
    rows: list[dict[str, Any]] = []
    clips: dict[str, Any] = {}
    interrupted = False

    def payload(partial: bool) -> dict[str, Any]:
        add_ratios(rows)
        # On a shared machine the other processes' share says how far absolute figures can be trusted.
        run_machine = {**machine, "load_average_end": load_average(), "cpu_share_during_run": cpu_share.stop()}
        out = {"schema": SCHEMA, "command": command, "config": config.to_dict(), "device": str(device),
               "clips": clips, "machine": run_machine, "duration_s": time.perf_counter() - started,
               "interrupted": interrupted, "results": list(rows)}
        if partial:
            out["partial"] = True
        return out

    with tempfile.TemporaryDirectory(prefix="unweather-bench-") as tmp:
        workdir = Path(tmp)
        frames_by_res: dict[Resolution, tuple[torch.Tensor, Path, Path | None]] = {}
        for res in dict.fromkeys(c.resolution for c in combos):
            path = workdir / f"clip-{res}.mp4"
            frames, count = prepare_clip(config.input, res, config.frames, path)
            live_path = None
            if config.live_rate:
                # The same frames, stamped at the live rate: the pipeline paces them like a camera.
                live_path = workdir / f"clip-{res}-live.mp4"
                write_clip(rgb_frames(frames), live_path, res, rate=config.live_rate)
            frames_by_res[res] = (frames, path, live_path)
            clips[str(res)] = {"frames": count, "source": redact(config.input) if config.input else "synthetic"}
        # The bar advances by each measured combination's pixels (skips take no time), so its ETA
        # weighs a 1280x720 combination as four 640x360 ones.
        weights = [0 if skip_reason(c, config, device) else c.resolution.pixels * c.batch for c in combos]
        todo = sum(w > 0 for w in weights)
        with logging_redirect_tqdm(loggers=[logging.getLogger("unweather")]):
            bar = tqdm(total=sum(weights), desc=f"bench 0/{todo}", disable=None if progress else True,
                       dynamic_ncols=True, smoothing=0,
                       bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed} elapsed, ETA {remaining}{postfix}")
            done = 0
            for combo, weight in zip(combos, weights):
                if weight:
                    bar.set_postfix_str(combo.label)
                frames, path, live_path = frames_by_res[combo.resolution]
                try:
                    row = run_combination(combo, frames, path, config, device, workdir, live_path)
                except KeyboardInterrupt:
                    interrupted = True
                    break
                _log_row(combo, row)
                rows.append(row)
                if weight:
                    done += 1
                    bar.set_description_str(f"bench {done}/{todo}")
                    bar.update(weight)
                if on_result is not None and len(rows) < len(combos):
                    on_result(payload(partial=True))
            bar.close()
    if interrupted:
        logger.warning("interrupted: %d of %d combinations measured", len(rows), len(combos))
        for combo in combos[len(rows):]:
            rows.append({**_row_head(combo), "status": "skipped", "reason": "interrupted (Ctrl-C)"})
    return payload(partial=False)


def _log_row(combo: Combination, row: dict[str, Any]) -> None:
    if not measured(row):
        logger.info("%s: %s (%s)", combo.label, row["status"], row["reason"])
        return
    eng = row["engine"]
    text = f"{combo.label}: engine {eng['fps']:.1f} FPS, p50 {eng['latency_ms']['median']:.1f} ms"
    pipe = row.get("pipeline")
    if pipe and "fps" in pipe:
        text += f", pipeline {pipe['fps']:.1f} FPS"
    elif pipe:
        text += f", pipeline {pipe['status']} ({pipe['reason']})"
    live = row.get("live")
    if live and "latency_ms" in live:
        lat = live["latency_ms"]
        if lat.get("p50") is not None:
            text += (f", live at {live['rate']:g} FPS: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms, "
                     f"{live['dropped']} of {live['frames_in']} dropped")
    elif live:
        text += f", live {live['status']} ({live['reason']})"
    if row["status"] != "ok":
        text += f" ({row['reason']})"
    logger.info("%s", text)
