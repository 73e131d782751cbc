"""Facts about media that every area shares: file suffixes, what a URL is, reading an image or a video.

This module sits below `stream`, `cluster` and `training` (it imports none of them), so each fact
has one definition: the image suffixes, the video extensions read and written, the test for a URL,
the one way an image file is read, and the one way a video is opened for reading frames.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from unweather.errors import UnweatherError
from unweather.redact import redact

if TYPE_CHECKING:
    import numpy as np

# Image files read and written (OpenCV decodes and encodes all of them).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# Video files recognised as inputs (in folders of videos, sources files and Ray archives).
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".ts", ".m4v", ".mpg", ".mpeg", ".flv", ".mts")

# Video files the pipeline writes, with their FFmpeg muxer.
VIDEO_OUTPUTS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".ts": "mpegts"}

# What an output is written as when its input's container cannot be written (.webm, .avi, ...):
# Matroska holds any codec and audio the input may have.
FALLBACK_VIDEO_OUTPUT = ".mkv"

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_url(text: str | os.PathLike[str]) -> bool:
    """Whether `text` is a URL (scheme://...) rather than a path."""
    return _URL.match(os.fspath(text)) is not None


def url_scheme(text: str) -> str:
    """The lower-case scheme of a URL ("rtsp"), or "" for a path."""
    match = _URL.match(text)
    return match.group(1).lower() if match else ""


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names an image by its suffix."""
    return os.fspath(path).lower().endswith(IMAGE_SUFFIXES)


def is_video_file(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names a video by its extension."""
    return os.fspath(path).lower().endswith(VIDEO_EXTENSIONS)


def video_output_extension(input_path: str, live: bool = False) -> str:
    """The extension of the video restored from `input_path`: its own when the pipeline writes it
    (.mp4, .m4v, .mov, .mkv, .ts), else .mkv (a .webm or .avi input cannot be written back as such).

    Live recordings get .mkv instead of an MP4-family extension: Matroska stays playable when the
    process is killed.
    """
    ext = os.path.splitext(input_path)[1].lower()
    if ext not in VIDEO_OUTPUTS or (live and VIDEO_OUTPUTS[ext] in ("mp4", "mov")):
        return FALLBACK_VIDEO_OUTPUT
    return ext


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3).

    Raises:
        UnweatherError: the file is missing or not an image OpenCV can decode.
    """
    import cv2
    import numpy as np

    image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise UnweatherError(f"cannot read the image {path}.")
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


@contextlib.contextmanager
def open_video(source: str | os.PathLike[str], timeout: float | None = None) -> Iterator[tuple[Any, Any]]:
    """Open `source` (a file or a URL) with PyAV for reading: (container, its first video stream).

    The stream decodes with threads; the container closes on leaving the block.

    Args:
        source: the video.
        timeout: seconds to wait for the source to open and for each read (network sources).

    Raises:
        UnweatherError: one line (credentials redacted) when it cannot be opened or holds no video.
    """
    import av

    name = redact(os.fspath(source))
    try:
        container = av.open(os.fspath(source), **({"timeout": (timeout, timeout)} if timeout else {}))
    except (av.FFmpegError, OSError) as exc:
        raise UnweatherError(f"cannot open the video {name}: {redact(str(exc))}") from exc
    with container:
        if not container.streams.video:
            raise UnweatherError(f"{name} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream
