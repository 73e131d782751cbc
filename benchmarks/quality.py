"""The quality table: PSNR and SSIM per weather type on the held-out validation photos.

    python benchmarks/quality.py [--meta-dir data/synth] [--models data/models] [--limit N]

Rows: the degraded input; a classical method (dark channel prior for haze, a 3x3 median filter for rain
and snow); each teacher on its own weather; the shipped students (`fast`, `quality`); the baselines
trained by scripts/train_default_models.sh when present and not shipped (student_small two-stage with and
without MCR, and trained directly on the mixed data for the same number of steps). Clean validation frames
go through every student too (PSNR against the clean input itself: how much a model damages a clear
frame). Scores are means over the validation pairs, outputs clamped to [0, 1] and compared in float, on
RGB and on the BT.601 Y channel, each labelled. A second table lists every run of the training script
with the validation PSNR it recorded (training_runs/), beside the input, the classical method and the
shipped files measured here on the same pairs (which checks the records), since networks that do not
ship are not kept. Writes benchmarks/results/quality.json and quality.md.
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


def engine_fn(path: Path, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A restoration function through `unweather.engine.open` in `precision` on the CPU (torch backend)."""
    from unweather.engine import open as open_engine

    # Scores, not speed: bf16 runs even where this CPU only emulates it.
    engine = open_engine(str(path), backend="torch", precision=precision, device="cpu", allow_slow_precision=True)
    return lambda x: engine(x).float()


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


def models_to_score(models: Path, weights: Path,
                    extra: tuple[str, ...] = ()) -> list[tuple[str, str, Path, tuple[str, ...]]]:
    """(row label, kind, file, weathers it is scored on) for every model file found, then `LABEL=PATH` extras."""
    rows = []
    for w in WEATHERS:
        path = models / f"teacher_{w}.safetensors"
        if path.is_file():
            rows.append((f"teacher {w} (student_base, {w} only)", "teacher", path, (w,)))
    from unweather.models import read_metadata

    shipped_runs = set()
    for name, arch in (("fast", "student_small"), ("quality", "student_base")):
        path = weights / f"{name}.safetensors"
        if path.is_file():
            run = Path(read_metadata(path).get("training_run", "")).name
            shipped_runs.add(run)
            rows.append((f"{name} (shipped): {arch}, run {run or '?'}", "student", path, (*WEATHERS, CLEAN)))
    # The runs of scripts/train_default_models.sh that the shipped files do not already show.
    for name, label in (("student_fast", "two-stage student_small with MCR (SCR 0.01, HCR 0.02)"),
                        ("nomcr_fast", "two-stage student_small without MCR"),
                        ("direct_fast", "student_small trained directly (same steps, no teachers)")):
        if (models / f"{name}.safetensors").is_file() and name not in shipped_runs:
            rows.append((label, "baseline", models / f"{name}.safetensors", (*WEATHERS, CLEAN)))
    for item in extra:
        label, _, path = item.rpartition("=")
        rows.append((label or Path(path).stem, "extra", Path(path), (*WEATHERS, CLEAN)))
    return rows


# -- what the training runs recorded ----------------------------------------------------------------

# The runs of scripts/train_default_models.sh, in table order, with their labels.
RECORDED_RUNS = (
    ("teacher_rain", "teacher rain (student_base, rain only)"),
    ("teacher_snow", "teacher snow (student_base, snow only)"),
    ("teacher_haze", "teacher haze (student_base, haze only)"),
    ("direct_fast", "student_small trained directly on the mix (no teachers, same 8000 steps)"),
    ("student_fast", "student_small two-stage with MCR (SCR 0.01, HCR 0.02)"),
    ("nomcr_fast", "student_small two-stage without MCR"),
    ("student_quality", "student_base two-stage with MCR (1500 KC + 1500 KE)"),
    ("student_quality_more", "student_base + 3000 KE steps with MCR"),
    ("student_quality_polish", "student_base + 3000 KE steps without MCR"),
    ("fast_wide", "student_small (without MCR) + 2000 steps of L1 on 128 px crops"),
    ("fast_full", "student_small (128 px) + 1500 steps of plain L1 on whole 160 px frames"),
    ("quality_wide", "student_base (without MCR) + 1200 steps of L1 on 128 px crops"),
    ("fast_recolour", "student_small (fast_full) + haze head, fresh recoloured haze, 3000 steps L1"),
    ("fast_balanced", "the same with each weather's loss divided by its input error, 2000 steps"),
    ("quality_haze", "student_base (quality_wide) + haze head, fresh recoloured haze, 1500 steps L1"),
)


