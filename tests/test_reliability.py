"""Faults a user meets in the field, through the `unweather run` command: a disk that fills during a run, a
folder the user may not write to, a camera that freezes, passwords in URLs, listening sockets.

Runs that involve a camera or the process's own sockets are subprocesses; the others run the command in this
process (with a file size limit standing in for a full disk) to keep the tests fast."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from media import make_images, make_video, playable
from netservers import RtspServer, free_port, requires_gst_rtsp, wait_for

from unweather.cli import main

SECRET = "pa55-w0rd-faults"


class _Run:
    """`unweather run` in a subprocess, its stderr collected line by line."""

    def __init__(self, *args: str) -> None:
        # Not -q: the tests wait for info lines ("encoding", "receiving").
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

    @property
    def errors(self) -> list[str]:
        return [line for line in self.lines if line.startswith("unweather: error:")]

    def wait_for_line(self, text: str, timeout: float = 60.0) -> None:
        assert wait_for(lambda: any(text in line for line in self.lines) or self.proc.poll() is not None,
                        timeout), f"no {text!r} in stderr:\n{self.stderr}"
        assert self.proc.poll() is None, f"unweather ended early:\n{self.stderr}"

    def wait(self, timeout: float = 60.0) -> int:
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


def _one_error(run: _Run, code: int, *words: str) -> str:
    assert code == 1, run.stderr
    assert len(run.errors) == 1, run.stderr
    assert "Traceback" not in run.stderr
    for word in words:
        assert word in run.errors[0], run.errors[0]
    return run.errors[0]


def _run_here(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`unweather run` in this process: exit code, the one error line (asserted), all of stderr.

    capfd, not capsys: FFmpeg's own log lines go to file descriptor 2 and must be checked too.
    """
    capfd.readouterr()
    rc = main(["run", *args])  # not -q: the "model ..." line would show an engine that was opened
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("unweather: error:")]
    assert rc == 1, err
    assert len(errors) == 1 and "Traceback" not in err, err
    return rc, errors[0], err


