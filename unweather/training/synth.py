"""Synthetic rain, snow and haze on clean photos, and paired training data in the release's format.

Images are float32 HWC RGB arrays in [0, 1]; randomness always comes from an explicit
`np.random.Generator`, so every result is reproducible from its seed.

- Rain: one to three depth layers of anti-aliased streaks (density, angle, length, width and blur
  varied per layer); heavy rain adds a veil (rain scattering the light like fog).
- Snow: flakes of several sizes in depth layers, motion-blurred along their fall and defocused.
- Haze: the atmospheric scattering model I = J t + A (1 - t), t = exp(-beta d), with a depth map
  made of a vertical gradient (far above the horizon, near at the bottom), smooth noise and a
  brightness cue, and a slightly tinted airlight A.

The falling particles live in `ParticleField`, which `unweather.training.clips` moves from frame to
frame for temporally coherent weather video.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from unweather.errors import UnweatherError
from unweather.fileio import write_text_atomic
from unweather.media import IMAGE_SUFFIXES, read_rgb

log = logging.getLogger(__name__)

WEATHERS = ("rain", "snow", "haze")
_SHIFT = 4  # OpenCV drawing with 4 fractional bits: sub-pixel positions, smooth motion in clips
_ONE = 1 << _SHIFT


# --------------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class RainParams:
    """One rain rendering. Lengths are fractions of the image's short side; layer 0 is nearest.

    Attributes:
        density: streaks per 10,000 pixels in the nearest layer (farther layers hold more).
        angle: fall direction in degrees from vertical; positive leans to the right.
        length: length of the nearest streaks, as a fraction of the short side.
        width: thickness of the nearest streaks in pixels.
        blur: Gaussian sigma of the nearest layer in pixels.
        opacity: opacity of the nearest streaks.
        brightness: grey level of the streaks.
        layers: number of depth layers.
        veil: strength of the fog-like veil of heavy rain (0: none).
        veil_color: grey level of the veil.
    """

    density: float = 40.0
    angle: float = 10.0
    length: float = 0.12
    width: float = 1.0
    blur: float = 0.6
    opacity: float = 0.7
    brightness: float = 0.9
    layers: int = 2
    veil: float = 0.0
    veil_color: float = 0.8


@dataclass(frozen=True)
class RainRanges:
    """Uniform ranges `random_params` draws `RainParams` from; the veil grows with the density."""

    density: tuple[float, float] = (6.0, 60.0)
    angle: tuple[float, float] = (-25.0, 25.0)
    length: tuple[float, float] = (0.04, 0.25)
    width: tuple[float, float] = (1.0, 2.2)
    blur: tuple[float, float] = (0.3, 1.3)
    opacity: tuple[float, float] = (0.45, 0.9)
    brightness: tuple[float, float] = (0.75, 1.0)
    layers: tuple[int, int] = (1, 3)
    veil: tuple[float, float] = (0.0, 0.35)
    veil_color: tuple[float, float] = (0.65, 0.9)

    def sample(self, rng: np.random.Generator) -> RainParams:
        """Draw one `RainParams`; the veil is scaled by how heavy the drawn rain is."""
        values = _sample_fields(self, rng)
        lo, hi = self.density
        heaviness = (values["density"] - lo) / max(hi - lo, 1e-6)
        values["veil"] *= heaviness**2
        return RainParams(**values)


@dataclass(frozen=True)
class SnowParams:
    """One snow rendering. Sizes are fractions of the image's short side; layer 0 is nearest.

    Attributes:
        density: flakes per 10,000 pixels in the nearest layer (farther layers hold more).
        size: radius of the nearest flakes, as a fraction of the short side.
        angle: fall direction in degrees from vertical.
        motion: motion-blur length of the nearest flakes, as a fraction of the short side.
        blur: defocus sigma of the nearest layer in pixels.
        opacity: opacity of the nearest flakes.
        brightness: grey level of the flakes.
        layers: number of depth layers.
        veil: strength of the whitish veil of falling snow far away.
        veil_color: grey level of the veil.
    """

    density: float = 15.0
    size: float = 0.012
    angle: float = 10.0
    motion: float = 0.02
    blur: float = 0.8
    opacity: float = 0.9
    brightness: float = 0.95
    layers: int = 3
    veil: float = 0.1
    veil_color: float = 0.85


@dataclass(frozen=True)
class SnowRanges:
    """Uniform ranges `random_params` draws `SnowParams` from."""

    density: tuple[float, float] = (3.0, 30.0)
    size: tuple[float, float] = (0.006, 0.028)
    angle: tuple[float, float] = (-30.0, 30.0)
    motion: tuple[float, float] = (0.0, 0.06)
    blur: tuple[float, float] = (0.3, 1.8)
    opacity: tuple[float, float] = (0.7, 1.0)
    brightness: tuple[float, float] = (0.85, 1.0)
    layers: tuple[int, int] = (2, 3)
    veil: tuple[float, float] = (0.0, 0.25)
    veil_color: tuple[float, float] = (0.75, 0.95)

    def sample(self, rng: np.random.Generator) -> SnowParams:
        """Draw one `SnowParams`."""
        return SnowParams(**_sample_fields(self, rng))


@dataclass(frozen=True)
class HazeParams:
    """One haze rendering: I = J t + A (1 - t), t = exp(-beta d), depth d in [depth_min, 1].

    Attributes:
        beta: scattering coefficient in units of the farthest depth; the sky gets t = exp(-beta).
        airlight: grey level of the airlight A.
        tint: blue (negative) to warm (positive) shift of A's colour.
        horizon: height of the horizon as a fraction of the image height from the top.
        depth_min: depth of the image's bottom edge, the nearest point.
        noise: weight of the smooth noise in the depth map.
        noise_scale: size of the noise blobs as a fraction of the short side.
        luminance: weight of the brightness cue (bright regions such as sky are far).
    """

    beta: float = 1.5
    airlight: float = 0.85
    tint: float = 0.0
    horizon: float = 0.4
    depth_min: float = 0.2
    noise: float = 0.3
    noise_scale: float = 0.25
    luminance: float = 0.2


@dataclass(frozen=True)
class HazeRanges:
    """Uniform ranges `random_params` draws `HazeParams` from."""

    beta: tuple[float, float] = (0.3, 1.6)
    airlight: tuple[float, float] = (0.65, 0.95)
    tint: tuple[float, float] = (-0.06, 0.04)
    horizon: tuple[float, float] = (0.15, 0.65)
    depth_min: tuple[float, float] = (0.1, 0.5)
    noise: tuple[float, float] = (0.1, 0.5)
    noise_scale: tuple[float, float] = (0.1, 0.5)
    luminance: tuple[float, float] = (0.0, 0.4)

    def sample(self, rng: np.random.Generator) -> HazeParams:
        """Draw one `HazeParams`."""
        return HazeParams(**_sample_fields(self, rng))


_PARAMS: dict[str, tuple[type, type]] = {
    "rain": (RainParams, RainRanges),
    "snow": (SnowParams, SnowRanges),
    "haze": (HazeParams, HazeRanges),
}


def _sample_fields(ranges: Any, rng: np.random.Generator) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in fields(ranges):
        lo, hi = getattr(ranges, f.name)
        if isinstance(lo, int) and isinstance(hi, int):
            values[f.name] = int(rng.integers(lo, hi + 1))
        else:
            values[f.name] = float(rng.uniform(lo, hi))
    return values


def random_params(weather: str, rng: np.random.Generator, ranges: Any = None) -> Any:
    """Draw the parameters of one rendering of `weather` ("rain", "snow" or "haze").

    Args:
        weather: the weather type.
        rng: the random generator.
        ranges: a `RainRanges`, `SnowRanges` or `HazeRanges`; the defaults when None.

    Returns:
        A `RainParams`, `SnowParams` or `HazeParams`.
    """
    if weather not in _PARAMS:
        raise UnweatherError(f"unknown weather {weather!r}; choose from {', '.join(WEATHERS)}")
    return (ranges or _PARAMS[weather][1]()).sample(rng)


def _resolve(weather: str, rng: np.random.Generator, params: Any, overrides: dict[str, Any]) -> Any:
    cls = _PARAMS[weather][0]
    if params is None:
        params = random_params(weather, rng)
    elif not isinstance(params, cls):
        raise TypeError(f"{weather} takes {cls.__name__}, got {type(params).__name__}")
    try:
        return dataclasses.replace(params, **overrides)
    except TypeError as exc:
        raise TypeError(f"{cls.__name__}: {exc}") from None


def _check_image(img: np.ndarray) -> np.ndarray:
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {img.shape}")
    return np.asarray(img, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Falling particles (rain streaks, snowflakes)


@dataclass
class ParticleLayer:
    """One depth layer of falling particles, in pixel units of the frame.

    Attributes:
        kind: "streak" (a line from the particle along its fall) or "flake" (a disc).
        xy: (N, 2) float positions (x, y).
        size: (N,) streak lengths or flake radii in pixels.
        opacity: (N,) opacities in [0, 1].
        direction: unit vector (dx, dy) of the fall.
        thickness: streak thickness in pixels (streaks only).
        motion: motion-blur length in pixels (flakes only).
        blur: Gaussian sigma in pixels.
        speed: fall distance per video frame in pixels.
        sway: (N, 2) amplitude and phase of a flake's sideways drift (flakes only).
    """

    kind: str
    xy: np.ndarray
    size: np.ndarray
    opacity: np.ndarray
    direction: tuple[float, float]
    thickness: int = 1
    motion: float = 0.0
    blur: float = 0.0
    speed: float = 0.0
    sway: np.ndarray | None = None


class ParticleField:
    """Falling particles over an (h, w) frame: render an opacity map, or step them in time.

    Particles live in the frame grown by a margin on every side, so streaks and flakes enter and
    leave the frame smoothly; a particle that falls out of that area wraps around.

    Args:
        h: frame height.
        w: frame width.
        layers: the depth layers.
        margin: the margin in pixels.
    """

    def __init__(self, h: int, w: int, layers: list[ParticleLayer], margin: float) -> None:
        self.h, self.w, self.layers, self.margin = h, w, layers, margin
        self.t = 0

    def render(self) -> np.ndarray:
        """Return the (h, w) float32 opacity map of all layers together."""
        transparency = np.ones((self.h, self.w), np.float32)
        for layer in self.layers:
            alpha = _render_layer(layer, self.h, self.w)
            transparency *= 1.0 - alpha
        return 1.0 - transparency

    def step(self, wind: float = 0.0) -> None:
        """Advance every particle by one video frame.

        Args:
            wind: extra sideways displacement per frame, as a fraction of the layer's speed.
        """
        self.t += 1
        m = self.margin
        for layer in self.layers:
            dx, dy = layer.direction
            layer.xy[:, 0] += layer.speed * (dx + wind)
            layer.xy[:, 1] += layer.speed * dy
            if layer.sway is not None:
                amp, phase = layer.sway[:, 0], layer.sway[:, 1]
                layer.xy[:, 0] += amp * (np.sin(phase + 0.3 * self.t) - np.sin(phase + 0.3 * (self.t - 1)))
            layer.xy[:, 0] = (layer.xy[:, 0] + m) % (self.w + 2 * m) - m
            layer.xy[:, 1] = (layer.xy[:, 1] + m) % (self.h + 2 * m) - m


def line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A motion-blur kernel: a normalised anti-aliased line of `length` pixels at `angle_deg` from vertical."""
    k = math.ceil(length) | 1
    kernel = np.zeros((k, k), np.uint8)
    c = (k - 1) / 2
    a = math.radians(angle_deg)
    dx, dy = math.sin(a) * (length - 1) / 2, math.cos(a) * (length - 1) / 2
    p0 = (round((c - dx) * _ONE), round((c - dy) * _ONE))
    p1 = (round((c + dx) * _ONE), round((c + dy) * _ONE))
    cv2.line(kernel, p0, p1, 255, 1, cv2.LINE_AA, _SHIFT)
    kernel = kernel.astype(np.float32)
    return kernel / max(float(kernel.sum()), 1e-6)


