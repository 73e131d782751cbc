"""Where frames come from: video files, images, folders of images, capture devices and network URLs.

Every source yields `SourceFrame`s (a decoded PyAV frame or an RGB array, with its timestamp and
arrival time) and reports bad input as one `UnweatherError` sentence.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from unweather.errors import UnweatherError
from unweather.media import IMAGE_SUFFIXES, is_image_file, is_url, read_rgb, url_scheme
from unweather.redact import redact

if TYPE_CHECKING:
    import av
    import numpy as np

logger = logging.getLogger(__name__)

# Consecutive undecodable packets after which a file is taken as broken rather than damaged.
_MAX_BAD_PACKETS = 100
# Frames a file may fall short of what its container announces without being called truncated
# (edit lists and rounding); the larger of the two.
_SHORT_FRAMES, _SHORT_FRACTION = 2, 0.02


@dataclass
class SourceFrame:
    """One input frame.

    Attributes:
        payload: a decoded `av.VideoFrame`, or an RGB uint8 array (H, W, 3) for images.
        pts: presentation timestamp in `time_base`.
        time_base: the unit of `pts`.
        arrival: `time.monotonic()` when it arrived (packet read, or its scheduled time for paced files).
        name: the file name, for images.
    """

    payload: Any
    pts: int
    time_base: Fraction
    arrival: float
    name: str | None = None


class Source:
    """Base of every source. Attributes are known after opening unless noted.

    Attributes:
        description: what to call it in messages (URLs redacted).
        live: a live source (network, capture device): latency matters more than completeness.
        images: frames are RGB images with names.
        width, height: frame size (None until the first frame for some network sources).
        time_base, rate: timestamp unit and nominal frame rate (None when unknown).
        total: number of frames when known (for progress and ETA).
        audio_streams: input audio streams whose packets are copied (files only).
        audio_packets: demuxed audio packets waiting for the writer (filled while decoding).
        finished: the source ended by itself (not stopped early).
        frames_expected: frames the container announces for what is read (None when unknown).
        truncated: the input ended before what its container announces (cut short or damaged).
        corrupt_packets: corrupt or undecodable packets skipped so far.
        reconnections: reconnections so far (network sources).
    """

    description = ""
    live = False
    images = False

    def __init__(self) -> None:
        self.width: int | None = None
        self.height: int | None = None
        self.time_base: Fraction | None = None
        self.rate: Fraction | None = None
        self.total: int | None = None
        self.audio_streams: list[Any] = []
        self.audio_packets: collections.deque[Any] = collections.deque()
        self.finished = False
        self.frames_expected: int | None = None
        self.truncated = False
        self.corrupt_packets = 0

    @property
    def reconnections(self) -> int:
        return 0

    def frames(self) -> Iterator[SourceFrame]:
        """Yield frames until the source ends or `stop()` is called."""
        raise NotImplementedError

    def stop(self) -> None:
        """Ask `frames()` to end soon (from any thread)."""

    def close(self) -> None:
        """Release what the source holds (from the thread that iterated it)."""


def check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    """Refuse empty or oversized frames with one sentence."""
    if width <= 0 or height <= 0:
        raise UnweatherError(f"cannot read {what}: its picture size is missing or too large for FFmpeg.")
    if width * height > max_pixels:
        raise UnweatherError(f"{what} has {width}x{height} frames, more than the {max_pixels:,} pixels allowed "
                             "(max_pixels).")


def _reason(exc: BaseException) -> str:
    strerror = getattr(exc, "strerror", None)
    return redact(strerror if isinstance(strerror, str) and strerror else str(exc) or type(exc).__name__)


def _av_errors() -> tuple[type[BaseException], ...]:
    import av

    return (av.error.FFmpegError, OSError, ValueError)


def open_video_file(path: str, what: str, **kwargs: Any) -> av.container.InputContainer:
    """`av.open` for reading, with every failure turned into one sentence."""
    import av

    try:
        return av.open(path, mode="r", **kwargs)
    except FileNotFoundError:
        raise UnweatherError(f"no such file: {what}.") from None
    except IsADirectoryError:
        raise UnweatherError(f"{what} is a folder without images.") from None
    except PermissionError:
        raise UnweatherError(f"cannot read {what}: permission denied.") from None
    except av.error.InvalidDataError:
        raise UnweatherError(f"cannot read {what}: it is not a video or image FFmpeg understands "
                             "(corrupt, truncated or another kind of file).") from None
    except av.error.EOFError:
        raise UnweatherError(f"cannot read {what}: it ends before any frame (empty or truncated).") from None
    except _av_errors() as exc:
        raise UnweatherError(f"cannot read {what}: {_reason(exc)}.") from None


class FileSource(Source):
    """A video file (anything FFmpeg reads). With `pace`, frames come at their own rate, like a camera.

    Args:
        path: the file.
        want_audio: demux audio packets into `audio_packets` for copying.
        pace: release frames at their timestamps (live mode on a file).
        max_pixels: larger frames are refused.
        start: seconds from the file's start to seek to; video and audio timestamps are then
            shifted so the output's clock starts there at 0.
        duration: seconds to read (from `start`); audio packets are cut at the same time.
    """

    start = 0.0
    duration: float | None = None

    def __init__(self, path: str, want_audio: bool = True, pace: bool = False, max_pixels: int = 8192 * 8192,
                 stop_event: threading.Event | None = None, start: float | None = None,
                 duration: float | None = None) -> None:
        super().__init__()
        self.path = path
        self.description = path
        self.start = start or 0.0
        self.duration = duration
        self.live = pace
        self._stop = stop_event or threading.Event()
        self._reading = self._close_pending = False
        self.container = open_video_file(path, path)
        try:
            self._setup(want_audio, max_pixels)
        except BaseException:
            self.container.close()
            raise

    def _setup(self, want_audio: bool, max_pixels: int) -> None:
        container = self.container
        if not container.streams.video:
            raise UnweatherError(f"{self.path} has no video stream.")
        stream = container.streams.video[0]
        self.stream = stream
        ctx = stream.codec_context
        if ctx is None or not getattr(ctx, "codec", None):
            raise UnweatherError(f"{self.path}: its video codec cannot be decoded by this FFmpeg build.")
        codec_name = ctx.codec.name
        if not ctx.codec.is_decoder:
            raise UnweatherError(f"{self.path}: no decoder for its video codec {codec_name}.")
        ctx.thread_type = "AUTO"
        if ctx.width and ctx.height:
            check_size(ctx.width, ctx.height, max_pixels, self.path)
            self.width, self.height = ctx.width, ctx.height
        self.max_pixels = max_pixels
        self.time_base = stream.time_base or Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate
        self.rate = Fraction(rate) if rate else None
        seconds = None
        if stream.duration:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration:
            seconds = container.duration / 1_000_000
        # What the container announces: its frame count, or its duration times the rate; the smaller
        # when both are known (an edit list may hide frames the count includes).
        announced = [n for n in (stream.frames or None, round(seconds * float(self.rate)) if seconds and self.rate
                                 else None) if n]
        total = min(announced) if announced else None
        if self.start and seconds is not None and self.start >= seconds:
            raise UnweatherError(f"--start {self.start:g} s is past the end of {self.path} ({seconds:.2f} s long).")
        if (self.start or self.duration) and self.rate:
            first = round(self.start * float(self.rate))
            end = round((self.start + self.duration) * float(self.rate)) if self.duration else None
            if total is not None:
                end = total if end is None else min(end, total)
            total = max(0, end - first) if end is not None else None
        self.total = self.frames_expected = total or None
        if want_audio:
            self.audio_streams = [s for s in container.streams.audio]

    def stop(self) -> None:
        self._stop.set()

    def _window(self) -> tuple[int | None, int | None, float]:
        """The first pts to keep, the first pts past the end (None: unbounded) and the clock shift (s)."""
        tb = self.time_base
        base = self.stream.start_time or 0
        first = base + round(self.start / tb) if self.start else None
        end = (first if first is not None else base) + round(self.duration / tb) if self.duration else None
        return first, end, float(first * tb) if first is not None else 0.0

    def _seek(self, pts: int) -> None:
        import av

        try:
            self.container.seek(pts, stream=self.stream, backward=True, any_frame=False)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise UnweatherError(f"cannot seek to {self.start:g} s in {self.path}: {_reason(exc)}.") from None

    def _keep_audio(self, packet: Any, first_s: float | None, end_s: float | None, shift_s: float) -> bool:
        """Whether an audio packet falls in the window; shifts it onto the output's clock."""
        t = float(packet.pts * packet.time_base)
        if (first_s is not None and t < first_s) or (end_s is not None and t >= end_s):
            return False
        if shift_s:
            delta = round(shift_s / packet.time_base)
            packet.pts -= delta
            if packet.dts is not None:
                packet.dts -= delta
        return True

    def frames(self) -> Iterator[SourceFrame]:
        import av

        stream = self.stream
        streams = [stream, *self.audio_streams]
        audio_index = {s.index for s in self.audio_streams}
        interval = (1 / self.rate / self.time_base) if self.rate else Fraction(1, 25) / self.time_base
        first_pts, end_pts, shift_s = self._window()
        first_s = shift_s if first_pts is not None else None
        end_s = float(end_pts * self.time_base) if end_pts is not None else None
        shift = first_pts or 0
        self._reading = True
        last_pts: int | None = None
        count = bad = 0
        warned_size = warned_bad = False
        started = first_time = None
        window_done = False  # the last frame of --duration was read
        try:
            if first_pts is not None:
                self._seek(first_pts)
            packets = self.container.demux(streams)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.EOFError:
                    break
                except _av_errors() as exc:
                    if count == 0:
                        raise UnweatherError(f"cannot read {self.path}: {_reason(exc)}.") from None
                    logger.debug("%s ends early (%s) after %d frames", self.path, _reason(exc), count)
                    self.truncated = True
                    break
                if self._stop.is_set():
                    return
                if packet.stream.index in audio_index:
                    if packet.size and packet.pts is not None:
                        if window_done and end_s is not None and packet.pts * packet.time_base >= end_s:
                            break  # the audio reached the end of the window too
                        if self._keep_audio(packet, first_s, end_s, shift_s):
                            self.audio_packets.append(packet)
                    continue
                if window_done:
                    if not audio_index:
                        break
                    continue  # still reading the audio that goes with the last frames
                corrupt = bool(packet.is_corrupt)
                try:
                    decoded = stream.decode(packet)
                    bad = 0
                except av.error.InvalidDataError as exc:
                    bad += 1
                    self.corrupt_packets += 1
                    if bad >= _MAX_BAD_PACKETS or (count == 0 and bad >= 10):
                        raise UnweatherError(f"cannot decode {self.path}: {_reason(exc)}.") from None
                    if not warned_bad:
                        logger.debug("%s: skipping undecodable packets (%s)", self.path, _reason(exc))
                        warned_bad = True
                    continue
                except av.error.FFmpegError as exc:
                    raise UnweatherError(f"cannot decode {self.path}: {_reason(exc)}.") from None
                self.corrupt_packets += corrupt
                for frame in decoded:
                    if first_pts is not None and frame.pts is not None and frame.pts < first_pts:
                        continue  # decoded from the keyframe before --start
                    if end_pts is not None and frame.pts is not None and frame.pts >= end_pts:
                        window_done = True
                        break
                    frame, warned_size = self._normalise(frame, warned_size)
                    pts = frame.pts - shift if frame.pts is not None else None
                    if pts is None:
                        pts = 0 if last_pts is None else last_pts + int(interval)
                    if last_pts is not None and pts <= last_pts:
                        pts = last_pts + 1  # encoders need strictly increasing timestamps
                    last_pts = pts
                    arrival = time.monotonic()
                    if self.live:
                        t = float(pts * self.time_base)
                        if started is None:
                            started, first_time = arrival, t
                        due = started + (t - first_time)
                        if due > arrival and self._stop.wait(due - arrival):
                            return
                        arrival = max(arrival, due)
                    count += 1
                    yield SourceFrame(frame, pts, self.time_base, arrival)
            if not window_done:
                for frame in self._flush():
                    if first_pts is not None and frame.pts is not None and frame.pts < first_pts:
                        continue
                    if end_pts is not None and frame.pts is not None and frame.pts >= end_pts:
                        break
                    frame, warned_size = self._normalise(frame, warned_size)
                    pts = frame.pts - shift if frame.pts is not None else (last_pts or 0) + int(interval)
                    if last_pts is not None and pts <= last_pts:
                        pts = last_pts + 1
                    last_pts = pts
                    count += 1
                    yield SourceFrame(frame, pts, self.time_base, time.monotonic())
                expected = self.frames_expected
                if expected and count < expected - max(_SHORT_FRAMES, round(_SHORT_FRACTION * expected)):
                    self.truncated = True
            self.finished = True
        finally:
            # The container stays open until `close()`: the writer copies its audio streams' parameters.
            self._reading = False
            if self._close_pending:
                self.container.close()

    def _flush(self) -> list[Any]:
        import av

        try:
            return self.stream.decode(None)
        except av.error.EOFError:
            return []  # the demuxer's final empty packet already flushed the decoder
        except (av.error.FFmpegError, ValueError) as exc:
            logger.warning("%s: the last frames could not be decoded (%s)", self.path, _reason(exc))
            return []

    def _normalise(self, frame: av.VideoFrame, warned: bool) -> tuple[av.VideoFrame, bool]:
        if self.width is None:
            check_size(frame.width, frame.height, self.max_pixels, self.path)
            self.width, self.height = frame.width, frame.height
        elif (frame.width, frame.height) != (self.width, self.height):
            # One output of one size: frames that change size mid-stream are scaled back.
            if not warned:
                logger.warning("%s: frame size changes to %dx%d; scaling to %dx%d", self.path, frame.width,
                               frame.height, self.width, self.height)
                warned = True
            frame = frame.reformat(width=self.width, height=self.height)
        return frame, warned

    def close(self) -> None:
        if self._reading:
            # Closing under a running demuxer would free memory FFmpeg still uses: the reader closes it.
            self._close_pending = True
            self._stop.set()
        else:
            self.container.close()


