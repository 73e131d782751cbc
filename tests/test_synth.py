"""Synthetic weather: plausible rain, snow and haze; reproducible, photo-split paired data sets."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from unweather.cli import main
from unweather.errors import UnweatherError
from unweather.training import synth


def _scene(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A textured mid-dark image: smooth colour gradients plus some structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.2 + 0.2 * x / w, 0.25 + 0.15 * y / h, 0.3 + 0.1 * np.sin(x / 7.0)], axis=-1)
    img += 0.03 * rng.standard_normal((h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def _directional_energy(diff: np.ndarray) -> tuple[float, float]:
    """Correlation of a difference map with itself one pixel down and one pixel right."""
    d = diff - diff.mean()
    norm = float((d * d).sum())
    return float((d[1:] * d[:-1]).sum()) / norm, float((d[:, 1:] * d[:, :-1]).sum()) / norm


def test_rain_adds_bright_streaks_along_the_fall():
    img = _scene()
    out = synth.add_rain(img, np.random.default_rng(1), angle=0.0, veil=0.0, layers=1, density=30.0,
                         length=0.2, width=1.0, blur=0.3, opacity=0.8, brightness=0.95)
    assert out.dtype == np.float32 and out.shape == img.shape
    diff = (out - img).mean(axis=2)
    changed = np.abs(diff) > 0.02
    assert 0.01 < changed.mean() < 0.5
    assert (diff[changed] > 0).all()  # streaks are brighter than this dark scene
    vertical, horizontal = _directional_energy(diff)
    assert vertical > 0.8 and vertical > horizontal + 0.3  # vertical rain: long vertical streaks


def test_heavy_rain_adds_a_veil_and_angle_tilts_the_streaks():
    img = _scene()
    rng = np.random.default_rng(2)
    no_veil = synth.add_rain(img, rng, synth.RainParams(veil=0.0, density=5.0))
    veiled = synth.add_rain(img, np.random.default_rng(2), synth.RainParams(veil=0.3, density=5.0))
    assert veiled.std() < no_veil.std()  # a veil lowers contrast
    tilted = synth.add_rain(img, np.random.default_rng(3), angle=40.0, veil=0.0, layers=1, length=0.25,
                            blur=0.3)
    d = (tilted - img).mean(axis=2)
    d = d - d.mean()
    along = float((d[3:, 3:] * d[:-3, :-3]).sum())  # 3 pixels down-right, along streaks leaning right
    across = float((d[3:, :-3] * d[:-3, 3:]).sum())  # 3 pixels down-left
    assert along > 3 * abs(across)


def test_snow_adds_flakes_of_several_sizes_and_grows_with_density():
    img = _scene(128, 128)
    p = synth.SnowParams(density=10.0, size=0.03, motion=0.0, blur=0.3, layers=3, veil=0.0)
    light = synth.add_snow(img, np.random.default_rng(4), p)
    heavy = synth.add_snow(img, np.random.default_rng(4), p, density=25.0)
    diff_light = (light - img).mean(axis=2)
    diff_heavy = (heavy - img).mean(axis=2)
    assert (diff_light > -1e-6).all()  # white flakes on a dark scene only brighten it
    assert (diff_heavy > 0.05).mean() > (diff_light > 0.05).mean() > 0.005
    n, _, stats, _ = cv2.connectedComponentsWithStats((diff_light > 0.1).astype(np.uint8))
    areas = stats[1:, cv2.CC_STAT_AREA]
    assert n > 10 and areas.max() > 4 * np.median(areas)  # near flakes are much bigger than far ones


def test_haze_lowers_contrast_towards_the_airlight_and_more_far_away():
    img = _scene()
    p = synth.HazeParams(beta=1.5, airlight=0.9, tint=0.0, horizon=0.3, noise=0.0, luminance=0.0)
    out = synth.add_haze(img, np.random.default_rng(5), p)
    a = synth.airlight_color(p)
    def detail(x: np.ndarray) -> float:
        return float((x - cv2.GaussianBlur(x, (0, 0), 2.0)).std())

    assert detail(out) < 0.7 * detail(img)  # local contrast drops by t < 1 everywhere
    assert (np.abs(out - a) <= np.abs(img - a) + 1e-6).all()
    change = np.abs(out - img).mean(axis=(1, 2))
    assert change[:10].mean() > change[-10:].mean() + 0.05  # the top is far, the bottom near
    depth = synth.haze_depth(img, p, np.random.default_rng(5))
    assert depth.min() == pytest.approx(p.depth_min, abs=1e-5) and depth.max() == pytest.approx(1.0, abs=1e-5)


def test_random_params_stay_in_their_ranges_and_overrides_apply():
    rng = np.random.default_rng(6)
    for weather in synth.WEATHERS:
        ranges = synth._PARAMS[weather][1]()
        for _ in range(20):
            p = synth.random_params(weather, rng)
            for name, (lo, hi) in vars(ranges).items():
                assert lo <= getattr(p, name) <= hi, (weather, name)
    with pytest.raises(UnweatherError, match="unknown weather"):
        synth.random_params("fog", rng)
    with pytest.raises(TypeError):
        synth.add_rain(_scene(), rng, colour=1.0)


def test_same_seed_same_image_other_seed_other_image():
    img = _scene()
    for add in (synth.add_rain, synth.add_snow, synth.add_haze):
        a = add(img, np.random.default_rng(7))
        b = add(img, np.random.default_rng(7))
        c = add(img, np.random.default_rng(8))
        assert np.array_equal(a, b) and not np.array_equal(a, c)


def _photos(folder: Path, n: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = _scene(72 + 8 * i, 96, seed=i)
        path = folder / f"photo{i}.png"
        synth.write_image(path, img)
        paths.append(path)
    return paths


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthesize_is_reproducible_and_split_by_photo(tmp_path):
    photos = _photos(tmp_path / "photos")
    kwargs = {"crops": 3, "size": 32, "valid_fraction": 0.4, "clean_pairs": 1}
    first = synth.synthesize(photos, tmp_path / "a", seed=3, **kwargs)
    synth.synthesize(photos, tmp_path / "b", seed=3, **kwargs)
    synth.synthesize(photos, tmp_path / "c", seed=4, **kwargs)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a == b
    assert a != c

    out = tmp_path / "a"
    train_photos = {Path(p).stem for p in first["photos"]["train"]}
    valid_photos = {Path(p).stem for p in first["photos"]["valid"]}
    assert len(valid_photos) == 2 and train_photos | valid_photos == {p.stem for p in photos}
    assert not train_photos & valid_photos
    for split, allowed in (("train", train_photos), ("valid", valid_photos)):
        for weather in synth.WEATHERS:
            pairs = json.loads((out / split / f"{weather}_meta_{split}.json").read_text())
            assert len(pairs) == 3 * len(allowed)
            for gt, degraded in pairs:
                assert not Path(gt).is_absolute() and (out / gt).is_file() and (out / degraded).is_file()
                assert gt.rsplit("/", 1)[1].rsplit("_", 1)[0] in allowed  # crops only of this split's photos
                g, d = cv2.imread(str(out / gt)), cv2.imread(str(out / degraded))
                assert g.shape == d.shape == (32, 32, 3) and not np.array_equal(g, d)
        clean = json.loads((out / split / f"clean_meta_{split}.json").read_text())
        assert len(clean) == len(allowed) and all(gt == inp for gt, inp in clean)
    record = json.loads((out / "synth.json").read_text())
    assert record["config"]["seed"] == 3 and len(record["samples"]) == 3 * 3 * 5
    for weather, cls in (("rain", synth.RainParams), ("snow", synth.SnowParams), ("haze", synth.HazeParams)):
        params = next(v for k, v in record["samples"].items() if f"/{weather}/" in k)
        assert set(params) == set(vars(cls()))


def test_split_keeps_one_photo_each_side_and_rejects_bad_fractions():
    train, valid = synth.split_photos(["a", "b"], 0.1, seed=0)
    assert len(train) == len(valid) == 1
    assert synth.split_photos(["a", "b", "c"], 0.0, seed=0) == (["a", "b", "c"], [])
    with pytest.raises(UnweatherError):
        synth.split_photos(["a", "b"], 1.0, seed=0)


def test_cli_synth_takes_folders_and_reports_bad_input(tmp_path, capsys):
    _photos(tmp_path / "photos", n=3)
    assert main(["synth", str(tmp_path / "photos"), "-o", str(tmp_path / "out"), "--weather", "haze",
                 "--crops", "1", "--size", "24", "--valid-fraction", "0.3"]) == 0
    assert (tmp_path / "out" / "valid" / "haze_meta_valid.json").is_file()
    assert not (tmp_path / "out" / "train" / "rain_meta_train.json").exists()
    assert main(["synth", str(tmp_path / "photos"), "-o", str(tmp_path / "all"), "--weather", "rain",
                 "--crops", "1", "--size", "24", "--valid-fraction", "0"]) == 0
    assert (tmp_path / "all" / "train" / "rain_meta_train.json").is_file()
    assert not (tmp_path / "all" / "valid").exists()  # no empty validation set
    capsys.readouterr()
    assert main(["synth", str(tmp_path / "nowhere"), "-o", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("unweather: error:") and "nowhere" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert main(["synth", str(tmp_path / "empty"), "-o", str(tmp_path / "out3")]) == 1
    assert "no photos" in capsys.readouterr().err
