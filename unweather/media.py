"""Facts about media that every area shares: file suffixes, what a URL is, reading an image.

This module sits below `stream`, `cluster` and `training` (it imports none of them), so each fact
has one definition: the image suffixes, the video extensions read and written, the test for a URL,
and the one way an image file is read.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from unweather.errors import UnweatherError

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
