"""Weather across its range, in independent renderer styles, with the camera on top.

`unweather.training.synth` draws weather one way (falling particles drawn as anti-aliased lines and
discs, haze from a layout depth map). A network trained on one renderer can learn its signature instead
of the weather, so this module adds two more styles, written independently of it and of each other
(the noise style smears along the fall with synth's motion-blur kernel, `synth.line_kernel`):

- `particles`: synth's renderer, with its parameter ranges narrowed per intensity, plus drops on the lens.
- `noise`: the photo-editing recipe: sparse noise, blurred and smeared along the fall (rain) or grown
  into soft blobs (snow), laid on with a screen or lighten blend; haze from fractal noise over a tilted
  height gradient, with airlight colours of mist, dust and smog.
- `optics`: streaks that refract the scene behind them (a brightened, blurred copy of it, not a grey
  level), irregular flakes and out-of-focus bokeh discs near the lens, and ground fog that is densest
  low in the frame with airlight brightest towards a sun. Kept for evaluation only (`HELD_OUT_STYLE`):
  no network is trained on it, so scores on it measure weather the network has not seen drawn that way.

Every weather comes at three intensities. `intensity_of` names a rendering's intensity by its input
PSNR (light at 27 dB or more), and `render_band` draws until a rendering falls in the band asked for.
`camera` adds what a camera does to every frame, weather or not (low light, sensor noise, JPEG), to the
ground truth and the input alike: the network must remove weather, not the camera's own look.

Images are float32 HxWx3 RGB in [0, 1]; randomness comes from an explicit `np.random.Generator`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from unweather.errors import UnweatherError
from unweather.training import synth

STYLES = ("particles", "noise", "optics")
TRAIN_STYLES = ("particles", "noise")
HELD_OUT_STYLE = "optics"
INTENSITIES = ("light", "medium", "heavy")
# Input PSNR bands (dB) that name an intensity: light is at least 27 dB, heavy below 18.
BANDS = {"light": (27.0, math.inf), "medium": (18.0, 27.0), "heavy": (-math.inf, 18.0)}
# How strong each intensity is drawn, as a range of a 0..1 "amount" that every style maps to its own knobs.
AMOUNT = {"light": (0.0, 0.25), "medium": (0.3, 0.65), "heavy": (0.7, 1.0)}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two float images in [0, 1] on 8-bit levels, as they will be stored (100 when equal)."""
    from unweather.training.metrics import psnr as metric

    return min(float(metric(synth.to_uint8(a), synth.to_uint8(b), data_range=255.0)), 100.0)


def intensity_of(degraded: np.ndarray, clean: np.ndarray) -> str:
    """The intensity a rendering has, named by its input PSNR against the clean image."""
    value = psnr(degraded, clean)
    return next(name for name, (lo, hi) in BANDS.items() if lo <= value < hi)


def _lerp(lo: float, hi: float, t: float) -> float:
    return lo + (hi - lo) * t


def _amount(rng: np.random.Generator, intensity: str | None) -> float:
    lo, hi = AMOUNT[intensity] if intensity else (0.0, 1.0)
    return float(rng.uniform(lo, hi))


