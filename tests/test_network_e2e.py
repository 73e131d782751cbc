"""`unweather run` on live RTSP streams from a real server on loopback: camera restarts, a camera that never
comes back, SIGKILL and SIGTERM during a recording, publishing to an RTSP receiver, and credentials.

Every source URL carries a password; it must appear in no line of stderr and nowhere in the stats file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from netservers import RtspReceiver, RtspServer, SilentTcpServer, requires_gst_rtsp, wait_for

SECRET = "pa55-w0rd-e2e"
USER = "viewer"
FAST = ["--open-timeout", "2", "--read-timeout", "2", "--stall-timeout", "4"]


@pytest.fixture
def camera(tmp_path):
    """An RTSP camera that wants a password."""
    requires_gst_rtsp()
    server = RtspServer(tmp_path, user=USER, password=SECRET).start()
    yield server
    server.kill()


class _Run:
    """`unweather run` in a subprocess, its stderr collected line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "unweather.cli", "run", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 30.0) -> None:
        assert wait_for(lambda: any(text in line for line in self.lines) or self.proc.poll() is not None,
                        timeout), f"no {text!r} in stderr:\n{self.stderr}"
        assert self.proc.poll() is None, f"unweather ended early:\n{self.stderr}"

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            pytest.fail(f"unweather run did not end within {timeout} s:\n{self.stderr}")
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _read_video(path: Path) -> list[float]:
    """Decode every frame of `path` (fails on a broken file); return the frames' times in seconds."""
    times = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            assert frame.width == 160 and frame.height == 96
            times.append(float(frame.time))
    return times


def _ffprobe_frames(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def _no_secret(run: _Run, stats: Path | None = None) -> None:
    assert SECRET not in run.stderr, run.stderr
    if stats is not None:
        assert SECRET not in stats.read_text()


@pytest.mark.rtsp
def test_camera_restart_keeps_one_continuous_file(camera, tmp_path):
    out, stats = tmp_path / "out.mkv", tmp_path / "stats.json"
    run = _Run(camera.url(f"{USER}:{SECRET}"), "-o", str(out), "--model", "identity", "--max-frames", "120",
               "--stats", str(stats), "--give-up-after", "30", *FAST)
    try:
        run.wait_for_line("receiving")
        time.sleep(1.5)
        camera.kill()
        time.sleep(1.0)
        camera.start()
        code = run.wait(60)
    finally:
        run.kill()
    assert code == 0, run.stderr
    report = json.loads(stats.read_text())
    assert report["reconnections"] >= 1
    assert report["frames_in"] == 120
    assert "reconnecting" in run.stderr
    times = _read_video(out)
    assert len(times) == report["frames_out"] == _ffprobe_frames(out)
    steps = np.diff(times)
    assert (steps > 0).all(), "output timestamps must increase"
    # The outage is a gap in one file, not a second file or a clock that starts again.
    assert steps.max() >= 0.8
    _no_secret(run, stats)


@pytest.mark.rtsp
def test_camera_that_never_returns_ends_the_run_cleanly(camera, tmp_path):
    out, stats = tmp_path / "out.mkv", tmp_path / "stats.json"
    run = _Run(camera.url(f"{USER}:{SECRET}"), "-o", str(out), "--model", "identity", "--stats", str(stats),
               "--give-up-after", "3", *FAST)
    try:
        run.wait_for_line("receiving")
        time.sleep(1.5)
        camera.kill()
        gone = time.monotonic()
        code = run.wait(30)
        took = time.monotonic() - gone
    finally:
        run.kill()
    assert code == 1, run.stderr
    errors = [line for line in run.lines if line.startswith("unweather: error:")]
    assert len(errors) == 1 and "giving up" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    assert 3.0 <= took < 15.0
    frames = _read_video(out)
    assert len(frames) > 0 and len(frames) == _ffprobe_frames(out)
    _no_secret(run, stats if stats.exists() else None)


@pytest.mark.rtsp
def test_sigkill_during_live_recording_leaves_a_playable_file(camera, tmp_path):
    out = tmp_path / "out.mkv"
    run = _Run(camera.url(f"{USER}:{SECRET}"), "-o", str(out), "--model", "identity", *FAST)
    try:
        run.wait_for_line("receiving")
        time.sleep(3.0)
        run.proc.send_signal(signal.SIGKILL)
        run.wait(10)
    finally:
        run.kill()
    # Up to the last fragment written: a few seconds at 25 fps minus what was still in flight.
    frames = _read_video(out)
    assert len(frames) >= 25, run.stderr
    assert len(frames) == _ffprobe_frames(out)
    _no_secret(run)


@pytest.mark.rtsp
def test_sigterm_during_live_recording_finishes_the_file(camera, tmp_path):
    out, stats = tmp_path / "out.mkv", tmp_path / "stats.json"
    run = _Run(camera.url(f"{USER}:{SECRET}"), "-o", str(out), "--model", "identity", "--stats", str(stats),
               *FAST)
    try:
        run.wait_for_line("receiving")
        time.sleep(2.0)
        run.proc.send_signal(signal.SIGTERM)
        code = run.wait(20)
    finally:
        run.kill()
    assert code == 128 + signal.SIGTERM, run.stderr
    report = json.loads(stats.read_text())
    assert report["interrupted"]
    # Every frame the run says it wrote is in the file.
    assert len(_read_video(out)) == report["frames_out"] == _ffprobe_frames(out) > 0
    _no_secret(run, stats)


@pytest.mark.rtsp
def test_publish_output_to_rtsp_receiver(camera, tmp_path):
    receiver = RtspReceiver(tmp_path, tmp_path / "received.mkv").start()
    stats = tmp_path / "stats.json"
    try:
        run = _Run(camera.url(f"{USER}:{SECRET}"), "-o", receiver.url(), "--model", "identity",
                   "--max-frames", "60", "--stats", str(stats), *FAST)
        code = run.wait(60)
        receiver.stop()
    finally:
        receiver.kill()
    assert code == 0, run.stderr
    report = json.loads(stats.read_text())
    received = _read_video(receiver.path)
    # The frames held while the run started are sent at the stream's pace, not in a burst, so the receiver
    # gets them all but the last few still in its jitter buffer when the run stops (a burst lost a third).
    assert len(received) >= report["frames_out"] - 5 > 0
    assert max(received) >= (report["frames_out"] - 5) / 25.0
    assert report["drops"] == {"startup": 0, "overload": 0}
    _no_secret(run, stats)


def test_camera_that_accepts_and_never_sends_does_not_hang_the_run(tmp_path):
    silent = SilentTcpServer()
    out = tmp_path / "out.mkv"
    try:
        start = time.monotonic()
        run = _Run(f"rtsp://{USER}:{SECRET}@127.0.0.1:{silent.port}/cam", "-o", str(out), "--model", "identity",
                   "--open-timeout", "1", "--read-timeout", "1", "--give-up-after", "3")
        code = run.wait(60)
        took = time.monotonic() - start
    finally:
        silent.close()
    assert silent.connections, "the run never connected"
    assert code == 1, run.stderr
    errors = [line for line in run.lines if line.startswith("unweather: error:")]
    assert len(errors) == 1 and "giving up" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    assert took < 30
    # Nothing was received, so no output file is left behind.
    assert not out.exists() or out.stat().st_size == 0
    _no_secret(run)
