"""`unweather run` as a user runs it: default output names, .mov/.mkv outputs with audio, a missing capture
device, the progress bar with FPS and ETA and the summary, and the conversion stages' CPU threads."""

from __future__ import annotations

import io
import re
import sys
import threading
from pathlib import Path

import av
import pytest
import torch
from media import make_images, make_video, playable, probe_frames

from unweather.cli import main
from unweather.stream import RunConfig, run
from unweather.stream.pipeline import one_cpu_thread
from unweather.stream.runner import default_output


def _audio(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


def test_default_output_names_sit_beside_the_input(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    assert default_output(str(tmp_path / "dash.mp4")) == str(tmp_path / "dash.unweather.mp4")
    assert default_output(str(tmp_path / "dash.MOV")) == str(tmp_path / "dash.unweather.mov")
    assert default_output(str(tmp_path / "dash.mp4"), live=True) == str(tmp_path / "dash.unweather.mkv")
    assert default_output(str(tmp_path / "old.avi")) == str(tmp_path / "old.unweather.mkv")
    assert default_output(str(tmp_path / "a.png")) == str(tmp_path / "a.unweather.png")
    assert default_output(str(folder) + "/") == str(folder) + ".unweather/"
    for spec in ("rtsp://user:secret@cam.local/live", "/dev/video0"):
        name = default_output(spec)
        assert re.fullmatch(r"unweather-\d{8}-\d{6}\.mkv", name), name


@pytest.mark.parametrize("ext", [".mov", ".mkv"])
def test_video_without_output_name_and_other_containers_keep_frames_and_audio(tmp_path: Path, capsys,
                                                                                ext: str) -> None:
    src = make_video(tmp_path / f"dash{ext}", frames=8, size=(48, 32))
    assert main(["run", str(src), "--model", "identity"]) == 0
    out = tmp_path / f"dash.unweather{ext}"
    assert playable(out) == 8
    assert probe_frames(out) == probe_frames(src)
    assert _audio(out) == _audio(src)
    err = capsys.readouterr().err
    # The summary: frames, FPS, latency percentiles and per-stage time.
    summary = r"^8 frames written \(8 read, 0 dropped\) in [\d.]+ s: [\d.]+ FPS, offline mode"
    assert re.search(summary, err, re.MULTILINE), err
    assert re.search(r"^latency p50 [\d.]+ ms, p95 [\d.]+ ms, p99 [\d.]+ ms$", err, re.MULTILINE), err
    assert "stage time: decode" in err


def test_missing_capture_device_is_one_line_and_leaves_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # where a recording with no -o would go
    assert main(["run", "/dev/video97", "--model", "identity", "--quiet"]) == 1
    lines = capsys.readouterr().err.splitlines()
    errors = [line for line in lines if line.startswith("unweather: error:")]
    assert errors == ["unweather: error: cannot open the capture device /dev/video97: No such file or directory."]
    assert not any("Traceback" in line for line in lines)
    assert list(tmp_path.iterdir()) == []


def test_image_folder_to_a_video(tmp_path: Path) -> None:
    make_images(tmp_path / "shots", count=5, size=(40, 30))
    stats = run(str(tmp_path / "shots"), str(tmp_path / "shots.mp4"), RunConfig(model="identity", progress=False,
                                                                                  image_rate=10.0))
    assert stats.frames_out == 5
    assert probe_frames(tmp_path / "shots.mp4") == pytest.approx([i / 10 for i in range(5)])


class _Terminal(io.StringIO):
    """Standard error as a terminal, so the progress bar is drawn (its text is kept to be read)."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_fps_and_eta_and_logs_go_above_it(tmp_path: Path, monkeypatch) -> None:
    # Paced at its 25 FPS (--live), so the bar is redrawn a few times whatever the machine's speed.
    src = make_video(tmp_path / "c.mp4", frames=12, size=(32, 24), audio=False)
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["run", str(src), "-o", str(tmp_path / "o.mp4"), "--model", "identity", "--live"]) == 0
    text = term.getvalue()
    bars = [part for line in text.split("\n") for part in line.split("\r") if "|" in part]
    # Frames done of the total, elapsed<ETA, and the rate in frames per second.
    assert any(re.search(r"\b([1-9]|1[0-2])/12 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+frame/s\]", bar) for bar in bars), text
    # A log line printed while the bar is shown starts a line of its own, never in the middle of the bar.
    encoding = [line for line in text.split("\n") if "encoding" in line]
    assert encoding and all(line.split("\r")[-1].startswith("encoding") for line in encoding), encoding
    assert re.search(r"\d+ frames written \(12 read, \d+ dropped\)", text), text


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path: Path, capsys) -> None:
    src = make_video(tmp_path / "c.mp4", frames=3, size=(32, 24), audio=False)
    assert main(["run", str(src), "-o", str(tmp_path / "o.mp4"), "--model", "identity"]) == 0
    assert "frame/s" not in capsys.readouterr().err


def test_conversion_threads_use_one_cpu_thread_without_changing_the_others() -> None:
    before = torch.get_num_threads()
    seen: list[tuple[bool, int]] = []

    def worker() -> None:
        changed = one_cpu_thread()
        torch.ones(64, 64).add_(1.0)  # a first kernel must not bring the default back
        seen.append((changed, torch.get_num_threads()))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    (changed, inside), = seen
    assert inside == (1 if changed else before)
    assert torch.get_num_threads() == before
    # Other threads started afterwards still get the process's setting.
    later: list[int] = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [before]


def test_folder_of_images_of_several_sizes(tmp_path: Path, capsys) -> None:
    import cv2

    folder = tmp_path / "mixed"
    make_images(folder, count=2, size=(40, 30))
    (odd,) = make_images(tmp_path / "other", count=1, size=(27, 19), ext=".jpg")
    odd.rename(folder / "img_001b.jpg")
    stats = run(str(folder), str(tmp_path / "out") + "/", RunConfig(model="identity", progress=False, batch=4))
    assert stats.frames_out == 3
    sizes = {p.name: cv2.imread(str(p)).shape[:2] for p in (tmp_path / "out").iterdir()}
    assert sizes == {"img_000.png": (30, 40), "img_001.png": (30, 40), "img_001b.jpg": (19, 27)}
    # One video holds one size: a clear error, and the frames before it are kept.
    assert main(["run", str(folder), "-o", str(tmp_path / "mixed.mp4"), "--model", "identity", "-q"]) == 1
    err = capsys.readouterr().err
    assert "frames of different sizes (27x19 after 40x30) cannot go into one video" in err, err
    assert playable(tmp_path / "mixed.mp4") == 2
