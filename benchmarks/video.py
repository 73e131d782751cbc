#!/usr/bin/env python3
"""Video as video: the video student against a causal temporal median, the frame model and its filter.

On held-out scenes (the validation photos of a prepared corpus: packages no network trained on), clips
of `--frames` frames at 640x360 with rain or snow drawn afresh every frame, in our renderer style and in
the held-out one:

- still camera: the video student must beat a causal median of the last 5 input frames;
- moving camera (a pan of 2 pixels per frame; forward motion, a 1 % zoom per frame): +2 dB over the
  input and at least the frame model;
- clean clips at 40 dB or more; flicker on still cameras within 0.5 levels of the clean clip's;
- a cut to another scene: the first frames after it must not carry the old scene (no worse than the
  frame model there);
- the real clean clip of the corpus (a night city, two shots), when fetched: PSNR against its input.

Every method runs in the same process on the same clips: the input, the median, `fast`, `fast` with
`--temporal 0.8`, and the video students (`video`, and `video_quality` when shipped). Frames before the
fifth (the median's warm-up) are not scored.

    python3 benchmarks/video.py --corpus data/corpus_meta [--video PATH...] [--frame PATH] [--scenes 3]

Writes benchmarks/results/video.json and video.md, with the machine, versions and git commit.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unweather.machine import machine_info, save_results  # noqa: E402
from unweather.media import read_rgb  # noqa: E402
from unweather.models import load_checkpoint  # noqa: E402
from unweather.models.padding import pad_to_multiple  # noqa: E402
from unweather.models.video import VideoStudent  # noqa: E402
from unweather.stream.temporal import TemporalFilter  # noqa: E402
from unweather.training import video as V  # noqa: E402
from unweather.training.clips import flicker  # noqa: E402
from unweather.training.metrics import psnr  # noqa: E402

WARMUP = 4
SIZE = (360, 640)
# (group, spec); pans and zooms in pixels per frame and relative zoom per frame.
GROUPS = [
    ("still/rain", V.ClipSpec("still", "rain", "particles", "medium")),
    ("still/rain/heavy", V.ClipSpec("still", "rain", "particles", "heavy")),
    ("still/rain/optics", V.ClipSpec("still", "rain", "optics", "medium")),
    ("still/snow", V.ClipSpec("still", "snow", "particles", "medium")),
    ("still/snow/optics", V.ClipSpec("still", "snow", "optics", "medium")),
    ("pan/rain", V.ClipSpec("pan", "rain", "particles", "medium", 2.0)),
    ("pan/snow/optics", V.ClipSpec("pan", "snow", "optics", "medium", 2.0)),
    ("forward/rain", V.ClipSpec("zoom", "rain", "particles", "medium", 0.01)),
    ("forward/snow", V.ClipSpec("zoom", "snow", "noise", "medium", 0.01)),
    ("still/clean", V.ClipSpec("still", None)),
    ("pan/clean", V.ClipSpec("pan", None, speed=2.0)),
]

Method = Callable[[np.ndarray], np.ndarray]


def _tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


def _numpy(frames: torch.Tensor) -> np.ndarray:
    return frames.clamp(0, 1).permute(0, 2, 3, 1).numpy()


def median5(frames: np.ndarray) -> np.ndarray:
    """A causal median of the last 5 input frames (fewer at the start)."""
    return np.stack([np.median(frames[max(0, t - 4):t + 1], axis=0) for t in range(len(frames))])


def frame_method(net: torch.nn.Module, temporal: float = 0.0) -> Method:
    """A frame network run frame by frame, optionally followed by the temporal filter."""
    def run(frames: np.ndarray) -> np.ndarray:
        filt = TemporalFilter(temporal) if temporal else None
        out = []
        with torch.no_grad():
            for frame in _tensor(frames):
                h, w = frame.shape[-2:]
                y = net(pad_to_multiple(frame[None], 16))[..., :h, :w].clamp(0, 1)
                out.append(filt(y) if filt else y)
        return _numpy(torch.cat(out))
    return run


def video_method(net: VideoStudent) -> Method:
    """The video student over the clip, its state aligned and reset as the stream does it."""
    def run(frames: np.ndarray) -> np.ndarray:
        h, w = frames.shape[1:3]
        x = pad_to_multiple(_tensor(frames), net.pad_multiple)[None]
        moves = torch.from_numpy(V.shifts(frames))[None]
        with torch.no_grad():
            return _numpy(V.run_clip(net, x, moves)[0, :, :, :h, :w])
    return run


def scenes(corpus_meta: Path, count: int) -> list[Path]:
    """Held-out scenes: validation photos that are not frames of the real clip, spread over packages."""
    photos = sorted(p for p in (corpus_meta / "valid" / "clean").glob("*.png") if "_frame" not in p.stem)
    by_package: dict[str, list[Path]] = {}
    for p in photos:
        by_package.setdefault(p.name.split("__")[0], []).append(p)
    picked: list[Path] = []
    while len(picked) < count and any(by_package.values()):
        for group in by_package.values():
            if group and len(picked) < count:
                picked.append(group.pop(0))
    return picked


def clips(paths: list[Path], frames: int, seed: int) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(scene, group, input, clean) for every scene and group, then the cut clips."""
    rng = np.random.default_rng(seed)
    for path in paths:
        photo = read_rgb(path)
        for group, spec in GROUPS:
            clean = V.clean_clip(photo, spec, frames, SIZE, rng)
            yield path.stem, group, V.weather_clip(clean, spec, rng), clean
    spec = V.ClipSpec("still", "rain", "particles", "medium")
    for a, b in zip(paths, paths[1:] + paths[:1]):
        half = frames // 2
        clean = np.concatenate([V.clean_clip(read_rgb(a), spec, half, SIZE, rng),
                                V.clean_clip(read_rgb(b), spec, frames - half, SIZE, rng)])
        yield f"{a.stem}>{b.stem}", "cut/rain", V.weather_clip(clean, spec, rng), clean