def recorded_rows(runs: Path) -> list[dict]:
    """Validation PSNR (RGB) each run recorded at the step it kept (its result.json), from its metrics.jsonl."""
    import json

    rows = []
    for run, label in RECORDED_RUNS:
        result, metrics = runs / run / "result.json", runs / run / "metrics.jsonl"
        if not (result.is_file() and metrics.is_file()):
            continue
        kept = json.loads(result.read_text())["best"][0]
        vals = [json.loads(line) for line in metrics.read_text().splitlines() if '"val/psnr/' in line]
        val = [v for v in vals if v["step"] == kept["step"] and v["stage"] == kept["stage"]][-1]
        scores = {w: val[f"val/psnr/{w}"] for w in (*WEATHERS, CLEAN) if f"val/psnr/{w}" in val}
        rows.append({"method": label, "run": f"training_runs/{run}", "step": kept["step"],
                     "steps": max(v["step"] for v in vals), "psnr_rgb": scores})
    return rows


def read_step(path: Path) -> int | str:
    """The training step a shipped file was taken at (from its metadata), or '?'."""
    from unweather.models import read_metadata

    return int(read_metadata(path).get("steps", 0)) or "?"


def recorded_markdown(rows: list[dict], base: dict[str, float]) -> str:
    lines = ["| run (step kept / steps) | rain PSNR RGB (gain) | snow | haze | clean frames |", "|---|---|---|---|---|",
             "| degraded input (same pairs, measured here) | "
             + " | ".join(f"{base[w]:.2f}" for w in WEATHERS) + " | - |"]
    for row in rows:
        s = row["psnr_rgb"]
        cells = [f"{s[w]:.2f} ({s[w] - base[w]:+.2f})" if w in s else "-" for w in WEATHERS]
        cells.append(f"{s[CLEAN]:.1f}" if CLEAN in s else "-")
        lines.append(f"| {row['method']} ({row['step']} / {row['steps']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


# -- the cross-source set (photos of other packages than training, every intensity and renderer style) --------

TARGETS = {"clean_psnr": 40.0, "clean_shift": 1.0, "pattern": 0.1, "gain_medium_heavy": 3.0}


def _pair_scores(out: torch.Tensor, gt: torch.Tensor) -> dict[str, float]:
    from unweather.training.metrics import psnr, ssim

    out = out.clamp(0, 1)
    return {f"{m}_{space}": min(float(fn(out, gt, y_channel=(space == "y"))), 100.0)
            for m, fn in (("psnr", psnr), ("ssim", ssim)) for space in ("rgb", "y")}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(float(np.mean([r[k] for r in rows])), 3) for k in rows[0]} if rows else {}