def _render_layer(layer: ParticleLayer, h: int, w: int) -> np.ndarray:
    canvas = np.zeros((h, w), np.uint8)
    dx, dy = layer.direction
    levels = np.clip(np.round(layer.opacity * 255), 1, 255).astype(int)
    fx = np.round(layer.xy * _ONE).astype(np.int64)
    if layer.kind == "streak":
        # The particle is the streak's lower end: it grew out of the frame above.
        tail = np.round((layer.xy - layer.size[:, None] * np.array([dx, dy])) * _ONE).astype(np.int64)
        for (x0, y0), (x1, y1), v in zip(fx.tolist(), tail.tolist(), levels.tolist()):
            cv2.line(canvas, (x0, y0), (x1, y1), v, layer.thickness, cv2.LINE_AA, _SHIFT)
    else:
        radii = np.maximum(np.round(layer.size * _ONE), 1).astype(np.int64)
        for (x0, y0), r, v in zip(fx.tolist(), radii.tolist(), levels.tolist()):
            cv2.circle(canvas, (x0, y0), r, v, -1, cv2.LINE_AA, _SHIFT)
    alpha = canvas.astype(np.float32) * (1.0 / 255.0)
    if layer.kind == "flake" and layer.motion >= 1.5:
        angle = math.degrees(math.atan2(dx, dy))
        alpha = cv2.filter2D(alpha, -1, line_kernel(layer.motion, angle), borderType=cv2.BORDER_CONSTANT)
        # a flake smeared over its path keeps its opacity where it stays longest, not 1/length of it
        alpha = np.minimum(alpha * min(layer.motion / 2.0, 3.0), 1.0)
    if layer.blur >= 0.2:
        alpha = cv2.GaussianBlur(alpha, (0, 0), layer.blur, borderType=cv2.BORDER_CONSTANT)
    return alpha


