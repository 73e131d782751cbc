"""Where restored frames go: a video file, a media server (RTSP/RTMP/SRT), an image or a folder of images.

Outputs are created before the first frame is decoded, so an unwritable path or a full disk is one
error at once, not after hours of work. Video streams get the input's timestamps, colour tags and
rotation; audio packets are copied untouched.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from unweather.errors import UnweatherError
from unweather.fileio import write_bytes_atomic
from unweather.media import IMAGE_SUFFIXES, is_url
from unweather.media import VIDEO_OUTPUTS as VIDEO_SUFFIXES
from unweather.redact import redact
from unweather.stream.colour import ColourSpec

# A live network output leaves at the stream's own pace, never ahead of it: the frames held while a run
# starts (or reconnects) would otherwise go out in a burst that a receiver's jitter buffer discards.
# Further off the pace than this (a jump in timestamps, a long stall) and the pace starts afresh.
_PACE_SLACK_S = 1.0

if TYPE_CHECKING:
    import numpy as np

    from unweather.stream.sources import Source

logger = logging.getLogger(__name__)

_TS_AUDIO = {"aac", "mp2", "mp3", "ac3", "eac3", "opus"}
_PROBE_BYTES = 64 * 1024


def _write_error(target: str, exc: BaseException) -> UnweatherError:
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return UnweatherError(f"no space left on the device to write {redact(target)}.")
    if isinstance(exc, UnweatherError):
        return exc
    strerror = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return UnweatherError(f"cannot write {redact(target)}: {redact(strerror)}.")


def probe_writable(path: str, shown: str | None = None) -> None:
    """Create `path` and write a little to it now: a missing folder, no permission or a full disk fail here.

    On failure a file this created is removed again, and the error names `shown` (default: `path`).
    """
    existed = os.path.lexists(path)
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            try:
                os.fsync(f.fileno())
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
        with open(path, "wb"):
            pass  # leave an empty file: the muxer writes it from the start
    except OSError as exc:
        if not existed:
            with contextlib.suppress(OSError):
                os.remove(path)
        raise _write_error(shown or path, exc) from None


class Sink:
    """Base of every output.

    Attributes:
        target: path or URL (redact before showing).
        wants_rgb: frames are written as RGB arrays (images) rather than YUV 4:2:0 planes (video).
        frames_written: frames accepted so far.
    """

    wants_rgb = False

    def __init__(self, target: str) -> None:
        self.target = target
        self.frames_written = 0

    def write(self, planes: tuple[np.ndarray, ...], pts: int, time_base: Fraction, name: str | None) -> None:
        """Write one frame (Y, U, V planes, or one RGB (H, W, 3) array when `wants_rgb`)."""
        raise NotImplementedError

    def close(self, complete: bool) -> None:
        """Finish the output; `complete`: the whole input was read (else audio stops with the video)."""

    def discard(self) -> None:
        """Remove what was created when nothing could be written."""


class VideoSink(Sink):
    """A video file (mp4, m4v, mov, mkv, ts) or a network output, encoded with libx264 or NVENC.

    Args:
        target: file path or rtsp/rtmp/srt URL.
        source: the input, for timestamps, frame rate and audio streams.
        spec: colour matrix, range and tags of the YUV planes written (set before the first frame).
        live: write so a killed process leaves a playable file (fragmented MP4; Matroska and MPEG-TS
            are playable as they are) and encode for low latency.
        codec, crf, preset: the encoder.
        gpu: the engine is on a GPU, so NVENC is tried first when `codec` is "auto".
        network_options: timeouts for network outputs.
    """

    def __init__(self, target: str, source: Source, live: bool, spec: ColourSpec | None = None, codec: str = "auto",
                 crf: int = 18, preset: str | None = None, gpu: bool = False, network_options: Any = None) -> None:
        import av

        super().__init__(target)
        self.source = source
        self.spec = spec or ColourSpec()
        self.live = live
        self.codec = codec
        self.crf = crf
        self.preset = preset
        self.gpu = gpu
        self.network_options = network_options
        self.rotation = 0
        self.is_url = is_url(target)
        self.stream: Any = None
        self.audio_map: dict[int, Any] = {}
        self._last_time = float("-inf")
        self._frame_seconds = 1.0 / float(source.rate) if source.rate else 0.04
        self._pace_anchor: tuple[float, float] | None = None
        self._created_file = False
        if self.is_url:
            from unweather.stream.network import open_output_container

            self.container = open_output_container(target, network_options)
            self.format = self.container.format.name
        else:
            ext = os.path.splitext(target)[1].lower()
            if ext not in VIDEO_SUFFIXES:
                raise UnweatherError(f"cannot write {target}: use .mp4, .m4v, .mov, .mkv or .ts for video.")
            self.format = VIDEO_SUFFIXES[ext]
            probe_writable(target)
            self._created_file = True
            options = {}
            if live:
                options["flush_packets"] = "1"  # what is muxed reaches the file, in case the process is killed
            if live and self.format in ("mp4", "mov"):
                # Fragments at every keyframe: a killed recording stays playable up to its last fragment.
                options["movflags"] = "frag_keyframe+empty_moov+default_base_moof"
            self._container_options = options
            try:
                self.container = av.open(target, mode="w", format=self.format, container_options=options)
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                raise _write_error(target, exc) from None

    # -- set-up on the first frame, when the size is known ---------------------------------------
    def _open_stream(self, width: int, height: int, time_base: Fraction) -> None:
        import av

        rate = self.source.rate or Fraction(25)
        if width % 2 or height % 2:
            # H.264/HEVC 4:2:0 needs even sizes: the last column/row is repeated, nothing is cut.
            logger.warning("%dx%d is odd: encoding %dx%d with the last column/row repeated", width, height,
                           width + width % 2, height + height % 2)
            width, height = width + width % 2, height + height % 2
        for name in self._codec_candidates():
            try:
                stream = self.container.add_stream(name, rate=rate, options=self._codec_options(name, rate))
                stream.width, stream.height = width, height
                stream.pix_fmt = "yuv420p"
                stream.time_base = time_base
                stream.codec_context.time_base = time_base
                ctx = stream.codec_context
                ctx.color_range = self.spec.color_range
                ctx.colorspace = self.spec.colorspace
                ctx.color_primaries = self.spec.color_primaries
                ctx.color_trc = self.spec.color_trc
                if self.rotation and not self.is_url:
                    stream.set_display_rotation(self.rotation)
                ctx.open()  # open now: a missing NVENC falls back here, not at the first encode
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                if name == "h264_nvenc" and self.codec == "auto":
                    logger.info("NVENC is not usable here (%s); encoding with libx264", exc)
                    self._drop_last_stream()
                    continue
                raise UnweatherError(f"cannot open the {name} encoder for {width}x{height}: {exc}.") from None
            self.stream = stream
            logger.info("encoding %s %dx%d (%s, %s)", redact(self.target), width, height, name, self.spec.describe())
            break
        self._add_audio()

    def _drop_last_stream(self) -> None:
        # A stream whose encoder failed to open cannot be removed from a PyAV container; reopen it.
        import av

        self.container.close()
        if self.is_url:
            from unweather.stream.network import open_output_container

            self.container = open_output_container(self.target, self.network_options, probe=False)
        else:
            self.container = av.open(self.target, mode="w", format=self.format,
                                     container_options=self._container_options)

    def _codec_candidates(self) -> list[str]:
        import av

        if self.codec != "auto":
            if self.codec not in av.codecs_available:
                raise UnweatherError(f"this FFmpeg build has no {self.codec} encoder.")
            return [self.codec]
        names = ["libx264"]
        if self.gpu and "h264_nvenc" in av.codecs_available:
            names.insert(0, "h264_nvenc")
        return names

    def _codec_options(self, name: str, rate: Fraction) -> dict[str, str]:
        if "nvenc" in name:
            opts = {"rc": "vbr", "cq": str(self.crf), "preset": self.preset or ("p1" if self.live else "p4")}
            if self.live:
                opts.update({"tune": "ll", "bf": "0", "g": str(max(1, round(2 * float(rate))))})
            return opts
        opts = {"crf": str(self.crf)}
        if name in ("libx264", "libx265"):
            opts["preset"] = self.preset or ("veryfast" if self.live else "fast")
        if self.live:
            # A keyframe every 2 s bounds what a kill can lose (one fragment) and how long a viewer waits.
            opts.update({"g": str(max(1, round(2 * float(rate)))), "bf": "0"})
            if name == "libx264":
                opts["tune"] = "zerolatency"
        return opts

    def _add_audio(self) -> None:
        if self.is_url or not self.source.audio_streams:
            return
        supported = self.container.supported_codecs
        for stream in self.source.audio_streams:
            name = stream.codec_context.name if stream.codec_context else "unknown"
            ok = name in _TS_AUDIO if self.format == "mpegts" else name in supported
            if not ok:
                logger.warning("audio stream %d (%s) cannot go into a %s file: left out", stream.index, name,
                               self.format)
                continue
            self.audio_map[stream.index] = self.container.add_stream_from_template(stream)

    # -- writing -------------------------------------------------------------------------------
    def write(self, planes: tuple[np.ndarray, ...], pts: int, time_base: Fraction, name: str | None) -> None:
        import av
        import numpy as np

        y, u, v = planes
        height, width = y.shape
        if self.stream is None:
            self._open_stream(width, height, time_base)
            self._size = (width, height)
        elif (width, height) != self._size:
            raise UnweatherError(f"frames of different sizes ({width}x{height} after "
                                 f"{self._size[0]}x{self._size[1]}) cannot go into one video.")
        frame = av.VideoFrame(self.stream.width, self.stream.height, "yuv420p")
        for plane, data in zip(frame.planes, (y, u, v)):
            rows, cols = data.shape
            view = np.frombuffer(plane, np.uint8, count=plane.line_size * plane.height)
            view = view.reshape(plane.height, plane.line_size)
            view[:rows, :cols] = data
            if plane.width > cols:
                view[:rows, cols:plane.width] = data[:, -1:]
            if plane.height > rows:
                view[rows:, :plane.width] = view[rows - 1:rows, :plane.width]
        frame.pts = pts
        frame.time_base = time_base
        frame.color_range = self.spec.color_range
        frame.colorspace = self.spec.colorspace
        if self.is_url and self.live:
            self._pace(float(pts * time_base))
        try:
            self.container.mux(self.stream.encode(frame))
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise self._error(exc) from None
        self.frames_written += 1
        self._last_time = float(pts * time_base)
        self._mux_audio(self._last_time)

    def _pace(self, t: float) -> None:
        """Wait until the frame at stream time `t` is due, counting from the first frame sent."""
        now = time.monotonic()
        if self._pace_anchor is not None:
            wall0, t0 = self._pace_anchor
            ahead = (t - t0) - (now - wall0)
            if abs(ahead) <= _PACE_SLACK_S:
                if ahead > 0:
                    time.sleep(ahead)
                return
        self._pace_anchor = (now, t)

    def _mux_audio(self, until: float | None) -> None:
        import av

        packets = self.source.audio_packets
        while packets:
            packet = packets[0]
            if until is not None and packet.pts * packet.time_base > until:
                break
            packets.popleft()
            out = self.audio_map.get(packet.stream.index)
            if out is None:
                continue
            packet.stream = out
            try:
                self.container.mux(packet)
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                raise self._error(exc) from None

    def _error(self, exc: BaseException) -> UnweatherError:
        if self.is_url:
            from unweather.stream.network import output_error

            return output_error(self.target, exc)
        return _write_error(self.target, exc)

    def close(self, complete: bool) -> None:
        import av

        try:
            if self.stream is not None:
                self.container.mux(self.stream.encode(None))
                # The whole input: every audio packet; stopped early: audio up to the end of the last frame.
                self._mux_audio(None if complete else self._last_time + self._frame_seconds)
            self.container.close()
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise self._error(exc) from None

    def discard(self) -> None:
        try:
            self.container.close()
        except Exception as exc:  # noqa: BLE001 - the output is removed anyway
            logger.debug("closing %s: %s", redact(self.target), exc)
        if self._created_file and not self.is_url:
            try:
                os.remove(self.target)
            except OSError:
                pass


class ImageSink(Sink):
    """Images: one file, or a folder (input names kept for image folders, frame_000001.png otherwise)."""

    wants_rgb = True

    def __init__(self, target: str, folder: bool) -> None:
        super().__init__(target)
        self.folder = folder
        self._created_folder = False
        if folder:
            if os.path.exists(target) and not os.path.isdir(target):
                raise UnweatherError(f"cannot write images into {target}: it is a file.")
            try:
                if not os.path.isdir(target):
                    os.makedirs(target)
                    self._created_folder = True
            except OSError as exc:
                raise _write_error(target, exc) from None
            probe = os.path.join(target, ".unweather-write-probe")
            try:
                probe_writable(probe, shown=target.rstrip(os.sep) or target)
            except UnweatherError:
                if self._created_folder:
                    with contextlib.suppress(OSError):
                        os.rmdir(target)
                raise
            os.remove(probe)
        else:
            ext = os.path.splitext(target)[1].lower()
            if ext not in IMAGE_SUFFIXES:
                raise UnweatherError(f"cannot write {target}: use an image extension ({', '.join(IMAGE_SUFFIXES)}).")
            probe_writable(target)

    def write(self, planes: tuple[np.ndarray, ...], pts: int, time_base: Fraction, name: str | None) -> None:
        import cv2

        (rgb,) = planes
        if self.folder:
            path = os.path.join(self.target, name or f"frame_{self.frames_written + 1:06d}.png")
        else:
            if self.frames_written:
                raise UnweatherError(f"{self.target} is one image but the input has more frames: give a folder.")
            path = self.target
        ext = os.path.splitext(path)[1].lower()
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in (".jpg", ".jpeg") else []
        try:
            ok, data = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
        except cv2.error as exc:
            raise UnweatherError(f"cannot write {path}: {str(exc).strip().splitlines()[-1]}.") from None
        if not ok:
            raise UnweatherError(f"cannot write {path}: OpenCV cannot encode {ext} images.")
        # Written by Python rather than cv2.imwrite: a full disk is then reported as such (errno), and
        # through a temporary file, so a failed write leaves no half image behind.
        try:
            write_bytes_atomic(path, data.tobytes())
        except OSError as exc:
            raise _write_error(path, exc) from None
        self.frames_written += 1

    def discard(self) -> None:
        if not self.folder and self.frames_written == 0:
            try:
                os.remove(self.target)
            except OSError:
                pass
        elif self._created_folder:
            try:
                os.rmdir(self.target)  # only when still empty
            except OSError:
                pass