class DeviceSource(FileSource):
    """A capture device (/dev/videoN) read with FFmpeg's v4l2 input: live, timestamps from arrival."""

    live = True

    def __init__(self, path: str, size: str | None = None, rate: float | None = None, input_format: str | None = None,
                 max_pixels: int = 8192 * 8192, stop_event: threading.Event | None = None) -> None:
        import av

        options = {}
        if size:
            options["video_size"] = size
        if rate:
            options["framerate"] = str(rate)
        if input_format:
            options["input_format"] = input_format
        Source.__init__(self)
        self.path = path
        self.description = path
        self._stop = stop_event or threading.Event()
        self._reading = self._close_pending = False
        try:
            self.container = av.open(path, mode="r", format="v4l2", options=options, timeout=(10.0, 10.0))
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise UnweatherError(f"cannot open the capture device {path}: {_reason(exc)}.") from None
        try:
            self._setup(False, max_pixels)
        except BaseException:
            self.container.close()
            raise
        self.live = True
        self.time_base = Fraction(1, 90000)

    def frames(self) -> Iterator[SourceFrame]:
        start = None
        last = -1
        for item in super().frames():
            # Device clocks jump on some drivers: timestamps come from arrival, on one increasing clock.
            if start is None:
                start = item.arrival
            pts = max(last + 1, round((item.arrival - start) * 90000))
            last = pts
            item.payload.pts = pts
            item.payload.time_base = self.time_base
            yield SourceFrame(item.payload, pts, self.time_base, item.arrival)


