"""`unweather run` as a video user drives it: URLs that never worked fail in seconds, cut-short files are
reported, errors come before any announcement, -q, output folders, --start/--duration, --strength, --mask,
and the help that teaches them."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
from media import cut_faststart, decode_rgb, make_images, make_video, playable, probe_frames, psnr
from netservers import free_port

from unweather.cli import main
from unweather.stream import RunConfig, run

SECRET = "pa55-w0rd"
# A trained network on the CPU through torch: its output differs clearly from its input.
REAL = {"model": "fast", "backend": "torch", "device": "cpu"}


def _cli(*args: str, cwd: Path | None = None, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "unweather.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)
    return proc, time.monotonic() - started


def _one_error(rc: int, err: str, *words: str) -> str:
    lines = err.splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("unweather: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _audio_span(path: Path) -> tuple[float, float]:
    """First and last-plus-duration times of the audio packets of `path`, in seconds."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(container.streams.audio[0]) if p.size]
        return (float(packets[0].pts * packets[0].time_base),
                float((packets[-1].pts + packets[-1].duration) * packets[-1].time_base))


# -- a URL that never worked ------------------------------------------------------------------------------


def test_url_that_never_worked_fails_in_seconds_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    url = f"rtsp://admin:{SECRET}@127.0.0.1:{port}/cam"
    proc, took = _cli("run", url, "-o", str(tmp_path / "cam.mkv"), "--model", "identity", "-q")
    line = _one_error(proc.returncode, proc.stderr, "after 3 attempts", "Connection refused", "giving up")
    assert line == (f"unweather: error: no frame from rtsp://***@127.0.0.1:{port}/cam after 3 attempts to open "
                    "it (last error: Connection refused); giving up.")
    assert took < 30, took  # not the 300 s of --give-up-after
    assert not (tmp_path / "cam.mkv").exists()
    # Without -q and -o: the tries are logged, nothing is announced or left in the current folder.
    proc, _ = _cli("run", url, "--model", "identity", cwd=tmp_path)
    assert proc.returncode == 1 and SECRET not in proc.stderr and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("unweather: error:")] == [line]
    assert "writing" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


# -- a file cut short -----------------------------------------------------------------------------------


def test_cut_short_file_is_written_and_reported_in_one_line(tmp_path: Path, capsys) -> None:
    whole = make_video(tmp_path / "whole.mp4", frames=75, size=(64, 48))
    cut = cut_faststart(whole, tmp_path / "cut.mp4", keep=0.6)
    stats_path, out = tmp_path / "stats.json", tmp_path / "out.mp4"
    assert main(["run", str(cut), "-o", str(out), "--model", "identity", "--stats", str(stats_path)]) == 0
    err = capsys.readouterr().err
    stats = json.loads(stats_path.read_text())
    assert stats["input_truncated"] is True and stats["frames_expected"] == 75
    read = stats["frames_in"]
    assert 10 < read < 70 and playable(out) == stats["frames_out"] == read
    assert stats["corrupt_packets"] >= 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert warnings[0].startswith(f"warning: {cut} ended early: {read} of the 75 frames its container announces")
    # -q: that one line and nothing else.
    assert main(["run", str(cut), "-o", str(tmp_path / "q.mp4"), "--model", "identity", "-q"]) == 0
    assert capsys.readouterr().err.splitlines() == warnings
    # The whole file: no warning.
    assert main(["run", str(whole), "-o", str(out), "--model", "identity", "--stats", str(stats_path)]) == 0
    assert "warning" not in capsys.readouterr().err
    stats = json.loads(stats_path.read_text())
    assert (stats["input_truncated"], stats["frames_expected"], stats["frames_in"], stats["corrupt_packets"]) == (
        False, 75, 75, 0)


# -- messages in order, names in stats, -q ----------------------------------------------------------------


