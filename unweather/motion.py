"""Global motion between consecutive frames, and the alignment of a video student's state to it.

Shared by training (clips) and the stream (live and recorded video), so both align the same way.
The estimate is a translation from phase correlation on a reduced grey frame: cheap (about a
millisecond at 640x360), robust to rain and snow (they are small, scattered and change every frame),
and enough for pans and shake; zooms and forward motion are left to the network, which lowers its
trust in the history where the aligned history disagrees with the frame.
"""

from __future__ import annotations

import math
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


class PendingMotion:
    """Sums the motion between frames until it is worth moving a state: a quarter pixel or more.

    A still camera's estimate is a few hundredths of a pixel of noise: resampling the state for it every
    frame costs time and softens it. Used alike by the stream and by training clips.
    """

    min_shift = 0.25

    def __init__(self) -> None:
        self.dx = 0.0
        self.dy = 0.0

    def add(self, dx: float, dy: float) -> tuple[float, float]:
        """Add one frame's motion; return the move to apply now ((0, 0) while it is below the threshold)."""
        self.dx, self.dy = self.dx + dx, self.dy + dy
        if max(abs(self.dx), abs(self.dy)) < self.min_shift:
            return 0.0, 0.0
        move = (self.dx, self.dy)
        self.dx = self.dy = 0.0
        return move


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

    The state is resampled bicubically (the border repeated), the weight bilinearly; pixels that come
    into view have no history (weight 0). `dx` and `dy` are floats or (N,) tensors. A translation
    gives every pixel the same interpolation weights, so each resampling is one depthwise convolution
    of a padded window: the values of `grid_sample` (bicubic with A = -0.75), 3x faster on a CPU.
    """
    n = bg.shape[0]
    dx_t = torch.as_tensor(dx, dtype=torch.float64).reshape(-1).expand(n)
    dy_t = torch.as_tensor(dy, dtype=torch.float64).reshape(-1).expand(n)
    if not bool(torch.any(dx_t != 0) or torch.any(dy_t != 0)):
        return bg, weight
    if n > 1 and bool(torch.any(dx_t != dx_t[0]) or torch.any(dy_t != dy_t[0])):
        moved = [warp_state(bg[i:i + 1], weight[i:i + 1], float(dx_t[i]), float(dy_t[i])) for i in range(n)]
        return torch.cat([m[0] for m in moved]), torch.cat([m[1] for m in moved])
    sx, sy = float(dx_t[0]), float(dy_t[0])
    new_bg = _translate(bg, sx, sy, cubic=True).clamp_(0.0, 1.0)
    return new_bg, _translate(weight, sx, sy, cubic=False)


def _taps(shift: float, cubic: bool) -> tuple[int, list[float]]:
    """The first tap's offset and the tap weights for out[i] = x(i - shift) along one axis.

    Cubic: Keys' cubic convolution with A = -0.75 (as torch's bicubic), 4 taps; else linear, 2 taps.
    """
    base = math.floor(-shift)
    t = -shift - base
    if not cubic:
        return base, [1.0 - t, t]
    a = -0.75

    def near(d: float) -> float:
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: float) -> float:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return base - 1, [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _translate(x: torch.Tensor, sx: float, sy: float, cubic: bool) -> torch.Tensor:
    """`x` (NCHW) moved by (sx, sy): cubic with the border repeated, or linear with zeros outside."""
    n, c, h, w = x.shape
    first_x, wx = _taps(sx, cubic)
    first_y, wy = _taps(sy, cubic)
    k = len(wx)
    # The taps of out[i] read first + i .. first + i + k - 1: pad so that window lies inside (a shift
    # beyond the frame reads only padding).
    left, right = min(w + k, max(0, -first_x)), min(w + k, max(0, first_x + k - 1))
    top, bottom = min(h + k, max(0, -first_y)), min(h + k, max(0, first_y + k - 1))
    padded = F.pad(x, (left, right, top, bottom), mode="replicate" if cubic else "constant")
    x0 = min(max(left + first_x, 0), padded.shape[3] - (w + k - 1))
    y0 = min(max(top + first_y, 0), padded.shape[2] - (h + k - 1))
    window = padded[:, :, y0:y0 + h + k - 1, x0:x0 + w + k - 1]
    if x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad:
        return _filter_planes(window, wx, wy, h, w)
    kernel = torch.outer(torch.tensor(wy, dtype=x.dtype), torch.tensor(wx, dtype=x.dtype)).to(x.device)
    return F.conv2d(window, kernel.expand(c, 1, k, k).contiguous(), groups=c)


def _filter_planes(window: torch.Tensor, wx: list[float], wy: list[float], h: int, w: int) -> torch.Tensor:
    """The depthwise convolution of `_translate` on a CPU by OpenCV, plane by plane and separably: the same
    values (to 1e-6), about 4x faster at 640x360 (a stream's state, every moving frame). Training keeps
    the convolution, which has gradients."""
    n, c = window.shape[:2]
    padded = window.reshape(n * c, *window.shape[2:]).numpy()
    out = np.empty((n * c, h, w), np.float32)
    kx, ky = np.float32(wx), np.float32(wy)
    for plane, moved in zip(padded, out):
        # anchor (0, 0): out[i] = sum_k kernel[k] plane[i + k]; only the first h x w outputs read no border.
        moved[...] = cv2.sepFilter2D(plane, -1, kx, ky, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)[:h, :w]
    return torch.from_numpy(out).reshape(n, c, h, w)
