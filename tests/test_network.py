"""Network sources and outputs against real servers on loopback: timeouts, reconnection, credentials."""

from __future__ import annotations

import io
import itertools
import json
import logging
import socket
import subprocess
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from netservers import (
    FfmpegListener,
    RtspServer,
    free_port,
    requires_gst_rtsp,
    serve_receiver,
    serve_rtsp,
    serve_silent_tcp,
)

from unweather.errors import UnweatherError
from unweather.stream.network import (
    TIME_BASE,
    NetworkOptions,
    NetworkSource,
    is_network_url,
    open_output_container,
    output_error,
)

FAST = {"open_timeout": 1.0, "read_timeout": 1.0, "stall_timeout": 2.0, "backoff_initial": 0.1,
        "backoff_max": 0.5}
SECRET = "s3cr3t-pw"


@pytest.fixture
def rtsp_server(tmp_path):
    yield from serve_rtsp(tmp_path)


@pytest.fixture
def rtsp_receiver(tmp_path):
    yield from serve_receiver(tmp_path)


@pytest.fixture
def silent_tcp_server():
    yield from serve_silent_tcp()


def _take(source: NetworkSource, count: int, on_frame=None) -> list[tuple[int, float]]:
    """Read `count` frames; return their (pts, arrival) pairs."""
    out = []
    for frame, arrival in source.frames():
        assert frame.time_base == TIME_BASE
        out.append((frame.pts, arrival))
        if on_frame:
            on_frame(len(out))
        if len(out) >= count:
            break
    return out


def _assert_increasing(stamps: list[tuple[int, float]]) -> None:
    pts = [p for p, _ in stamps]
    arrivals = [a for _, a in stamps]
    assert all(b > a for a, b in itertools.pairwise(pts)), "pts must strictly increase"
    assert all(b >= a for a, b in itertools.pairwise(arrivals)), "arrival times must not go back"


def _ts_clip(frames: int = 20, size: tuple[int, int] = (64, 48)) -> bytes:
    """An H.264 MPEG-TS clip in memory, a moving gradient."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=25, options={"preset": "ultrafast", "g": "5"})
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[..., 0] = (np.arange(size[0]) * 4 + i * 9) % 256
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


class _TsServer:
    """Serves a byte string to every TCP connection, then closes it: a source that keeps ending."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.served = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.sendall(self.payload)
                    self.served += 1
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the serving thread
        except OSError:
            pass
        self._sock.close()
        self._thread.join(5)


# ---------------------------------------------------------------- no server needed


def test_is_network_url():
    for url in ("rtsp://cam/1", "RTSPS://x", "rtmp://a/b", "http://x/y.m3u8", "https://x", "srt://h:1",
                "udp://@:1234", "tcp://h:1"):
        assert is_network_url(url), url
    for spec in ("clip.mp4", "/dev/video0", "folder/", "file:///tmp/a.mp4", "C:\\clip.mp4", "ftp://x"):
        assert not is_network_url(spec), spec


def test_options_are_checked():
    with pytest.raises(UnweatherError, match="read_timeout"):
        NetworkOptions(read_timeout=0)
    with pytest.raises(UnweatherError, match="rtsp_transport"):
        NetworkOptions(rtsp_transport="carrier-pigeon")
    with pytest.raises(UnweatherError, match="not a network URL"):
        NetworkSource("clip.mp4")


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_silent_server_times_out_then_gives_up(silent_tcp_server, caplog, scheme):
    url = f"{scheme}://admin:{SECRET}@127.0.0.1:{silent_tcp_server.port}/stream"
    source = NetworkSource(url, NetworkOptions(**{**FAST, "open_timeout": 0.5, "read_timeout": 0.5},
                                               give_up_after=60.0))
    start = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="unweather"), \
            pytest.raises(UnweatherError, match="giving up") as info:
        _take(source, 1)
    elapsed = time.monotonic() - start
    # Never a frame: three tries bounded by the open timeout, not the minute of give_up_after.
    assert elapsed < 6.0
    assert "after 3 attempts" in str(info.value)
    assert source.restarts == 0  # nothing was ever connected, so nothing was reconnected
    assert len(silent_tcp_server.connections) == 3, "one connection per attempt"
    assert SECRET not in str(info.value) and SECRET not in caplog.text
    assert "***@127.0.0.1" in str(info.value)
    assert "\n" not in str(info.value)


def test_stop_event_ends_a_blocked_open(silent_tcp_server):
    stop = threading.Event()
    source = NetworkSource(f"rtsp://127.0.0.1:{silent_tcp_server.port}/x",
                           NetworkOptions(**{**FAST, "open_timeout": 1.0}), stop_event=stop)
    done = threading.Event()
    errors = []

    def read() -> None:
        try:
            _take(source, 1)
        except (UnweatherError, av.error.FFmpegError, OSError) as exc:
            errors.append(exc)
        done.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    time.sleep(0.3)
    stop.set()
    assert done.wait(2.5), "frames() did not end after stop_event"
    assert not errors


