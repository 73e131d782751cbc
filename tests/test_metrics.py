"""PSNR and SSIM against scikit-image, on RGB and on MATLAB's Y channel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from unweather.training.metrics import psnr, rgb_to_y, ssim


def _pair(seed: int, h: int = 37, w: int = 52, noise: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    ref = np.stack([x / w, 0.5 + 0.4 * np.sin(y / 4.0), (x + y) / (h + w)], -1).astype(np.float32)
    ref = np.clip(ref + 0.05 * rng.standard_normal(ref.shape), 0, 1).astype(np.float32)
    test = np.clip(ref + noise * rng.standard_normal(ref.shape) + 0.03, 0, 1).astype(np.float32)
    return test, ref


def _sk_ssim(a: np.ndarray, b: np.ndarray, channel_axis: int | None) -> float:
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0, channel_axis=channel_axis)


@pytest.mark.parametrize("seed,noise", [(0, 0.02), (1, 0.1), (2, 0.3)])
def test_rgb_metrics_match_scikit_image(seed, noise):
    a, b = _pair(seed, noise=noise)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(b, a, data_range=1.0), abs=1e-4)
    assert ssim(a, b) == pytest.approx(_sk_ssim(a, b, channel_axis=2), abs=1e-5)


def _photo(name: str) -> np.ndarray:
    from importlib import resources

    from unweather.media import read_rgb

    return read_rgb(str(resources.files("unweather") / "assets" / name)).astype(np.float64) / 255.0


@pytest.mark.parametrize("name", ["demo_photo.jpg", "check_photo.jpg"])
def test_ssim_matches_scikit_image_on_photos(name):
    import cv2

    ref = _photo(name)
    rng = np.random.default_rng(0)
    degraded = {
        "noise": np.clip(ref + 0.05 * rng.standard_normal(ref.shape), 0, 1),
        "blur": cv2.GaussianBlur(ref, (0, 0), 2.0),
        "veil": ref * 0.7 + 0.2,
        "banding": np.round(ref * 31) / 31,
        "nearly equal": np.clip(ref + 1 / 255, 0, 1),
        "negative": 1.0 - ref,
    }
    ref_y = rgb2ycbcr(ref)[..., 0] / 255.0
    for kind, test in degraded.items():
        expected = _sk_ssim(test, ref, channel_axis=2)
        assert ssim(test, ref) == pytest.approx(expected, abs=1e-6), kind
        expected_y = _sk_ssim(rgb2ycbcr(test)[..., 0] / 255.0, ref_y, channel_axis=None)
        assert ssim(test, ref, y_channel=True) == pytest.approx(expected_y, abs=1e-6), kind


def test_y_channel_matches_matlab_rgb2ycbcr():
    a, b = _pair(3)
    ya, yb = rgb2ycbcr(a)[..., 0] / 255.0, rgb2ycbcr(b)[..., 0] / 255.0  # MATLAB's Y, 16..235
    assert psnr(a, b, y_channel=True) == pytest.approx(peak_signal_noise_ratio(yb, ya, data_range=1.0), abs=1e-4)
    assert ssim(a, b, y_channel=True) == pytest.approx(_sk_ssim(ya, yb, channel_axis=None), abs=1e-5)
    white = torch.ones(1, 3, 2, 2)
    assert rgb_to_y(white).flatten()[0].item() == pytest.approx(235 / 255)
    assert rgb_to_y(torch.zeros(1, 3, 2, 2)).flatten()[0].item() == pytest.approx(16 / 255)
    # RGB and Y disagree on a colour error: the labels matter
    assert psnr(a, b) != pytest.approx(psnr(a, b, y_channel=True), abs=0.1)


def test_torch_batches_numpy_images_and_data_range_agree():
    pairs = [_pair(s) for s in range(3)]
    ta = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2)
    tb = torch.from_numpy(np.stack([p[1] for p in pairs])).permute(0, 3, 1, 2)
    per_image_psnr = psnr(ta, tb, reduction="none")
    per_image_ssim = ssim(ta, tb, reduction="none")
    assert per_image_psnr.shape == (3,)
    for i, (a, b) in enumerate(pairs):
        assert per_image_psnr[i].item() == pytest.approx(psnr(a, b), abs=1e-6)
        assert per_image_ssim[i].item() == pytest.approx(ssim(ta[i], tb[i]), abs=1e-6)
    assert psnr(ta, tb) == pytest.approx(per_image_psnr.mean().item())
    assert psnr(ta * 255, tb * 255, data_range=255.0) == pytest.approx(psnr(ta, tb), abs=1e-4)
    assert ssim(ta * 255, tb * 255, data_range=255.0, y_channel=True) == pytest.approx(
        ssim(ta, tb, y_channel=True), abs=1e-6)


def test_identical_images_and_bad_shapes():
    a, _ = _pair(4)
    assert math.isinf(psnr(a, a)) and ssim(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, a[:-1])
    with pytest.raises(ValueError, match="11x11"):
        ssim(a[:8, :8], a[:8, :8])
    with pytest.raises(ValueError):
        psnr(np.zeros((4, 4)), np.zeros((4, 4)))


def test_pattern_score_finds_a_fixed_grid_not_scene_content():
    from unweather.training.metrics import pattern_score

    h, w = 480, 640
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gradient = np.stack([0.2 + 0.6 * xx / w, 0.3 + 0.4 * yy / h, np.full((h, w), 0.5, np.float32)], axis=-1)
    rng = np.random.default_rng(0)
    texture = np.clip(gradient + rng.normal(0, 0.02, gradient.shape).astype(np.float32), 0, 1)
    # A grid of 16 px period with 1 level of amplitude, as a shuffle up-sampling path leaves in a sky.
    grid = (np.sin(2 * np.pi * xx / 16) * np.cos(2 * np.pi * yy / 8))[..., None] / 255.0
    for clean, most in ((gradient, 0.01), (np.full((h, w, 3), 0.7, np.float32), 0.01), (texture, 0.3)):
        base = pattern_score(clean)
        assert base < most, base
        assert pattern_score(np.clip(clean + grid, 0, 1)) > base + 0.2
    # A 2-pixel checkerboard counts at period 16 too.
    checker = ((xx + yy) % 2 - 0.5)[..., None] * 2 / 255.0
    assert pattern_score(gradient + checker) > 0.5


def test_colour_shift_is_the_largest_channel_mean_difference():
    from unweather.training.metrics import colour_shift

    a = np.full((8, 8, 3), 0.5, np.float32)
    b = a.copy()
    b[..., 2] += 3 / 255
    assert colour_shift(a, b) == pytest.approx(3.0, abs=1e-4)
    assert colour_shift(a, a) == 0.0
