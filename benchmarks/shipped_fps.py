"""End-to-end `unweather run` frame rate of each shipped model on a 640x360 clip, on this machine.

    python benchmarks/shipped_fps.py [--frames 96] [--repeats 3] [--models fast quality] [--device cpu]
                                     [--pan-speed 0.001]

The clip is the demo's (the bundled photo under moving synthetic rain, H.264); the camera pans by
`--pan-speed` of the photo's width a frame (the default barely moves; 0.01 is a few pixels a frame, where
the video student moves its state every frame). Each run decodes,
restores and encodes the whole clip through `unweather.stream.run` (offline mode, batch 1, the engine
opened once per model and reused); FPS is frames written over the run's time. Reports the median and
spread over the repeats, the load average (a shared machine makes the numbers lower than a quiet
one) and writes benchmarks/results/shipped_fps.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["fast", "quality"],
                        help="NAME[:BACKEND][@PRECISION] each, e.g. fast fast@bf16 fast:onnxruntime")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.add_argument("--pan-speed", type=float, default=0.001,
                        help="the camera's pan per frame, a share of the photo's width")
    parser.add_argument("--preset", default=None, help="libx264 preset (default: unweather run's, fast offline)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/shipped_fps.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from unweather.demo import _write_video, demo_params, demo_photo
    from unweather.machine import load_average, machine_info, save_results
    from unweather.stream import RunConfig, open_engine, run
    from unweather.training.clips import weather_clip
    from unweather.training.synth import read_image, to_uint8

    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "rain.mp4"
        _, degraded = weather_clip(read_image(demo_photo()), "rain", args.frames, np.random.default_rng(1), pan=True,
                                   size=(h, w), wind=0.15, pan_speed=args.pan_speed, params=demo_params("rain"))
        _write_video(clip, [to_uint8(f) for f in degraded])
        for model in args.models:
            spec, _, precision = model.partition("@")
            name, _, backend = spec.partition(":")
            config = RunConfig(model=name, device=args.device, backend=backend or args.backend,
                               precision=precision or None, preset=args.preset, progress=False, mode="offline")
            engine = open_engine(config)
            try:
                run(str(clip), str(Path(tmp) / "warm.mp4"), config=dataclasses.replace(config, max_frames=8),
                    engine=engine)
                fps, loads = [], []
                for i in range(args.repeats):
                    stats = run(str(clip), str(Path(tmp) / f"{model}{i}.mp4"), config=config, engine=engine)
                    fps.append(stats.fps)
                    loads.append((load_average() or [None])[0])
                describe = getattr(engine, "describe", None)
                results[model] = {"fps_median": statistics.median(fps), "fps_min": min(fps), "fps_max": max(fps),
                                  "fps": fps, "load_average_1min": loads, "frames": args.frames,
                                  "engine": describe() if callable(describe) else type(engine).__name__,
                                  "stage_s": stats.stage_s}
            finally:
                engine.close()
            print(f"{model}: {results[model]['fps_median']:.1f} FPS median ({min(fps):.1f}-{max(fps):.1f}) "
                  f"over {args.repeats} runs of {args.frames} frames at {w}x{h}; load {loads}", flush=True)
    save_results(args.out, {"benchmark": "shipped_fps", "size": [w, h], "pan_speed": args.pan_speed,
                            "device": args.device,
                            "backend": args.backend, "preset": args.preset, "results": results,
                            "machine": machine_info()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
