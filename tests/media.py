"""Test media made with PyAV: small real H.264/AAC videos, image folders and broken files.

Shared by every test that needs a clip; nothing here is mocked, the files are what FFmpeg writes.
"""

from __future__ import annotations

import math
import subprocess
import zlib
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np


def pattern(index: int, width: int, height: int) -> np.ndarray:
    """A deterministic RGB frame (H, W, 3) uint8: smooth gradients, a moving square, some texture."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    t = index * 0.15
    r = 0.5 + 0.4 * np.sin(x / max(width, 1) * 2 * math.pi + t)
    g = 0.5 + 0.4 * np.cos(y / max(height, 1) * 2 * math.pi - t)
    b = 0.5 + 0.3 * np.sin((x + y) / max(width + height, 1) * 4 * math.pi + 2 * t)
    img = np.stack([r, g, b], axis=-1)
    side = max(2, min(width, height) // 4)
    x0 = int((index * 3) % max(1, width - side))
    y0 = int((index * 2) % max(1, height - side))
    img[y0:y0 + side, x0:x0 + side] = (0.9, 0.2, 0.15)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def make_video(path: str | Path, frames: int = 12, size: tuple[int, int] = (64, 48), rate: int = 25,
               audio: bool = True, pts: Sequence[int] | None = None, time_base: Fraction | None = None,
               rotation: int | None = None, codec: str = "libx264", pix_fmt: str = "yuv420p",
               color_range: int | None = None, colorspace: int | None = None,
               options: dict[str, str] | None = None) -> Path:
    """Write a real video file with PyAV: `frames` frames of `pattern`, optionally AAC audio.

    Args:
        size: (width, height).
        pts: explicit presentation timestamps in `time_base` (variable frame rate), else 1/rate spacing.
        rotation: display rotation (degrees counter-clockwise) stored in the container.
        color_range / colorspace: FFmpeg enum values tagged on the stream (e.g. 1 = limited, 1 = BT.709).
    """
    import av

    path = Path(path)
    width, height = size
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=rate, options=options or {"crf": "12", "preset": "ultrafast"})
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt
        tb = time_base or Fraction(1, rate)
        stream.codec_context.time_base = tb
        stream.time_base = tb
        if color_range is not None:
            stream.codec_context.color_range = color_range
        if colorspace is not None:
            stream.codec_context.colorspace = colorspace
        if rotation:
            stream.set_display_rotation(rotation)
        astream = None
        if audio:
            astream = out.add_stream("aac", rate=16000)
            astream.layout = "mono"
        stamps = list(pts) if pts is not None else [round(i / rate / tb) for i in range(frames)]
        if not frames:
            out.start_encoding()  # a valid file with a video stream and no frames
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern(i, width, height), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            frame.pts = stamps[i]
            frame.time_base = tb
            if color_range is not None:
                frame.color_range = color_range
            if colorspace is not None:
                frame.colorspace = colorspace
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        if astream is not None:
            duration = float(stamps[-1] * tb) + 1.0 / rate if frames else 1.0
            samples = int(duration * 16000)
            t = np.arange(samples, dtype=np.float32) / 16000.0
            wave = (0.3 * np.sin(2 * math.pi * 440.0 * t)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = wave[start:start + 1024]
                aframe = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
                aframe.sample_rate = 16000
                aframe.pts = start
                aframe.time_base = Fraction(1, 16000)
                out.mux(astream.encode(aframe))
            out.mux(astream.encode())
    return path


def make_images(folder: str | Path, count: int = 3, size: tuple[int, int] = (40, 30), ext: str = ".png") -> list[Path]:
    """Write `count` pattern images (img_000.png, ...) into `folder`; return their paths."""
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img_{i:03d}{ext}"
        cv2.imwrite(str(path), cv2.cvtColor(pattern(i, *size), cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def cut_faststart(src: str | Path, path: str | Path, keep: float = 0.6) -> Path:
    """`src` remuxed with its index (moov) at the start, then cut to its first `keep` share of bytes.

    The index still announces every frame, as in a download or copy that stopped part way.
    """
    whole = Path(path).with_suffix(".whole.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-c", "copy", "-movflags", "+faststart",
                    str(whole)], capture_output=True, text=True, timeout=60, check=True)
    data = whole.read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    whole.unlink()
    return Path(path)


def png_header_only(path: str | Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header claims `width` x `height` (its pixel data is one empty row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    Path(path).write_bytes(data)
    return Path(path)


def decode_rgb(path: str | Path) -> tuple[list[np.ndarray], list[float]]:
    """Every video frame of `path` as RGB (H, W, 3) uint8, with its presentation time in seconds.

    One conversion (PyAV's, with the stream's own matrix and range) is used for inputs and outputs
    alike, so comparisons measure what the pipeline changed.
    """
    import av

    frames, times = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time))
    return frames, times


def decode_planes(path: str | Path) -> list[list[np.ndarray]]:
    """Every video frame of `path` as its [Y, U, V] planes (uint8, no conversion)."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.format.name not in ("yuv420p", "yuvj420p"):
                frame = frame.reformat(format="yuv420p")
            frames.append([np.frombuffer(p, np.uint8, count=p.line_size * p.height)
                           .reshape(p.height, p.line_size)[:, :p.width].copy() for p in frame.planes])
    return frames


def ffprobe(path: str | Path, *args: str) -> str:
    """Run ffprobe on `path` with `args`; return its stdout (raises if ffprobe fails)."""
    out = subprocess.run(["ffprobe", "-v", "error", *args, str(path)], capture_output=True, text=True,
                         timeout=60, check=True)
    return out.stdout


def probe_frames(path: str | Path) -> list[float]:
    """Presentation times of every decoded video frame, as ffprobe reports them."""
    text = ffprobe(path, "-select_streams", "v:0", "-show_entries", "frame=best_effort_timestamp_time",
                   "-of", "csv=p=0")
    return [float(line.strip().rstrip(",")) for line in text.splitlines() if line.strip()]


def playable(path: str | Path) -> int:
    """Decode `path` completely with ffmpeg (errors are fatal); return its number of video frames."""
    subprocess.run(["ffmpeg", "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"],
                   capture_output=True, text=True, timeout=120, check=True)
    return len(probe_frames(path))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (the package's PSNR on 8-bit levels)."""
    from unweather.training.metrics import psnr as metric

    return metric(a, b, data_range=255.0)


def fake_deb(tmp: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A cache folder holding a real `name_version_all.deb` with `files` (paths relative to /), for apt-free tests."""
    root = tmp / f"{name}-root"
    for rel, data in {**files, f"usr/share/doc/{name}/copyright": b"licence text\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: Test <t@example.org>\n"
        "Description: test photos\n")
    cache = tmp / "cache"
    cache.mkdir(exist_ok=True)
    deb = cache / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return cache
