"""Haze per validation photo: PSNR and the mean level error, for the input, the dark channel prior and models.

    python benchmarks/haze_photos.py [--meta-dir data/synth] [--extra LABEL=PATH ...]

Why: a mean PSNR over the haze validation set hides where a model fails. The validation pairs are crops
of a few photos; per photo this reports PSNR (RGB) and the mean of (output - ground truth), the level of
veil left (positive: too bright, haze left behind), and the PSNR the output would have with its
per-image, per-channel mean error removed (what the structure alone is worth). Rows: the degraded
input, the dark channel prior of benchmarks/quality.py, the shipped students, then `--extra` files
(training checkpoints, e.g. data/runs/RUN/best/*.safetensors). Writes
benchmarks/results/haze_photos.json and haze_photos.md.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import dark_channel_prior, model_fn, read_rgb, to_tensor  # noqa: E402


def photo_of(path: Path) -> str:
    """The photo a synthetic crop was cut from: 'mate-backgrounds__Garden_004.png' -> 'Garden'."""
    return path.stem.rsplit("_", 1)[0].split("__")[-1]


def measure(restore: Callable[[torch.Tensor], torch.Tensor], pairs: list[tuple[torch.Tensor, torch.Tensor, str]]
            ) -> dict[str, dict[str, float]]:
    """Per photo (and 'all'): mean PSNR RGB, mean level error, PSNR with the level error removed."""
    from unweather.training.metrics import psnr

    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for gt, hazy, photo in pairs:
        out = restore(hazy).float().clamp(0, 1)
        level = (out - gt).mean(dim=(2, 3), keepdim=True)
        for key in (photo, "all"):
            acc[key]["psnr"].append(float(psnr(out, gt)))
            acc[key]["level"].append(float(level.mean()))
            acc[key]["psnr_level_removed"].append(float(psnr((out - level).clamp(0, 1), gt)))
    return {k: {m: float(np.mean(v)) for m, v in d.items()} for k, d in acc.items()}


def markdown(rows: list[dict], photos: list[str], counts: dict[str, int]) -> str:
    head = " | ".join(f"{p} ({counts[p]} pairs)" for p in photos)
    lines = ["# Haze per validation photo", "",
             "Cells: PSNR RGB dB / mean level error (output - truth; + means veil left) / PSNR with the "
             "per-image level error removed.", "",
             f"| method | all | {head} |", "|---" * (len(photos) + 2) + "|"]
    for row in rows:
        cells = [f"{row['scores'][p]['psnr']:.2f} / {row['scores'][p]['level']:+.3f} / "
                 f"{row['scores'][p]['psnr_level_removed']:.2f}" for p in ["all", *photos]]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-dir", type=Path, default=ROOT / "data/synth")
    parser.add_argument("--weights", type=Path, default=ROOT / "unweather/weights", help="shipped students")
    parser.add_argument("--extra", action="append", default=[], metavar="LABEL=PATH", help="another network")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from unweather.machine import save_results
    from unweather.models import read_metadata
    from unweather.training.evaluate import load_meta

    if args.threads:
        torch.set_num_threads(args.threads)
    found = load_meta(args.meta_dir, "valid")
    if "haze" not in found:
        raise SystemExit(f"{args.meta_dir} has no haze validation set")
    pairs = [(to_tensor(read_rgb(gt)), to_tensor(read_rgb(hazy)), photo_of(gt)) for gt, hazy in found["haze"]]
    counts: dict[str, int] = defaultdict(int)
    for *_, photo in pairs:
        counts[photo] += 1
    photos = sorted(counts)

    def dcp(x: torch.Tensor) -> torch.Tensor:
        return to_tensor(dark_channel_prior(x[0].permute(1, 2, 0).numpy()))

    methods: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [
        ("degraded input", lambda x: x), ("dark channel prior", dcp)]
    for name in ("fast", "quality"):
        path = args.weights / f"{name}.safetensors"
        if path.is_file():
            run = Path(read_metadata(path).get("training_run", "")).name
            methods.append((f"{name} (shipped, run {run})", model_fn(path)))
    for item in args.extra:
        label, _, path = item.rpartition("=")
        methods.append((label or Path(path).stem, model_fn(Path(path))))

    rows = []
    for label, restore in methods:
        rows.append({"method": label, "scores": measure(restore, pairs)})
        print(f"{label}: {rows[-1]['scores']['all']['psnr']:.2f} dB, level {rows[-1]['scores']['all']['level']:+.3f}",
              flush=True)
    text = markdown(rows, photos, counts)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "haze_photos.md").write_text(text)
    save_results(args.out / "haze_photos.json", {"benchmark": "haze_photos", "photos": dict(counts), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