def cross_source(meta: Path, methods: list[tuple[str, Callable[[torch.Tensor], torch.Tensor] | None]],
                 limit: int = 0, reuse: dict | None = None) -> dict:
    """Score `methods` (label, restore; None: the input itself) on `meta/eval.json`; return the tables.

    Weather pairs: PSNR and SSIM (RGB, Y) per weather, renderer style and intensity; the dark channel prior
    is scored on haze beside them. Clean frames: PSNR against the frame, the largest per-channel mean shift
    (8-bit levels) and the pattern score added (output's minus input's), per scene tag. `reuse`, an earlier
    result on the same pairs, supplies the scores of the input and the dark channel prior (networks are scored
    afresh: the weights behind a label such as "quality (shipped)" change).
    """
    import json

    from unweather.training.data import evenly_spread
    from unweather.training.metrics import colour_shift, pattern_score

    pairs = json.loads((meta / "eval.json").read_text())["pairs"]
    if limit:
        by_photo = sorted({p["gt"] for p in pairs})
        keep = set(evenly_spread(by_photo, limit))
        pairs = [p for p in pairs if p["gt"] in keep]
    cache: dict[str, torch.Tensor] = {}

    def load(rel: str) -> torch.Tensor:
        if rel not in cache:
            cache[rel] = to_tensor(read_rgb(meta / rel))
        return cache[rel]

    groups: dict[tuple[str, str, str], list[dict]] = {}
    for p in pairs:
        groups.setdefault((p["weather"], p["style"], p["intensity"]), []).append(p)
    result: dict = {"pairs": len(pairs), "photos": len({p["gt"] for p in pairs}), "methods": {}}
    all_methods = [*methods, ("dark channel prior", "dcp")]
    earlier = (reuse or {}).get("methods", {}) if reuse and reuse.get("pairs") == len(pairs) \
        and reuse.get("photos") == result["photos"] else {}
    for label, restore in all_methods:
        if label in earlier and label in _REUSABLE:
            result["methods"][label] = earlier[label]
            print(f"{label}: scores of the earlier result", flush=True)
            continue
        table: dict[str, dict] = {}
        seconds = time.perf_counter()
        for (weather, style, intensity), items in sorted(groups.items()):
            if restore == "dcp" and weather != "haze":
                continue
            inputs = [load(p["input"]) for p in items]
            if restore is None:
                outputs = inputs
            elif restore == "dcp":
                outputs = [to_tensor(dark_channel_prior(t[0].permute(1, 2, 0).numpy())) for t in inputs]
            else:
                outputs = run_model(restore, inputs, batch=4)
            per = [_pair_scores(o, load(p["gt"])) for o, p in zip(outputs, items)]
            if weather == "clean":
                for o, p, s in zip(outputs, items, per):
                    frame = load(p["gt"])
                    s["shift"] = colour_shift(o.clamp(0, 1), frame)
                    s["pattern_added"] = pattern_score(o[0].clamp(0, 1)) - pattern_score(frame[0])
                for tag in sorted({t for p in items for t in p["tags"]} | {"all"}):
                    chosen = [s for s, p in zip(per, items) if tag == "all" or tag in p["tags"]]
                    table[f"clean/{tag}"] = {**_mean(chosen), "n": len(chosen),
                                             "worst_psnr_rgb": round(min(c["psnr_rgb"] for c in chosen), 2),
                                             "worst_shift": round(max(c["shift"] for c in chosen), 2)}
            else:
                input_psnr = round(float(np.mean([p["psnr"] for p in items])), 2)
                table[f"{weather}/{style}/{intensity}"] = {**_mean(per), "n": len(per), "input_psnr": input_psnr}
        result["methods"][label] = {"scores": table, "seconds": round(time.perf_counter() - seconds, 1)}
        print(f"{label}: {len(table)} groups in {result['methods'][label]['seconds']} s", flush=True)
    result["checks"] = {label: targets_met(result["methods"][label]["scores"], result["methods"]["input"]["scores"],
                                           result["methods"]["dark channel prior"]["scores"])
                        for label, restore in methods if restore is not None}
    return result


def targets_met(scores: dict, inputs: dict, dcp: dict) -> dict[str, bool | float]:
    """The issue's targets on the cross-source set, each as the measured worst case and whether it holds."""
    clean = {k: v for k, v in scores.items() if k.startswith("clean/")}
    weather = {k: v for k, v in scores.items() if not k.startswith("clean/")}
    gains = {k: v["psnr_rgb"] - inputs[k]["psnr_rgb"] for k, v in weather.items()}
    mh = [g for k, g in gains.items() if k.split("/")[0] in ("rain", "snow") and k.split("/")[2] != "light"]
    haze_margin = [v["psnr_rgb"] - dcp[k]["psnr_rgb"] for k, v in weather.items() if k.startswith("haze/")]
    worst = {
        "clean_psnr_min": min(v["psnr_rgb"] for v in clean.values()),
        "clean_shift_max": max(v["shift"] for v in clean.values()),
        "pattern_added_max": max(v["pattern_added"] for v in clean.values()),
        "gain_min_any": min(gains.values()),
        "gain_min_medium_heavy_rain_snow": min(mh) if mh else float("nan"),
        "haze_over_dcp_min": min(haze_margin) if haze_margin else float("nan"),
    }
    held = {
        "clean_psnr_min": worst["clean_psnr_min"] >= TARGETS["clean_psnr"],
        "clean_shift_max": worst["clean_shift_max"] < TARGETS["clean_shift"],
        "pattern_added_max": worst["pattern_added_max"] <= TARGETS["pattern"],
        "gain_min_any": worst["gain_min_any"] >= 0.0,
        "gain_min_medium_heavy_rain_snow": worst["gain_min_medium_heavy_rain_snow"] >= TARGETS["gain_medium_heavy"],
        "haze_over_dcp_min": worst["haze_over_dcp_min"] > 0.0,
    }
    return {k: {"worst": round(v, 2), "met": held[k]} for k, v in worst.items()}