@pytest.mark.parametrize("case", ["missing_input", "unknown_model", "no_cuda"])
def test_errors_come_before_any_announcement(tmp_path: Path, capsys, monkeypatch, case: str) -> None:
    monkeypatch.chdir(tmp_path)
    src = make_video(tmp_path / "clip.mp4", frames=3, size=(32, 24), audio=False)
    if case == "missing_input":
        args, words = [str(tmp_path / "nope.mp4")], ["no such file"]
    elif case == "unknown_model":
        args, words = [str(src), "--model", "no-such-model"], ["unknown model 'no-such-model'"]
    else:
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
        args, words = [str(src), "--device", "cuda"], ["torch sees no CUDA GPU"]
    rc = main(["run", *args])  # no -o, no -q: the default output would be announced
    _one_error(rc, capsys.readouterr().err, *words)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_stats_name_the_default_model_and_reconnections_and_quiet_is_silent(tmp_path: Path, capsys) -> None:
    src = make_video(tmp_path / "clip.mp4", frames=3, size=(32, 24), audio=False)
    stats_path = tmp_path / "stats.json"
    assert main(["run", str(src), "-o", str(tmp_path / "out.mp4"), "--backend", "torch", "--device", "cpu",
                 "--stats", str(stats_path), "-q"]) == 0
    assert capsys.readouterr().err == ""
    stats = json.loads(stats_path.read_text())
    assert stats["model"] == "video"  # the default for a video file, by name
    assert stats["reconnections"] == 0 and "restarts" not in stats


# -- help, models, sizes, output folders ------------------------------------------------------------------


def test_run_help_has_examples() -> None:
    proc, _ = _cli("run", "--help")
    assert proc.returncode == 0
    examples = proc.stdout.split("examples:", 1)[1]
    for text in ("unweather run dashcam.mp4", "--start 1:30 --duration 20", "--mask", "rtsp://"):
        assert text in examples


