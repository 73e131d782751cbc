"""Image quality metrics: PSNR and SSIM, on RGB or on the Y channel (BT.601, as MATLAB's rgb2ycbcr).

Inputs are torch tensors (N, 3, H, W) or (3, H, W), or numpy arrays in image layout (H, W, 3) or
(N, H, W, 3), with values in [0, data_range]. Each metric is computed per image and averaged over
the batch (or returned per image with `reduction="none"`).

SSIM is Wang et al.'s: an 11x11 Gaussian window with sigma 1.5, constants K1 = 0.01 and K2 = 0.03,
averaged over the valid region (no padding) and over channels; the same as scikit-image's
`structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)` and
`kornia.metrics.ssim(..., padding="valid")`.

On Y, the image is converted as MATLAB's rgb2ycbcr does (Y in [16, 235] out of 255) and scaled
back to [0, 1], the convention of the paper's release for its rain PSNR.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# MATLAB rgb2ycbcr, BT.601 "studio swing": Y = 16 + 65.481 R + 128.553 G + 24.966 B, R, G, B in [0, 1].
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0
# SSIM (Wang et al. 2004): Gaussian window, stabilising constants as fractions of the data range.
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _as_nchw(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
        if t.ndim == 3:
            t = t.unsqueeze(0)
    else:
        a = np.asarray(x)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[-1] not in (1, 3):
            raise ValueError(f"expected a numpy image (H, W, 3) or (N, H, W, 3), got shape {a.shape}")
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
    if t.ndim != 4 or t.shape[1] not in (1, 3):
        raise ValueError(f"expected a tensor (N, 3, H, W) or (3, H, W), got shape {tuple(t.shape)}")
    return t.to(torch.float64)


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ta, tb = _as_nchw(a), _as_nchw(b)
    if ta.shape != tb.shape:
        raise ValueError(f"images differ in shape: {tuple(ta.shape)} and {tuple(tb.shape)}")
    return ta, tb.to(ta.device)


def rgb_to_y(x: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """MATLAB rgb2ycbcr's luma of (N, 3, H, W) RGB in [0, data_range], as (N, 1, H, W) in [0, data_range].

    Y spans 16/255 to 235/255 of `data_range`, like MATLAB's uint8 Y divided by 255.
    """
    w = torch.tensor(_Y_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    y = (x / data_range * w).sum(dim=1, keepdim=True) + _Y_OFFSET
    return y / 255.0 * data_range


def _reduce(values: torch.Tensor, reduction: str) -> float | torch.Tensor:
    if reduction == "mean":
        return float(values.mean())
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def psnr(a: Any, b: Any, data_range: float = 1.0, y_channel: bool = False,
         reduction: str = "mean") -> float | torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image, averaged over the batch.

    The one PSNR of the package: `unweather eval`, validation during training and the demo all call
    it, so their numbers agree. `a`, the restored image, is clamped to [0, data_range] first, as every
    engine clamps its output; values are compared in float, not re-quantised.

    Args:
        a: an image or batch (see the module docstring); clamped to [0, data_range].
        b: the reference, same shape.
        data_range: the value of white (1.0 for float images, 255 for 8-bit values).
        y_channel: compare the Y channel (BT.601 as MATLAB's rgb2ycbcr) instead of RGB.
        reduction: "mean" for the batch mean as a float, "none" for a float64 tensor (N,).

    Returns:
        PSNR in dB; inf where the images are identical.
    """
    ta, tb = _pair(a, b)
    ta = ta.clamp(0.0, data_range)
    if y_channel:
        ta, tb = rgb_to_y(ta, data_range), rgb_to_y(tb, data_range)
    mse = ((ta - tb) ** 2).flatten(1).mean(dim=1)
    values = 10.0 * torch.log10(data_range**2 / mse)
    return _reduce(values, reduction)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The normalised 1-D Gaussian of `size` taps (odd) centred on the middle one."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _filter_valid(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Each channel of (N, C, H, W) filtered by the separable window, valid region only (no padding)."""
    c, k = x.shape[1], window.numel()
    x = torch.nn.functional.conv2d(x, window.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return torch.nn.functional.conv2d(x, window.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def ssim(a: Any, b: Any, data_range: float = 1.0, y_channel: bool = False,
         reduction: str = "mean") -> float | torch.Tensor:
    """Structural similarity with an 11x11 Gaussian window (sigma 1.5), per image, averaged.

    SSIM = (2 mu_a mu_b + C1)(2 cov_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2)), with local
    means, variances and covariance weighted by the window, C1 = (0.01 L)^2 and C2 = (0.03 L)^2 for the
    data range L (Wang et al., "Image quality assessment: from error visibility to structural similarity",
    2004). The map covers the valid region and is averaged over it and over channels.

    Args:
        a: an image or batch (see the module docstring); at least 11x11 pixels.
        b: the reference, same shape.
        data_range: the value of white.
        y_channel: compare the Y channel (BT.601 as MATLAB's rgb2ycbcr) instead of RGB.
        reduction: "mean" for the batch mean as a float, "none" for a float64 tensor (N,).

    Returns:
        SSIM, at most 1.
    """
    ta, tb = _pair(a, b)
    if min(ta.shape[-2:]) < _SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels, "
                         f"got {tuple(ta.shape[-2:])}")
    if y_channel:
        ta, tb = rgb_to_y(ta, data_range), rgb_to_y(tb, data_range)
    # float32 (several times faster than float64 on a CPU), on values centred on the pair's channel means:
    # variances and covariance do not change, and E[x^2] - E[x]^2 loses little to cancellation.
    centre = ((ta + tb) / 2).mean(dim=(2, 3), keepdim=True)
    xa, xb = (ta - centre).float(), (tb - centre).float()
    window = _gaussian_window(_SSIM_WINDOW, _SSIM_SIGMA, xa.dtype, xa.device)
    moments = _filter_valid(torch.cat([xa, xb, xa * xa, xb * xb, xa * xb], dim=1), window)
    mu_a, mu_b, aa, bb, ab = moments.split(ta.shape[1], dim=1)
    var_a, var_b, cov = aa - mu_a**2, bb - mu_b**2, ab - mu_a * mu_b
    centre = centre.float()
    mu_a, mu_b = mu_a + centre, mu_b + centre
    c1, c2 = (_SSIM_K1 * data_range) ** 2, (_SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return _reduce(ssim_map.flatten(1).double().mean(dim=1), reduction)


def pattern_score(image: Any, period: int = 16) -> float:
    """How strong a fixed grid of `period` pixels is in an image, in 8-bit luma levels.

    The luma's high-pass part (the image minus its `period` x `period` box mean) is averaged over each of
    the period x period pixel phases; the score is the standard deviation of those means. A periodic
    pattern that an up-sampling path adds everywhere adds up in its phase, while scene content spreads
    over all phases and averages out. Grids of 2, 4 and 8 pixels show up at `period` 16 too.

    Args:
        image: one RGB image, (H, W, 3) numpy or (3, H, W) tensor, values in [0, 1].
        period: the grid period in pixels.
    """
    import cv2

    x = _as_nchw(image)[0].detach().cpu()
    luma = rgb_to_y(x[None])[0, 0].numpy() * 255.0
    h, w = (luma.shape[0] // period) * period, (luma.shape[1] // period) * period
    if h < 2 * period or w < 2 * period:
        raise ValueError(f"an image of {luma.shape[1]}x{luma.shape[0]} is too small for period {period}")
    high = luma - cv2.blur(luma, (period, period), borderType=cv2.BORDER_REFLECT)
    # Drop a period on each side: the box mean is biased at the borders.
    high = high[period:h - period, period:w - period]
    phases = high.reshape(high.shape[0] // period, period, high.shape[1] // period, period).mean(axis=(0, 2))
    return float(phases.std())


def colour_shift(a: Any, b: Any) -> float:
    """The largest difference of per-channel means between two RGB images, in 8-bit levels (signed away)."""
    ta, tb = _pair(a, b)
    return float((ta.mean(dim=(0, 2, 3)) - tb.mean(dim=(0, 2, 3))).abs().max() * 255.0)
