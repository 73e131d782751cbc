"""Weather across its range: styles, intensities by input PSNR, the camera on both sides of a pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_training import tiny_cfg

from unweather.errors import UnweatherError
from unweather.training import config as config_mod
from unweather.training import data, render
from unweather.training.synth import read_image


def photo_from():
    from importlib import resources

    import cv2

    path = resources.files("unweather") / "assets" / "demo_photo.jpg"
    img = read_image(str(path))
    return cv2.resize(img, (256, 144), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("style", render.STYLES)
@pytest.mark.parametrize("weather", ["rain", "snow", "haze"])
def test_every_style_renders_every_weather_in_each_intensity_band(style, weather):
    img = photo_from()
    values = {}
    for intensity in render.INTENSITIES:
        out, value = render.render_band(img, weather, np.random.default_rng(0), style, intensity)
        assert out.shape == img.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
        assert value == pytest.approx(render.psnr(out, img))
        assert render.intensity_of(out, img) == intensity, (intensity, value)
        values[intensity] = value
    assert values["light"] >= 27 > values["medium"] >= 18 > values["heavy"]
    # A function of the generator's state: the same seed gives the same rendering.
    again, _ = render.render_band(img, weather, np.random.default_rng(0), style, "medium")
    first, _ = render.render_band(img, weather, np.random.default_rng(0), style, "medium")
    assert np.array_equal(again, first)


def test_styles_differ_and_bad_names_are_refused():
    img = photo_from()
    outs = [render.render(img, "rain", np.random.default_rng(1), s, "heavy") for s in render.STYLES]
    assert all(np.abs(a - b).mean() > 0.01 for i, a in enumerate(outs) for b in outs[i + 1:])
    for kwargs in ({"style": "paint"}, {"intensity": "extreme"}):
        with pytest.raises(UnweatherError):
            render.render(img, "rain", np.random.default_rng(0), **kwargs)
    assert render.HELD_OUT_STYLE not in render.TRAIN_STYLES


def test_camera_puts_the_same_noise_and_compression_on_both_sides():
    img = photo_from()
    rng = np.random.default_rng(0)
    always = render.CameraConfig(noise=1.0, jpeg=0.0, noise_sigma=(3.0, 3.0))
    clean, same = render.camera(img, img.copy(), rng, always)
    assert np.array_equal(clean, same) and not np.array_equal(clean, img)
    assert 1.0 < np.std((clean - img) * 255) < 4.0
    jpeg = render.CameraConfig(noise=0.0, jpeg=1.0, jpeg_quality=(50, 50))
    a, b = render.camera(img, img.copy(), np.random.default_rng(0), jpeg)
    assert np.array_equal(a, b) and not np.array_equal(a, img)
    # A clean sample keeps input == target through low light, noise and compression.
    target, inp = render.training_sample(img, None, np.random.default_rng(5))
    assert np.array_equal(target, inp)
    dark = render.low_light(img, np.random.default_rng(0))
    assert dark.mean() < 0.5 * img.mean()


def test_styled_resynth_batches(meta_dir):
    train, clean = data.split_clean(data.load_pairs(meta_dir, "train"))
    cfg = config_mod.apply_mapping(tiny_cfg(), {"data": {"resynth": ["rain", "snow", "haze"],
                                                         "render_styles": ["particles", "noise"],
                                                         "camera": True}})
    cfg.validate()
    batches = data.WeatherBatches(train, cfg.data, seed=3, per_weather=2, clean=2, clean_paths=clean)
    b = batches.batch(0)
    assert torch.equal(b.inputs, batches.batch(0).inputs)  # a function of (seed, step)
    stop = b.groups[-2][2]
    assert not torch.equal(b.inputs[:stop], b.targets[:stop])
    assert torch.equal(b.inputs[stop:], b.targets[stop:])  # clean pairs stay pairs of equals
    cfg.data.render_styles = [render.HELD_OUT_STYLE]
    with pytest.raises(UnweatherError, match="evaluation only"):
        cfg.validate()


def test_night_scenes_are_dark_with_small_bright_lights_and_stay_pairs():
    img = photo_from()
    night = render.night_lights(img, np.random.default_rng(2))
    assert night.shape == img.shape and night.dtype == np.float32
    assert 0.0 <= night.min() and night.max() <= 1.0
    # Mostly dark, with lights far brighter than the darkened scene around them.
    assert np.median(night) < 0.5 * np.median(img)
    assert (night.max(axis=2) > 0.5).mean() > 0.002
    cam = render.CameraConfig(night=1.0, noise=0.0, jpeg=0.0)
    target, inp = render.training_sample(img, None, np.random.default_rng(4), cam=cam)
    assert np.array_equal(target, inp) and np.median(target) < 0.5 * np.median(img)
    target, inp = render.training_sample(img, "rain", np.random.default_rng(4), cam=cam)
    assert not np.array_equal(target, inp) and np.median(target) < 0.5 * np.median(img)


def test_lit_scenes_keep_their_exposure_and_their_lights_are_in_the_target_too():
    img = photo_from()
    lit = render.lit_scene(img, np.random.default_rng(2))
    assert lit.shape == img.shape and lit.dtype == np.float32
    assert 0.0 <= lit.min() and lit.max() <= 1.0
    # The scene as it was, nowhere darker, with lights added on part of it.
    assert np.all(lit >= np.clip(img, 0, 1) - 1e-6)
    assert abs(float(np.median(lit)) - float(np.median(img))) < 0.05
    assert 0.001 < (lit - img > 0.2).any(axis=2).mean() < 0.5
    cam = render.CameraConfig(lights=1.0, low_light=0.0, noise=0.0, jpeg=0.0)
    target, inp = render.training_sample(img, "snow", np.random.default_rng(4), cam=cam)
    # The lights are scene content: in the ground truth, not only in the input.
    assert (target - img > 0.2).any(axis=2).mean() > 0.001
    assert not np.array_equal(target, inp)
