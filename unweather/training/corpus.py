"""Training and evaluation data from the photo corpus (`scripts/fetch_corpus.py`).

`prepare` turns the fetched corpus into a meta directory that `unweather train` reads:

- train: every training photo at several scales (short side 256, 384 and 576 px), so that a crop sees
  anything from a whole scene to a detail. Each weather's data set and the `clean` set list these images as
  (ground truth, ground truth): the weather is rendered afresh every step (`data.resynth`,
  `data.render_styles`), never stored.
- valid: the photos of the validation packages (other sources than training), cut to 640x360 frames,
  and for each weather, intensity and renderer style one rendering that falls in the intensity's input
  PSNR band. The trainer's `<weather>_meta_valid.json` lists the training styles only; `eval.json` lists
  every pair with its weather, style, intensity, input PSNR, package and scene tags, the held-out style
  included, for `benchmarks/quality.py`.

Everything is a function of the corpus and the seed; a finished directory is reused (`prepare.json`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from unweather.errors import UnweatherError
from unweather.training import render, synth

log = logging.getLogger(__name__)

FORMAT = "unweather-corpus-meta/1"


@dataclass(frozen=True)
class PrepareConfig:
    """How `prepare` cuts the corpus.

    Attributes:
        scales: short sides (px) of the training images.
        frame: (width, height) of the validation frames.
        seed: the seed every rendering derives from.
    """

    scales: tuple[int, ...] = (256, 384, 576)
    frame: tuple[int, int] = (640, 360)
    seed: int = 0


def load_corpus(corpus_dir: str | Path) -> list[dict[str, Any]]:
    """Return the photos `scripts/fetch_corpus.py` recorded in `corpus_dir/corpus.json`, with `file` resolved."""
    root = Path(corpus_dir)
    index = root / "corpus.json"
    if not index.is_file():
        raise UnweatherError(f"{index} not found: fetch the corpus first (python3 scripts/fetch_corpus.py {root})")
    record = json.loads(index.read_text())
    photos = record["photos"] if isinstance(record, dict) else record
    out = []
    for photo in photos:
        name = photo.get("file") or photo.get("output")
        path = next((p for p in (root / name, root / photo["split"] / name) if p.is_file()), None)
        if path is None:
            raise UnweatherError(f"{root}: {name} is listed in corpus.json but missing: fetch the corpus again")
        tags = photo.get("tags", [])
        out.append({**photo, "file": path, "tags": tags.split(",") if isinstance(tags, str) else list(tags)})
    return out


def _resize_short(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    scale = side / min(h, w)
    return cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def frame_of(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centre of a photo as a video frame of `size` (width, height): scaled to cover it, then cropped."""
    w, h = size
    ih, iw = img.shape[:2]
    scale = max(w / iw, h / ih)
    img = cv2.resize(img, (max(w, round(iw * scale)), max(h, round(ih * scale))), interpolation=cv2.INTER_AREA)
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return np.ascontiguousarray(img[top:top + h, left:left + w])


def _stem(photo: dict[str, Any]) -> str:
    return Path(photo["file"]).stem


def prepare(corpus_dir: str | Path, out_dir: str | Path, cfg: PrepareConfig = PrepareConfig()) -> dict[str, Any]:
    """Write the meta directory for `corpus_dir` into `out_dir` (see the module docstring); return its record."""
    out = Path(out_dir)
    done = out / "prepare.json"
    # Whole clips (split "clips") are for the video benchmark, not for frames.
    photos = [p for p in load_corpus(corpus_dir) if p["split"] != "clips"]
    key = json.loads(json.dumps({"format": FORMAT, "config": asdict(cfg),
                                 "photos": sorted((p.get("sha256", ""), _stem(p), p["split"]) for p in photos)}))
    if done.is_file():
        record = json.loads(done.read_text())
        if record.get("key") == key:
            log.info("%s is up to date", out)
            return record
    train = [p for p in photos if p["split"] == "train"]
    valid = [p for p in photos if p["split"] == "valid"]
    if not train or not valid:
        raise UnweatherError(f"{corpus_dir}: the corpus needs training and validation photos "
                             f"({len(train)} and {len(valid)} found)")
    (out / "train" / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for photo in train:
        img = synth.read_image(photo["file"])
        for side in cfg.scales:
            if min(img.shape[:2]) < side:
                continue
            rel = f"train/images/{_stem(photo)}_{side}.png"
            synth.write_image(out / rel, _resize_short(img, side))
            images.append(rel)
    pairs = [[p, p] for p in images]
    for name in (*synth.WEATHERS, "clean"):
        (out / "train" / f"{name}_meta_train.json").write_text(json.dumps(pairs, indent=0) + "\n")

    entries: list[dict[str, Any]] = []
    trainer_sets: dict[str, list[list[str]]] = {name: [] for name in (*synth.WEATHERS, "clean")}
    (out / "valid" / "clean").mkdir(parents=True, exist_ok=True)
    for photo in valid:
        frame = frame_of(synth.read_image(photo["file"]), cfg.frame)
        gt = f"valid/clean/{_stem(photo)}.png"
        synth.write_image(out / gt, frame)
        frame = synth.to_uint8(frame).astype(np.float32) * (1.0 / 255.0)  # as stored: 8-bit
        common = {"package": photo.get("package", ""), "tags": photo["tags"], "gt": gt}
        entries.append({**common, "weather": "clean", "style": "", "intensity": "", "input": gt, "psnr": 100.0})
        trainer_sets["clean"].append([gt, gt])
        if "real_weather" in photo["tags"]:
            continue
        for wi, weather in enumerate(synth.WEATHERS):
            for si, style in enumerate(render.STYLES):
                for ii, intensity in enumerate(render.INTENSITIES):
                    rng = np.random.default_rng([cfg.seed, synth._photo_key(_stem(photo)), wi, si, ii])
                    degraded, value = render.render_band(frame, weather, rng, style, intensity)
                    rel = f"valid/{weather}/{style}/{intensity}/{_stem(photo)}.png"
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    synth.write_image(out / rel, degraded)
                    entries.append({**common, "weather": weather, "style": style, "intensity": intensity,
                                    "input": rel, "psnr": round(value, 3)})
                    if style in render.TRAIN_STYLES:
                        trainer_sets[weather].append([gt, rel])
    for name, pairs in trainer_sets.items():
        (out / "valid" / f"{name}_meta_valid.json").write_text(json.dumps(pairs, indent=0) + "\n")
    (out / "eval.json").write_text(json.dumps({"format": FORMAT, "pairs": entries}, indent=0) + "\n")
    record = {"key": key, "train_images": len(images), "train_photos": len(train), "valid_photos": len(valid),
              "eval_pairs": len(entries),
              "packages": {"train": sorted({p.get("package", "") for p in train}),
                           "valid": sorted({p.get("package", "") for p in valid})}}
    done.write_text(json.dumps(record, indent=1) + "\n")
    log.info("prepared %d training images from %d photos and %d evaluation pairs from %d photos in %s",
             len(images), len(train), len(entries), len(valid), out)
    return record


def main(argv: list[str] | None = None) -> int:
    """`python -m unweather.training.corpus CORPUS_DIR OUT_DIR`: prepare the meta directory."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m unweather.training.corpus", description=main.__doc__)
    parser.add_argument("corpus", help="the folder scripts/fetch_corpus.py wrote (with corpus.json)")
    parser.add_argument("out", help="the meta directory to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        prepare(args.corpus, args.out, PrepareConfig(seed=args.seed))
    except UnweatherError as exc:
        print(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
