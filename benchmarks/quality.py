"""The quality table: PSNR and SSIM per weather type on the held-out validation photos.

    python benchmarks/quality.py [--meta-dir data/synth] [--models data/models] [--limit N]

Rows: the degraded input; a classical method (dark channel prior for haze, a 3x3 median filter for rain
and snow); each teacher on its own weather; the shipped students (`fast`, `quality`); the baselines
trained by scripts/train_default_models.sh when present (the fast student trained directly on the mixed
data for the same number of steps, and the two-stage fast student without MCR). Clean validation frames
go through every student too (PSNR against the clean input itself: how much a model damages a clear
frame). Scores are means over the validation pairs, outputs clamped to [0, 1] and compared in float, on
RGB and on the BT.601 Y channel, each labelled. Writes benchmarks/results/quality.json and quality.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
WEATHERS = ("rain", "snow", "haze")
CLEAN = "clean"


# -- classical methods -------------------------------------------------------------------------------

def dark_channel_prior(image: np.ndarray, patch: int = 15, omega: float = 0.95, t0: float = 0.1,
                       radius: int = 30, eps: float = 1e-3) -> np.ndarray:
    """Dehaze an RGB float image with the dark channel prior (He, Sun and Tang, CVPR 2009).

    The transmission t = 1 - omega * dark(I / A) is refined with a guided filter on the grey image (He et
    al. 2010, replacing the paper's soft matting), the airlight A is the mean of the input at the 0.1 %
    brightest dark-channel pixels, and J = (I - A) / max(t, t0) + A.
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch))
    dark = cv2.erode(image.min(axis=2), kernel)
    count = max(1, dark.size // 1000)
    brightest = np.argpartition(dark.ravel(), -count)[-count:]
    airlight = image.reshape(-1, 3)[brightest].mean(axis=0).clip(1e-3, 1.0)
    normalised = cv2.erode((image / airlight).min(axis=2).astype(np.float32), kernel)
    transmission = 1.0 - omega * normalised
    grey = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2GRAY)
    transmission = guided_filter(grey, transmission.astype(np.float32), min(radius, min(image.shape[:2]) // 4), eps)
    t = np.maximum(transmission, t0)[..., None]
    return np.clip((image - airlight) / t + airlight, 0.0, 1.0).astype(np.float32)


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Edge-preserving smoothing of `source` steered by `guide` (He, Sun and Tang, ECCV 2010), grey guide."""
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.blur(x, size, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide), box(source)
    cov = box(guide * source) - mean_i * mean_p
    var = box(guide * guide) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


def median_filter(image: np.ndarray, size: int = 3) -> np.ndarray:
    """Remove thin streaks and flakes with a per-channel median filter (8-bit, as OpenCV needs it)."""
    as_uint8 = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return cv2.medianBlur(as_uint8, size).astype(np.float32) / 255.0


def classical(weather: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """The classical method of the table for `weather`: its label and the function."""
    if weather == "haze":
        return "dark channel prior", dark_channel_prior
    return "median filter 3x3", median_filter


# -- scoring -----------------------------------------------------------------------------------------

def read_rgb(path: Path) -> np.ndarray:
    """Read an image as float32 RGB in [0, 1]."""
    data = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if data is None:
        raise SystemExit(f"cannot read {path}")
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]


def score(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> dict[str, float]:
    """Mean PSNR and SSIM on RGB and on Y of same-shaped (1, 3, H, W) outputs against targets."""
    from unweather.training.metrics import psnr, ssim

    out, ref = torch.cat(outputs).clamp(0, 1), torch.cat(targets)
    result = {}
    for suffix, y in (("rgb", False), ("y", True)):
        result[f"psnr_{suffix}"] = float(psnr(out, ref, y_channel=y, reduction="none").clamp(max=100).mean())
        result[f"ssim_{suffix}"] = float(ssim(out, ref, y_channel=y, reduction="none").mean())
    return result


def model_fn(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A restoration function from a checkpoint (padded and cropped to the network's multiple)."""
    from unweather.models import PadCrop, load_checkpoint

    net = PadCrop(load_checkpoint(path)).eval()

    @torch.inference_mode()
    def restore(x: torch.Tensor) -> torch.Tensor:
        return net(x)

    return restore


def run_model(restore: Callable[[torch.Tensor], torch.Tensor], inputs: list[torch.Tensor],
              batch: int = 16) -> list[torch.Tensor]:
    outputs = []
    for i in range(0, len(inputs), batch):
        chunk = inputs[i:i + batch]
        if all(t.shape == chunk[0].shape for t in chunk):
            outputs.extend(restore(torch.cat(chunk)).split(1))
        else:
            outputs.extend(restore(t) for t in chunk)
    return outputs


def models_to_score(models: Path, weights: Path) -> list[tuple[str, str, Path, tuple[str, ...]]]:
    """(row label, kind, file, weathers it is scored on) for every model file found."""
    rows = []
    for w in WEATHERS:
        path = models / f"teacher_{w}.safetensors"
        if path.is_file():
            rows.append((f"teacher {w} (student_base, {w} only)", "teacher", path, (w,)))
    for name, label in (("fast", "fast: two-stage student_small (shipped)"),
                        ("quality", "quality: two-stage student_base (shipped)")):
        if (weights / f"{name}.safetensors").is_file():
            rows.append((label, "student", weights / f"{name}.safetensors", (*WEATHERS, CLEAN)))
    for name, label in (("direct_fast", "student_small trained directly (same steps)"),
                        ("nomcr_fast", "two-stage student_small without MCR")):
        if (models / f"{name}.safetensors").is_file():
            rows.append((label, "baseline", models / f"{name}.safetensors", (*WEATHERS, CLEAN)))
    return rows


def fmt_cell(s: dict[str, float] | None, space: str) -> str:
    if s is None:
        return "-"
    return f"{s[f'psnr_{space}']:.2f} / {s[f'ssim_{space}']:.3f}"


def markdown(rows: list[dict], space: str) -> str:
    label = "Y (BT.601)" if space == "y" else "RGB"
    head = f"| method | rain PSNR/SSIM {label} | snow | haze | clean frames (PSNR vs clean input) |"
    lines = [head, "|---|---|---|---|---|"]
    for row in rows:
        cells = [fmt_cell(row["scores"].get(w), space) for w in WEATHERS]
        clean = row["scores"].get(CLEAN)
        cells.append(f"{clean[f'psnr_{space}']:.2f}" if clean else "-")
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gains(rows: list[dict]) -> str:
    """PSNR (Y) gained over the degraded input, per weather."""
    base = rows[0]["scores"]
    lines = ["| method | rain dB gained (Y) | snow | haze |", "|---|---|---|---|"]
    for row in rows[1:]:
        cells = []
        for w in WEATHERS:
            s = row["scores"].get(w)
            cells.append(f"{s['psnr_y'] - base[w]['psnr_y']:+.2f}" if s else "-")
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-dir", type=Path, default=ROOT / "data/synth")
    parser.add_argument("--models", type=Path, default=ROOT / "data/models", help="teachers and baselines")
    parser.add_argument("--weights", type=Path, default=ROOT / "unweather/weights", help="shipped students")
    parser.add_argument("--limit", type=int, default=0, help="at most this many pairs per weather (0: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from unweather.machine import machine_info, save_results
    from unweather.training.evaluate import load_meta

    if args.threads:
        torch.set_num_threads(args.threads)
    datasets = load_meta(args.meta_dir, "valid")
    missing = [w for w in (*WEATHERS, CLEAN) if w not in datasets]
    if missing:
        raise SystemExit(f"{args.meta_dir} has no validation set for {', '.join(missing)}")
    data: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for name in (*WEATHERS, CLEAN):
        pairs = datasets[name][:args.limit] if args.limit else datasets[name]
        data[name] = ([to_tensor(read_rgb(gt)) for gt, _ in pairs], [to_tensor(read_rgb(d)) for _, d in pairs])

    rows: list[dict] = [{"method": "degraded input", "kind": "input",
                         "scores": {w: score(data[w][1], data[w][0]) for w in WEATHERS}}]
    classical_scores = {}
    for w in WEATHERS:
        label, fn = classical(w)
        outs = [to_tensor(fn(t[0].permute(1, 2, 0).numpy())) for t in data[w][1]]
        classical_scores[w] = {**score(outs, data[w][0]), "method": label}
    rows.append({"method": "classical (median 3x3 on rain/snow, dark channel prior on haze)",
                 "kind": "classical", "scores": classical_scores})
    for label, kind, path, weathers in models_to_score(args.models, args.weights):
        restore = model_fn(path)
        scores, seconds = {}, time.perf_counter()
        for w in weathers:
            gts, inputs = data[w]
            scores[w] = score(run_model(restore, inputs), gts)
        rows.append({"method": label, "kind": kind, "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT)
                     else str(path), "scores": scores, "seconds": round(time.perf_counter() - seconds, 2)})
        print(f"{label}: " + ", ".join(f"{w} {s['psnr_y']:.2f} dB" for w, s in scores.items()), flush=True)

    payload = {
        "benchmark": "quality",
        "data": {"meta_dir": str(args.meta_dir.relative_to(ROOT)) if args.meta_dir.is_relative_to(ROOT)
                 else str(args.meta_dir), "pairs": {k: len(v[0]) for k, v in data.items()},
                 "split": "valid (photos never seen in training)"},
        "metrics": "PSNR dB and SSIM (11x11 Gaussian, sigma 1.5) on RGB and on BT.601 Y, means over pairs; "
                   "clean: the model's output on a clean frame against that frame (PSNR capped at 100)",
        "rows": rows,
        "machine": machine_info(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    save_results(args.out / "quality.json", payload)
    text = ["# Quality on the held-out validation photos", "",
            f"Pairs per weather: {payload['data']['pairs']}. Cells: PSNR dB / SSIM.", "",
            "## Y channel (BT.601, as the paper's rain numbers)", "", markdown(rows, "y"), "",
            "## RGB", "", markdown(rows, "rgb"), "", "## PSNR gained over the degraded input (Y)", "",
            gains(rows), "", f"Commit {payload['machine'].get('git', {}).get('commit', '?')}.", ""]
    (args.out / "quality.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
