"""Synthetic weather clips: weather moves coherently from frame to frame; flicker measures it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from unweather.errors import UnweatherError
from unweather.training import synth
from unweather.training.clips import flicker, weather_clip


def _photo(h: int = 90, w: int = 160) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.2 + 0.3 * x / w, 0.3 + 0.1 * np.sin(y / 5.0), 0.25 + 0.1 * np.cos(x / 9.0)], -1)
    return img.astype(np.float32)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_rain_falls_coherently_with_its_speed():
    p = synth.RainParams(density=20.0, angle=0.0, length=0.1, width=1.0, blur=0.3, layers=1, veil=0.0)
    clean, rainy = weather_clip(_photo(), "rain", 3, np.random.default_rng(0), params=p)
    assert flicker(clean) == 0.0
    assert flicker(rainy) > 0.005
    layers = [(r - c).mean(axis=2) for r, c in zip(rainy, clean)]
    speed = round(p.length * 90 / 0.5)  # streak length / exposure: 18 px per frame, straight down
    assert _corr(layers[1][speed:], layers[0][:-speed]) > 0.95  # the same streaks, moved down
    assert abs(_corr(layers[1], layers[0])) < 0.5  # ...not the same picture


def test_snow_drifts_smoothly_and_differs_between_frames():
    p = synth.SnowParams(density=10.0, size=0.03, angle=0.0, motion=0.0, blur=0.3, layers=1, veil=0.0)
    clean, snowy = weather_clip(_photo(), "snow", 4, np.random.default_rng(1), params=p)
    assert flicker(clean) == 0.0
    flakes = [(s - c).mean(axis=2) for s, c in zip(snowy, clean)]
    assert all(not np.array_equal(a, b) for a, b in itertools.pairwise(flakes))
    # flakes of radius 2.7 px fall 2.7 * 1.5 + 0.5 px a frame, swaying a little sideways
    speed = 5
    assert _corr(flakes[1][speed:], flakes[0][:-speed]) > 0.85
    assert _corr(flakes[1][speed:], flakes[0][:-speed]) > _corr(flakes[1], flakes[0]) + 0.4


def test_haze_is_static_and_pan_moves_the_scene_slowly():
    clean, hazy = weather_clip(_photo(), "haze", 3, np.random.default_rng(2))
    assert flicker(hazy) == 0.0 and not np.array_equal(clean[0], hazy[0])
    clean, hazy = weather_clip(_photo(), "haze", 5, np.random.default_rng(2), pan=True, size=(60, 80),
                               pan_speed=0.025)
    assert clean[0].shape == hazy[0].shape == (60, 80, 3)
    # the camera moves 2 pixels per frame: frame t+1 is frame t shifted left by 2 (up to resampling)
    assert np.abs(clean[1][:, :-2] - clean[0][:, 2:]).mean() < 0.01
    assert 0 < flicker(clean) < 0.05 and flicker(hazy) < flicker(clean) * 1.5


def test_flicker_accepts_arrays_and_tensors_and_needs_two_frames():
    frames = [np.zeros((4, 4, 3)), np.full((4, 4, 3), 0.5), np.full((4, 4, 3), 0.25)]
    assert flicker(frames) == pytest.approx((0.5 + 0.25) / 2)
    assert flicker(np.stack(frames)) == pytest.approx(0.375)
    assert flicker([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)]) == pytest.approx(1.0)
    with pytest.raises(UnweatherError):
        flicker(frames[:1])
    with pytest.raises(UnweatherError, match="unknown weather"):
        weather_clip(_photo(), "fog", 2, np.random.default_rng(0))
