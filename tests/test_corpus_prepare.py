"""The corpus as training and evaluation data: scales, bands, the held-out style kept out of training."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from unweather.errors import UnweatherError
from unweather.training import corpus, data, render


def _fake_corpus(root, n_train=2, n_valid=2):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:420]
    photos = []
    for i in range(n_train + n_valid):
        split = "train" if i < n_train else "valid"
        img = np.stack([(xx // (3 + i)) % 200 + 30, (yy * 2 + 30 * i) % 220, (xx + yy) % 180 + 40], -1)
        img = (img + rng.integers(0, 15, img.shape)).clip(0, 255).astype(np.uint8)
        (root / split).mkdir(parents=True, exist_ok=True)
        name = f"pkg{i % 2 + (2 if split == 'valid' else 0)}__photo{i}.png"
        cv2.imwrite(str(root / split / name), img)
        photos.append({"package": f"pkg{i}", "version": "1", "path": f"usr/share/p{i}.png", "licence": "CC0",
                       "split": split, "tags": ["day", "urban"] if i % 2 else ["night"], "file": name,
                       "sha256": str(i)})
    (root / "corpus.json").write_text(json.dumps({"photos": photos}))
    return root


def test_prepare_writes_scales_and_banded_evaluation_pairs(tmp_path):
    src = _fake_corpus(tmp_path / "corpus")
    out = tmp_path / "meta"
    cfg = corpus.PrepareConfig(scales=(128, 256, 512), frame=(160, 96))
    record = corpus.prepare(src, out, cfg)
    # 300 px photos: the 512 scale is skipped rather than upscaled.
    assert record["train_images"] == 4 and record["valid_photos"] == 2
    train = data.load_pairs(out, "train")
    assert set(train) == {"rain", "snow", "haze", "clean"}
    assert all(gt == deg for pairs in train.values() for gt, deg in pairs)
    sizes = sorted(min(cv2.imread(str(gt)).shape[:2]) for gt, _ in train["rain"])
    assert sizes == [128, 128, 256, 256]
    pairs = json.loads((out / "eval.json").read_text())["pairs"]
    per_photo = 1 + 3 * len(render.STYLES) * len(render.INTENSITIES)
    assert len(pairs) == 2 * per_photo
    for p in pairs:
        gt = cv2.imread(str(out / p["gt"]))
        assert gt.shape[:2] == (96, 160)
        if p["weather"] != "clean":
            deg = cv2.imread(str(out / p["input"]))[..., ::-1].astype(np.float32) / 255
            assert render.psnr(deg, gt[..., ::-1].astype(np.float32) / 255) == pytest.approx(p["psnr"], abs=1e-3)
    in_band = [render.BANDS[p["intensity"]][0] <= p["psnr"] < render.BANDS[p["intensity"]][1]
               for p in pairs if p["weather"] != "clean"]
    assert sum(in_band) >= 0.9 * len(in_band)
    # The trainer validates on the training styles only: the held-out style is for evaluation.
    valid = data.load_pairs(out, "valid")
    held_out = {str(out / p["input"]) for p in pairs if p["style"] == render.HELD_OUT_STYLE}
    assert held_out and not held_out & {str(deg) for ps in valid.values() for _, deg in ps}
    assert len(valid["rain"]) == 2 * len(render.TRAIN_STYLES) * len(render.INTENSITIES)
    # Up to date: a second call does nothing and returns the same record.
    stamp = (out / "eval.json").stat().st_mtime_ns
    assert corpus.prepare(src, out, cfg) == record and (out / "eval.json").stat().st_mtime_ns == stamp


def test_prepare_says_what_is_missing(tmp_path):
    with pytest.raises(UnweatherError, match="fetch the corpus"):
        corpus.prepare(tmp_path, tmp_path / "meta")
    src = _fake_corpus(tmp_path / "c", n_valid=0)
    with pytest.raises(UnweatherError, match="validation photos"):
        corpus.prepare(src, tmp_path / "meta")
