"""The pipeline end to end with real files: PyAV writes H.264/AAC inputs, ffprobe and PyAV check outputs."""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from media import decode_planes, decode_rgb, ffprobe, make_images, make_video, playable, probe_frames, psnr

from unweather.stream import RunConfig, run


def _config(**kwargs) -> RunConfig:
    return RunConfig(model="identity", progress=False, **kwargs)


def _audio_packets(path: Path) -> list[tuple[bytes, float]]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [(bytes(p), float(p.pts * p.time_base)) for p in container.demux(stream) if p.size]


def _assert_close_planes(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    # Samples outside the RGB gamut are clamped; every other sample must come back unchanged.
    diff = np.concatenate([np.abs(a.astype(np.int16) - b.astype(np.int16)).ravel() for a, b in pairs])
    assert diff.mean() < 0.05 and np.count_nonzero(diff) <= 0.01 * diff.size, (diff.max(), diff.mean())


def test_file_to_file_identity_keeps_frames_timestamps_audio_colour(tmp_path: Path) -> None:
    src = make_video(tmp_path / "clip.mp4", frames=10, size=(642, 362), rotation=90, color_range=1, colorspace=1)
    out = tmp_path / "clip_out.mp4"
    stats = run(str(src), str(out), _config(batch=3))
    assert stats.frames_in == stats.frames_out == 10
    assert stats.dropped == 0
    assert probe_frames(out) == probe_frames(src)
    assert _audio_packets(out) == _audio_packets(src)
    a, _ = decode_rgb(src)
    b, _ = decode_rgb(out)
    assert len(a) == len(b) == 10
    shift = np.mean([x.reshape(-1, 3).mean(0) - y.reshape(-1, 3).mean(0).astype(np.float64) for x, y in zip(a, b)], 0)
    assert np.all(np.abs(shift) < 1.0), shift
    assert min(psnr(x, y) for x, y in zip(a, b)) > 35.0
    info = ffprobe(out, "-select_streams", "v:0", "-show_streams")
    assert "color_space=bt709" in info and "color_range=tv" in info
    assert "rotation=90" in info


def test_variable_frame_rate_timestamps_are_kept(tmp_path: Path) -> None:
    pts = [0, 100, 250, 300, 700, 710, 1000]
    src = make_video(tmp_path / "vfr.mp4", frames=len(pts), pts=pts, time_base=Fraction(1, 1000), audio=False)
    out = tmp_path / "vfr_out.mp4"
    run(str(src), str(out), _config())
    assert probe_frames(out) == pytest.approx([p / 1000 for p in pts], abs=1e-6)


def test_tiny_video_round_trip_is_exact_at_lossless_quality(tmp_path: Path) -> None:
    src = make_video(tmp_path / "tiny.mkv", frames=5, size=(18, 10), audio=False)
    out = tmp_path / "tiny_out.mkv"
    stats = run(str(src), str(out), _config(batch=2, crf=0))
    assert stats.frames_out == 5
    # Lossless encoding: what is left is the colour conversion, which returns the same planes except
    # where the input's samples lie outside the RGB gamut (clamped).
    pairs = [(pa, pb) for a, b in zip(decode_planes(src), decode_planes(out), strict=True) for pa, pb in zip(a, b)]
    _assert_close_planes(pairs)


def test_odd_size_is_padded_for_h264_without_losing_pixels(tmp_path: Path) -> None:
    src = make_video(tmp_path / "odd.mkv", frames=4, size=(33, 17), audio=False, codec="ffv1",
                     options={})  # FFV1 stores odd sizes; H.264 4:2:0 cannot
    out = tmp_path / "odd_out.mkv"
    stats = run(str(src), str(out), _config(crf=0))
    assert stats.frames_out == 4
    pairs = []
    for a, b in zip(decode_planes(src), decode_planes(out), strict=True):
        assert b[0].shape == (18, 34)
        pairs += [(pa, pb[:pa.shape[0], :pa.shape[1]]) for pa, pb in zip(a, b)]
        assert np.array_equal(b[0][17], b[0][16]) and np.array_equal(b[0][:, 33], b[0][:, 32])
    _assert_close_planes(pairs)


def test_side_by_side_doubles_the_width(tmp_path: Path) -> None:
    src = make_video(tmp_path / "c.mp4", frames=4, size=(64, 48), audio=False)
    out = tmp_path / "sbs.mkv"
    run(str(src), str(out), _config(side_by_side=True))
    frames, _ = decode_rgb(out)
    assert frames[0].shape == (48, 128, 3)
    # identity: both halves are the input
    assert psnr(frames[0][:, :64], frames[0][:, 64:]) > 35.0


def test_image_folder_in_and_out_keeps_names_and_skips_other_files(tmp_path: Path, caplog) -> None:
    import cv2

    folder = tmp_path / "photos"
    paths = make_images(folder, count=3, size=(41, 29))
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "restored/"
    log = logging.getLogger("unweather")
    log.addHandler(caplog.handler)  # the CLI's logging set-up may have turned propagation off
    try:
        with caplog.at_level(logging.WARNING, logger="unweather"):
            stats = run(str(folder), str(out) + "/", _config(batch=2))
    finally:
        log.removeHandler(caplog.handler)
    assert stats.frames_out == 3
    assert "notes.txt" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    for p in paths:
        a = cv2.imread(str(p))
        b = cv2.imread(str(out / p.name))
        assert np.array_equal(a, b)  # identity on RGB images is exact


def test_single_image_default_output_name(tmp_path: Path) -> None:
    (path,) = make_images(tmp_path, count=1, size=(30, 20), ext=".jpg")
    stats = run(str(path), None, _config())
    assert stats.frames_out == 1
    assert (tmp_path / "img_000.unweather.jpg").is_file()


def test_video_to_image_folder(tmp_path: Path) -> None:
    src = make_video(tmp_path / "c.mp4", frames=3, size=(32, 24), audio=False)
    out = tmp_path / "frames"
    run(str(src), str(out) + "/", _config())
    assert sorted(p.name for p in out.iterdir()) == ["frame_000001.png", "frame_000002.png", "frame_000003.png"]


def test_stats_json_fields(tmp_path: Path) -> None:
    src = make_video(tmp_path / "c.mp4", frames=6, size=(32, 24), audio=False)
    stats_path = tmp_path / "stats.json"
    stats = run(str(src), str(tmp_path / "o.mp4"), _config(stats_path=str(stats_path)))
    data = json.loads(stats_path.read_text())
    assert data["frames_in"] == data["frames_out"] == data["frames"] == 6
    assert data["dropped"] == 0 and data["mode"] == "offline"
    assert data["fps"] > 0 and data["fps"] == stats.fps
    assert set(data["stage_s"]) == {"decode", "upload", "infer", "download", "encode"}
    for key in ("p50", "p95", "p99"):
        assert data["latency_ms"][key] > 0
    assert data["latency_ms"]["p50"] <= data["latency_ms"]["p95"] <= data["latency_ms"]["p99"]
    assert set(data["queues"]) == {"decode", "upload", "infer", "encode"}
    assert data["queues"]["decode"]["max_depth"] >= 1


def test_max_frames_cuts_audio_with_the_video(tmp_path: Path) -> None:
    src = make_video(tmp_path / "c.mp4", frames=25, size=(32, 24))
    out = tmp_path / "o.mp4"
    stats = run(str(src), str(out), _config(max_frames=5))
    assert stats.frames_out == 5 and playable(out) == 5
    last_audio = _audio_packets(out)[-1][1]
    assert last_audio <= 5 / 25 + 0.07  # up to the end of the last frame (one AAC packet is 64 ms)


def test_live_mode_drops_the_oldest_frames_when_inference_is_slow(tmp_path: Path) -> None:
    # msbdn on a CPU restores far fewer than the clip's 100 frames per second at this size, even on a fast
    # AVX-512 core: live mode must drop. The clip outlasts the start-up, during which frames wait rather than drop.
    rate = 100
    src = make_video(tmp_path / "c.mp4", frames=300, size=(192, 128), rate=rate, audio=False)
    out = tmp_path / "live.mkv"
    stats = run(str(src), str(out), RunConfig(model="msbdn", mode="live", progress=False))
    assert stats.mode == "live" and stats.batch == 1
    assert stats.dropped > 0
    assert stats.frames_out + stats.dropped == stats.frames_in == 300
    assert playable(out) == stats.frames_out
    # Frames wait while the run starts (at most 2 s of them); once it falls behind, the backlog is cut and
    # the oldest frame dropped: overload, not start-up.
    assert stats.drops["overload"] > 0 and sum(stats.drops.values()) == stats.dropped
    assert stats.queues["decode"]["max_depth"] <= 2 + 2 * rate
    # The summary says why and what would keep up.
    assert "hint: restoring ran slower than the source" in stats.summary() and "--model fast" in stats.summary()


def test_the_hint_comes_from_a_twentieth_of_the_frames_dropped_for_falling_behind():
    from unweather.stream.stats import RunStats

    def hints(model: str, behind: int, startup: int = 0) -> list[str]:
        return RunStats(model=model, mode="live", frames_in=100, drops={"startup": startup, "overload": behind}).hints()

    assert hints("video", 4, startup=30) == []  # what waits while a run starts is not falling behind
    assert len(hints("video", 5)) == 1 and "5 % of the frames" in hints("video", 5)[0]
    assert "--model fast" in hints("video", 50)[0] and "--model fast" not in hints("fast", 50)[0]
