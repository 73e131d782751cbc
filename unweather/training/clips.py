"""Temporally coherent synthetic weather video, and the flicker measure it serves.

Rain streaks and snowflakes are particles that fall with a velocity (plus wind, and a sideways
sway for snow) from frame to frame; haze is attached to the scene and stays put. The camera
either stands still or pans slowly over the photo, so a model's temporal flicker can be compared
with the clean clip's own.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import cv2
import numpy as np

from unweather.errors import UnweatherError
from unweather.training import synth


def _to_float(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3:
        raise UnweatherError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.asarray(image, np.float32)


def _scene(image: np.ndarray, frames: int, pan: bool, size: tuple[int, int] | None,
           pan_speed: float) -> tuple[np.ndarray, list[np.ndarray], tuple[int, int]]:
    """Scale the photo for the clip; return it, one 2x3 crop transform per frame and (h, w)."""
    src_h, src_w = image.shape[:2]
    if size is None:
        h, w = (src_h, src_w) if not pan else (src_h, int(src_w * 0.75) // 2 * 2)
    else:
        h, w = size
    travel = pan_speed * w * (frames - 1) if pan else 0.0
    scale = max(h / src_h, (w + travel + (2 if pan else 0)) / src_w)
    if abs(scale - 1.0) > 1e-6:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        image = cv2.resize(image, (round(src_w * scale), round(src_h * scale)), interpolation=interp)
        image = np.clip(image, 0.0, 1.0)
    base_h, base_w = image.shape[:2]
    if base_h < h or base_w < w + travel:
        raise UnweatherError(f"photo of {src_w}x{src_h} is too small for {w}x{h} frames")
    y0 = (base_h - h) // 2
    x0 = (base_w - w - travel) // 2
    transforms = [np.array([[1.0, 0.0, -(x0 + travel * t / max(frames - 1, 1))], [0.0, 1.0, -y0]])
                  for t in range(frames)]
    return image, transforms, (h, w)


def _crop(image: np.ndarray, m: np.ndarray, h: int, w: int) -> np.ndarray:
    if float(m[0, 2]).is_integer() and float(m[1, 2]).is_integer():
        x, y = int(-m[0, 2]), int(-m[1, 2])
        return np.ascontiguousarray(image[y:y + h, x:x + w])
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def weather_clip(image: np.ndarray, weather: str, frames: int, rng: np.random.Generator, pan: bool = False,
                 size: tuple[int, int] | None = None, params: object | None = None, wind: float = 0.0,
                 pan_speed: float = 0.002) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Make a clip of a photo under moving weather.

    Args:
        image: the photo, HxWx3 RGB, float32 in [0, 1] or uint8.
        weather: "rain", "snow" or "haze".
        frames: number of frames.
        rng: the random generator.
        pan: pan the camera slowly from left to right over the photo.
        size: (height, width) of the frames; the photo's size (three quarters of its width when
            panning) when None. The photo is scaled to cover it.
        params: a `RainParams`, `SnowParams` or `HazeParams`; drawn at random when None.
        wind: extra sideways drift of rain and snow per frame, as a fraction of their fall speed.
        pan_speed: camera travel per frame as a fraction of the frame width.

    Returns:
        (clean frames, degraded frames), each a list of float32 HxWx3 RGB arrays in [0, 1].
    """
    if weather not in synth.WEATHERS:
        raise UnweatherError(f"unknown weather {weather!r}; choose from {', '.join(synth.WEATHERS)}")
    if frames < 1:
        raise UnweatherError(f"a clip needs at least one frame, got {frames}")
    image = _to_float(image)
    base, transforms, (h, w) = _scene(image, frames, pan, size, pan_speed)
    p = params if params is not None else synth.random_params(weather, rng)
    clean = [_crop(base, m, h, w) for m in transforms]
    if weather == "haze":
        # haze belongs to the scene: render it once on the whole photo, then film it
        hazy = synth.add_haze(base, rng, p)
        return clean, [_crop(hazy, m, h, w) for m in transforms]
    if weather == "rain":
        # a streak is the drop's path while the shutter is open: wind tilts it as it moves it
        p = dataclasses.replace(p, angle=p.angle + math.degrees(math.atan(wind)))
        wind = 0.0
        field = synth.rain_field(h, w, p, rng)
        veil_amount, veil_color = p.veil, p.veil_color
    else:
        field = synth.snow_field(h, w, p, rng)
        veil_amount, veil_color = p.veil, p.veil_color
    degraded = []
    for frame in clean:
        veiled = frame * (1.0 - veil_amount) + veil_color * veil_amount if veil_amount > 0 else frame
        degraded.append(synth.composite(veiled, field.render(), p.brightness))
        field.step(wind)
    return clean, degraded


def flicker(frames: Sequence[np.ndarray] | np.ndarray) -> float:
    """Mean absolute difference between consecutive frames (same units as the frames).

    Args:
        frames: a sequence of equally shaped arrays (or torch tensors), or one array of shape (T, ...).

    Returns:
        The mean over all consecutive pairs and all elements; 0.0 for a perfectly still clip.
    """
    if len(frames) < 2:
        raise UnweatherError("flicker needs at least two frames")
    total = 0.0
    for a, b in itertools.pairwise(frames):
        a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
        b = b.detach().cpu().numpy() if hasattr(b, "detach") else np.asarray(b)
        total += float(np.mean(np.abs(b.astype(np.float64) - a.astype(np.float64))))
    return total / (len(frames) - 1)