def score(out: np.ndarray, clean: np.ndarray, start: int = WARMUP, stop: int | None = None) -> float:
    """Mean PSNR (dB, RGB, 100 for identical frames) over frames [start, stop)."""
    idx = range(start, len(out) if stop is None else stop)
    def chw(frame: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(frame).permute(2, 0, 1)

    return float(np.mean([min(100.0, psnr(chw(out[t]), chw(clean[t]))) for t in idx]))


def real_clip(path: Path, limit: int) -> np.ndarray:
    """The first `limit` frames of a video file, scaled to 640 wide, float RGB."""
    import cv2

    from unweather.media import open_video

    out = []
    with open_video(path) as (container, stream):
        for frame in container.decode(stream):
            img = frame.to_ndarray(format="rgb24")
            h, w = img.shape[:2]
            img = cv2.resize(img, (640, round(h * 640 / w / 2) * 2), interpolation=cv2.INTER_AREA)
            out.append(img.astype(np.float32) / 255.0)
            if len(out) >= limit:
                break
    return np.stack(out)


def table(results: dict, methods: list[str]) -> str:
    lines = ["| group | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for group, row in results["groups"].items():
        lines.append(f"| {group} | " + " | ".join(f"{row[m]:.2f}" if m in row else "-" for m in methods) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus_meta",
                        help="a prepared corpus (python -m unweather.training.corpus)")
    parser.add_argument("--clip", type=Path, default=None,
                        help="the real clean clip (default: data/corpus/clips/'s video, when fetched)")
    parser.add_argument("--frame", type=Path, default=ROOT / "unweather" / "weights" / "fast.safetensors")
    parser.add_argument("--video", type=Path, nargs="+",
                        default=[ROOT / "unweather" / "weights" / f"{n}.safetensors"
                                 for n in ("video", "video_quality")],
                        help="video students, each a column named after its file (default: the shipped ones)")
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--clip-frames", type=int, default=100)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "video")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if not args.frame.is_file():
        print(f"error: frame network {args.frame} not found", file=sys.stderr)
        return 1
    frame_net = load_checkpoint(args.frame).eval()
    methods: dict[str, Method] = {"input": lambda f: f, "median5": median5,
                                  "fast": frame_method(frame_net), "fast+temporal0.8": frame_method(frame_net, 0.8)}
    for path in args.video:
        if path.is_file():
            methods[path.stem] = video_method(load_checkpoint(path).eval())
        else:
            print(f"note: no video student at {path}; comparing the others", file=sys.stderr)

    paths = scenes(args.corpus, args.scenes)
    if not paths:
        print(f"error: no validation photos in {args.corpus}/valid/clean (prepare the corpus)", file=sys.stderr)
        return 1
    per_group: dict[str, dict[str, list[float]]] = {}
    flick: dict[str, dict[str, list[float]]] = {}
    seconds = {m: 0.0 for m in methods}
    for scene, group, x, clean in clips(paths, args.frames, args.seed):
        for name, run in methods.items():
            t0 = time.perf_counter()
            y = run(x)
            seconds[name] += time.perf_counter() - t0
            if group == "cut/rain":
                half = args.frames // 2
                # The two frames after the cut: nothing of the old scene may remain.
                per_group.setdefault("cut/rain (2 frames after)", {}).setdefault(name, []).append(
                    score(y, clean, half, half + 2))
                continue
            per_group.setdefault(group, {}).setdefault(name, []).append(score(y, clean))
            if group.startswith("still/"):
                flick.setdefault(group, {}).setdefault(name, []).append(flicker((y[WARMUP:] * 255).round()))
        print(f"{scene} {group}: " + ", ".join(f"{m} {v[-1]:.2f}" for m, v in per_group[
            group if group != "cut/rain" else "cut/rain (2 frames after)"].items()), flush=True)

    clip_path = args.clip
    if clip_path is None:
        found = sorted((ROOT / "data" / "corpus" / "clips").glob("*"))
        clip_path = found[0] if found else None
    real: dict[str, float] = {}
    if clip_path is not None and Path(clip_path).is_file():
        frames = real_clip(Path(clip_path), args.clip_frames)
        for name, run in methods.items():
            if name != "input":
                real[name] = score(run(frames), frames, start=0)
        print("real clean clip: " + ", ".join(f"{m} {v:.2f}" for m, v in real.items()), flush=True)

    groups = {g: {m: float(np.mean(v)) for m, v in row.items()} for g, row in per_group.items()}
    flicker_levels = {g: {m: float(np.mean(v)) for m, v in row.items()} for g, row in flick.items()}
    results = {"scenes": [p.stem for p in paths], "frames": args.frames, "size": list(SIZE[::-1]),
               "groups": groups, "flicker": flicker_levels, "real_clip": real,
               "real_clip_file": Path(clip_path).name if real else None,
               "seconds": seconds, "machine": machine_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_results(args.out.with_suffix(".json"), results)
    names = list(methods)
    md = ["# Video: the video student against a temporal median and the frame model", "",
          f"{len(paths)} held-out scenes, {args.frames} frames of 640x360 per clip, frames from the "
          f"{WARMUP + 1}th on. PSNR dB (RGB).", "", table(results, names), "",
          "Flicker on still cameras (mean absolute frame-to-frame change, levels):", "",
          table({"groups": flicker_levels}, names), ""]
    if real:
        md += [f"Real clean clip ({results['real_clip_file']}, first {args.clip_frames} frames): "
               + ", ".join(f"{m} {v:.2f} dB" for m, v in real.items()), ""]
    md += [f"Commit {results['machine'].get('git', {}).get('commit', '?')}.", ""]
    args.out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
