"""`unweather demo`: a short clip from the bundled photo, restored by the shipped default model."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from unweather.cli import main
from unweather.demo import demo_photo, draw_label, label_font, make_demo


def _frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_demo_photo_is_packaged() -> None:
    image = cv2.imread(str(demo_photo()))
    assert image is not None and image.shape == (450, 800, 3)


def test_demo_command_writes_before_after(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--frames", "4", "--size", "128x72"]) == 0
    printed = capsys.readouterr().out
    assert "model: video" in printed
    assert "FPS" in printed and "PSNR against the clean clip" in printed

    rainy, restored = _frames(out / "rain.mp4"), _frames(out / "rain_restored.mp4")
    assert len(rainy) == len(restored) == 4
    assert restored[0].shape == (72, 128, 3)
    # The model changed the frames (it is not the identity) but kept the scene.
    diff = np.abs(restored[1].astype(float) - rainy[1].astype(float)).mean()
    assert 0.2 < diff < 40

    pairs = _frames(out / "before_after.mp4")
    assert len(pairs) == 4 and pairs[0].shape == (72, 256, 3)
    png = cv2.imread(str(out / "before_after.png"))
    assert png.shape == (72, 256, 3)


def test_demo_haze_and_explicit_model(tmp_path) -> None:
    result = make_demo(tmp_path, frames=2, size=(96, 64), weather="haze", model="student_small")
    assert result.frames == 2 and result.model == "student_small"
    assert result.png.is_file() and result.fps > 0


def _ink_columns(mask: np.ndarray) -> tuple[int, int]:
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(cols[-1])


@pytest.mark.parametrize("width", [128, 640, 1920])
@pytest.mark.parametrize("text", ["unweather fast", "rain (synthetic)"])
def test_a_label_is_drawn_once(width, text) -> None:
    background = np.full((width * 9 // 16, width, 3), 128, np.uint8)
    labelled = draw_label(background, text).astype(int)
    light, dark = (labelled > 128 + 8).any(-1), (labelled < 128 - 8).any(-1)
    assert light.any() and dark.any()
    # The outline hugs the white glyphs: a second copy of the text drawn at another advance (the doubled
    # "unweather fastt") would reach past them.
    (light_first, light_last), (dark_first, dark_last) = _ink_columns(light), _ink_columns(dark)
    assert light_first - 3 <= dark_first and dark_last <= light_last + 3
    # The white glyphs are those of one cv2.putText of the string at the label's font.
    origin, scale, thickness = label_font(width)
    once = background.copy()
    cv2.putText(once, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    once_first, once_last = _ink_columns((once.astype(int) > 128 + 8).any(-1))
    assert abs(light_first - once_first) <= 1 and abs(light_last - once_last) <= 1


@pytest.mark.parametrize("size", ["641x360", "64", "16x16"])
def test_demo_rejects_bad_sizes(tmp_path, capsys, size) -> None:
    assert main(["demo", "-o", str(tmp_path), "--size", size]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--size" in err[0]


def _muxing(path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        return head[4:8] == b"ftyp" and path.stat().st_size > 4096
    except OSError:
        return False


def test_sigterm_during_the_demo_leaves_a_playable_restored_clip(tmp_path) -> None:
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "unweather.cli", "demo", "-o", str(out), "--frames", "300",
                             "--size", "320x180", "--model", "student_small"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # Encoded frames have reached the restored clip once the muxer's file (not the zeros of the
        # writability probe) grows past its header.
        while not _muxing(out / "rain_restored.mp4"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert (out / "rain_restored.mp4").is_file(), (sorted(p.name for p in out.iterdir()), err)
    frames = _frames(out / "rain_restored.mp4")
    assert 0 < len(frames) < 300
