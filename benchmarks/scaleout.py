"""Files per minute through Ray with one and two local workers against the single-process run.

    python benchmarks/scaleout.py [--files 4] [--seconds 10] [--size 320x180] [--repeats 3]

The same files go through `unweather.stream.run` in this process (one engine, file after file), then
through `unweather.cluster` on a local Ray cluster with a pool of 1 and 2 restorer actors (one chunk
per file). Ray's overhead is the 1-worker time over the single-process time, minus one: it covers
planning, the actor's start and engine build, scheduling, and joining the output with its audio.
The cluster's own start is measured apart (a cluster is started once, not per job). Results go to
benchmarks/results/scaleout-<date>.json with the machine, versions and git commit.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def make_file(path: str, seconds: float, size: tuple[int, int], fps: int = 25) -> str:
    """A clip with moving content, keyframes every 2 s and AAC audio."""
    w, h = size
    with av.open(path, "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.options = {"g": str(2 * fps), "preset": "veryfast"}
        audio = out.add_stream("aac", rate=16000)
        audio.layout = "mono"
        rng = np.random.default_rng(0)
        base = rng.integers(0, 200, (h, w, 3), dtype=np.uint8)
        for i in range(int(seconds * fps)):
            img = np.roll(base, i * 2, axis=1)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        t = 0
        while t < int(seconds * 16000):
            samples = (0.2 * np.sin(2 * np.pi * 330 * np.arange(t, t + 1024) / 16000)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(samples[None], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, t
            out.mux(audio.encode(frame))
            t += 1024
        out.mux(audio.encode())
    return path


@dataclasses.dataclass
class StandinConfig:
    """The config of the stand-in pipeline: the model its engine runs."""

    model: str = "identity"


def standin_run(src: str, dst: str, config=None, engine=None, stop_event=None) -> None:
    """A minimal decode -> engine -> encode pipeline, for machines where `unweather.stream` is absent."""
    import torch

    with av.open(src) as inp, av.open(dst, "w") as out:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        video = out.add_stream("libx264", rate=vin.average_rate or 25)
        video.width, video.height, video.pix_fmt = vin.width, vin.height, "yuv420p"
        video.options = {"preset": "veryfast"}
        for frame in inp.decode(vin):
            x = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None].float() / 255
            y = (engine(x)[0].permute(1, 2, 0) * 255).round().byte().numpy()
            new = av.VideoFrame.from_ndarray(np.ascontiguousarray(y), format="rgb24")
            new.pts, new.time_base = frame.pts, frame.time_base
            out.mux(video.encode(new))
        out.mux(video.encode())


def summary(times: list[float], files: int) -> dict:
    med = statistics.median(times)
    return {"seconds": times, "median_s": med, "min_s": min(times), "max_s": max(times),
            "spread_s": max(times) - min(times), "files_per_minute": 60.0 * files / med}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each file")
    parser.add_argument("--size", default="320x180")
    parser.add_argument("--model", default="identity")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="actor pool sizes to measure")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in the single process (0: torch's default)")
    parser.add_argument("--pipeline", choices=("stream", "standin"), default="stream",
                        help="unweather.stream.run, or a minimal stand-in pipeline in this script")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    import unweather.engine
    from unweather.cluster.ray_archive import ArchiveOptions, run_archive
    from unweather.cluster.ray_connect import connect
    from unweather.cluster.sources import expand_inputs
    from unweather.machine import machine_info, save_results
    if args.pipeline == "stream":
        from unweather.stream import RunConfig, run

        config = RunConfig(model=args.model) if "model" in RunConfig.__dataclass_fields__ else RunConfig()
        runner = None
    else:
        config, run = StandinConfig(args.model), standin_run
        runner = standin_run

    if args.threads:
        torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="scaleout-"))
    try:
        files = [make_file(str(work / f"clip{i}.mp4"), args.seconds, size) for i in range(args.files)]

        began = time.perf_counter()
        started = connect("local", num_cpus=os.cpu_count(), num_gpus=0, object_store_memory=200 * 2**20)
        cluster_start = time.perf_counter() - began
        sources = expand_inputs(files)
        workers_list = [int(w) for w in args.workers.split(",")]
        single: list[float] = []
        ray_times: dict[str, list[float]] = {str(w): [] for w in workers_list}
        actor_threads: set[int] = set()
        in_actors: dict[str, list[float]] = {str(w): [] for w in workers_list}
        try:
            # Interleaved, so a busy neighbour on a shared machine slows every mode alike.
            for _ in range(args.repeats):
                out = work / "single"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                began = time.perf_counter()
                engine = unweather.engine.open(args.model)
                for f in files:
                    run(f, str(out / os.path.basename(f)), config, engine=engine)
                single.append(time.perf_counter() - began)
                print(f"single process: {single[-1]:.2f} s", flush=True)
                for workers in workers_list:
                    out = work / f"ray{workers}"
                    shutil.rmtree(out, ignore_errors=True)
                    began = time.perf_counter()
                    stats = run_archive(sources, str(out), config,
                                        ArchiveOptions(actors=workers, chunk_seconds=0, progress=False), runner)
                    ray_times[str(workers)].append(time.perf_counter() - began)
                    assert stats["totals"]["done"] == len(files), stats["inputs"]
                    actor_threads |= {c["threads"] for c in stats["chunks"]}
                    in_actors[str(workers)].append(sum(c["seconds"] for c in stats["chunks"]))
                    print(f"ray, {workers} worker(s): {ray_times[str(workers)][-1]:.2f} s", flush=True)
        finally:
            if started:
                ray.shutdown()
        ray_results = {w: {**summary(t, len(files)), "pipeline_seconds_in_actors": in_actors[w]}
                       for w, t in ray_times.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = summary(single, len(files))
    result = {
        "benchmark": "scaleout",
        "setup": {"files": args.files, "seconds_per_file": args.seconds, "size": args.size, "model": args.model,
                  "repeats": args.repeats, "chunking": "one chunk per file", "pipeline": args.pipeline,
                  "ray": ray.__version__,
                  "cluster_start_s": cluster_start, "torch_threads_single": torch.get_num_threads(),
                  "torch_threads_actors": sorted(actor_threads)},
        "single_process": base,
        "ray": ray_results,
        "ray_overhead_ratio": {w: r["median_s"] / base["median_s"] - 1.0 for w, r in ray_results.items()},
        "speedup_vs_single": {w: base["median_s"] / r["median_s"] for w, r in ray_results.items()},
        "machine": machine_info(),
    }
    print(f"single process: {base['files_per_minute']:.1f} files/min (median {base['median_s']:.2f} s)")
    for w, r in ray_results.items():
        print(f"ray {w} worker(s): {r['files_per_minute']:.1f} files/min (median {r['median_s']:.2f} s), "
              f"overhead {result['ray_overhead_ratio'][w]:+.1%}, speedup {result['speedup_vs_single'][w]:.2f}x")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = save_results(Path(args.out) / f"scaleout-{stamp}.json", result)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
