"""Global motion between consecutive frames, and the alignment of a video student's state to it.

Shared by training (clips) and the stream (live and recorded video), so both align the same way.
The estimate is a translation from phase correlation on a reduced grey frame: cheap (about a
millisecond at 640x360), robust to rain and snow (they are small, scattered and change every frame),
and enough for pans and shake; zooms and forward motion are left to the network, which lowers its
trust in the history where the aligned history disagrees with the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# Phase correlation runs on frames reduced to about this width.
_WORK_WIDTH = 320
_REFINE_STEPS = 3
# Residuals (grey levels in [0, 1]) beyond about this are treated as outliers in the refinement.
_ROBUST_SCALE = 0.05
# Grey levels of contrast below which a scene counts as flat when judging a change.
_MIN_CONTRAST = 0.02


@dataclass(frozen=True)
class Motion:
    """The global motion from one frame to the next.

    Attributes:
        dx: horizontal translation in pixels (content moved right when positive).
        dy: vertical translation in pixels (content moved down when positive).
        response: phase correlation's peak strength in [0, 1] (low: no reliable translation).
        change: mean absolute difference of the reduced grey frames after alignment, relative to
            their mean absolute deviation (about 1.1 for two unrelated scenes, near 0 for a still one).
    """

    dx: float = 0.0
    dy: float = 0.0
    response: float = 1.0
    change: float = 0.0

    def is_cut(self, threshold: float = 1.5) -> bool:
        """Whether the new frame surely shows another scene (its history must not be blended in).

        Heavy snow changes a still scene by up to about 1.3, while two similar scenes can differ by
        0.4: only a change beyond any weather's counts, and the video student's own trust in its
        history (trained on cuts) handles the rest.
        """
        return self.change > threshold


def reduced_grey(frame: np.ndarray) -> np.ndarray:
    """A frame (H, W, 3) uint8 or float in [0, 1], as float32 grey at about `_WORK_WIDTH` wide."""
    img = np.asarray(frame)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) * (1.0 / 255.0)
    grey = cv2.cvtColor(np.ascontiguousarray(img, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    factor = max(1, int(round(grey.shape[1] / _WORK_WIDTH)))
    if factor > 1:
        grey = cv2.resize(grey, (grey.shape[1] // factor, grey.shape[0] // factor), interpolation=cv2.INTER_AREA)
    return grey


def estimate(prev_grey: np.ndarray, grey: np.ndarray, full_width: int) -> Motion:
    """The translation from `prev_grey` to `grey` (both from `reduced_grey`), in full-frame pixels."""
    if prev_grey.shape != grey.shape or min(grey.shape) < 16:
        return Motion(response=0.0, change=10.0)
    window = cv2.createHanningWindow(grey.shape[::-1], cv2.CV_32F)
    (sx, sy), response = cv2.phaseCorrelate(prev_grey, grey, window)
    if not (np.isfinite(sx) and np.isfinite(sy)) or abs(sx) > grey.shape[1] / 4 or abs(sy) > grey.shape[0] / 4:
        # No usable peak (a flat frame) or a jump no camera makes between frames: judge it unmoved.
        sx, sy, response = 0.0, 0.0, 0.0
    # Phase correlation's sub-pixel peak is off by up to half a pixel: refine with a few robust
    # Gauss-Newton steps on the brightness constancy of the whole frame.
    for _ in range(_REFINE_STEPS):
        moved, inner = _moved(prev_grey, sx, sy)
        gy, gx = np.gradient(moved)
        diff = (grey - moved)[inner]
        gx, gy = gx[inner], gy[inner]
        # Rain, snow and moving objects are outliers: down-weight large residuals.
        robust = 1.0 / (1.0 + (diff * (1.0 / _ROBUST_SCALE)) ** 2)
        a = np.array([[np.sum(robust * gx * gx), np.sum(robust * gx * gy)],
                      [np.sum(robust * gx * gy), np.sum(robust * gy * gy)]], np.float64)
        b = -np.array([np.sum(robust * gx * diff), np.sum(robust * gy * diff)], np.float64)
        if np.linalg.det(a) <= 1e-9 * max(float(np.trace(a)) ** 2, 1e-12):
            break
        step = np.linalg.solve(a, b)
        if not np.all(np.isfinite(step)):
            break
        step = np.clip(step, -1.0, 1.0)
        sx, sy = sx + float(step[0]), sy + float(step[1])
        if abs(step[0]) + abs(step[1]) < 0.01:
            break
    moved, inner = _moved(prev_grey, sx, sy)
    if moved[inner].size == 0:
        return Motion(response=0.0, change=10.0)
    a, b = moved[inner], grey[inner]
    # Relative to the frames' own contrast, so dim and flat scenes are judged like busy ones.
    contrast = 0.5 * (np.abs(a - a.mean()).mean() + np.abs(b - b.mean()).mean())
    change = float(np.abs(a - b).mean() / (contrast + _MIN_CONTRAST))
    scale = full_width / grey.shape[1]
    return Motion(float(sx * scale), float(sy * scale), float(response), change)


def _moved(grey: np.ndarray, sx: float, sy: float) -> tuple[np.ndarray, tuple[slice, slice]]:
    """`grey` translated by (sx, sy), and the region that came from inside the frame."""
    m = np.float32([[1, 0, sx], [0, 1, sy]])
    moved = cv2.warpAffine(grey, m, grey.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    my, mx = int(abs(sy)) + 2, int(abs(sx)) + 2
    return moved, (slice(my, max(my, grey.shape[0] - my)), slice(mx, max(mx, grey.shape[1] - mx)))


def warp_state(bg: torch.Tensor, weight: torch.Tensor, dx: torch.Tensor | float, dy: torch.Tensor | float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a video student's state with the scene: content at p goes to p + (dx, dy).

    Pixels that come into view have no history (weight 0). `dx` and `dy` are floats or (N,) tensors.
    """
    n, _, h, w = bg.shape
    dx_t = torch.as_tensor(dx, dtype=bg.dtype, device=bg.device).reshape(-1).expand(n)
    dy_t = torch.as_tensor(dy, dtype=bg.dtype, device=bg.device).reshape(-1).expand(n)
    if not bool(torch.any(dx_t != 0) or torch.any(dy_t != 0)):
        return bg, weight
    theta = torch.zeros(n, 2, 3, dtype=bg.dtype, device=bg.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    # affine_grid works in [-1, 1] coordinates: a shift of d pixels is 2 d / size.
    theta[:, 0, 2] = -2.0 * dx_t / w
    theta[:, 1, 2] = -2.0 * dy_t / h
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    new_bg = F.grid_sample(bg, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp(0.0, 1.0)
    new_weight = F.grid_sample(weight, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return new_bg, new_weight