def _screen(img: np.ndarray, layer: np.ndarray) -> np.ndarray:
    return 1.0 - (1.0 - img) * (1.0 - layer)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with blobs about 1/cells of the short side."""
    short = min(h, w)
    gh, gw = max(2, round(cells * h / short)), max(2, round(cells * w / short))
    noise = cv2.resize(rng.standard_normal((gh, gw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return (noise - noise.mean()) / (noise.std() + 1e-6)


def _fractal(rng: np.random.Generator, h: int, w: int, octaves: int = 4) -> np.ndarray:
    total = np.zeros((h, w), np.float32)
    for k in range(octaves):
        total += _smooth_noise(rng, h, w, 2.0 * 2**k) * 0.55**k
    return total / (total.std() + 1e-6)


# --------------------------------------------------------------------------------------------
# Style "particles": synth's renderer, per intensity, plus drops on the lens


def _scaled(ranges: object, amount: float, scale: dict[str, tuple[float, float]]) -> object:
    """Narrow `ranges` to the sub-range at `amount` for the fields in `scale` (as fractions of the range)."""
    values = {}
    for f in dataclasses.fields(ranges):
        lo, hi = getattr(ranges, f.name)
        if f.name in scale:
            a, b = scale[f.name]
            t = _lerp(a, b, amount)
            centre = _lerp(lo, hi, t)
            width = 0.15 * (hi - lo)
            lo, hi = (type(lo)(max(lo, centre - width)), type(hi)(min(hi, centre + width))) \
                if not isinstance(lo, int) else (lo, hi)
        values[f.name] = (lo, hi)
    return type(ranges)(**values)


def lens_drops(img: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Water drops on a lens or windscreen: out-of-focus blobs that show a blurred, shifted scene."""
    h, w = img.shape[:2]
    short = min(h, w)
    n = int(rng.poisson(2 + 25 * amount * (h * w) / (short * short)))
    if n == 0:
        return img
    blurred = cv2.GaussianBlur(img, (0, 0), max(1.0, short * 0.03))
    mask = np.zeros((h, w), np.float32)
    for _ in range(n):
        r = short * rng.uniform(0.015, 0.06)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        axes = (max(1, round(r)), max(1, round(r * rng.uniform(0.6, 1.0))))
        cv2.ellipse(mask, (round(cx), round(cy)), axes, float(rng.uniform(0, 180)), 0, 360,
                    float(rng.uniform(0.6, 1.0)), -1, cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.8, short * 0.006))[..., None]
    # A drop is a lens: it shows the scene from elsewhere (shifted), a little brighter.
    shift = np.float32([[1, 0, rng.uniform(-0.05, 0.05) * w], [0, 1, rng.uniform(0.02, 0.08) * h]])
    seen = cv2.warpAffine(blurred, shift, (w, h), borderMode=cv2.BORDER_REFLECT)
    return np.clip(img * (1 - mask) + np.clip(seen * 1.08 + 0.03, 0, 1) * mask, 0, 1).astype(np.float32)


def _particles(img: np.ndarray, weather: str, rng: np.random.Generator, amount: float) -> np.ndarray:
    if weather == "rain":
        ranges = _scaled(synth.RainRanges(), amount, {"density": (0.0, 1.0), "opacity": (0.0, 0.9),
                                                      "width": (0.0, 0.8), "length": (0.2, 0.9)})
        params = ranges.sample(rng)
        params = dataclasses.replace(params, opacity=params.opacity * _lerp(0.35, 1.0, amount),
                                     veil=params.veil * amount, layers=1 if amount < 0.25 else params.layers)
        out = synth.add_rain(img, rng, params)
        return lens_drops(out, rng, amount) if rng.random() < 0.15 * amount else out
    if weather == "snow":
        ranges = _scaled(synth.SnowRanges(), amount, {"density": (0.0, 1.0), "size": (0.1, 0.9),
                                                      "veil": (0.0, 1.0)})
        params = ranges.sample(rng)
        params = dataclasses.replace(params, opacity=params.opacity * _lerp(0.45, 1.0, amount),
                                     layers=2 if amount < 0.25 else params.layers)
        return synth.add_snow(img, rng, params)
    ranges = _scaled(synth.HazeRanges(), amount, {"beta": (0.0, 1.0)})
    params = ranges.sample(rng)
    beta = _lerp(0.04, 0.3, amount / 0.25) if amount < 0.25 else params.beta * _lerp(0.8, 1.6, amount)
    tint = float(rng.uniform(-0.12, 0.10))
    return synth.add_haze(img, rng, dataclasses.replace(params, beta=beta, tint=tint))


# --------------------------------------------------------------------------------------------
# Style "noise": sparse noise smeared into streaks and blobs, fractal haze