@contextlib.contextmanager
def _file_size_limit(nbytes: int) -> Iterator[None]:
    """Make writes past `nbytes` in any file fail (EFBIG) like a full disk; Python ignores SIGXFSZ."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.parametrize("ext", [".mkv", ".mp4"])
def test_disk_that_fills_during_a_run_stops_it_at_once(tmp_path: Path, capfd, ext: str) -> None:
    src = make_video(tmp_path / "in.mp4", frames=300, size=(160, 96), audio=False)
    out, stats = tmp_path / f"out{ext}", tmp_path / "stats.json"
    with _file_size_limit(150_000):  # about halfway through the clip at lossless quality
        _, error, _ = _run_here(capfd, str(src), "-o", str(out), "--model", "identity", "--crf", "0",
                                "--stats", str(stats))
    assert "cannot write" in error and str(out) in error and "File too large" in error
    report = json.loads(stats.read_text())
    assert report["error"] and report["error"] in error
    # Reported while the input was still being read, not after the whole clip.
    assert 0 < report["frames_out"] <= report["frames_in"] < 300


def test_image_that_cannot_be_written_gives_the_reason_and_leaves_no_partial_file(tmp_path: Path, capfd) -> None:
    folder = tmp_path / "photos"
    make_images(folder, count=2, size=(640, 480))  # about 190 kB as PNG
    out = tmp_path / "restored"
    with _file_size_limit(100_000):  # the 64 kB write probe passes, the first image does not
        _, error, _ = _run_here(capfd, str(folder), "-o", f"{out}/", "--model", "identity")
    assert f"cannot write {out / 'img_000.png'}: File too large" in error
    assert not (out / "img_000.png").exists()


@pytest.mark.parametrize("output", ["out.mkv", "frames/"])
def test_output_refused_at_the_start_leaves_nothing_behind(tmp_path: Path, capfd, output: str) -> None:
    src = make_video(tmp_path / "in.mp4", frames=3, size=(32, 24), audio=False)
    out = tmp_path / output
    with _file_size_limit(10_000):  # the 64 kB write probe of the output fails before any frame is read
        _, error, err = _run_here(capfd, str(src), "-o", str(out), "--model", "identity")
    assert "cannot write" in error and "File too large" in error
    assert ".unweather-write-probe" not in error
    assert not out.exists()  # no empty file and no empty folder left behind
    assert not any(line.startswith("model ") for line in err.splitlines())


def test_output_in_a_folder_nobody_may_write_to_fails_before_any_work(tmp_path: Path, capfd) -> None:
    # sysfs refuses new files even to root (EACCES, or EROFS where it is mounted read-only).
    src = make_video(tmp_path / "in.mp4", frames=3, size=(32, 24), audio=False)
    _, error, err = _run_here(capfd, str(src), "-o", "/sys/unweather-out.mp4", "--model", "identity")
    assert "cannot write" in error and "/sys/unweather-out.mp4" in error
    assert not any(line.startswith("model ") for line in err.splitlines())  # before the engine was opened


@pytest.mark.parametrize("scheme", ["rtsp", "rtmp"])
def test_password_in_an_unreachable_output_url_is_never_printed(tmp_path: Path, capfd, scheme: str) -> None:
    src = make_video(tmp_path / "in.mp4", frames=3, size=(32, 24), audio=False)
    url = f"{scheme}://publisher:{SECRET}@127.0.0.1:{free_port()}/live/cam"
    stats = tmp_path / "stats.json"
    started = time.monotonic()
    _, error, err = _run_here(capfd, str(src), "-o", url, "--model", "identity", "--open-timeout", "2",
                              "--stats", str(stats))
    assert time.monotonic() - started < 30
    assert "cannot reach" in error and "***@127.0.0.1" in error
    assert SECRET not in err and "publisher" not in err
    assert not stats.exists() or SECRET not in stats.read_text()


def _listening(pid: int) -> list[str]:
    """Addresses the process listens on (TCP) or has bound (UDP)."""
    conns = psutil.Process(pid).net_connections(kind="inet")
    return [c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and c.laddr)]


def test_a_live_run_listens_on_no_address_beyond_loopback(tmp_path: Path) -> None:
    src = make_video(tmp_path / "in.mp4", frames=200, size=(64, 48), audio=False)
    out = tmp_path / "out.mkv"
    run = _Run(str(src), "-o", str(out), "--model", "identity", "--live")
    try:
        run.wait_for_line("encoding")
        seen = []
        for _ in range(10):  # over a second of the run: stages and encoder are all up
            seen += _listening(run.proc.pid)
            time.sleep(0.1)
        run.proc.send_signal(signal.SIGINT)
        code = run.wait()
    finally:
        run.kill()
    assert all(ip in ("127.0.0.1", "::1") for ip in seen), seen
    assert code == 128 + signal.SIGINT, run.stderr
    assert playable(out) > 0


@pytest.mark.rtsp
def test_camera_that_freezes_is_reopened_and_the_recording_goes_on(tmp_path: Path) -> None:
    requires_gst_rtsp()
    camera = RtspServer(tmp_path, user="viewer", password=SECRET).start()
    out, stats = tmp_path / "out.mkv", tmp_path / "stats.json"
    run = _Run(camera.url(f"viewer:{SECRET}"), "-o", str(out), "--model", "identity", "--max-frames", "100",
               "--stats", str(stats), "--open-timeout", "2", "--read-timeout", "1", "--stall-timeout", "2",
               "--give-up-after", "30")
    try:
        run.wait_for_line("receiving")
        listening = _listening(run.proc.pid)
        time.sleep(1.0)
        camera.pause()  # connection open, nothing sent: only the stall watchdog can notice
        time.sleep(4.0)
        camera.resume()
        code = run.wait(60)
    finally:
        run.kill()
        camera.kill()
    assert code == 0, run.stderr
    report = json.loads(stats.read_text())
    assert report["reconnections"] >= 1 and "reconnecting" in run.stderr
    assert report["frames_in"] == 100
    assert playable(out) == report["frames_out"] > 0
    assert all(ip in ("127.0.0.1", "::1") for ip in listening), listening
    assert SECRET not in run.stderr and SECRET not in stats.read_text()


@pytest.mark.rtsp
def test_wrong_camera_password_is_one_line_without_either_password(tmp_path: Path) -> None:
    requires_gst_rtsp()
    camera = RtspServer(tmp_path, user="viewer", password=SECRET).start()
    try:
        run = _Run(camera.url("viewer:not-the-pa55word"), "-o", str(tmp_path / "out.mkv"), "--model",
                   "identity", "--open-timeout", "2", "--give-up-after", "3")
        error = _one_error(run, run.wait(60), "401")
    finally:
        camera.kill()
    assert "not-the-pa55word" not in run.stderr and SECRET not in run.stderr
    assert "***@127.0.0.1" in error
    assert not (tmp_path / "out.mkv").exists()