def test_models_lists_the_shipped_weights_and_takes_width_x_height(capsys) -> None:
    assert main(["models", "--size", "64x48", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["width"], data["height"]) == (64, 48)
    rows = {w["name"]: w for w in data["weights"]}
    # Every name --model accepts has a row; the three default models are always installed.
    assert [(n, rows[n]["arch"]) for n in ("fast", "quality", "video")] == [
        ("fast", "student_small"), ("quality", "student_base"), ("video", "video_small")]
    assert rows["video_quality"]["arch"] == "video_base"
    assert all(rows[n]["installed"] for n in ("fast", "quality", "video"))
    assert all(w["size_mb"] > 0 and w["role"] for w in rows.values() if w["installed"])
    assert main(["models", "--size", "64x48"]) == 0
    out = capsys.readouterr().out
    for w in rows.values():
        if not w["installed"]:
            assert f"{w['name']:<8} {w['arch']} - not in this installation" in out
    assert "shipped weights" in out and "GFLOP/64x48" in out
    assert any(line.split()[:2] == ["fast", "student_small,"] for line in out.splitlines()), out
    assert main(["models", "--size", "64"]) == 1
    _one_error(1, capsys.readouterr().err, "--size must be WIDTHxHEIGHT")


def test_run_creates_missing_output_folders_for_files_and_folders(tmp_path: Path, capsys) -> None:
    src = make_video(tmp_path / "clip.mp4", frames=3, size=(32, 24), audio=False)
    out = tmp_path / "new" / "deeper" / "clean.mkv"
    assert main(["run", str(src), "-o", str(out), "--model", "identity", "-q"]) == 0
    assert playable(out) == 3
    make_images(tmp_path / "shots", count=2, size=(24, 16))
    assert main(["run", str(tmp_path / "shots"), "-o", f"{tmp_path}/more/shots_clean/", "--model", "identity",
                 "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "more" / "shots_clean").iterdir()) == ["img_000.png", "img_001.png"]
    # A run that fails before its first frame takes the folders it made away again.
    empty = make_video(tmp_path / "zero.mkv", frames=0, audio=True)  # fails at the first frame, not at opening
    assert main(["run", str(empty), "-o", str(tmp_path / "gone" / "out.mkv"), "--model", "identity", "-q"]) == 1
    _one_error(1, capsys.readouterr().err, "no video frames")
    assert not (tmp_path / "gone").exists()


# -- --start and --duration -------------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "duration"), [("1", "1.2"), ("00:00:01.000", "0:01.2")])
def test_start_and_duration_cut_video_and_audio(tmp_path: Path, start: str, duration: str) -> None:
    src = make_video(tmp_path / "long.mp4", frames=75, size=(64, 48), rate=25)  # 3 s with audio
    out, stats_path = tmp_path / "part.mp4", tmp_path / "stats.json"
    assert main(["run", str(src), "-o", str(out), "--model", "identity", "-q", "--start", start,
                 "--duration", duration, "--stats", str(stats_path)]) == 0
    times = probe_frames(out)
    assert len(times) == 30 and times[0] == 0.0 and times[-1] == pytest.approx(1.16)
    stats = json.loads(stats_path.read_text())
    assert stats["frames_expected"] == 30 and not stats["input_truncated"]
    # The picture is the input's from 1 s on.
    before, _ = decode_rgb(src)
    after, _ = decode_rgb(out)
    assert psnr(after[0], before[25]) > 35 > psnr(after[0], before[24])
    first, end = _audio_span(out)
    assert first < 0.1 and end - first == pytest.approx(1.2, abs=0.1)


def test_duration_alone_keeps_the_clock_and_stops_images_too(tmp_path: Path) -> None:
    src = make_video(tmp_path / "long.mp4", frames=50, size=(32, 24), rate=25)
    out = tmp_path / "first.mp4"
    run(str(src), str(out), RunConfig(model="identity", progress=False, duration=1.0))
    assert probe_frames(out) == probe_frames(src)[:25]
    assert _audio_span(out)[1] == pytest.approx(1.0, abs=0.1)
    make_images(tmp_path / "shots", count=5, size=(24, 16))
    stats = run(str(tmp_path / "shots"), str(tmp_path / "kept") + "/",
                RunConfig(model="identity", progress=False, duration=0.1, image_rate=25.0))
    assert stats.frames_out == 3  # images at 0, 0.04 and 0.08 s


@pytest.mark.parametrize(("where", "args", "words"), [
    ("url", ["--start", "5"], ["--start needs a video file", "a live source"]),
    ("clip", ["--start", "1:75"], ["--start '1:75' is not seconds or HH:MM:SS"]),
    ("clip", ["--duration", "-2"], ["--duration must be a number of seconds"]),
    ("clip", ["--start", "10"], ["past the end", "3.00 s long"]),
    ("clip", ["--strength", "1.5"], ["strength must be between 0 and 1"]),
    ("clip", ["--mask", "missing.png"], ["cannot read the mask missing.png: no such file"]),
    ("clip", ["--mask", "notes.png"], ["cannot read the mask", "notes.png", "not an image"]),
])
def test_controls_refuse_what_cannot_apply_in_one_line(tmp_path: Path, capsys, monkeypatch, where: str,
                                                       args: list[str], words: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.png").write_text("not a picture")
    src = make_video(tmp_path / "clip.mp4", frames=75, size=(32, 24), audio=False)
    spec = f"rtsp://127.0.0.1:{free_port()}/cam" if where == "url" else str(src)
    started = time.monotonic()
    rc = main(["run", spec, "-o", str(tmp_path / "out.mkv"), "--model", "identity", *args])
    _one_error(rc, capsys.readouterr().err, *words)
    assert time.monotonic() - started < 20
    assert not (tmp_path / "out.mkv").exists()


# -- --strength and --mask ---------------------------------------------------------------------------------


def _images(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: cv2.imread(str(p)) for p in sorted(folder.iterdir())}


def _changing_model(folder: Path) -> dict[str, str]:
    """A network that surely changes a picture (a student whose head adds a colour shift), as run options.

    The shipped students leave clean test patterns nearly as they are (no harm where there is no weather),
    so blending and masking are checked against a network whose change is known to be large.
    """
    import torch

    from unweather.models import build, save

    torch.manual_seed(0)  # the same network on every call
    net = build("student_small")
    with torch.no_grad():
        net.head.bias.fill_(0.08)
    path = folder / "shifting.safetensors"
    save(net, path)
    return {**REAL, "model": str(path)}


def _restore(tmp_path: Path, name: str, **settings: object) -> dict[str, np.ndarray]:
    out = tmp_path / name
    run(str(tmp_path / "in"), f"{out}/", RunConfig(progress=False, **_changing_model(tmp_path), **settings))
    return _images(out)


def test_strength_blends_the_input_and_the_restoration(tmp_path: Path) -> None:
    make_images(tmp_path / "in", count=2, size=(48, 32))
    inputs = _images(tmp_path / "in")
    full = _restore(tmp_path, "full")
    none = _restore(tmp_path, "none", strength=0.0)
    half = _restore(tmp_path, "half", strength=0.5)
    for name, image in inputs.items():
        assert np.array_equal(none[name], image)  # strength 0: the input, bit for bit (PNG: no codec)
        assert np.abs(full[name].astype(int) - image).mean() > 2  # the model does change the picture
        midway = (full[name].astype(float) + image) / 2
        assert np.abs(half[name] - midway).max() <= 1.0


def test_strength_0_through_a_video_codec_returns_the_input(tmp_path: Path) -> None:
    src = make_video(tmp_path / "clip.mp4", frames=6, size=(64, 48), audio=False)
    before, _ = decode_rgb(src)
    scores = {}
    for strength in (0.0, 1.0):
        out = tmp_path / f"s{strength}.mp4"
        run(str(src), str(out), RunConfig(progress=False, strength=strength, **_changing_model(tmp_path)))
        after, _ = decode_rgb(out)
        scores[strength] = min(psnr(a, b) for a, b in zip(after, before, strict=True))
    assert scores[0.0] > 35 > scores[1.0], scores


def test_mask_leaves_white_regions_exactly_as_they_were(tmp_path: Path) -> None:
    make_images(tmp_path / "in", count=2, size=(48, 32))
    inputs = _images(tmp_path / "in")
    mask = np.zeros((32, 48), np.uint8)
    mask[24:, :] = 255  # a dashcam's bonnet
    mask[:6, 30:] = 255  # a burned-in timestamp
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    outs = _restore(tmp_path, "masked", mask=str(tmp_path / "mask.png"))
    keep = mask == 255
    for name, image in inputs.items():
        assert np.array_equal(outs[name][keep], image[keep])
        assert np.abs(outs[name][~keep].astype(int) - image[~keep]).mean() > 2


def test_alpha_mask_of_another_size_is_resized_with_a_warning(tmp_path: Path, caplog) -> None:
    make_images(tmp_path / "in", count=1, size=(48, 32))
    inputs = _images(tmp_path / "in")
    rgba = np.zeros((64, 96, 4), np.uint8)  # twice the frame size; black colour, the alpha decides
    rgba[:, :48, 3] = 255  # the left half stays as it is
    cv2.imwrite(str(tmp_path / "alpha.png"), rgba)
    with caplog.at_level(logging.WARNING, logger="unweather"):
        outs = _restore(tmp_path, "masked", mask=str(tmp_path / "alpha.png"))
    assert "the mask" in caplog.text and "96x64" in caplog.text and "48x32" in caplog.text
    for name, image in inputs.items():
        assert np.array_equal(outs[name][:, :23], image[:, :23])
        assert np.abs(outs[name][:, 26:].astype(int) - image[:, 26:]).mean() > 2