def _direction(angle_deg: float) -> tuple[float, float]:
    a = math.radians(angle_deg)
    return math.sin(a), math.cos(a)


def _scatter(rng: np.random.Generator, n: int, h: int, w: int, margin: float) -> np.ndarray:
    xy = rng.random((n, 2), dtype=np.float64)
    xy[:, 0] = xy[:, 0] * (w + 2 * margin) - margin
    xy[:, 1] = xy[:, 1] * (h + 2 * margin) - margin
    return xy


def _count(density: float, h: int, w: int, margin: float, rng: np.random.Generator,
           area: float, max_cover: float) -> int:
    # `area` is one particle's area in pixels: cap the share of the frame a layer may cover, so
    # that dense rain of long streaks or big flakes never buries the whole picture.
    full = (h + 2 * margin) * (w + 2 * margin)
    mean = min(density * full / 1e4, max_cover * full / max(area, 1e-6))
    return int(rng.poisson(mean))


def rain_field(h: int, w: int, p: RainParams, rng: np.random.Generator, exposure: float = 0.5) -> ParticleField:
    """The rain streaks of `p` scattered over an (h, w) frame.

    Args:
        h: frame height.
        w: frame width.
        p: the rain parameters.
        rng: the random generator.
        exposure: the fraction of a frame interval the shutter is open: a streak is the drop's
            path during it, so a drop falls length / exposure pixels per frame.
    """
    short = min(h, w)
    direction = _direction(p.angle)
    layers = []
    for i in range(p.layers):
        depth = 0.62**i  # farther layers: shorter, thinner, dimmer, denser, softer
        length = max(p.length * short * depth, 2.0)
        thickness = max(1, round(p.width * 0.7**i))
        n = _count(p.density * (1 + 0.6 * i), h, w, length + 4, rng, length * thickness, 0.25)
        layers.append(ParticleLayer(
            kind="streak",
            xy=_scatter(rng, n, h, w, length + 4),
            size=length * rng.uniform(0.7, 1.3, n),
            opacity=np.clip(p.opacity * (0.8**i) * rng.uniform(0.6, 1.0, n), 0, 1),
            direction=direction,
            thickness=thickness,
            blur=p.blur * (1 + 0.4 * i),
            speed=length / exposure,
        ))
    margin = max(p.length * short, 2.0) * 1.3 + 4
    return ParticleField(h, w, layers, margin)


