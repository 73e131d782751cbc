"""Evaluation on paired data sets in the release's meta JSON format: PSNR and SSIM, RGB and Y.

A meta folder holds, per split, one JSON file per data set named `<dataset>_meta_<split>.json`
(e.g. `rain_meta_valid.json`, `CSD_meta_train.json`), either in `<meta_dir>/<split>/` (what
`unweather synth` writes, and the release's `meta/train/`, `meta/valid/`) or directly in
`<meta_dir>`. Each is a list of [ground-truth path, degraded path] pairs; relative paths are
relative to the data root, `meta_dir` unless given.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unweather.errors import UnweatherError
from unweather.media import read_rgb

log = logging.getLogger(__name__)

Pairs = list[tuple[Path, Path]]

# (JSON key, Markdown column): every column says whether it is on RGB or on Y.
COLUMNS = (
    ("input_psnr_rgb", "input PSNR RGB"),
    ("psnr_rgb", "PSNR RGB"),
    ("input_ssim_rgb", "input SSIM RGB"),
    ("ssim_rgb", "SSIM RGB"),
    ("input_psnr_y", "input PSNR Y"),
    ("psnr_y", "PSNR Y"),
    ("input_ssim_y", "input SSIM Y"),
    ("ssim_y", "SSIM Y"),
)


def meta_files(meta_dir: str | Path, split: str) -> list[Path]:
    """The `*_meta_<split>.json` files of a meta folder, sorted by name (see the module docstring)."""
    root = Path(meta_dir)
    if not root.is_dir():
        raise UnweatherError(f"meta folder {root} does not exist")
    for folder in (root / split, root):
        found = sorted(folder.glob(f"*_meta_{split}.json")) if folder.is_dir() else []
        if found:
            return found
    raise UnweatherError(f"no *_meta_{split}.json files in {root / split} or {root}")


def load_meta(meta_dir: str | Path, split: str = "valid", root: str | Path | None = None,
              check: bool = True) -> dict[str, Pairs]:
    """Read every data set of one split of a meta folder.

    The data set's name is the file name before `_meta_`: `rain_meta_valid.json` is "rain",
    `Rain1400_meta_train.json` is "Rain1400". Data sets come in sorted name order.

    Args:
        meta_dir: the meta folder (see the module docstring).
        split: "train" or "valid" (any name used in the files).
        root: the folder relative paths in the files start from; `meta_dir` when None.
        check: raise if any image is missing.

    Returns:
        {data set name: [(ground-truth path, degraded path), ...]}.

    Raises:
        UnweatherError: no meta files, a file that is not a list of pairs, or missing images.
    """
    base = Path(root) if root is not None else Path(meta_dir)
    datasets: dict[str, Pairs] = {}
    for path in meta_files(meta_dir, split):
        name = path.name[: path.name.index("_meta_")]
        try:
            entries = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UnweatherError(f"cannot read meta file {path}: {exc}") from None
        if not isinstance(entries, list) or not entries or not all(
                isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(p, str) for p in e)
                for e in entries):
            raise UnweatherError(f"meta file {path} is not a non-empty list of [ground truth, input] paths")
        datasets[name] = [(base / gt, base / inp) for gt, inp in entries]
    if check:
        missing = [p for pairs in datasets.values() for pair in pairs for p in pair if not p.is_file()]
        if missing:
            raise UnweatherError(f"{len(missing)} images named in the meta files under {meta_dir} are "
                                 f"missing, e.g. {missing[0]}")
    return datasets


@dataclass
class Scores:
    """Mean scores of one data set; `input_*` compare the degraded input itself with the ground truth."""

    pairs: int
    psnr_rgb: float
    ssim_rgb: float
    psnr_y: float
    ssim_y: float
    input_psnr_rgb: float
    input_ssim_rgb: float
    input_psnr_y: float
    input_ssim_y: float
    seconds: float


def _mean(values: list[float]) -> float:
    # PSNR is inf on an identical pair (a clean data set's input): the mean is then inf, honestly.
    return float(np.mean(values)) if values else math.nan


def evaluate(restore: Callable[[Any], Any], datasets: dict[str, Pairs], device: Any = "cpu",
             limit: int | None = None, progress: bool = False) -> dict[str, Scores]:
    """Score a restoration function on paired data sets.

    Outputs are clamped to [0, 1] and compared in float (not re-quantised to 8 bits).

    Args:
        restore: maps a (1, 3, H, W) float tensor in [0, 1] on `device` to the same; an
            `unweather.engine.Engine` is one.
        datasets: what `load_meta` returns.
        device: where the input tensors go.
        limit: score at most this many pairs per data set (the first ones).
        progress: show a progress bar.

    Returns:
        {data set name: Scores}.
    """
    import torch

    from unweather.training.metrics import psnr, ssim

    results: dict[str, Scores] = {}
    for name, pairs in datasets.items():
        chosen = pairs[:limit] if limit else pairs
        acc: dict[str, list[float]] = {key: [] for key, _ in COLUMNS}
        start = time.perf_counter()
        items = chosen
        if progress:
            from tqdm import tqdm

            items = tqdm(chosen, desc=name, unit="pair", leave=False)
        for gt_path, in_path in items:
            gt, degraded = read_rgb(gt_path), read_rgb(in_path)
            if gt.shape != degraded.shape:
                raise UnweatherError(f"{in_path} and {gt_path} differ in size: {degraded.shape} vs {gt.shape}")
            gt_t = torch.from_numpy(gt).permute(2, 0, 1)[None].float().div_(255.0)
            in_t = torch.from_numpy(degraded).permute(2, 0, 1)[None].float().div_(255.0)
            with torch.inference_mode():
                out = restore(in_t.to(device))
            out = out.detach().float().clamp_(0.0, 1.0).cpu()
            if out.shape != gt_t.shape:
                raise UnweatherError(f"the model returned {tuple(out.shape)} for an input of {tuple(in_t.shape)}")
            both, refs = torch.cat([out, in_t]), torch.cat([gt_t, gt_t])  # one metric call for both
            for suffix, y in (("rgb", False), ("y", True)):
                for metric, fn in (("psnr", psnr), ("ssim", ssim)):
                    values = fn(both, refs, y_channel=y, reduction="none").tolist()
                    acc[f"{metric}_{suffix}"].append(values[0])
                    acc[f"input_{metric}_{suffix}"].append(values[1])
        results[name] = Scores(pairs=len(chosen), seconds=time.perf_counter() - start,
                               **{key: _mean(v) for key, v in acc.items()})
        log.debug("%s: %s", name, results[name])
    return results


def _fmt(value: float, digits: int) -> str:
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def markdown_table(results: dict[str, Scores]) -> str:
    """The scores as a Markdown table, one row per data set, RGB and Y labelled in the columns."""
    head = ["data set", "pairs"] + [label for _, label in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in results.items():
        cells = [name, str(s.pairs)]
        for key, _ in COLUMNS:
            cells.append(_fmt(getattr(s, key), 2 if "psnr" in key else 4))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _json_value(value: Any) -> Any:
    # JSON has no infinity: write it as the string "inf"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return value


def report(results: dict[str, Scores], **context: Any) -> dict[str, Any]:
    """A JSON-ready dict: `context` (model, split...), metric conventions and per-data-set scores."""
    return {
        **context,
        "metrics": {
            "psnr": "dB, mean over images, outputs clamped to [0, 1]; *_rgb on RGB, *_y on BT.601 Y "
                    "(MATLAB rgb2ycbcr, 16-235); input_* score the degraded input itself",
            "ssim": "11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid region (as scikit-image's "
                    "structural_similarity with gaussian_weights)",
        },
        "datasets": {name: {k: _json_value(v) for k, v in asdict(s).items()} for name, s in results.items()},
    }