class ImageSource(Source):
    """One image file or a folder of images (sorted by name); other files are skipped with a warning."""

    images = True

    def __init__(self, path: str, rate: float = 25.0, max_pixels: int = 8192 * 8192,
                 stop_event: threading.Event | None = None) -> None:
        super().__init__()
        self.path = path
        self.description = path
        self.max_pixels = max_pixels
        self._stop = stop_event or threading.Event()
        self.rate = Fraction(rate).limit_denominator(1001)
        self.time_base = 1 / self.rate
        if os.path.isdir(path):
            names = sorted(os.listdir(path))
            files = [n for n in names if os.path.isfile(os.path.join(path, n)) and not n.startswith(".")]
            images = [n for n in files if is_image_file(n)]
            others = [n for n in files if n not in images]
            if others:
                shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
                logger.warning("%s: skipping %d file(s) that are not images: %s", path, len(others), shown)
            if not images:
                raise UnweatherError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
            self.files = [os.path.join(path, n) for n in images]
            self.single = False
        else:
            self.files = [path]
            self.single = True
        self.total = len(self.files)

    def stop(self) -> None:
        self._stop.set()

    def _read(self, path: str) -> np.ndarray:
        # Probe the header first: a huge or broken image is refused before any pixel is decoded.
        container = open_video_file(path, path)
        try:
            if not container.streams.video:
                raise UnweatherError(f"{path} is not an image.")
            ctx = container.streams.video[0].codec_context
            check_size(ctx.width, ctx.height, self.max_pixels, path)
        finally:
            container.close()
        return read_rgb(path)

    def frames(self) -> Iterator[SourceFrame]:
        index = 0
        for path in self.files:
            if self._stop.is_set():
                return
            try:
                rgb = self._read(path)
            except UnweatherError as exc:
                if self.single:
                    raise
                logger.warning("skipping %s", str(exc).rstrip("."))
                continue
            if self.width is None:
                self.height, self.width = rgb.shape[:2]
            yield SourceFrame(rgb, index, self.time_base, time.monotonic(), os.path.basename(path))
            index += 1
        self.finished = True


