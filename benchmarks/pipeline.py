"""The real-time pipeline against the engine alone and a plain sequential loop, and its live latency.

    python benchmarks/pipeline.py [--models student_small identity] [--size 640x360] [--frames 300]
                                  [--repeats 3] [--live-rates 15 25] [--live-seconds 10]

On the same frames (a synthetic rainy clip written once, H.264), for each model:

* engine: the engine alone on the frames decoded beforehand into memory (float RGB, no decode, no
  conversion, no encode), timed call by call in a worker thread, as the pipeline calls it;
* pipeline: `unweather.stream.run` in offline mode, file to file (decode, convert, infer, convert
  back, encode with libx264, each stage in its own thread);
* sequential: a plain loop written here: decode a frame with PyAV, `to_ndarray("rgb24")`, infer,
  `from_ndarray`, encode with the same encoder settings, one frame after the other.

The three are interleaved round by round (their order rotating), so a neighbour's load slows them
alike; FPS is the median over the rounds, and the ratios are pipeline/engine and pipeline/sequential.
Then the same clip, written at each `--live-rates` frame rate, is fed to the pipeline in live mode
paced at that rate, as a camera would: latency per frame from the frame's due time to its encoding
(p50/p95/p99) and the frames dropped. Results go to benchmarks/results/pipeline-<date>.json with the
machine, versions, git commit, load average and the CPU share of other processes.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCHEMA = "unweather.bench.pipeline/1"
logger = logging.getLogger("pipeline-bench")


def write_clip(frames: Any, path: Path, rate: int) -> int:
    """Encode RGB frames as a near-lossless H.264 clip at `rate` frames per second; return the count."""
    import av
    import numpy as np

    written = 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": "16", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
            written += 1
        container.mux(stream.encode())
    return written


def sequential(engine: Any, clip: Path, output: Path, crf: int, preset: str) -> dict[str, Any]:
    """Decode, infer and encode one frame after the other, as a short script would; return FPS."""
    import av
    import torch

    frames = 0
    with av.open(str(clip)) as source, av.open(str(output), "w") as sink:
        vin = source.streams.video[0]
        vin.thread_type = "AUTO"
        vout = sink.add_stream("libx264", rate=vin.average_rate, options={"crf": str(crf), "preset": preset})
        vout.width, vout.height, vout.pix_fmt = vin.width, vin.height, "yuv420p"
        vout.time_base = vin.time_base
        start = time.perf_counter()
        with torch.inference_mode():
            for frame in source.decode(vin):
                rgb = torch.from_numpy(frame.to_ndarray(format="rgb24"))
                x = rgb.to(engine.device).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
                y = engine(x)
                out = y[0].clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).cpu()
                new = av.VideoFrame.from_ndarray(out.contiguous().numpy(), format="rgb24")
                new.pts, new.time_base = frame.pts, frame.time_base
                sink.mux(vout.encode(new))
                frames += 1
            sink.mux(vout.encode())
    seconds = time.perf_counter() - start
    output.unlink(missing_ok=True)
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds}


def training_jobs() -> int:
    """Training processes sharing this machine's CPU."""
    import psutil

    return sum("unweather.cli train" in " ".join(p.info.get("cmdline") or [])
               for p in psutil.process_iter(["cmdline"]))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure_model(model: str, clip: Path, frames: Any, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Engine alone, pipeline and sequential loop on `clip`, interleaved over `args.repeats` rounds."""
    from unweather.bench.runner import in_worker_thread, make_batches, time_engine, time_pipeline
    from unweather.bench.timing import CpuShare, spread
    from unweather.stream import RunConfig, open_engine

    engine = open_engine(RunConfig(model=model, device=args.device, backend=args.backend))
    share = CpuShare().start()
    try:
        batches = make_batches(frames, args.batch, engine.device)
        crf, preset = RunConfig().crf, "fast"  # the pipeline's offline libx264 settings
        eng, pipe, seq = [], [], []
        pipe_runs = []

        def run_engine() -> None:
            result = in_worker_thread(time_engine, engine, batches, args.warmup, 1)
            eng.append(result["fps"])

        def run_pipeline() -> None:
            result = time_pipeline(engine, clip, args.batch, 1, workdir)
            pipe.append(result["fps"])
            pipe_runs.append(result["runs"][0])

        def run_sequential() -> None:
            seq.append(in_worker_thread(sequential, engine, clip, workdir / "sequential.mp4", crf, preset)["fps"])

        order = [run_engine, run_pipeline, run_sequential]
        in_worker_thread(time_engine, engine, batches[:1], args.warmup, 1)  # first-call costs out of the way
        for i in range(args.repeats):
            for fn in order[i % 3:] + order[:i % 3]:
                fn()
            logger.info("%s round %d: engine %.1f, pipeline %.1f, sequential %.1f FPS", model, i + 1,
                         eng[-1], pipe[-1], seq[-1])
    finally:
        engine_desc = engine.describe() if hasattr(engine, "describe") else type(engine).__name__
        engine.close()
    stage = {k: _median([r["stage_s"][k] for r in pipe_runs]) for k in pipe_runs[0]["stage_s"]}
    latency = {k: _median([r["latency_ms"][k] for r in pipe_runs]) for k in ("p50", "p95", "p99")}
    result = {
        "model": model,
        "engine": engine_desc,
        "engine_fps": _median(eng), "engine_fps_per_round": eng, "engine_spread": spread(eng),
        "pipeline_fps": _median(pipe), "pipeline_fps_per_round": pipe, "pipeline_spread": spread(pipe),
        "sequential_fps": _median(seq), "sequential_fps_per_round": seq, "sequential_spread": spread(seq),
        "pipeline_stage_s": stage,
        "pipeline_latency_ms": latency,
        "pipeline_frames": [r["frames"] for r in pipe_runs],
        # Per round, then the median: a load change between rounds cancels out within a round.
        "pipeline_vs_engine_per_round": [p / e for p, e in zip(pipe, eng)],
        "pipeline_vs_sequential_per_round": [p / s for p, s in zip(pipe, seq)],
        "cpu_share": share.stop(),
    }
    result["pipeline_vs_engine"] = _median(result["pipeline_vs_engine_per_round"])
    result["pipeline_vs_sequential"] = _median(result["pipeline_vs_sequential_per_round"])
    return result


def measure_live(model: str, clip: Path, rate: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The pipeline in live mode on `clip` paced at its own rate `rate`: latency percentiles and drops."""
    from unweather.bench.timing import CpuShare
    from unweather.stream import RunConfig, open_engine, run

    config = RunConfig(model=model, device=args.device, backend=args.backend, mode="live", progress=False)
    engine = open_engine(config)
    share = CpuShare().start()
    try:
        stats = run(str(clip), str(workdir / "live.mkv"), config, engine=engine).to_dict()
    finally:
        engine.close()
    (workdir / "live.mkv").unlink(missing_ok=True)
    return {"model": model, "rate": rate, "frames_in": stats["frames_in"], "frames_out": stats["frames_out"],
            "dropped": stats["dropped"], "fps": stats["fps"], "latency_ms": stats["latency_ms"],
            "stage_s": stats["stage_s"], "cpu_share": share.stop()}


def table(results: dict[str, Any]) -> str:
    """Markdown tables of the offline and live measurements."""
    lines = ["| model | engine alone FPS | pipeline FPS | sequential FPS | pipeline/engine | pipeline/sequential |",
             "|---|---|---|---|---|---|"]
    for r in results["offline"]:
        lines.append(f"| {r['model']} | {r['engine_fps']:.1f} | {r['pipeline_fps']:.1f} | {r['sequential_fps']:.1f} "
                     f"| {r['pipeline_vs_engine']:.2f} | {r['pipeline_vs_sequential']:.2f} |")
    lines += ["", "| live, model | input FPS | frames in/out/dropped | p50 ms | p95 ms | p99 ms |",
              "|---|---|---|---|---|---|"]
    for r in results["live"]:
        lat = r["latency_ms"]
        lines.append(f"| {r['model']} | {r['rate']} | {r['frames_in']}/{r['frames_out']}/{r['dropped']} "
                     f"| {lat['p50']:.0f} | {lat['p95']:.0f} | {lat['p99']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["student_small", "identity"])
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT of the synthetic clip")
    parser.add_argument("--frames", type=int, default=300, help="frames in the offline clip")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed engine calls before each engine timing")
    parser.add_argument("--batch", type=int, default=1, help="frames per inference call (offline)")
    parser.add_argument("--device", default=None, help="engine device (default: the engine's choice)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--live-rates", type=int, nargs="*", default=[15, 25], help="live input frame rates")
    parser.add_argument("--live-seconds", type=float, default=10.0, help="length of each live run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("unweather").setLevel(logging.WARNING)

    import torch

    from unweather.bench.clip import synthetic_frames
    from unweather.bench.config import parse_resolution
    from unweather.bench.timing import CpuShare
    from unweather.machine import load_average, machine_info, save_results

    res = parse_resolution(args.size)
    command = "python " + " ".join(["benchmarks/pipeline.py", *(sys.argv[1:] if argv is None else argv)])
    machine = machine_info()
    machine["load_average_start"] = machine.pop("load_average")
    machine["training_jobs"] = training_jobs()
    share = CpuShare().start()
    started = time.perf_counter()
    results: dict[str, Any] = {"offline": [], "live": []}
    with tempfile.TemporaryDirectory(prefix="unweather-pipeline-bench-") as tmp:
        workdir = Path(tmp)
        live_frames = max(args.live_rates, default=0) * args.live_seconds
        pictures = list(synthetic_frames(res, max(args.frames, int(live_frames))))
        clip = workdir / "clip.mp4"
        count = write_clip(pictures[:args.frames], clip, 30)
        from unweather.bench.clip import read_clip

        frames = read_clip(clip)
        logger.info("clip: %d frames of %s; torch threads %d; load average %s", count, res,
                     torch.get_num_threads(), machine["load_average_start"])
        for model in args.models:
            results["offline"].append(measure_model(model, clip, frames, args, workdir))
        for rate in args.live_rates:
            live_clip = workdir / f"live-{rate}.mp4"
            write_clip(pictures[:round(rate * args.live_seconds)], live_clip, rate)
            for model in args.models:
                results["live"].append(measure_live(model, live_clip, rate, args, workdir))
                r = results["live"][-1]
                logger.info("live %s at %d FPS: p50 %.0f ms, p95 %.0f ms, dropped %d", model, rate,
                             r["latency_ms"]["p50"], r["latency_ms"]["p95"], r["dropped"])
    machine["load_average_end"] = load_average()
    machine["cpu_share_during_run"] = share.stop()
    payload = {
        "schema": SCHEMA,
        "command": command,
        "config": {"models": args.models, "size": str(res), "frames": count, "clip_rate": 30,
                   "repeats": args.repeats, "warmup": args.warmup, "batch": args.batch, "device": args.device,
                   "backend": args.backend, "live_rates": args.live_rates, "live_seconds": args.live_seconds,
                   "encoder": "libx264 crf 18 preset fast (offline), veryfast zerolatency (live)",
                   "torch_threads": torch.get_num_threads()},
        "duration_s": time.perf_counter() - started,
        "machine": machine,
        **results,
    }
    payload["table"] = table(results)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = save_results(args.out / f"pipeline-{stamp}.json", payload)
    print(payload["table"])
    load = machine["load_average_start"], machine["load_average_end"], machine["cpu_share_during_run"]
    print(f"\nload average at start {load[0]}, at end {load[1]}; CPU share {load[2]}; "
          f"training jobs running: {machine['training_jobs']}")
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