def _noise_rain(img: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    h, w = img.shape[:2]
    short = min(h, w)
    out = img
    angle = rng.uniform(-20, 20)
    for layer in range(1 if amount < 0.3 else int(rng.integers(2, 4))):
        depth = 0.6**layer
        density = _lerp(0.002, 0.03, amount) * (1 + layer)
        seeds = (rng.random((h, w)) < density).astype(np.float32) * rng.random((h, w)).astype(np.float32)
        seeds = cv2.GaussianBlur(seeds, (0, 0), _lerp(0.5, 1.2, rng.random()) * depth + 0.3)
        length = short * rng.uniform(0.05, 0.2) * depth + 3
        streaks = cv2.filter2D(seeds, -1, synth.line_kernel(length, angle), borderType=cv2.BORDER_REFLECT)
        peak = np.percentile(streaks, 99.9) + 1e-6
        streaks = np.clip(streaks / peak, 0, 1) ** rng.uniform(0.8, 1.5)
        strength = _lerp(0.25, 0.8, amount) * depth * rng.uniform(0.7, 1.0)
        tone = np.array([rng.uniform(0.85, 1.0)] * 3, np.float32)
        out = _screen(out, streaks[..., None] * strength * tone)
    if amount > 0.5:
        mist = (amount - 0.5) * rng.uniform(0.1, 0.5)
        out = out * (1 - mist) + rng.uniform(0.6, 0.85) * mist
    return np.clip(out, 0, 1).astype(np.float32)


def _noise_snow(img: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    h, w = img.shape[:2]
    short = min(h, w)
    out = img
    angle = rng.uniform(-35, 35)
    for layer in range(2 if amount < 0.3 else 3):
        size = short * rng.uniform(0.004, 0.02) * (0.5**layer) * _lerp(0.6, 1.4, amount) + 0.4
        density = _lerp(0.0004, 0.006, amount) * (1 + layer) / max(size, 1.0)
        seeds = (rng.random((h, w)) < density).astype(np.float32)
        flakes = cv2.GaussianBlur(seeds, (0, 0), size)
        flakes = np.clip(flakes / (flakes.max() + 1e-6) * rng.uniform(1.5, 3.0), 0, 1)
        smear = rng.uniform(0, 0.04) * short * (0.6**layer)
        if smear >= 2:
            flakes = cv2.filter2D(flakes, -1, synth.line_kernel(smear, angle), borderType=cv2.BORDER_REFLECT)
            flakes = np.clip(flakes * min(smear / 2, 3), 0, 1)
        flakes = flakes * _lerp(0.5, 1.0, amount) * (0.85**layer)
        out = np.maximum(out, flakes[..., None] * rng.uniform(0.85, 1.0)) * 0.5 + \
            _screen(out, flakes[..., None] * 0.9) * 0.5
    return np.clip(out, 0, 1).astype(np.float32)


# Airlight colours (RGB): white mist, blue-grey, warm dust, brown smog, evening orange.
_AIRLIGHTS = np.array([[0.92, 0.92, 0.92], [0.78, 0.83, 0.9], [0.9, 0.85, 0.74], [0.72, 0.66, 0.55],
                       [0.95, 0.78, 0.6]], np.float32)


def _noise_haze(img: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tilt = rng.uniform(-0.3, 0.3)
    height = 1.0 - (yy / h + tilt * (xx / w - 0.5))  # top of the frame is far
    density = np.clip(height * rng.uniform(0.5, 1.0) + 0.35 * rng.uniform(0.2, 1.0) * _fractal(rng, h, w), 0.05, None)
    beta = _lerp(0.05, 2.2, amount**1.3)
    t = np.exp(-beta * density / max(float(density.max()), 1e-6))[..., None]
    base = _AIRLIGHTS[rng.integers(len(_AIRLIGHTS))]
    airlight = np.clip(base * rng.uniform(0.8, 1.05), 0, 1)
    return np.clip(img * t + airlight * (1 - t), 0, 1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Style "optics" (held out): refracting streaks, bokeh flakes, ground fog with a sun


def _optics_rain(img: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    h, w = img.shape[:2]
    short = min(h, w)
    a = math.radians(rng.uniform(-15, 15))
    count = int(_lerp(20, 1500, amount) * h * w / 1e5)
    mask = np.zeros((h, w), np.float32)
    for _ in range(count):
        x, y = rng.uniform(-0.1 * w, 1.1 * w), rng.uniform(-0.1 * h, 1.1 * h)
        length = short * rng.uniform(0.03, 0.15)
        x1, y1 = x + length * math.sin(a), y + length * math.cos(a)
        cv2.line(mask, (round(x * 16), round(y * 16)), (round(x1 * 16), round(y1 * 16)),
                 float(rng.uniform(0.4, 1.0)), 1, cv2.LINE_AA, 4)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.7)
    # A drop refracts light from a wide cone: it shows a blurred, brighter scene, not a fixed grey.
    seen = np.clip(cv2.GaussianBlur(img, (0, 0), short * 0.02) * 1.25 + 0.12, 0, 1)
    k = (mask * _lerp(0.3, 0.85, amount))[..., None]
    out = img * (1 - k) + seen * k
    # Near drops, out of focus: wide, faint bands.
    near = np.zeros((h, w), np.float32)
    for _ in range(int(count * 0.03) + 1):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        length = short * rng.uniform(0.2, 0.4)
        cv2.line(near, (round(x), round(y)), (round(x + length * math.sin(a)), round(y + length * math.cos(a))),
                 1.0, max(2, round(short * 0.012)), cv2.LINE_AA)
    near = cv2.GaussianBlur(near, (0, 0), short * 0.01)[..., None] * _lerp(0.05, 0.25, amount)
    out = _screen(out, near * 0.9)
    if amount > 0.45:
        scatter = (amount - 0.45) * 0.9 * np.clip(1.0 - np.arange(h, dtype=np.float32) / h * 0.7, 0, 1)
        out = out * (1 - scatter[:, None, None]) + 0.75 * scatter[:, None, None]
    return np.clip(out, 0, 1).astype(np.float32)


def _optics_snow(img: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    h, w = img.shape[:2]
    short = min(h, w)
    count = int(_lerp(30, 700, amount) * h * w / 1e5)
    layer = np.zeros((h, w), np.float32)
    for _ in range(count):
        r = short * rng.uniform(0.002, 0.012)
        centre = (round(rng.uniform(0, w) * 16), round(rng.uniform(0, h) * 16))
        axes = (max(1, round(r * 16)), max(1, round(r * rng.uniform(0.5, 1.0) * 16)))
        cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(0.6, 1.0)), -1,
                    cv2.LINE_AA, 4)
    layer = cv2.GaussianBlur(layer, (0, 0), 0.6)
    bokeh = np.zeros((h, w), np.float32)
    for _ in range(int(count * 0.02) + int(amount > 0.2)):
        r = short * rng.uniform(0.02, 0.06)
        cv2.circle(bokeh, (round(rng.uniform(0, w)), round(rng.uniform(0, h))), max(1, round(r)), 1.0, -1, cv2.LINE_AA)
    bokeh = cv2.GaussianBlur(bokeh, (0, 0), short * 0.008) * _lerp(0.15, 0.45, amount)
    tone = rng.uniform(0.88, 1.0)
    k = np.clip(layer * _lerp(0.55, 1.0, amount), 0, 1)[..., None]
    out = img * (1 - k) + tone * k
    out = _screen(out, bokeh[..., None] * tone)
    if amount > 0.5:
        out = out * (1 - (amount - 0.5) * 0.3) + 0.85 * (amount - 0.5) * 0.3
    return np.clip(out, 0, 1).astype(np.float32)


def _optics_haze(img: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / np.float32(max(h, w))
    horizon = rng.uniform(0.2, 0.6) * h / max(h, w)
    # Distance grows towards the horizon; ground fog is densest low, thinning with height above it.
    distance = np.clip(1.0 - np.abs(yy - horizon) * rng.uniform(0.8, 1.6), 0.1, 1.0)
    ground = np.exp(-np.clip(horizon - yy, 0, None) * rng.uniform(1.0, 4.0))
    lum = cv2.GaussianBlur(img.mean(axis=2), (0, 0), max(h, w) / 40)
    depth = distance * ground * (0.85 + 0.3 * (lum - lum.mean()))
    beta = _lerp(0.06, 2.4, amount**1.2)
    t = np.exp(-beta * depth / max(float(depth.max()), 1e-6))[..., None]
    sun = np.array([rng.uniform(0, w), rng.uniform(0, horizon * max(h, w))], np.float32) / max(h, w)
    glow = np.exp(-((xx - sun[0]) ** 2 + (yy - sun[1]) ** 2) / rng.uniform(0.05, 0.3))[..., None]
    colour = np.array([rng.uniform(0.8, 0.95), rng.uniform(0.78, 0.93), rng.uniform(0.72, 0.95)], np.float32)
    airlight = np.clip(colour * (0.9 + 0.15 * glow), 0, 1)
    return np.clip(img * t + airlight * (1 - t), 0, 1).astype(np.float32)


_STYLE: dict[str, dict[str, Callable[[np.ndarray, np.random.Generator, float], np.ndarray]]] = {
    "noise": {"rain": _noise_rain, "snow": _noise_snow, "haze": _noise_haze},
    "optics": {"rain": _optics_rain, "snow": _optics_snow, "haze": _optics_haze},
}


def render(img: np.ndarray, weather: str, rng: np.random.Generator, style: str = "particles",
           intensity: str | None = None) -> np.ndarray:
    """Lay one weather over a clean image.

    Args:
        img: float32 HxWx3 RGB in [0, 1].
        weather: "rain", "snow" or "haze".
        rng: the random generator.
        style: one of `STYLES`.
        intensity: "light", "medium" or "heavy"; None draws from the whole range.

    Returns:
        The degraded image, float32 HxWx3 in [0, 1].
    """
    if weather not in synth.WEATHERS:
        raise UnweatherError(f"unknown weather {weather!r}; choose from {', '.join(synth.WEATHERS)}")
    if style not in STYLES:
        raise UnweatherError(f"unknown renderer style {style!r}; choose from {', '.join(STYLES)}")
    if intensity is not None and intensity not in INTENSITIES:
        raise UnweatherError(f"unknown intensity {intensity!r}; choose from {', '.join(INTENSITIES)}")
    return _draw(np.asarray(img, np.float32), weather, rng, style, _amount(rng, intensity))


def _draw(img: np.ndarray, weather: str, rng: np.random.Generator, style: str, amount: float) -> np.ndarray:
    if style == "particles":
        return _particles(img, weather, rng, amount)
    return _STYLE[style][weather](img, rng, amount)


def render_band(img: np.ndarray, weather: str, rng: np.random.Generator, style: str, intensity: str,
                tries: int = 12) -> tuple[np.ndarray, float]:
    """Render until the input PSNR falls in `intensity`'s band; return (image, PSNR).

    The amount is nudged towards the band after each miss; after `tries` the closest rendering is kept.
    """
    lo, hi = BANDS[intensity]
    a_lo, a_hi = AMOUNT[intensity]
    best, best_gap = None, math.inf
    for _ in range(tries):
        amount = float(rng.uniform(a_lo, a_hi))
        out = _draw(img, weather, rng, style, amount)
        value = psnr(out, img)
        gap = 0.0 if lo <= value < hi else min(abs(value - lo), abs(value - hi))
        if gap < best_gap:
            best, best_gap, best_value = out, gap, value
        if gap == 0.0:
            break
        # Too strong (PSNR below the band): draw lighter next time; too weak: heavier.
        if value < lo:
            a_hi = max(a_lo + 0.02, amount)
            a_lo = max(0.0, a_lo - 0.1)
        else:
            a_lo = min(a_hi - 0.02, amount)
            a_hi = min(1.0, a_hi + 0.1)
    return best, best_value


# --------------------------------------------------------------------------------------------
# The camera


@dataclass(frozen=True)
class CameraConfig:
    """How often and how strongly `camera` adds what cameras do.

    Attributes:
        low_light: probability of an underexposed frame (gamma and exposure, before the weather).
        night: probability of a night scene lit by windows and lamps (`night_lights`, before the weather).
        lights: probability of lit windows added to the scene at its own exposure (`lit_scene`, before the
            weather): a dusk city, a lit façade.
        noise: probability of sensor noise (the same noise on ground truth and input).
        noise_sigma: range of the noise's standard deviation in 8-bit levels.
        jpeg: probability of JPEG compression (ground truth and input alike).
        jpeg_quality: range of the JPEG quality.
    """

    low_light: float = 0.12
    night: float = 0.0
    lights: float = 0.0
    noise: float = 0.3
    noise_sigma: tuple[float, float] = (0.5, 4.0)
    jpeg: float = 0.3
    jpeg_quality: tuple[int, int] = (45, 95)


def low_light(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An underexposed version of a scene (night, dusk, a dark interior)."""
    return (np.clip(img, 0, 1) ** rng.uniform(1.0, 1.8) * rng.uniform(0.15, 0.5)).astype(np.float32)


def _lights(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lit windows (grids of small rectangles on façades) and lamps (bright discs with a glow), (h, w, 3) each."""
    lights = np.zeros((h, w, 3), np.float32)
    tones = np.float32([[1.0, 0.85, 0.6], [0.75, 0.9, 1.0], [0.7, 1.0, 0.85], [1.0, 1.0, 0.95]])
    for _ in range(int(rng.integers(1, 5))):
        bw, bh = int(rng.uniform(0.1, 0.5) * w), int(rng.uniform(0.2, 0.9) * h)
        x0, y0 = int(rng.integers(0, max(1, w - bw))), int(rng.integers(0, max(1, h - bh)))
        win_w, win_h = int(rng.integers(1, 7)), int(rng.integers(1, 9))
        gap_x, gap_y = win_w + int(rng.integers(1, 8)), win_h + int(rng.integers(1, 8))
        lit, tone = rng.uniform(0.2, 0.9), tones[int(rng.integers(len(tones)))]
        for y in range(y0, y0 + bh - win_h, gap_y):
            for x in range(x0, x0 + bw - win_w, gap_x):
                if rng.random() < lit:
                    lights[y:y + win_h, x:x + win_w] = tone * rng.uniform(0.5, 1.0)
    lamps = np.zeros((h, w, 3), np.float32)
    for _ in range(int(rng.integers(0, 12))):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        tone = tones[int(rng.integers(len(tones)))] * rng.uniform(0.7, 1.0)
        cv2.circle(lamps, centre, int(rng.integers(1, 5)), tuple(float(c) for c in tone), -1, cv2.LINE_AA)
    glow = cv2.GaussianBlur(lamps, (0, 0), rng.uniform(3.0, 10.0)) * rng.uniform(0.5, 2.0)
    return lights, lamps + glow


def night_lights(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The scene at night with lit windows and lamps: many small, bright, sharp lights that are not weather.

    Façades get grids of windows lit at random in warm or cool tones; lamps are bright discs with a glow.
    Without such scenes a network takes a night city's lights for snow or rain and darkens them.
    """
    dark = (np.clip(img, 0, 1) ** rng.uniform(1.2, 2.0) * rng.uniform(0.08, 0.35)).astype(np.float32)
    lights, lamps = _lights(*img.shape[:2], rng)
    return np.clip(np.maximum(dark, lights) + lamps, 0, 1).astype(np.float32)


def lit_scene(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The scene at its own exposure with grids of lit windows added: small bright lights that are not weather.

    A real dusk or night city is often not dark overall (lit glass façades, a bright sky); a network that
    saw lights only on dark scenes still took such a frame's windows for snow. Lamps are left out here:
    a lone glowing disc on a lit scene is what a snowflake looks like.
    """
    lights, _ = _lights(*img.shape[:2], rng)
    return np.clip(np.maximum(np.clip(img, 0, 1), lights), 0, 1).astype(np.float32)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", synth.to_uint8(img)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise UnweatherError("JPEG encoding failed")
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


def camera(clean: np.ndarray, degraded: np.ndarray, rng: np.random.Generator,
           cfg: CameraConfig = CameraConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Sensor noise and compression on a (clean, degraded) pair, alike on both.

    The noise is one draw added to both, and both are compressed at the same quality, so the target
    keeps the camera's look: a network trained on such pairs removes weather and leaves noise and
    compression as they are (a clean noisy frame must come out as it went in).
    """
    if rng.random() < cfg.noise:
        sigma = rng.uniform(*cfg.noise_sigma) / 255.0
        # Brighter pixels are noisier (shot noise) on top of a floor (read noise).
        scale = np.sqrt(0.3 + 0.7 * np.clip(clean, 0, 1))
        noise = (rng.standard_normal(clean.shape).astype(np.float32) * sigma * scale).astype(np.float32)
        clean, degraded = np.clip(clean + noise, 0, 1), np.clip(degraded + noise, 0, 1)
    if rng.random() < cfg.jpeg:
        quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        clean, degraded = _jpeg(clean, quality), _jpeg(degraded, quality)
    return clean.astype(np.float32), degraded.astype(np.float32)


def training_sample(clean: np.ndarray, weather: str | None, rng: np.random.Generator,
                    styles: Sequence[str] = TRAIN_STYLES, cam: CameraConfig | None = CameraConfig()
                    ) -> tuple[np.ndarray, np.ndarray]:
    """One training pair from a clean crop: (target, input), float32 in [0, 1].

    A clean sample (`weather` None) goes through the camera too, so clean frames cover night, noise and
    compression like the weather ones. Intensities are drawn over the whole range, light included.
    """
    if cam is not None and cam.night > 0 and rng.random() < cam.night:
        clean = night_lights(clean, rng)
    elif cam is not None and cam.lights > 0 and rng.random() < cam.lights:
        clean = lit_scene(clean, rng)
    elif cam is not None and rng.random() < cam.low_light:
        clean = low_light(clean, rng)
    degraded = clean if weather is None else render(clean, weather, rng, str(rng.choice(list(styles))))
    if cam is not None:
        clean, degraded = camera(clean, degraded, rng, cam)
    return clean, degraded
