"""Network sources that survive camera reboots and stalls, and network outputs for publishing.

`NetworkSource` pulls frames from an RTSP/RTMP/HTTP/SRT/UDP/TCP URL with PyAV. Every blocking call is
bounded: opening by `open_timeout`, each packet read by `read_timeout` (PyAV's `timeout=(open, read)`),
and a watchdog reopens the source when no frame has come for `stall_timeout` seconds, with
exponential backoff and a cap on restarts per minute. Frames keep one monotonic clock across
reconnects, so a recording of a camera that drops out stays one continuous file.

`open_output_container` opens an RTSP (RECORD), RTMP (FLV) or SRT (MPEG-TS) output with timeouts and
reports an unreachable receiver as one clear error.
"""

from __future__ import annotations

import collections
import enum
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from unweather.errors import UnweatherError
from unweather.media import url_scheme
from unweather.redact import redact

if TYPE_CHECKING:
    import av
    import av.container

logger = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "tcp")

# Output timestamps: 90 kHz, the RTP video clock, fine enough for any frame rate.
TIME_BASE = Fraction(1, 90_000)

# Source timestamps further than this from the arrival clock are treated as broken and re-anchored.
_RESYNC_SECONDS = 2.0

_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443}


def is_network_url(spec: str) -> bool:
    """Whether `spec` is a URL (`unweather.media.is_url`) that `NetworkSource` reads (rtsp, rtmp, http(s),
    srt, udp, tcp)."""
    return url_scheme(str(spec)) in NETWORK_SCHEMES


@dataclass
class NetworkOptions:
    """Timeouts and reconnection policy of a network source or output (seconds).

    A source that has streamed reconnects with backoff until `give_up_after` seconds without a
    frame; one that has never delivered a frame (wrong host, port, path or password) gets
    `first_attempts` tries, each bounded by `open_timeout`, so a mistyped URL fails in seconds.
    """

    open_timeout: float = 10.0
    read_timeout: float = 10.0
    stall_timeout: float = 20.0
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    max_restarts_per_minute: int = 10
    give_up_after: float = 300.0
    rtsp_transport: str = "tcp"
    first_attempts: int = 3

    def __post_init__(self) -> None:
        for name in ("open_timeout", "read_timeout", "stall_timeout", "backoff_initial", "backoff_max",
                     "give_up_after"):
            if not getattr(self, name) > 0:
                raise UnweatherError(f"{name} must be a positive number of seconds, not {getattr(self, name)}.")
        if self.max_restarts_per_minute < 1:
            raise UnweatherError("max_restarts_per_minute must be at least 1.")
        if self.first_attempts < 1:
            raise UnweatherError("first_attempts must be at least 1.")
        if self.rtsp_transport not in ("tcp", "udp", "udp_multicast", "http", "https"):
            raise UnweatherError(
                f"rtsp_transport must be tcp, udp, udp_multicast, http or https, not {self.rtsp_transport!r}.")


class SourceState(enum.Enum):
    """Where a `NetworkSource` is in its life."""

    NEW = "new"
    CONNECTING = "connecting"
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"


class _Stall(Exception):
    """No frame within the stall timeout although the connection is open."""


def _permanent_errors() -> tuple[type[BaseException], ...]:
    import av

    # Answers that retrying cannot change while the source has never worked: a wrong path,
    # wrong credentials, or a protocol FFmpeg lacks.
    return (av.error.HTTPNotFoundError, av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError,
            av.error.HTTPBadRequestError, av.error.ProtocolNotFoundError)


def _describe(exc: BaseException) -> str:
    """One redacted phrase for an exception from PyAV or the OS."""
    import av

    if isinstance(exc, av.error.ExitError):
        return "timed out"
    if isinstance(exc, _Stall):
        return str(exc)
    strerror = getattr(exc, "strerror", None)
    text = strerror if isinstance(strerror, str) and strerror else str(exc) or type(exc).__name__
    return redact(text)


