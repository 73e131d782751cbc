"""Several streams through one shared engine against the same files run one after another.

    python benchmarks/multistream.py [--streams 4] [--frames 50] [--size 320x180] [--model student_small]
                                     [--repeats 3] [--device cpu]

One engine is built once and used by every mode, so build time is left out:
  sequential  `unweather.stream.run` on each file in turn (what separate runs do);
  shared      `unweather.stream.multi.run_many` on all files at once, batching across streams;
  shared-b1   the same with batching off (max_batch 1): concurrency alone.
The modes are interleaved in each repeat. FPS is frames written over wall time; results go to
benchmarks/results/multistream-<date>.json with the machine (its load included), versions and commit.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def make_file(path: Path, seed: int, frames: int, size: tuple[int, int], fps: int = 25) -> Path:
    """A clip of moving random texture; each seed gives different content."""
    w, h = size
    base = np.random.default_rng(seed).integers(0, 220, (h, w, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(base, 2 * i, axis=1), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def main() -> None:
    from unweather import engine as engines
    from unweather.machine import load_average, machine_info, save_results
    from unweather.stream import RunConfig
    from unweather.stream.multi import run_many
    from unweather.stream.runner import run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--frames", type=int, default=50, help="frames per stream")
    ap.add_argument("--size", default="320x180", help="WxH")
    ap.add_argument("--model", default="student_small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-batch", type=int, default=None, help="shared mode's max batch (default: the product's)")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/multistream-<date>.json)")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    load_before = load_average()
    engine = engines.open(args.model, device=args.device)
    config = RunConfig(progress=False, mode="offline")
    results: dict[str, list[float]] = {"sequential": [], "shared": [], "shared-b1": []}
    batches: dict[str, list[float]] = {"shared": [], "shared-b1": []}
    total = args.streams * args.frames
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        files = [str(make_file(tmp_path / f"cam{k}.mp4", k, args.frames, (w, h))) for k in range(args.streams)]
        run(files[0], str(tmp_path / "warm.mp4"), config, engine=engine)  # first-call costs out of the timings
        for rep in range(args.repeats):
            for mode, runs in results.items():
                out = tmp_path / f"{mode}-{rep}"
                out.mkdir()
                t0 = time.perf_counter()
                if mode == "sequential":
                    frames = sum(run(f, str(out / Path(f).name), config, engine=engine).frames_out for f in files)
                else:
                    stats = run_many(files, str(out) + "/", config, engine=engine,
                                     max_batch=1 if mode == "shared-b1" else args.max_batch)
                    frames = stats.total()["frames_out"]
                    batches[mode].append(stats.engines[0]["mean_batch"])
                seconds = time.perf_counter() - t0
                assert frames == total, (mode, frames)
                runs.append(total / seconds)
                print(f"repeat {rep + 1}: {mode:10s} {total / seconds:7.2f} FPS ({seconds:.2f} s)", flush=True)
    engine.close()
    summary = {mode: {"fps_median": round(statistics.median(v), 3), "fps_min": round(min(v), 3),
                      "fps_max": round(max(v), 3), "runs": [round(x, 3) for x in v]} for mode, v in results.items()}
    for mode, values in batches.items():
        summary[mode]["mean_batch"] = round(statistics.median(values), 3)
    seq = summary["sequential"]["fps_median"]
    ratios = {"shared_vs_sequential": round(summary["shared"]["fps_median"] / seq, 3),
              "shared_b1_vs_sequential": round(summary["shared-b1"]["fps_median"] / seq, 3),
              "shared_vs_shared_b1": round(summary["shared"]["fps_median"] / summary["shared-b1"]["fps_median"], 3)}
    payload = {
        "benchmark": "multistream",
        "settings": {"streams": args.streams, "frames_per_stream": args.frames, "size": args.size,
                     "model": args.model, "device": args.device, "repeats": args.repeats,
                     "engine": engine.describe() if hasattr(engine, "describe") else args.model},
        "results": summary,
        "ratios": ratios,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "note": "measured on a shared machine under load; compare the ratios within this run, not absolute FPS",
        "machine": machine_info(),
    }
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = save_results(args.out or ROOT / "benchmarks" / "results" / f"multistream-{stamp}.json", payload)
    for mode, s in summary.items():
        extra = f", mean batch {s['mean_batch']}" if "mean_batch" in s else ""
        print(f"{mode:10s} median {s['fps_median']:.2f} FPS (min {s['fps_min']:.2f}, max {s['fps_max']:.2f}){extra}")
    print(f"ratios: {ratios}; load average {load_before} -> {payload['load_average_after']}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
