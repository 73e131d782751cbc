"""Every backend and precision against torch fp32 eager: each registered model at 640x360, 1280x720 and 1920x1080.

    python benchmarks/backends.py                                  # everything; JSON in benchmarks/results/
    python benchmarks/backends.py --models student_small --resolutions 640x360 --repeats 5
    python benchmarks/backends.py --threads 1 --max-seconds 10 --write-choice

The engine alone (batch 1, frames already on the device; `unweather bench` times the whole
decode-restore-encode pipeline), on synthetic rainy frames. Rows: torch fp32 (the baseline) and
bf16, ONNX Runtime fp32 and fp16 graphs on the CPU; torch fp32/fp16/bf16 and CUDA-graph replay,
ONNX Runtime CUDA and TensorRT fp32/fp16 on a GPU. What cannot run here is reported as skipped
with the reason. Each row has median and p95 latency, FPS and the ratio to torch fp32 eager on
the same device, model and resolution (baseline latency / row latency: above 1 is faster).

A combination gets one untimed warm-up call, then timed calls until `--max-seconds` is spent (at
least one, at most `--frames` x `--repeats`), so slow models (MSBDN at 1080p on a CPU) stay
within the run's time. `--write-choice` records the fastest CPU backend per model and precision
in unweather/engine/cpu_backends.json, which `unweather.engine.open(backend="auto")` falls back on
when it cannot time the CPU backends on the machine it runs on (`unweather.engine.calibrate`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ("identity", "student_small", "student_base", "msbdn")
RESOLUTIONS = ("640x360", "1280x720", "1920x1080")
logger = logging.getLogger("benchmarks.backends")


@dataclass(frozen=True)
class Row:
    """A backend, precision, device and engine options to measure."""

    backend: str
    precision: str
    device: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        opts = "".join(f",{k}" if v is True else f",{k}={v}" for k, v in self.options)
        return f"{self.backend}{opts} {self.precision} {self.device}"

    @property
    def baseline(self) -> bool:
        return self.backend == "torch" and self.precision == "fp32" and not self.options


def rows(threads: int | None) -> list[Row]:
    """Everything measured, each device's torch fp32 eager baseline first."""
    ort = (("threads", threads),) if threads else ()
    return [
        Row("torch", "fp32", "cpu"),
        Row("torch", "bf16", "cpu"),
        Row("onnxruntime", "fp32", "cpu", ort),
        Row("onnxruntime", "fp16", "cpu", ort),
        Row("torch", "fp32", "cuda"),
        Row("torch", "fp16", "cuda"),
        Row("torch", "bf16", "cuda"),
        Row("torch", "fp16", "cuda", (("cuda_graph", True),)),
        Row("onnxruntime", "fp32", "cuda"),
        Row("onnxruntime", "fp16", "cuda"),
        Row("tensorrt", "fp32", "cuda"),
        Row("tensorrt", "fp16", "cuda"),
    ]


@dataclass
class Settings:
    """What one run measures."""

    models: list[str] = field(default_factory=lambda: list(MODELS))
    resolutions: list[str] = field(default_factory=lambda: list(RESOLUTIONS))
    frames: int = 8
    repeats: int = 3
    max_seconds: float = 10.0
    max_call_seconds: float | None = None
    threads: int | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")


def _combination(model: str, row: Row, resolution: str) -> Any:
    from unweather.bench.config import BackendSpec, ModelSpec, parse_resolution
    from unweather.bench.runner import Combination

    return Combination(ModelSpec(model), BackendSpec(row.backend, row.options), row.precision,
                       parse_resolution(resolution), 1, baseline=row.baseline)


def _frames(resolution: str, count: int) -> torch.Tensor:
    import numpy as np

    from unweather.bench.clip import synthetic_frames
    from unweather.bench.config import parse_resolution

    res = parse_resolution(resolution)
    array = np.stack(list(synthetic_frames(res, count)))
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div(255.0).contiguous()


