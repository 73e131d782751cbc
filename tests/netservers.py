"""Real servers on loopback for the network tests: an RTSP server, an RTSP receiver, a silent TCP server.

The RTSP server and receiver are `tests/rtsp_server.py` run by the system python3, which has
GStreamer's RTSP server bindings (the project's environment does not). Tests that need them are
marked `rtsp` and skip with a reason when those bindings are missing.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
_PROBE = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
          "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
          "assert Gst.ElementFactory.find('x264enc'), 'no x264enc'")
_missing_reason: list[str | None] = []


def gst_rtsp_missing() -> str | None:
    """Why the RTSP server cannot run here, or None when it can (checked once per session)."""
    if not _missing_reason:
        reason = None
        if not os.access(SYSTEM_PYTHON, os.X_OK):
            reason = f"{SYSTEM_PYTHON} not found"
        else:
            probe = subprocess.run([SYSTEM_PYTHON, "-c", _PROBE], capture_output=True, text=True, timeout=60,
                                   check=False)
            if probe.returncode != 0:
                last = (probe.stderr.strip().splitlines() or ["failed"])[-1]
                reason = f"{SYSTEM_PYTHON} cannot run GStreamer's RTSP server ({last}); see scripts/install-system.sh"
        _missing_reason.append(reason)
    return _missing_reason[0]


def requires_gst_rtsp() -> None:
    """Skip the calling test when GStreamer's RTSP server is unavailable."""
    reason = gst_rtsp_missing()
    if reason:
        pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port`, read from /proc without connecting.

    Connecting would count as a client for one-shot receivers such as `ffmpeg -rtsp_flags listen`.
    """
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(wanted) and fields[3] == "0A":  # 0A: LISTEN
                return True
    return False


class RtspServer:
    """`tests/rtsp_server.py` in a subprocess: a live test pattern at rtsp://127.0.0.1:PORT/NAME.

    `stop()`/`kill()` and `start()` again reuse the same port, like a camera that reboots.
    """

    def __init__(self, log_dir: Path, port: int | None = None, name: str = "cam", size: str = "160x96",
                 fps: int = 25, user: str | None = None, password: str | None = None,
                 record: Path | None = None) -> None:
        self.port = port or free_port()
        self.name = name
        self.log_path = Path(log_dir) / f"rtsp_server_{self.port}.log"
        self.args = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port), "--name", name,
                     "--size", size, "--fps", str(fps)]
        if user:
            self.args += ["--user", user, "--password", password or ""]
        if record:
            self.args += ["--record", str(record)]
        self.proc: subprocess.Popen[str] | None = None

    def url(self, credentials: str | None = None) -> str:
        """The stream's URL, with `user:password` credentials if given."""
        auth = f"{credentials}@" if credentials else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}/{self.name}"

    def start(self, timeout: float = 20.0) -> RtspServer:
        """Start the server and wait until it listens."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=log, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().strip() if ready else ""
        if line != "ready":
            self.kill()
            raise RuntimeError(f"RTSP server did not start: {self.log_path.read_text()[-2000:]}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop with SIGTERM (a clean shutdown: recordings get their end)."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Stop with SIGKILL, like a crashing camera."""
        self._end(signal.SIGKILL, 10.0)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open and silent, a stalled camera."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo `pause()`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def _end(self, sig: int, timeout: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout:
            proc.stdout.close()



class RtspReceiver(RtspServer):
    """An RTSP server in RECORD mode: what a publisher (`open_output_container`) sends to, kept in `path`.

    Frames published faster than real time may be dropped by its jitter buffer; publish at the
    stream's own rate. `stop()` finishes the file.
    """

    def __init__(self, log_dir: Path, path: Path, port: int | None = None, name: str = "in") -> None:
        super().__init__(log_dir, port=port, name=name, record=path)
        self.path = Path(path)


class FfmpegListener:
    """`ffmpeg -listen 1` receiving one published stream (RTMP by default) and copying it into `path`.

    It takes exactly one client, so publishers must not probe it first (`probe=False`).
    """

    def __init__(self, log_dir: Path, path: Path, scheme: str = "rtmp") -> None:
        self.port = free_port()
        self.path = Path(path)
        self.url = f"{scheme}://127.0.0.1:{self.port}/live/stream"
        self.log_path = Path(log_dir) / f"ffmpeg_listener_{self.port}.log"
        listen = ["-listen", "1"] if scheme == "rtmp" else ["-rtsp_flags", "listen"]
        self.args = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", *listen, "-i", self.url,
                     "-c", "copy", "-y", str(self.path)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> FfmpegListener:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=log)
        if not wait_for(lambda: port_listening(self.port) or self.proc.poll() is not None, timeout) \
                or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError(f"ffmpeg did not listen: {self.log_path.read_text()[-2000:]}")
        return self

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for ffmpeg to finish (the publisher closed) and return its exit status."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class SilentTcpServer:
    """Accepts TCP connections on loopback and never sends a byte: a camera that hangs."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    def close(self) -> None:
        self._closed.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(5)
        for conn in self.connections:
            conn.close()



def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is true or `timeout` passes (test helper only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def serve_rtsp(tmp_path: Path, **kwargs: object) -> Iterator[RtspServer]:
    """Body of an `rtsp_server` fixture: a started `RtspServer`, killed afterwards; skips without GStreamer."""
    requires_gst_rtsp()
    server = RtspServer(tmp_path, **kwargs).start()
    try:
        yield server
    finally:
        server.kill()


def serve_receiver(tmp_path: Path) -> Iterator[RtspReceiver]:
    """Body of an `rtsp_receiver` fixture: a started `RtspReceiver` recording into tmp_path/received.mkv."""
    requires_gst_rtsp()
    receiver = RtspReceiver(tmp_path, tmp_path / "received.mkv").start()
    try:
        yield receiver
    finally:
        receiver.kill()


def serve_silent_tcp() -> Iterator[SilentTcpServer]:
    """Body of a `silent_tcp_server` fixture."""
    server = SilentTcpServer()
    try:
        yield server
    finally:
        server.close()