class NetworkSource:
    """Decoded video frames from a network URL, reconnecting across drop-outs.

    Args:
        url: rtsp://, rtmp://, http(s)://, srt://, udp:// or tcp:// URL; credentials in it never
            reach a log or an error message.
        options: timeouts and reconnection policy.
        stop_event: set it (from any thread) to end `frames()` cleanly within about `read_timeout`.

    `frames()` yields `(frame, arrival)` pairs: `frame.pts` counts in `TIME_BASE` (1/90000 s) on a
    clock that starts at 0 and only increases across reconnects; `arrival` is the `time.monotonic()`
    at which the frame's packet was read.
    """

    def __init__(self, url: str, options: NetworkOptions | None = None,
                 stop_event: threading.Event | None = None) -> None:
        if not is_network_url(url):
            raise UnweatherError(f"not a network URL: {redact(url)}")
        self.url = url
        self.options = options or NetworkOptions()
        self.stop_event = stop_event or threading.Event()
        self.restarts = 0
        self.frames_read = 0
        self.corrupt_packets = 0
        self.state = SourceState.NEW
        self.width: int | None = None
        self.height: int | None = None
        self.rate: Fraction | None = None
        self._container: av.container.InputContainer | None = None
        self._restart_times: collections.deque[float] = collections.deque()
        self._clock_start: float | None = None
        self._last_time = -1.0
        self._anchor: float | None = None
        self._reader: int | None = None

    @property
    def redacted_url(self) -> str:
        """The URL with any credentials replaced by `***`."""
        return redact(self.url)

    def close(self) -> None:
        """Stop reading and release the connection.

        From another thread than the one iterating `frames()`, this only sets `stop_event`: that
        thread closes the connection itself within about `read_timeout`, since closing a container
        under a blocked read would free memory FFmpeg is still using.
        """
        self.stop_event.set()
        if self._reader in (None, threading.get_ident()):
            self._close_container()
            self.state = SourceState.STOPPED

    def frames(self) -> Iterator[tuple[av.VideoFrame, float]]:
        """Yield `(frame, arrival_time)` until `stop_event` is set.

        Raises:
            UnweatherError: the source could not be opened for a reason retrying cannot fix (wrong
                path or credentials), gave no frame in `first_attempts` tries, or no frame came for
                `give_up_after` seconds.
        """
        import av

        opts = self.options
        last_frame_at = time.monotonic()
        backoff = opts.backoff_initial
        ever_streamed = False
        attempts = 0
        self._reader = threading.get_ident()
        try:
            while not self.stop_event.is_set():
                self.state = SourceState.CONNECTING if not ever_streamed else SourceState.RECONNECTING
                reason = "the stream ended"
                try:
                    container = self._open(last_frame_at + opts.give_up_after)
                    for item in self._decode(container):
                        if not ever_streamed:
                            logger.info("receiving %s (%sx%s)", self.redacted_url, self.width, self.height)
                        elif self.state is not SourceState.STREAMING:
                            logger.warning("%s: receiving again after %.1f s without frames", self.redacted_url,
                                           item[1] - last_frame_at)
                        ever_streamed = True
                        self.state = SourceState.STREAMING
                        last_frame_at = item[1]
                        backoff = opts.backoff_initial
                        yield item
                except _permanent_errors() as exc:
                    if not ever_streamed:
                        raise UnweatherError(f"cannot open {self.redacted_url}: {_describe(exc)}.") from None
                    reason = _describe(exc)
                except (av.error.FFmpegError, OSError, ValueError, _Stall) as exc:
                    reason = _describe(exc)
                finally:
                    self._close_container()
                if self.stop_event.is_set():
                    break
                attempts += 1
                if not ever_streamed and attempts >= opts.first_attempts:
                    # Never a frame: a wrong address, path or password, not a camera that dropped out.
                    tries = f"{attempts} attempt{'s' * (attempts > 1)}"
                    raise UnweatherError(f"no frame from {self.redacted_url} after {tries} to open it "
                                         f"(last error: {reason}); giving up.")
                deadline = last_frame_at + opts.give_up_after
                if time.monotonic() >= deadline:
                    silent = time.monotonic() - last_frame_at
                    raise UnweatherError(
                        f"no frame from {self.redacted_url} for {silent:.0f} s ({reason}); giving up.")
                self._wait_for_restart_slot(deadline)
                if self.stop_event.is_set():
                    break
                delay = min(backoff, max(0.0, deadline - time.monotonic()))
                self.state = SourceState.RECONNECTING
                if ever_streamed:
                    self.restarts += 1
                    logger.warning("%s: %s; reconnecting in %.1f s (restart %d)", self.redacted_url, reason,
                                   delay, self.restarts)
                else:
                    logger.info("%s: %s; trying again in %.1f s (attempt %d of %d)", self.redacted_url, reason,
                                delay, attempts + 1, opts.first_attempts)
                if self.stop_event.wait(delay):
                    break
                backoff = min(backoff * 2.0, opts.backoff_max)
        finally:
            self._close_container()
            self._reader = None
            self.state = SourceState.STOPPED

    def _wait_for_restart_slot(self, deadline: float) -> None:
        """Hold back while `max_restarts_per_minute` restarts happened in the last minute, up to `deadline`."""
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > 60.0:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.options.max_restarts_per_minute:
            wait = 60.0 - (now - self._restart_times[0])
            # Never wait past the give-up deadline: the attempt after it is the last one.
            wait = min(wait, max(0.0, deadline - now))
            logger.warning("%s: %d restarts in the last minute; waiting %.1f s", self.redacted_url,
                           len(self._restart_times), wait)
            self.stop_event.wait(wait)
        self._restart_times.append(time.monotonic())

    def _open(self, deadline: float) -> av.container.InputContainer:
        import av

        opts = self.options
        # The last attempt before giving up gets only the time that is left.
        open_timeout = min(opts.open_timeout, max(0.2, deadline - time.monotonic()))
        options = {"fflags": "discardcorrupt"}
        scheme = url_scheme(self.url)
        if scheme in ("rtsp", "rtsps"):
            options["rtsp_transport"] = opts.rtsp_transport
            # The SDP already names the streams: probing 0.5 s instead of FFmpeg's default halves
            # the time to (re)connect and the burst of stale frames that probing buffers.
            options["analyzeduration"] = "500000"
        elif scheme in ("http", "https"):
            options["reconnect"] = "0"  # we reconnect ourselves, with our own backoff and limits
        logger.debug("opening %s", self.redacted_url)
        started = time.monotonic()
        try:
            container = av.open(self.url, mode="r", options=options, timeout=(open_timeout, opts.read_timeout))
        except (av.error.ExitError, av.error.InvalidDataError) as exc:
            # An interrupted open surfaces as whatever FFmpeg was parsing; say what happened instead.
            if time.monotonic() - started >= 0.9 * open_timeout:
                raise _Stall(f"no answer within {open_timeout:.3g} s") from exc
            raise
        self._container = container
        if not container.streams.video:
            raise UnweatherError(f"{self.redacted_url} has no video stream.")
        stream = container.streams.video[0]
        # Slice threads add no delay; frame threads would hold back one frame per thread.
        stream.codec_context.thread_type = "SLICE"
        if self.width is None and stream.codec_context.width:
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
        if self.rate is None:
            rate = stream.average_rate or stream.guessed_rate
            self.rate = Fraction(rate) if rate else None
        self._anchor = None
        return container

    def _decode(self, container: av.container.InputContainer) -> Iterator[tuple[av.VideoFrame, float]]:
        import av

        stream = container.streams.video[0]
        last_frame_at = time.monotonic()
        warned_size = False
        for packet in container.demux(stream):
            if self.stop_event.is_set():
                return
            arrival = time.monotonic()
            if packet.is_corrupt:
                self.corrupt_packets += 1
                continue
            try:
                decoded = stream.codec_context.decode(packet)
            except av.error.InvalidDataError:
                self.corrupt_packets += 1
                decoded = []
            for frame in decoded:
                if self.width is None:
                    self.width, self.height = frame.width, frame.height
                elif (frame.width, frame.height) != (self.width, self.height):
                    # One continuous output: a camera that comes back at another size is scaled back.
                    if not warned_size:
                        logger.warning("%s: frame size changed to %dx%d; scaling to %dx%d", self.redacted_url,
                                       frame.width, frame.height, self.width, self.height)
                        warned_size = True
                    frame = frame.reformat(width=self.width, height=self.height)
                self._stamp(frame, arrival)
                self.frames_read += 1
                last_frame_at = arrival
                yield frame, arrival
            if time.monotonic() - last_frame_at > self.options.stall_timeout:
                raise _Stall(f"no frame for {self.options.stall_timeout:.0f} s")

    def _stamp(self, frame: av.VideoFrame, arrival: float) -> None:
        """Give `frame` a pts on one increasing clock: the source's own where sane, else arrival time.

        Each connection's first frame, and any frame whose own timestamp is missing, goes back in
        time or strays more than `_RESYNC_SECONDS` from the arrival clock, is placed at the arrival
        time, but never closer than one frame interval after the previous frame; the frames that
        follow keep the source's spacing from there.
        """
        if self._clock_start is None:
            self._clock_start = arrival
        wall = arrival - self._clock_start
        interval = 1.0 / float(self.rate) if self.rate else 0.04
        earliest = max(wall, self._last_time + interval) if self._last_time >= 0 else wall
        source = frame.time if frame.pts is not None and frame.time_base is not None else None
        if source is None:
            t = earliest
        else:
            t = source + self._anchor if self._anchor is not None else None
            if t is None or t <= self._last_time or abs(t - wall) > _RESYNC_SECONDS:
                self._anchor = earliest - source
                t = earliest
        tick = float(TIME_BASE)
        t = max(t, self._last_time + tick)
        self._last_time = t
        frame.pts = round(t / tick)
        frame.time_base = TIME_BASE

    def _close_container(self) -> None:
        import av

        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                logger.debug("closing %s: %s", self.redacted_url, _describe(exc))