class NetworkInput(Source):
    """A network URL through `unweather.stream.network.NetworkSource` (reconnects, timeouts)."""

    live = True

    def __init__(self, url: str, options: Any = None, stop_event: threading.Event | None = None,
                 max_pixels: int = 8192 * 8192, own_event: bool = True) -> None:
        super().__init__()
        # The caller's stop event ends reads and reconnect waits at once; it is never set from here
        # (the caller may reuse it), so an internal stop then ends the run at the next frame.
        self._own_event = own_event or stop_event is None
        try:
            from unweather.stream.network import TIME_BASE, NetworkSource
        except ImportError:
            raise UnweatherError("network inputs are not available in this installation.") from None
        self.description = redact(url)
        self.max_pixels = max_pixels
        self.source = NetworkSource(url, options, stop_event=stop_event)
        self.time_base = TIME_BASE

    @property
    def reconnections(self) -> int:
        return self.source.restarts

    def stop(self) -> None:
        if self._own_event:
            self.source.stop_event.set()

    def frames(self) -> Iterator[SourceFrame]:
        first = True
        for frame, arrival in self.source.frames():
            if first:
                check_size(frame.width, frame.height, self.max_pixels, self.description)
                self.width, self.height = frame.width, frame.height
                if self.source.rate:
                    self.rate = self.source.rate
                first = False
            self.corrupt_packets = self.source.corrupt_packets
            yield SourceFrame(frame, frame.pts, self.time_base, arrival)
        self.corrupt_packets = self.source.corrupt_packets
        self.finished = not self.source.stop_event.is_set()

    def close(self) -> None:
        self.source.close()