def test_restarting_source_with_corrupt_bytes_keeps_one_clock():
    payload = bytearray(_ts_clip(frames=20))
    # Garbage in the middle of the stream: the demuxer and decoder must skip it, not stop.
    mid = len(payload) // 2
    payload[mid:mid + 600] = bytes((i * 37) % 256 for i in range(600))
    server = _TsServer(bytes(payload))
    try:
        source = NetworkSource(f"tcp://127.0.0.1:{server.port}", NetworkOptions(**FAST, give_up_after=10))
        stamps = _take(source, 40)
    finally:
        server.close()
    # Each connection ends after one clip, whose own timestamps start again at the same value.
    assert source.restarts >= 2 and server.served >= 2
    _assert_increasing(stamps)
    assert (source.width, source.height) == (64, 48)


def test_closed_port_fails_after_three_quick_attempts(caplog):
    port = free_port()
    source = NetworkSource(f"rtsp://admin:{SECRET}@127.0.0.1:{port}/cam", NetworkOptions(give_up_after=300))
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger="unweather"), pytest.raises(UnweatherError) as info:
        _take(source, 1)
    assert time.monotonic() - start < 5.0  # backoff 0.5 + 1 s, not the 300 s of give_up_after
    assert str(info.value) == (f"no frame from rtsp://***@127.0.0.1:{port}/cam after 3 attempts to open it "
                               "(last error: Connection refused); giving up.")
    assert SECRET not in caplog.text and "WARNING" not in {r.levelname for r in caplog.records}


def test_a_source_that_streamed_keeps_reconnecting_until_give_up_after():
    server = _TsServer(_ts_clip(frames=10))
    # After the first clip, nothing listens any more: a camera that streamed, then went away.
    served_once = threading.Thread(target=lambda: (_wait(lambda: server.served >= 1, 10), server.close()))
    served_once.start()
    source = NetworkSource(f"tcp://127.0.0.1:{server.port}", NetworkOptions(**FAST, give_up_after=3.0))
    frames = 0
    start = None
    with pytest.raises(UnweatherError, match=r"for \d+ s .*giving up"):
        for _ in source.frames():
            frames += 1
            start = time.monotonic()
    served_once.join(10)
    assert frames >= 5
    # Far more tries than the three a source that never streamed gets, over give_up_after seconds.
    assert source.restarts > 3
    assert time.monotonic() - start >= 2.5


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_publish_to_unreachable_receiver_is_one_clear_error():
    port = free_port()
    for url in (f"rtsp://user:{SECRET}@127.0.0.1:{port}/out", f"rtmp://user:{SECRET}@127.0.0.1:{port}/app/key"):
        start = time.monotonic()
        with pytest.raises(UnweatherError, match="cannot reach") as info:
            open_output_container(url, NetworkOptions(open_timeout=2.0))
        assert time.monotonic() - start < 3.0
        assert SECRET not in str(info.value)
    with pytest.raises(UnweatherError, match="rtsp://"):
        open_output_container("ftp://host/x")


# ---------------------------------------------------------------- a real RTSP server


@pytest.mark.rtsp
def test_pulls_frames_from_rtsp(rtsp_server):
    source = NetworkSource(rtsp_server.url(), NetworkOptions(**FAST))
    stamps = _take(source, 30)
    assert len(stamps) == 30
    _assert_increasing(stamps)
    assert (source.width, source.height) == (160, 96)
    assert source.rate == Fraction(25)
    assert source.restarts == 0
    # The stream's own clock at 25 fps is kept: 1/25 s between frames.
    steps = np.diff([p for p, _ in stamps[5:]])
    assert np.median(steps) == pytest.approx(90_000 / 25, rel=0.05)


@pytest.mark.rtsp
def test_server_killed_and_restarted_mid_stream(rtsp_server, caplog):
    source = NetworkSource(rtsp_server.url(f"viewer:{SECRET}"), NetworkOptions(**FAST, give_up_after=20))
    restarted = threading.Event()

    def crash(n: int) -> None:
        if n == 20:
            rtsp_server.kill()
            # The camera comes back on the same port a moment later.
            threading.Timer(1.0, lambda: (rtsp_server.start(), restarted.set())).start()

    with caplog.at_level(logging.INFO, logger="unweather"):
        stamps = _take(source, 60, on_frame=crash)
    assert restarted.is_set()
    assert source.restarts >= 1
    _assert_increasing(stamps)
    # The outage shows as a gap on the output clock, not as a clock that starts again.
    gaps = np.diff([p for p, _ in stamps]) / 90_000
    assert gaps.max() > 0.8
    assert "reconnecting" in caplog.text
    assert SECRET not in caplog.text