def snow_field(h: int, w: int, p: SnowParams, rng: np.random.Generator) -> ParticleField:
    """The snowflakes of `p` scattered over an (h, w) frame."""
    short = min(h, w)
    direction = _direction(p.angle)
    layers = []
    for i in range(p.layers):
        depth = 0.55**i
        radius = max(p.size * short * depth, 0.4)
        motion = p.motion * short * depth
        margin = radius * 2 + motion + 4
        area = math.pi * radius**2 + 2 * radius * motion
        n = _count(p.density * (1 + 0.8 * i), h, w, margin, rng, area, 0.12)
        # the nearest layer is out of focus; farther ones are small and soft
        blur = p.blur * (1.6 if i == 0 else 0.5 + 0.25 * i)
        layers.append(ParticleLayer(
            kind="flake",
            xy=_scatter(rng, n, h, w, margin),
            size=radius * rng.uniform(0.6, 1.4, n),
            opacity=np.clip(p.opacity * (0.85**i) * rng.uniform(0.7, 1.0, n), 0, 1),
            direction=direction,
            motion=motion,
            blur=blur,
            speed=max(motion, radius) * 1.5 + 0.5,
            sway=np.stack([rng.uniform(0, 1.5 * radius + 0.5, n), rng.uniform(0, 2 * np.pi, n)], 1),
        ))
    margin = max(p.size * short, 0.4) * 2 + p.motion * short + 4
    return ParticleField(h, w, layers, margin)