def _probe_tcp(url: str, timeout: float) -> None:
    """Fail early and clearly when nothing listens where a TCP-based output wants to connect."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        raise UnweatherError(f"invalid port in {redact(url)}.") from None
    if not parts.hostname or port is None:
        raise UnweatherError(f"no host in {redact(url)}.")
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise UnweatherError(f"cannot reach the receiver at {redact(url)}: {reason}.") from None


def open_output_container(url: str, options: NetworkOptions | None = None, *,
                          probe: bool = True) -> av.container.OutputContainer:
    """Open a container that publishes to a media server: rtsp(s):// (RECORD), rtmp(s):// (FLV), srt://.

    FFmpeg connects only when the first packet is muxed; with `probe` (the default) the receiver
    is checked with a TCP connection first (RTSP, RTMP), so an unreachable one is one clear error
    here rather than at the first frame. Turn `probe` off for one-shot listeners such as
    `ffmpeg -listen 1`, which take the probe for their one client. Socket reads and writes are
    bounded by `read_timeout` where FFmpeg lets them be (RTSP, SRT). Wrap errors from `mux` and
    `close` with `output_error`.

    Raises:
        UnweatherError: unsupported scheme, unreachable receiver, or no support in this FFmpeg build.
    """
    import av

    opts = options or NetworkOptions()
    scheme = url_scheme(url)
    container_options: dict[str, str] = {}
    if scheme in ("rtsp", "rtsps"):
        fmt = "rtsp"
        transport = opts.rtsp_transport if opts.rtsp_transport in ("tcp", "udp") else "tcp"
        container_options = {"rtsp_transport": transport, "timeout": str(int(opts.read_timeout * 1e6))}
    elif scheme in ("rtmp", "rtmps"):
        # FFmpeg's RTMP "timeout" option means *listen*: the TCP connect has its own 5 s bound.
        fmt = "flv"
    elif scheme == "srt":
        fmt = "mpegts"
        query = urlsplit(url).query
        extra = []
        if "connect_timeout=" not in query:
            extra.append(f"connect_timeout={int(opts.open_timeout * 1000)}")
        if "timeout=" not in query.replace("connect_timeout=", ""):
            extra.append(f"timeout={int(opts.read_timeout * 1e6)}")
        if extra:
            url = url + ("&" if "?" in url else "?") + "&".join(extra)
    else:
        raise UnweatherError(f"cannot publish to {redact(url)}: use an rtsp://, rtmp:// or srt:// URL.")
    if probe and scheme != "srt":
        _probe_tcp(url, opts.open_timeout)
    try:
        return av.open(url, mode="w", format=fmt, container_options=container_options)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise output_error(url, exc) from None


def output_error(url: str, exc: BaseException) -> UnweatherError:
    """One clear, redacted error for a failure while publishing to `url` (from `mux` or `close`)."""
    import av

    if isinstance(exc, av.error.ProtocolNotFoundError):
        scheme = url_scheme(url)
        return UnweatherError(f"this FFmpeg build (PyAV) cannot publish to {scheme}:// URLs.")
    if isinstance(exc, UnweatherError):
        return exc
    return UnweatherError(f"publishing to {redact(url)} failed: {_describe(exc)}.")