@pytest.mark.rtsp
def test_stalled_server_is_reopened(rtsp_server, caplog):
    source = NetworkSource(rtsp_server.url(), NetworkOptions(**FAST, give_up_after=20))

    def stall(n: int) -> None:
        if n == 15:
            rtsp_server.pause()
            # Longer than read_timeout: the read times out while the connection stays open.
            threading.Timer(3.0, rtsp_server.resume).start()

    with caplog.at_level(logging.WARNING, logger="unweather"):
        stamps = _take(source, 45, on_frame=stall)
    assert source.restarts >= 1
    _assert_increasing(stamps)
    assert "timed out" in caplog.text


@pytest.mark.rtsp
def test_stop_event_ends_streaming_promptly(rtsp_server):
    stop = threading.Event()
    source = NetworkSource(rtsp_server.url(), NetworkOptions(**FAST), stop_event=stop)
    start = None
    for count, _item in enumerate(source.frames(), 1):
        if count == 10:
            stop.set()
            start = time.monotonic()
        assert count < 40, "frames kept coming after stop_event"
    assert start is not None and time.monotonic() - start < 1.5
    assert source.restarts == 0


@pytest.mark.rtsp
def test_credentials_never_logged_or_raised(tmp_path, caplog):
    requires_gst_rtsp()
    server = RtspServer(tmp_path, user="viewer", password=SECRET).start()
    try:
        with pytest.raises(UnweatherError, match="401") as wrong:
            _take(NetworkSource(server.url("viewer:not-the-password"), NetworkOptions(**FAST)), 1)
        assert "not-the-password" not in str(wrong.value)
        source = NetworkSource(server.url(f"viewer:{SECRET}"), NetworkOptions(**FAST, give_up_after=1.5))
        with caplog.at_level(logging.DEBUG, logger="unweather"), \
                pytest.raises(UnweatherError, match="giving up") as gone:
            _take(source, 10_000, on_frame=lambda n: n == 5 and server.kill())
    finally:
        server.kill()
    assert source.frames_read >= 5
    assert SECRET not in caplog.text and SECRET not in str(gone.value)
    assert "viewer" not in caplog.text
    assert "***@127.0.0.1" in caplog.text


def _ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                          "-show_entries", "stream=codec_name,width,height,nb_read_frames", "-of", "json",
                          str(path)], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["streams"][0]


def _publish(out: av.container.OutputContainer, frames: int, rate: int = 50, paced: bool = True) -> None:
    stream = out.add_stream("libx264", rate=rate, options={"preset": "ultrafast", "tune": "zerolatency"})
    stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
    start = time.monotonic()
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(np.full((96, 160, 3), i * 5, np.uint8), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, rate)
        out.mux(stream.encode(frame))
        if paced:
            # A live publisher runs at its frame rate; the GStreamer receiver's jitter buffer expects that.
            time.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
    out.mux(stream.encode())
    if paced:
        time.sleep(0.3)
    out.close()


@pytest.mark.rtsp
def test_publish_to_rtsp_receiver(rtsp_receiver):
    sent = 40
    _publish(open_output_container(rtsp_receiver.url(), NetworkOptions(**FAST)), sent)
    rtsp_receiver.stop()
    info = _ffprobe(rtsp_receiver.path)
    assert (info["codec_name"], info["width"], info["height"]) == ("h264", 160, 96)
    assert int(info["nb_read_frames"]) >= sent - 2


def test_publish_to_rtmp_listener(tmp_path):
    listener = FfmpegListener(tmp_path, tmp_path / "received.flv").start()
    try:
        _publish(open_output_container(listener.url, NetworkOptions(**FAST), probe=False), 30, paced=False)
        assert listener.wait() == 0, listener.log_path.read_text()
    finally:
        listener.kill()
    info = _ffprobe(listener.path)
    assert (info["codec_name"], info["width"], info["height"]) == ("h264", 160, 96)
    assert int(info["nb_read_frames"]) == 30


def test_publish_error_is_one_clear_line(tmp_path):
    # Nothing listens and the probe is off: the failure comes at the first packet, and is wrapped.
    url = f"rtmp://user:{SECRET}@127.0.0.1:{free_port()}/live/stream"
    out = open_output_container(url, NetworkOptions(**FAST), probe=False)
    with pytest.raises((av.error.FFmpegError, OSError)) as info:
        _publish(out, 5, paced=False)
    error = output_error(url, info.value)
    assert isinstance(error, UnweatherError)
    assert SECRET not in str(error) and "***@127.0.0.1" in str(error)