def cross_source_markdown(result: dict) -> str:
    """The cross-source tables: PSNR RGB per group and method, clean frames, and the targets."""
    methods = list(result["methods"])
    keys = sorted({k for m in methods for k in result["methods"][m]["scores"]},
                  key=lambda k: (k.startswith("clean/"), k))
    lines = ["| group | input dB | " + " | ".join(m for m in methods if m != "input") + " |",
             "|---|---|" + "---|" * (len(methods) - 1)]
    for key in keys:
        if key.startswith("clean/"):
            continue
        base = result["methods"]["input"]["scores"][key]
        cells = []
        for m in methods[1:]:
            s = result["methods"][m]["scores"].get(key)
            cells.append("-" if s is None else f"{s['psnr_rgb']:.2f} / {s['ssim_rgb']:.3f}")
        lines.append(f"| {key} (n={base['n']}) | {base['psnr_rgb']:.2f} / {base['ssim_rgb']:.3f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Clean frames (PSNR RGB against the frame / largest channel-mean shift in levels / "
              "pattern score added):", "",
              "| scene | " + " | ".join(m for m in methods[1:] if m != "dark channel prior") + " |",
              "|---|" + "---|" * (len(methods) - 2)]
    for key in keys:
        if not key.startswith("clean/"):
            continue
        cells = []
        for m in methods[1:]:
            if m == "dark channel prior":
                continue
            s = result["methods"][m]["scores"][key]
            cells.append(f"{s['psnr_rgb']:.1f} / {s['shift']:.2f} / {s['pattern_added']:+.3f}")
        lines.append(f"| {key[6:]} (n={result['methods']['input']['scores'][key]['n']}) | " + " | ".join(cells) + " |")
    lines += ["", "Targets (worst case over the groups; met or not):", "",
              "| target | " + " | ".join(result["checks"]) + " |", "|---|" + "---|" * len(result["checks"])]
    for target in next(iter(result["checks"].values()), {}):
        cells = (f"{c[target]['worst']:.2f} {'yes' if c[target]['met'] else 'no'}" for c in result["checks"].values())
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# What an earlier result may supply: scores that depend on no network.
_REUSABLE = ("input", "dark channel prior")


