"""The benchmark's frames: a synthetic rainy clip, or the user's footage resized per resolution.

Every combination at one resolution runs on the same frames: they are written once to a small
H.264 clip (which the pipeline decodes) and decoded back from it for the engine-only timing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from unweather.bench.config import Resolution
from unweather.errors import UnweatherError
from unweather.redact import redact

logger = logging.getLogger(__name__)

FPS = 30
_OPEN_TIMEOUT_S = 10.0


def synthetic_frames(res: Resolution, count: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Yield `count` RGB uint8 frames of a moving scene with falling rain streaks.

    The content changes every frame (scrolling gradient, a moving block, streaks that fall), so
    an encoder cannot skip frames and a decoder does real work, as with real footage.
    """
    rng = np.random.default_rng(seed)
    h, w = res.height, res.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    n_streaks = max(8, res.pixels // 2000)
    sx = rng.uniform(0, w, n_streaks)
    sy = rng.uniform(0, h, n_streaks)
    length = rng.uniform(0.02, 0.06, n_streaks) * h
    speed = rng.uniform(0.02, 0.05, n_streaks) * h
    for t in range(count):
        phase = 2 * np.pi * t / max(count, 8)
        r = 0.5 + 0.4 * np.sin(2 * np.pi * xx / w + phase)
        g = 0.5 + 0.4 * np.sin(2 * np.pi * yy / h - phase)
        b = 0.5 + 0.4 * np.cos(2 * np.pi * (xx + yy) / (w + h) + 2 * phase)
        img = np.stack([r, g, b], axis=-1)
        bx = int((0.1 + 0.6 * (t % max(count, 8)) / max(count, 8)) * w)
        img[h // 3: h // 3 + h // 4, bx: bx + w // 6] = (0.15, 0.2, 0.25)
        ys = (sy + speed * t) % h
        for i in range(n_streaks):
            y0, y1 = int(ys[i]), int(min(h, ys[i] + length[i]))
            x = int(sx[i] + 0.2 * (ys[i] - sy[i])) % w
            img[y0:y1, x] = 0.5 * img[y0:y1, x] + 0.45
        img += rng.normal(0.0, 0.01, img.shape).astype(np.float32)
        yield (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def input_frames(source: str, res: Resolution, count: int) -> Iterator[np.ndarray]:
    """Yield up to `count` RGB uint8 frames of `source`, resized to `res` (only for the benchmark)."""
    import cv2

    from unweather.media import open_video

    with open_video(source, timeout=_OPEN_TIMEOUT_S) as (container, stream):
        for produced, frame in enumerate(container.decode(stream), start=1):
            rgb = frame.to_ndarray(format="rgb24")
            if rgb.shape[:2] != (res.height, res.width):
                shrink = rgb.shape[0] * rgb.shape[1] > res.pixels
                rgb = cv2.resize(rgb, (res.width, res.height),
                                 interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            yield rgb
            if produced >= count:
                break


def write_clip(frames: Iterator[np.ndarray], path: Path, res: Resolution, rate: float = FPS) -> int:
    """Encode RGB frames as a near-lossless H.264 clip at `path`, `rate` frames per second; return the count."""
    from fractions import Fraction

    import av

    written = 0
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(rate).limit_denominator(1001),
                                      options={"crf": "16", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = res.width, res.height, "yuv420p"
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            container.mux(stream.encode(frame))
            written += 1
        container.mux(stream.encode())
    return written


def read_clip(path: Path) -> torch.Tensor:
    """Decode a clip into a float tensor (N, 3, H, W) in [0, 1]."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    array = np.stack(frames)
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def rgb_frames(frames: torch.Tensor) -> Iterator[np.ndarray]:
    """Yield the frames of a float tensor (N, 3, H, W) in [0, 1] as RGB uint8 arrays (H, W, 3)."""
    for frame in frames:
        yield (frame.permute(1, 2, 0).clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).numpy()


def prepare_clip(source: str | None, res: Resolution, count: int, path: Path) -> tuple[torch.Tensor, int]:
    """Write the benchmark clip for `res` at `path` and return its frames and how many there are.

    Args:
        source: the user's video or stream, or None for a synthetic clip.
        res: the benchmark resolution.
        count: frames wanted; a shorter input gives fewer.
        path: where to write the clip (an .mp4 file).
    """
    frames = synthetic_frames(res, count) if source is None else input_frames(source, res, count)
    written = write_clip(frames, path, res)
    if written == 0:
        raise UnweatherError(f"{redact(source or 'the synthetic clip')} gave no video frames")
    if written < count:
        logger.warning("%s has only %d frames; benchmarking on those", redact(source or ""), written)
    return read_clip(path), written