def is_device(spec: str) -> bool:
    """Whether `spec` names a capture device (/dev/videoN)."""
    return spec.startswith("/dev/video")


def open_source(spec: str, config: Any, live: bool, want_audio: bool, stop_event: threading.Event,
                own_event: bool = True) -> Source:
    """The source `spec` names: URL, capture device, image, folder of images or video file.

    A network source waits on `stop_event` itself (`own_event`: it may also set it to stop); the
    others get a private event, and the pipeline checks `stop_event` between frames. `config.start`
    (seeking) applies to video files only; `config.duration` to files here, to the rest in the pipeline.
    """
    start = getattr(config, "start", None)
    if start and (is_url(spec) or is_device(spec) or os.path.isdir(spec) or is_image_file(spec)):
        kind = "a live source" if is_url(spec) or is_device(spec) else "images"
        raise UnweatherError(f"--start needs a video file, and {redact(spec)} is {kind}: nothing to seek in "
                             "(--duration still sets how long to record).")
    if is_url(spec):
        from unweather.stream.network import NETWORK_SCHEMES

        if url_scheme(spec) not in NETWORK_SCHEMES:
            raise UnweatherError(f"unsupported URL scheme: {redact(spec)}.")
        return NetworkInput(spec, config.network_options(), stop_event=stop_event, max_pixels=config.max_pixels,
                            own_event=own_event)
    stop_event = threading.Event()
    if is_device(spec):
        return DeviceSource(spec, config.device_size, config.device_rate, config.device_format,
                            max_pixels=config.max_pixels, stop_event=stop_event)
    if not os.path.exists(spec):
        raise UnweatherError(f"no such file or folder: {spec}.")
    if os.path.isdir(spec) or is_image_file(spec):
        return ImageSource(spec, rate=config.image_rate, max_pixels=config.max_pixels, stop_event=stop_event)
    return FileSource(spec, want_audio=want_audio, pace=live, max_pixels=config.max_pixels, stop_event=stop_event,
                      start=start, duration=getattr(config, "duration", None))
