"""Temporal flicker of each model on synthetic weather clips, against the clean clip's own.

    python benchmarks/flicker.py [--frames 24] [--size 180x320] [--photos P ...]

Clips come from `unweather.training.clips.weather_clip`: held-out photos (never seen in training) under
moving rain and snow (and haze, which stays with the scene), filmed by a still camera and by a slowly
panning one. Flicker is the mean absolute difference between consecutive frames, in 8-bit levels
(`unweather.training.clips.flicker`); a model's excess flicker is its output's minus the clean clip's.
A still camera's clean clip has none, so everything a model shows there is flicker it adds (or rain
it leaves). PSNR (RGB) of the output against the clean clip is given beside it. Writes
benchmarks/results/flicker.json and flicker.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def default_photos() -> list[Path]:
    """The validation photos of our training data (held out from training)."""
    synth = ROOT / "data/synth/synth.json"
    if synth.is_file():
        names = json.loads(synth.read_text()).get("photos", {}).get("valid", [])
        found = [ROOT / n if not Path(n).is_absolute() else Path(n) for n in names]
        found = [p for p in found if p.is_file()]
        if found:
            return found
    assets = sorted((ROOT / "unweather/assets").glob("*.jpg"))
    if not assets:
        raise SystemExit("no photos: make data/synth with scripts/make_training_data.sh or pass --photos")
    return assets


def models(weights: Path, extra: list[str]) -> dict[str, Path]:
    """The shipped students plus NAME=PATH extras."""
    found = {name: weights / f"{name}.safetensors" for name in ("fast", "quality")
             if (weights / f"{name}.safetensors").is_file()}
    for item in extra:
        name, _, path = item.partition("=")
        found[name] = Path(path)
    return found


def restore_clip(net: torch.nn.Module, frames: list[np.ndarray], batch: int = 8,
                 temporal: float = 0.0) -> list[np.ndarray]:
    """Run `net` (padded and cropped) over a list of HxWx3 float frames; return the clamped outputs.

    With `temporal` > 0 the outputs go through `unweather run --temporal`'s filter, as the pipeline does.
    """
    from unweather.stream.temporal import TemporalFilter

    smooth = TemporalFilter(temporal)
    out = []
    with torch.inference_mode():
        for i in range(0, len(frames), batch):
            x = torch.from_numpy(np.stack(frames[i:i + batch])).permute(0, 3, 1, 2).contiguous()
            y = smooth(net(x)).clamp(0, 1).permute(0, 2, 3, 1).numpy()
            out.extend(y)
    return out


def clip_psnr(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """PSNR (RGB) of clip `a` against clip `b`, the frames taken as one image: from the clip's mean squared error."""
    from unweather.training.metrics import psnr

    if len(a) != len(b):
        raise ValueError(f"clips differ in length: {len(a)} and {len(b)} frames")
    return psnr(np.concatenate(a, axis=0), np.concatenate(b, axis=0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", nargs="+", type=Path)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="180x320", help="HEIGHTxWIDTH of the clips")
    parser.add_argument("--weathers", nargs="+", default=["rain", "snow", "haze"])
    parser.add_argument("--weights", type=Path, default=ROOT / "unweather/weights")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="another model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--pan-speed", type=float, default=0.002,
                        help="the panning camera's travel per frame, as a fraction of the frame width")
    parser.add_argument("--temporal", nargs="+", type=float, default=[], metavar="S",
                        help="also each model with `unweather run --temporal S` (still-camera filter)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from unweather.machine import machine_info, save_results
    from unweather.models import PadCrop, load_checkpoint
    from unweather.training.clips import flicker, weather_clip
    from unweather.training.synth import read_image

    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    photos = args.photos or default_photos()
    nets = {name: PadCrop(load_checkpoint(path)).eval() for name, path in models(args.weights, args.model).items()}
    if not nets:
        raise SystemExit("no models: ship unweather/weights/*.safetensors or pass --model NAME=PATH")

    variants = {name: (net, 0.0) for name, net in nets.items()}
    variants.update({f"{name} --temporal {strength:g}": (net, strength) for name, net in nets.items()
                     for strength in args.temporal})
    rows = []
    for weather in args.weathers:
        for camera in ("still", "pan"):
            acc: dict[str, list[float]] = {}
            for k, photo in enumerate(photos):
                rng = np.random.default_rng([args.seed, k, len(weather), camera == "pan"])
                clean, degraded = weather_clip(read_image(photo), weather, args.frames, rng, pan=camera == "pan",
                                               size=(h, w), pan_speed=args.pan_speed)
                values = {"clean": flicker(clean) * 255, "degraded": flicker(degraded) * 255,
                          "degraded_psnr": clip_psnr(degraded, clean)}
                for name, (net, strength) in variants.items():
                    out = restore_clip(net, degraded, temporal=strength)
                    values[name] = flicker(out) * 255
                    values[f"{name}_psnr"] = clip_psnr(out, clean)
                for key, value in values.items():
                    acc.setdefault(key, []).append(value)
            row = {"weather": weather, "camera": camera, "clips": len(photos),
                   **{key: float(np.mean(v)) for key, v in acc.items()}}
            rows.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    names = list(variants)
    head = ("| weather | camera | clean | degraded | " + " | ".join(names) + " | excess over clean: "
            + " / ".join(names) + " | PSNR RGB degraded -> " + " / ".join(names) + " |")
    lines = [head, "|" + "---|" * (5 + len(names) + 1)]
    for r in rows:
        cells = [r["weather"], r["camera"], f"{r['clean']:.2f}", f"{r['degraded']:.2f}",
                 *(f"{r[n]:.2f}" for n in names), " / ".join(f"{r[n] - r['clean']:+.2f}" for n in names),
                 f"{r['degraded_psnr']:.2f} -> " + " / ".join(f"{r[n + '_psnr']:.2f}" for n in names)]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    payload = {"benchmark": "flicker", "units": "mean |frame[t] - frame[t-1]| in 8-bit levels; PSNR in dB (RGB)",
               "frames": args.frames, "pan_speed": args.pan_speed, "temporal": args.temporal, "size": [h, w],
               "photos": [p.name for p in photos],
               "models": {n: str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else p.name
                          for n, p in models(args.weights, args.model).items()}, "rows": rows,
               "machine": machine_info()}
    args.out.mkdir(parents=True, exist_ok=True)
    save_results(args.out / "flicker.json", payload)
    (args.out / "flicker.md").write_text(
        f"# Temporal flicker ({args.frames} frames of {w}x{h}, {len(photos)} held-out photos, "
        f"panning {args.pan_speed:g} of the width per frame)\n\n"
        "Mean absolute difference between consecutive frames, 8-bit levels.\n\n" + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