def corpus_main(args: argparse.Namespace) -> int:
    """`--corpus META`: the cross-source evaluation of the shipped students and `--extra` networks."""
    from unweather.machine import machine_info, save_results

    methods: list = [("input", None)]
    for name in ("fast", "quality"):
        path = args.weights / f"{name}.safetensors"
        if path.is_file():
            methods.append((f"{name} (shipped)", model_fn(path)))
    for spec in args.extra:
        label, _, path = spec.partition("=")
        methods.append((label, model_fn(Path(path))))
    reuse = None
    if args.reuse is not None:
        import json

        reuse = json.loads(args.reuse.read_text())
    result = cross_source(args.corpus, methods, args.limit, reuse)
    payload = {"benchmark": "quality-cross-source", "meta_dir": str(args.corpus), **result, "targets": TARGETS,
               "metrics": "PSNR dB / SSIM on RGB (and Y in the JSON), means over pairs; groups are weather/renderer "
                          "style/intensity (optics is the renderer no network trains on); clean: output against the "
                          "frame itself, per scene tag",
               "machine": machine_info()}
    args.out.mkdir(parents=True, exist_ok=True)
    save_results(args.out / "quality_cross_source.json", payload)
    text = ["# Quality on the cross-source set", "",
            f"{result['photos']} photos of packages that no network trained on, {result['pairs']} pairs. "
            "Cells: PSNR dB / SSIM, RGB.", "", cross_source_markdown(result), "",
            f"Commit {payload['machine'].get('git', {}).get('commit', '?')}.", ""]
    (args.out / "quality_cross_source.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=None, metavar="META",
                        help="score on the cross-source set of this prepared corpus (python -m "
                             "unweather.training.corpus) instead of --meta-dir's validation pairs")
    parser.add_argument("--meta-dir", type=Path, default=ROOT / "data/synth")
    parser.add_argument("--models", type=Path, default=ROOT / "data/models", help="teachers and baselines")
    parser.add_argument("--weights", type=Path, default=ROOT / "unweather/weights", help="shipped students")
    parser.add_argument("--limit", type=int, default=0, help="at most this many pairs per weather (0: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--reuse", type=Path, metavar="RESULTS.json",
                        help="with --corpus: take the scores of methods already in this earlier result on the "
                             "same pairs: the input and the dark channel prior (networks are scored afresh)")
    parser.add_argument("--extra", action="append", default=[], metavar="LABEL=PATH",
                        help="another network to score")
    parser.add_argument("--precisions", nargs="+", default=[], metavar="P",
                        help="also score the shipped students through the torch engine in these precisions "
                             "(e.g. bf16: what `unweather run --precision bf16` computes)")
    parser.add_argument("--runs", type=Path, default=ROOT / "training_runs",
                        help="training run records whose recorded validation scores are tabled too")
    parser.add_argument("--recorded-pairs", type=int, default=24,
                        help="pairs per weather the runs validated on (their config's val_max_pairs)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from unweather.machine import machine_info, save_results
    from unweather.training.data import evenly_spread
    from unweather.training.evaluate import load_meta

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.corpus is not None:
        return corpus_main(args)
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
    classical_scores, classical_outs = {}, {}
    for w in WEATHERS:
        label, fn = classical(w)
        outs = classical_outs[w] = [to_tensor(fn(t[0].permute(1, 2, 0).numpy())) for t in data[w][1]]
        classical_scores[w] = {**score(outs, data[w][0]), "method": label}
    rows.append({"method": "classical (median 3x3 on rain/snow, dark channel prior on haze)",
                 "kind": "classical", "scores": classical_scores})
    # The pairs the training runs validated on, to put their recorded scores beside the input's.
    subset = {w: evenly_spread(range(len(data[w][0])), args.recorded_pairs) for w in WEATHERS}

    def on_subset(w: str, outputs: list[torch.Tensor]) -> float:
        return score([outputs[i] for i in subset[w]], [data[w][0][i] for i in subset[w]])["psnr_rgb"]

    recorded_base = {w: on_subset(w, data[w][1]) for w in WEATHERS}
    recorded = [{"method": "classical (median 3x3 on rain/snow, dark channel prior on haze), measured here",
                 "run": None, "step": "-", "steps": "-",
                 "psnr_rgb": {w: on_subset(w, classical_outs[w]) for w in WEATHERS}},
                *recorded_rows(args.runs)]
    for label, kind, path, weathers in models_to_score(args.models, args.weights, tuple(args.extra)):
        restore = model_fn(path)
        scores, seconds = {}, time.perf_counter()
        outputs = {}
        for w in weathers:
            gts, inputs = data[w]
            outputs[w] = run_model(restore, inputs)
            scores[w] = score(outputs[w], gts)
        if kind == "student":
            # The shipped file on the runs' validation pairs (outputs already computed): checks the records.
            step = read_step(path)
            recorded.append({"method": f"{label.split(' ')[0]} (the shipped file, measured here)", "run": None,
                             "step": step, "steps": step,
                             "psnr_rgb": {w: on_subset(w, outputs[w]) for w in WEATHERS}})
        rows.append({"method": label, "kind": kind, "file": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT)
                     else str(path), "scores": scores, "seconds": round(time.perf_counter() - seconds, 2)})
        print(f"{label}: " + ", ".join(f"{w} {s['psnr_y']:.2f} dB" for w, s in scores.items()), flush=True)
        for precision in args.precisions if kind == "student" else ():
            restore_p = engine_fn(path, precision)
            scores_p = {w: score(run_model(restore_p, data[w][1]), data[w][0]) for w in weathers}
            rows.append({"method": f"{label.split(' ')[0]} in {precision} (torch engine, CPU)", "kind": "precision",
                         "file": rows[-1]["file"], "precision": precision, "scores": scores_p})

    payload = {
        "benchmark": "quality",
        "data": {"meta_dir": str(args.meta_dir.relative_to(ROOT)) if args.meta_dir.is_relative_to(ROOT)
                 else str(args.meta_dir), "pairs": {k: len(v[0]) for k, v in data.items()},
                 "split": "valid (photos never seen in training)"},
        "metrics": "PSNR dB and SSIM (11x11 Gaussian, sigma 1.5) on RGB and on BT.601 Y, means over pairs; "
                   "clean: the model's output on a clean frame against that frame (PSNR capped at 100)",
        "rows": rows,
        "recorded": {"pairs_per_weather": args.recorded_pairs, "input_psnr_rgb": recorded_base, "rows": recorded},
        "machine": machine_info(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    save_results(args.out / "quality.json", payload)
    text = ["# Quality on the held-out validation photos", "",
            f"Pairs per weather: {payload['data']['pairs']}. Cells: PSNR dB / SSIM.", "",
            "## Y channel (BT.601, as the paper's rain numbers)", "", markdown(rows, "y"), "",
            "## RGB", "", markdown(rows, "rgb"), "", "## PSNR gained over the degraded input (Y)", "",
            gains(rows), "",
            f"## Every training run, as recorded (validation PSNR RGB on {args.recorded_pairs} pairs per weather)", "",
            "The networks of the runs that do not ship are not kept; these are the scores each run recorded at "
            "the step it kept, on the same validation photos (every run uses the same evenly spread pairs).", "",
            recorded_markdown(recorded, recorded_base), "",
            f"Commit {payload['machine'].get('git', {}).get('commit', '?')}.", ""]
    (args.out / "quality.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
