"""Bad input, unwritable outputs and signals: one line of error and exit 1, never a traceback or a hang;
an interrupted run leaves a playable file holding every frame it processed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from media import make_images, make_video, playable, png_header_only

from unweather.cli import main


def _run_cli(capsys, *args: str) -> tuple[int, list[str]]:
    rc = main(["run", *args])  # not -q: the "model ..." line would show an engine that was opened
    err = capsys.readouterr().err
    return rc, err.splitlines()


def _assert_one_error(rc: int, lines: list[str], *words: str) -> None:
    assert rc == 1
    errors = [line for line in lines if line.startswith("unweather: error:")]
    assert len(errors) == 1, lines
    assert not any("Traceback" in line for line in lines)
    for word in words:
        assert word in errors[0], errors[0]


def _unknown_codec(path: Path) -> Path:
    good = make_video(path.with_name("good.mkv"), frames=3, size=(32, 24), audio=False)
    data = good.read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    path.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/XYZ"))  # a codec id no decoder knows
    return path


@pytest.mark.parametrize("case", ["missing", "garbage", "truncated", "zero_frames", "unknown_codec",
                                  "no_images", "huge_image", "giant_image", "audio_only"])
def test_bad_input_is_one_line_and_exit_1(tmp_path: Path, capsys, case: str) -> None:
    if case == "missing":
        src, words = tmp_path / "nope.mp4", ["no such file"]
    elif case == "garbage":
        src, words = tmp_path / "garbage.mp4", ["not a video"]
        # Fixed bytes: about 1 in 200 random draws probes as some container (one held a subtitle stream), which
        # is then "no video stream", another case below.
        src.write_bytes(random.Random(0).randbytes(4096))
    elif case == "truncated":
        full = make_video(tmp_path / "full.mp4", frames=10, size=(64, 48)).read_bytes()
        src, words = tmp_path / "cut.mp4", ["cannot read"]
        src.write_bytes(full[: len(full) // 2])  # no index (moov) at the end of an MP4 cut short
    elif case == "zero_frames":
        src, words = make_video(tmp_path / "zero.mkv", frames=0, audio=True), ["no video frames"]
    elif case == "unknown_codec":
        src, words = _unknown_codec(tmp_path / "unknown.mkv"), ["cannot be decoded"]
    elif case == "no_images":
        src, words = tmp_path / "folder", ["no images"]
        src.mkdir()
        (src / "readme.txt").write_text("hello")
    elif case == "huge_image":  # over our limit (max_pixels)
        src, words = png_header_only(tmp_path / "huge.png", 12_000, 12_000), ["12000x12000", "max_pixels"]
    elif case == "giant_image":  # over FFmpeg's own limit
        src, words = png_header_only(tmp_path / "giant.png", 100_000, 100_000), ["too large"]
    else:
        src = tmp_path / "audio.mkv"
        make_video(src, frames=0, audio=True)
        import av

        with av.open(str(src)) as c_in, av.open(str(tmp_path / "a.m4a"), "w") as c_out:
            out = c_out.add_stream_from_template(c_in.streams.audio[0])
            for packet in c_in.demux(c_in.streams.audio[0]):
                if packet.size:
                    packet.stream = out
                    c_out.mux(packet)
        src, words = tmp_path / "a.m4a", ["no video stream"]
    out = tmp_path / "out.mkv"
    started = time.monotonic()
    rc, lines = _run_cli(capsys, str(src), "-o", str(out), "--model", "identity")
    _assert_one_error(rc, lines, *words)
    assert time.monotonic() - started < 60
    assert not out.exists()  # nothing half-written is left behind


def test_damaged_file_in_a_folder_is_skipped_with_a_warning(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "photos"
    make_images(folder, count=2, size=(24, 16))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    rc, lines = _run_cli(capsys, str(folder), "-o", str(tmp_path / "out") + "/", "--model", "identity")
    assert rc == 0
    assert any("broken.png" in line for line in lines)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img_000.png", "img_001.png"]


@pytest.mark.parametrize("case", ["missing_folder", "full_disk", "same_as_input", "bad_extension"])
def test_unwritable_output_fails_before_any_work(tmp_path: Path, capsys, case: str) -> None:
    src = make_video(tmp_path / "in.mp4", frames=3, size=(32, 24), audio=False)
    if case == "missing_folder":  # missing folders are created; a file where one should be is refused
        (tmp_path / "plain").write_text("a file, not a folder")
        out, words = tmp_path / "plain" / "such" / "out.mp4", ["cannot create the output folder", "Not a directory"]
    elif case == "full_disk":
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full on this system")
        out, words = tmp_path / "full.mp4", ["no space left"]
        out.symlink_to("/dev/full")
    elif case == "same_as_input":
        out, words = src, ["is the input"]
    else:
        out, words = tmp_path / "out.xyz", ["cannot tell what to write"]
    started = time.monotonic()
    rc, lines = _run_cli(capsys, str(src), "-o", str(out), "--model", "identity")
    _assert_one_error(rc, lines, *words)
    assert time.monotonic() - started < 30
    assert not any(line.startswith("model ") for line in lines)  # refused before the engine was opened
    if case == "same_as_input":
        assert playable(src) == 3  # the input is untouched


class _Cli:
    """`unweather run` in a subprocess, its stderr read line by line."""

    def __init__(self, *args: str) -> None:
        # Not -q: the start of the run is read from its "encoding" line.
        self.proc = subprocess.Popen([sys.executable, "-m", "unweather.cli", "run", *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("encoding "):
                self.started.set()  # the first frame reached the encoder

    def wait_started(self, timeout: float = 120.0) -> None:
        if not self.started.wait(timeout):
            self.proc.kill()
            raise AssertionError("the run never started:\n" + "\n".join(self.lines))

    def finish(self, timeout: float = 120.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # never leave a run behind the test
            self.proc.wait(10)
            raise AssertionError(f"the run did not end within {timeout} s:\n" + "\n".join(self.lines)) from None
        self._reader.join(5)
        return rc


@pytest.mark.parametrize(("sig", "mode", "model", "ext"), [
    (signal.SIGINT, "--live", "identity", ".mp4"),      # paced like a camera; fragmented MP4
    (signal.SIGTERM, "--offline", "student_base", ".mp4"),  # a real network; a plain MP4 finished on the way out
])
def test_signal_finishes_a_playable_file_with_every_frame_processed(tmp_path: Path, sig, mode, model, ext) -> None:
    # Long and large enough that no CPU finishes it before the signal (student_base ran 64x48 at ~600 FPS).
    src = make_video(tmp_path / "long.mp4", frames=1500, size=(192, 144), rate=25)
    out = tmp_path / f"out{ext}"
    stats = tmp_path / "stats.json"
    cli = _Cli(str(src), "-o", str(out), "--model", model, mode, "--stats", str(stats))
    cli.wait_started()
    time.sleep(1.0)
    cli.proc.send_signal(sig)
    rc = cli.finish()
    assert rc == 128 + sig, cli.lines
    assert not any("Traceback" in line for line in cli.lines)
    data = json.loads(stats.read_text())
    assert data["interrupted"] is True and data["error"] is None
    assert 0 < data["frames_out"] < 1500
    assert data["frames_out"] == data["frames_in"] - data["dropped"]
    assert playable(out) == data["frames_out"]


def test_sigkill_during_a_live_recording_leaves_a_playable_file(tmp_path: Path) -> None:
    src = make_video(tmp_path / "long.mp4", frames=250, size=(64, 48), rate=25, audio=False)
    out = tmp_path / "rec.mp4"
    cli = _Cli(str(src), "-o", str(out), "--model", "identity", "--live")
    cli.wait_started()
    time.sleep(3.0)  # more than one 2 s fragment
    cli.proc.kill()
    cli.finish()
    assert playable(out) >= 25