def time_within(engine: Any, batches: list[torch.Tensor], repeats: int, max_seconds: float,
                max_call_seconds: float | None) -> dict[str, Any]:
    """Warm up with one call, then time as many calls as `max_seconds` allows (`unweather.bench` timing)."""
    from unweather.bench.runner import TooSlowError, time_engine
    from unweather.bench.timing import synchronize

    device = batches[0].device
    with torch.inference_mode():
        start = time.perf_counter()
        engine(batches[0])
        synchronize(device)
        first = time.perf_counter() - start
    if max_call_seconds is not None and first > max_call_seconds:
        raise TooSlowError(f"too slow: the warm-up call took {first:.1f} s (more than --max-call-seconds "
                           f"{max_call_seconds:g})")
    calls = max(1, min(len(batches) * repeats, int(max_seconds / max(first, 1e-6))))
    passes = min(repeats, calls)
    per_pass = max(1, min(len(batches), calls // passes))
    # A fast combination gets one more untimed call (caches, allocator) while it costs little.
    warmup = 1 if first < 0.05 * max_seconds else 0
    result = time_engine(engine, batches[:per_pass], warmup, passes)
    result["first_call_s"] = first
    return result


def measure(model: str, row: Row, resolution: str, frames: torch.Tensor, settings: Settings) -> dict[str, Any]:
    """One row of the results; never raises for something that cannot run here."""
    import unweather.engine as engines
    from unweather.bench.runner import (
        classify_failure,
        in_worker_thread,
        make_batches,
        precheck,
        tensorrt_profile,
    )

    combo = _combination(model, row, resolution)
    out: dict[str, Any] = {"model": model, "backend": row.backend, "precision": row.precision, "device": row.device,
                           "options": dict(row.options), "resolution": resolution, "baseline": row.baseline}
    reason = precheck(combo, torch.device(row.device))
    if reason:
        return {**out, "status": "skipped", "reason": reason}
    engine = None
    try:
        options = dict(row.options)
        if row.backend == "tensorrt":
            options.update(tensorrt_profile(combo))
        start = time.perf_counter()
        engine = engines.open(model, backend=row.backend, precision=row.precision, device=row.device, **options)
        out["open_s"] = round(time.perf_counter() - start, 2)
        out["engine"] = engine.describe()
        batches = make_batches(frames, 1, engine.device)
        timing = in_worker_thread(time_within, engine, batches, settings.repeats, settings.max_seconds,
                                  settings.max_call_seconds)
    except Exception as exc:  # a benchmark reports one combination's failure and goes on
        status, why = classify_failure(exc, combo)
        logger.debug("%s %s %s: %s", model, row.label, resolution, why, exc_info=True)
        return {**out, "status": status, "reason": why}
    finally:
        if engine is not None:
            engine.close()
    latency = timing["latency_ms"]
    return {**out, "status": "ok", "median_ms": latency["median"], "p95_ms": latency["p95"],
            "min_ms": latency["min"], "max_ms": latency["max"], "fps": 1000.0 / latency["median"],
            "samples": len(timing["samples_ms"]), "first_call_s": timing["first_call_s"],
            "fps_spread": timing["fps_spread"], "samples_ms": timing["samples_ms"]}


def add_ratios(results: list[dict[str, Any]]) -> None:
    """x_vs_torch_fp32: the baseline's median latency over the row's, same device, model and resolution."""
    base = {(r["model"], r["resolution"], r["device"]): r["median_ms"]
            for r in results if r["baseline"] and r["status"] == "ok"}
    for r in results:
        if r["status"] == "ok":
            ref = base.get((r["model"], r["resolution"], r["device"]))
            r["x_vs_torch_fp32"] = ref / r["median_ms"] if ref else None


def cpu_choice(results: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """The fastest CPU backend per model and precision, over all resolutions measured (summed medians)."""
    totals: dict[tuple[str, str, str], list[float]] = {}
    for r in results:
        if r["status"] == "ok" and r["device"] == "cpu":
            totals.setdefault((r["model"], r["precision"], r["backend"]), []).append(r["median_ms"])
    resolutions_per = {}
    for (model, precision, backend), values in totals.items():
        resolutions_per.setdefault((model, precision), {})[backend] = values
    choice: dict[str, dict[str, str]] = {}
    for (model, precision), by_backend in resolutions_per.items():
        # Compare only backends measured at the same number of resolutions.
        most = max(len(v) for v in by_backend.values())
        complete = {b: sum(v) for b, v in by_backend.items() if len(v) == most}
        choice.setdefault(model, {})[precision] = min(complete, key=complete.get)
    return choice


def write_choice(results: list[dict[str, Any]], source: str) -> Path:
    """Merge this run's CPU choice into unweather/engine/cpu_backends.json."""
    path = ROOT / "unweather" / "engine" / "cpu_backends.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    choices = data.get("choice", {})
    for model, by_precision in cpu_choice(results).items():
        choices.setdefault(model, {}).update(by_precision)
    data = {"source": source, "choice": dict(sorted(choices.items()))}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def table(results: list[dict[str, Any]]) -> str:
    """The results as a markdown table."""
    lines = ["| model | resolution | backend | precision | device | median ms | p95 ms | FPS | x torch fp32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        name = r["backend"] + "".join(f":{k}" for k in r["options"] if k != "threads")
        if r["status"] == "ok":
            ratio = f"{r['x_vs_torch_fp32']:.2f}" if r.get("x_vs_torch_fp32") else "-"
            lines.append(f"| {r['model']} | {r['resolution']} | {name} | {r['precision']} | {r['device']} | "
                         f"{r['median_ms']:.1f} | {r['p95_ms']:.1f} | {r['fps']:.2f} | {ratio} |")
    others: dict[tuple[str, str, str, str, str], list[str]] = {}
    for r in results:
        if r["status"] != "ok":
            name = r["backend"] + "".join(f":{k}" for k in r["options"] if k != "threads")
            others.setdefault((r["status"], name, r["precision"], r["device"], r["reason"]), []).append(
                f"{r['model']}@{r['resolution']}")
    if others:
        lines.append("")
    for (status, backend, precision, device, reason), where in others.items():
        lines.append(f"{status}: {backend} {precision} {device} ({len(where)}x: {', '.join(where[:3])}"
                     f"{', ...' if len(where) > 3 else ''}): {reason}")
    return "\n".join(lines)


def run(settings: Settings, command: str, save: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Any]:
    """Measure everything `settings` asks for and return the results payload.

    `save(payload)` is called after every combination with what is measured so far
    ("complete": false), so an interrupted run keeps its figures; Ctrl-C ends the run early.
    """
    from unweather.machine import load_average, machine_info

    if settings.threads:
        torch.set_num_threads(settings.threads)
    machine = machine_info()
    machine["load_average_start"] = machine.pop("load_average")
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    selected = [r for r in rows(settings.threads) if r.device in settings.devices]
    payload: dict[str, Any] = {
        "schema": "unweather.benchmarks.backends/1",
        "command": command,
        "settings": {"models": settings.models, "resolutions": settings.resolutions, "frames": settings.frames,
                     "repeats": settings.repeats, "max_seconds": settings.max_seconds,
                     "max_call_seconds": settings.max_call_seconds, "threads": settings.threads, "batch": 1,
                     "devices": list(settings.devices)},
        "note": "engine alone, batch 1, frames on the device; ratio = torch fp32 eager median / row median, "
                "same device, model and resolution",
        "machine": machine,
        "complete": False,
        "results": results,
    }
    try:
        _measure_all(settings, selected, results, payload, started, save)
        payload["complete"] = True
    except KeyboardInterrupt:
        logger.warning("interrupted: keeping the %d combinations measured", len(results))
    add_ratios(results)
    machine["load_average_end"] = load_average()
    payload["duration_s"] = round(time.perf_counter() - started, 1)
    return payload


def _measure_all(settings: Settings, selected: list[Row], results: list[dict[str, Any]], payload: dict[str, Any],
                 started: float, save: Callable[[dict[str, Any]], object] | None) -> None:
    from unweather.machine import load_average

    for resolution in settings.resolutions:
        frames = _frames(resolution, settings.frames)
        for model in settings.models:
            for row in selected:
                t0 = time.perf_counter()
                result = measure(model, row, resolution, frames, settings)
                result["wall_s"] = round(time.perf_counter() - t0, 1)
                result["load_average"] = load_average()
                results.append(result)
                if save is not None and row.device == "cpu":
                    add_ratios(results)
                    payload["duration_s"] = round(time.perf_counter() - started, 1)
                    save(payload)
                if result["status"] == "ok":
                    logger.info("%s %s %s: median %.1f ms, p95 %.1f ms (%d samples, %.0f s)", model, resolution,
                                row.label, result["median_ms"], result["p95_ms"], result["samples"],
                                result["wall_s"])
                else:
                    logger.info("%s %s %s: %s (%s)", model, resolution, row.label, result["status"],
                                result["reason"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="registry models (default: all four)")
    parser.add_argument("--resolutions", nargs="+", default=list(RESOLUTIONS), metavar="WxH")
    parser.add_argument("--frames", type=int, default=8, help="distinct frames per pass (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the frames, budget allowing (default 3)")
    parser.add_argument("--max-seconds", type=float, default=10.0, metavar="S",
                        help="timed seconds per combination after the warm-up call (default 10; at least one call)")
    parser.add_argument("--max-call-seconds", type=float, metavar="S",
                        help="skip a combination whose warm-up call takes longer than S")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch and ONNX Runtime "
                                                                   "(default: each library's own)")
    parser.add_argument("--cpu-only", action="store_true", help="leave out the CUDA rows entirely")
    parser.add_argument("--json", metavar="FILE", help="results file (default: benchmarks/results/backends-<UTC>.json)")
    parser.add_argument("--write-choice", action="store_true",
                        help="record the fastest CPU backend per model in unweather/engine/cpu_backends.json")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    # The exporter's optimiser logs every rewrite at INFO: only this script and unweather speak.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("benchmarks", "unweather"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from unweather import models
    from unweather.bench.config import parse_resolution
    from unweather.errors import UnweatherError
    from unweather.machine import save_results

    try:
        for r in args.resolutions:
            parse_resolution(r)
        unknown = [m for m in args.models if m not in models.names()]
        if unknown:
            raise UnweatherError(f"unknown model(s) {', '.join(unknown)}; registered: {', '.join(models.names())}")
        if args.frames < 1 or args.repeats < 1 or args.max_seconds <= 0:
            raise UnweatherError("--frames and --repeats must be at least 1 and --max-seconds positive")
    except UnweatherError as exc:
        print(f"backends.py: error: {exc}", file=sys.stderr)
        return 2
    settings = Settings(models=args.models, resolutions=args.resolutions, frames=args.frames, repeats=args.repeats,
                        max_seconds=args.max_seconds, max_call_seconds=args.max_call_seconds, threads=args.threads,
                        devices=("cpu",) if args.cpu_only else ("cpu", "cuda"))
    command = shlex.join(["python", "benchmarks/backends.py", *(argv if argv is not None else sys.argv[1:])])
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    target = Path(args.json) if args.json else RESULTS / f"backends-{stamp}.json"
    payload = run(settings, command, save=lambda partial: save_results(target, partial))
    path = save_results(target, payload)
    print(table(payload["results"]))
    if not payload["complete"]:
        print("\ninterrupted: the results hold the combinations measured so far")
    print(f"\n{len(payload['results'])} combinations in {payload['duration_s']:.0f} s; load average "
          f"{payload['machine']['load_average_start']} -> {payload['machine']['load_average_end']}; wrote {path}")
    if args.write_choice:
        where = write_choice(payload["results"], f"benchmarks/results/{path.name}")
        print(f"CPU choice for backend='auto' written to {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