def _veil(img: np.ndarray, amount: float, color: float) -> np.ndarray:
    if amount <= 0:
        return img
    return img * (1.0 - amount) + color * amount


def composite(img: np.ndarray, alpha: np.ndarray, brightness: float) -> np.ndarray:
    """Lay particles of opacity `alpha` and grey level `brightness` over `img`."""
    a = alpha[..., None]
    return np.clip(img * (1.0 - a) + brightness * a, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The three weathers on one image


def add_rain(img: np.ndarray, rng: np.random.Generator, params: RainParams | None = None,
             **overrides: Any) -> np.ndarray:
    """Add rain streaks (and, for heavy rain, a veil) to an image.

    Args:
        img: float32 HxWx3 RGB in [0, 1].
        rng: the random generator.
        params: the rain to render; drawn with `random_params("rain", rng)` when None.
        **overrides: fields of `RainParams` that replace the drawn or given ones.

    Returns:
        The rainy image, float32 HxWx3 in [0, 1].
    """
    img = _check_image(img)
    p = _resolve("rain", rng, params, overrides)
    h, w = img.shape[:2]
    alpha = rain_field(h, w, p, rng).render()
    return composite(_veil(img, p.veil, p.veil_color), alpha, p.brightness)


def add_snow(img: np.ndarray, rng: np.random.Generator, params: SnowParams | None = None,
             **overrides: Any) -> np.ndarray:
    """Add falling snow (flakes in depth layers, motion-blurred) and a light veil to an image.

    Args:
        img: float32 HxWx3 RGB in [0, 1].
        rng: the random generator.
        params: the snow to render; drawn with `random_params("snow", rng)` when None.
        **overrides: fields of `SnowParams` that replace the drawn or given ones.

    Returns:
        The snowy image, float32 HxWx3 in [0, 1].
    """
    img = _check_image(img)
    p = _resolve("snow", rng, params, overrides)
    h, w = img.shape[:2]
    alpha = snow_field(h, w, p, rng).render()
    return composite(_veil(img, p.veil, p.veil_color), alpha, p.brightness)


def haze_depth(img: np.ndarray, p: HazeParams, rng: np.random.Generator) -> np.ndarray:
    """A plausible normalised depth map in [p.depth_min, 1] for an image (HxW float32).

    Far above the horizon, nearer towards the bottom edge, modulated by smooth noise and by a
    brightness cue (bright, flat regions such as sky tend to be far).
    """
    h, w = img.shape[:2]
    y = (np.arange(h, dtype=np.float32) + 0.5) / h
    ramp = np.clip((1.0 - y) / max(1.0 - p.horizon, 1e-3), 0.0, 1.0)
    depth = np.broadcast_to(ramp[:, None], (h, w)).astype(np.float32)
    cells = max(2, round(1.0 / max(p.noise_scale, 1e-3)))
    gh, gw = (cells, max(2, round(cells * w / h))) if h <= w else (max(2, round(cells * h / w)), cells)
    noise = rng.standard_normal((gh, gw)).astype(np.float32)
    noise = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    noise = (noise - noise.mean()) / (noise.std() + 1e-6)
    depth = depth + p.noise * 0.35 * noise
    if p.luminance > 0:
        lum = img @ np.array([0.299, 0.587, 0.114], np.float32)
        sigma = max(min(h, w) / 30.0, 1.0)
        lum = cv2.GaussianBlur(lum, (0, 0), sigma)
        depth = depth + p.luminance * (lum - lum.mean())
    lo, hi = float(depth.min()), float(depth.max())
    depth = (depth - lo) / max(hi - lo, 1e-6)
    return (p.depth_min + (1.0 - p.depth_min) * depth).astype(np.float32)


def airlight_color(p: HazeParams) -> np.ndarray:
    """The RGB airlight of `p`: grey `airlight`, shifted towards blue or warm by `tint`."""
    tint = np.array([1.0, 0.0, -1.0], np.float32) * p.tint
    return np.clip(p.airlight + tint, 0.0, 1.0).astype(np.float32)


def add_haze(img: np.ndarray, rng: np.random.Generator, params: HazeParams | None = None,
             depth: np.ndarray | None = None, **overrides: Any) -> np.ndarray:
    """Add haze with the atmospheric scattering model I = J t + A (1 - t), t = exp(-beta d).

    Args:
        img: float32 HxWx3 RGB in [0, 1] (J).
        rng: the random generator.
        params: the haze to render; drawn with `random_params("haze", rng)` when None.
        depth: an HxW depth map in [0, 1] to use instead of `haze_depth`'s.
        **overrides: fields of `HazeParams` that replace the drawn or given ones.

    Returns:
        The hazy image, float32 HxWx3 in [0, 1].
    """
    img = _check_image(img)
    p = _resolve("haze", rng, params, overrides)
    d = haze_depth(img, p, rng) if depth is None else np.asarray(depth, np.float32)
    t = np.exp(-p.beta * d)[..., None]
    out = img * t + airlight_color(p) * (1.0 - t)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


_ADD = {"rain": add_rain, "snow": add_snow, "haze": add_haze}


def add_weather(img: np.ndarray, weather: str, rng: np.random.Generator, params: Any = None) -> np.ndarray:
    """Apply `add_rain`, `add_snow` or `add_haze` by name."""
    if weather not in _ADD:
        raise UnweatherError(f"unknown weather {weather!r}; choose from {', '.join(WEATHERS)}")
    return _ADD[weather](img, rng, params)


# --------------------------------------------------------------------------------------------
# Image I/O


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as float32 HxWx3 RGB in [0, 1] (`unweather.media.read_rgb`, scaled)."""
    return read_rgb(path).astype(np.float32) * (1.0 / 255.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] -> uint8, rounded."""
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def write_image(path: str | Path, img: np.ndarray) -> None:
    """Write float32 HxWx3 RGB in [0, 1] (or uint8 RGB) as an 8-bit image file."""
    data = img if img.dtype == np.uint8 else to_uint8(img)
    if not cv2.imwrite(str(path), cv2.cvtColor(data, cv2.COLOR_RGB2BGR)):
        raise UnweatherError(f"cannot write image {path}")


def find_photos(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (their images, not recursively) into a sorted list of photos."""
    photos: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            photos += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            photos.append(path)
        else:
            raise UnweatherError(f"no such photo or folder: {path}")
    if not photos:
        raise UnweatherError("no photos found in " + ", ".join(str(p) for p in inputs))
    return photos


# --------------------------------------------------------------------------------------------
# Paired data sets


@dataclass(frozen=True)
class SynthConfig:
    """How `synthesize` makes a paired data set.

    Attributes:
        weathers: the weather types, one data set (meta JSON per split) each.
        crops: crops per photo and weather type.
        size: side of the square crops in pixels.
        seed: the seed everything derives from.
        valid_fraction: share of the photos (not crops) held out for validation.
        clean_pairs: crops per photo of a "clean" data set whose input is its ground truth.
        work_side: photos are first downscaled so their short side is at most this many crop
            sides; crops then take a random square of 1 to `work_side` / 2 crop sides, resized.
    """

    weathers: tuple[str, ...] = WEATHERS
    crops: int = 40
    size: int = 128
    seed: int = 0
    valid_fraction: float = 0.2
    clean_pairs: int = 0
    work_side: float = 6.0


def split_photos(names: Sequence[str], valid_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split photo names into (train, valid), reproducibly from `seed`.

    At least one photo goes to each side when `valid_fraction` > 0 and there are two or more.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise UnweatherError(f"--valid-fraction must be in [0, 1), got {valid_fraction}")
    ordered = sorted(names)
    n_valid = round(valid_fraction * len(ordered))
    if valid_fraction > 0 and len(ordered) >= 2:
        n_valid = min(max(n_valid, 1), len(ordered) - 1)
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(ordered))
    valid = sorted(ordered[i] for i in order[:n_valid])
    train = [n for n in ordered if n not in set(valid)]
    return train, valid


def _photo_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _working_image(photo: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    h, w = photo.shape[:2]
    target = cfg.work_side * cfg.size
    scale = min(1.0, target / min(h, w))
    if scale < 1.0:
        photo = cv2.resize(photo, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return photo


def random_crop(photo: np.ndarray, size: int, rng: np.random.Generator, max_zoom_out: float = 3.0) -> np.ndarray:
    """A random square crop of 1 to `max_zoom_out` times `size` pixels, resized to `size`, maybe flipped."""
    h, w = photo.shape[:2]
    if min(h, w) < size:
        raise UnweatherError(f"photo of {w}x{h} is smaller than the crop size {size}")
    side = round(size * rng.uniform(1.0, max(1.0, min(max_zoom_out, min(h, w) / size))))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    crop = photo[y:y + side, x:x + side]
    if side != size:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def _params_dict(params: Any) -> dict[str, Any]:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in dataclasses.asdict(params).items()}


def synthesize(photos: Sequence[str | Path], out_dir: str | Path, weathers: Sequence[str] = WEATHERS,
               crops: int = 40, size: int = 128, seed: int = 0, valid_fraction: float = 0.2,
               clean_pairs: int = 0, progress: bool = False) -> dict[str, Any]:
    """Make paired weather data from clean photos, in the release's meta JSON format.

    Writes, under `out_dir`:
    - `<split>/<weather>/gt/<photo>_<k>.png` and `<split>/<weather>/input/<photo>_<k>.png`;
    - `train/<weather>_meta_train.json` and `valid/<weather>_meta_valid.json`, each a list of
      [ground-truth path, degraded path] with paths relative to `out_dir`;
    - with `clean_pairs` > 0, a "clean" data set whose pairs name the same image twice;
    - `synth.json`: the configuration, parameter ranges, photos of each split and the parameters
      of every degraded image.

    The split is by photo, never by crop. Each image derives its randomness from (seed, photo
    name, weather, crop index), so the output is identical for the same inputs and seed.

    Args:
        photos: clean photo files, each with a unique file stem.
        out_dir: the output folder.
        weathers: weather types to make.
        crops: crops per photo and weather type.
        size: crop side in pixels.
        seed: the seed.
        valid_fraction: share of photos held out for validation.
        clean_pairs: crops per photo for the "clean" data set (0: none).
        progress: show a progress bar.

    Returns:
        The content of `synth.json`.
    """
    cfg = SynthConfig(tuple(weathers), crops, size, seed, valid_fraction, clean_pairs)
    unknown = [w for w in cfg.weathers if w not in WEATHERS]
    if unknown or not cfg.weathers:
        raise UnweatherError(f"unknown weather {unknown}; choose from {', '.join(WEATHERS)}")
    if crops < 1 or size < 16 or clean_pairs < 0:
        raise UnweatherError("--crops must be at least 1 and --size at least 16")
    paths = [Path(p) for p in photos]
    names = [p.stem for p in paths]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UnweatherError(f"photo names must be unique, these repeat: {', '.join(dupes)}")
    by_name = dict(zip(names, paths))
    train, valid = split_photos(names, valid_fraction, seed)
    out = Path(out_dir)
    datasets = [*cfg.weathers, *(["clean"] if clean_pairs else [])]
    splits = {split: group for split, group in (("train", train), ("valid", valid)) if group}
    for split in splits:
        for d in datasets:
            for sub in ("gt", "input") if d != "clean" else ("gt",):
                (out / split / d / sub).mkdir(parents=True, exist_ok=True)

    meta: dict[tuple[str, str], list[list[str]]] = {(s, d): [] for s in splits for d in datasets}
    samples: dict[str, dict[str, Any]] = {}
    jobs = [(split, name) for split, group in splits.items() for name in group]
    bar = _progress(len(jobs) * len(datasets), progress)
    for split, name in jobs:
        photo = _working_image(read_image(by_name[name]), cfg)
        for wi, d in enumerate(datasets):
            n = clean_pairs if d == "clean" else crops
            for k in range(n):
                rng = np.random.default_rng([seed, _photo_key(name), wi if d != "clean" else 99, k])
                clean = to_uint8(random_crop(photo, size, rng, cfg.work_side / 2))
                gt_rel = f"{split}/{d}/gt/{name}_{k:03d}.png"
                write_image(out / gt_rel, clean)
                if d == "clean":
                    meta[(split, d)].append([gt_rel, gt_rel])
                    continue
                params = random_params(d, rng)
                degraded = add_weather(clean.astype(np.float32) / 255.0, d, rng, params)
                in_rel = f"{split}/{d}/input/{name}_{k:03d}.png"
                write_image(out / in_rel, degraded)
                meta[(split, d)].append([gt_rel, in_rel])
                samples[in_rel] = _params_dict(params)
            bar.update(1)
    bar.close()

    for (split, d), pairs in meta.items():
        write_text_atomic(out / split / f"{d}_meta_{split}.json", json.dumps(pairs, indent=0) + "\n")
    record = {
        "format": "unweather-synth/1",
        "config": dataclasses.asdict(cfg),
        "ranges": {w: dataclasses.asdict(_PARAMS[w][1]()) for w in cfg.weathers},
        "photos": {"train": [str(by_name[n]) for n in train], "valid": [str(by_name[n]) for n in valid]},
        "counts": {f"{s}/{d}": len(p) for (s, d), p in meta.items()},
        "samples": samples,
    }
    write_text_atomic(out / "synth.json", json.dumps(record, indent=1, sort_keys=True) + "\n")
    log.info("wrote %s pairs from %d training and %d validation photos to %s",
             sum(len(p) for p in meta.values()), len(train), len(valid), out)
    return record


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="photo-weather", desc="synth")
