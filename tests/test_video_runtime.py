"""The video student at run time: the default model per input, one state per stream, its resets, --temporal.

Every run uses `video_small` with its untrained, seeded weights (`unweather.engine.open` of a registry
name) on tiny clips: what is checked is how the state is carried, not how well it restores.
"""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from media import make_video, pattern

from unweather.cli import main
from unweather.engine import open as open_engine
from unweather.engine import sources
from unweather.engine.session import VideoSession
from unweather.errors import UnweatherError
from unweather.stream import RunConfig, run, run_many
from unweather.stream.runner import is_video_input, model_name

VIDEO = dict(model="video_small", backend="torch", device="cpu", codec="libx264", crf=0, progress=False)


class Recording:
    """A video engine that records, per step, how much history (the weight map's sum) it was given."""

    stateful = True

    def __init__(self, inner) -> None:
        self.inner = inner
        self.device = inner.device
        self.model = "video_small"
        self.history: list[float] = []

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a video network must be run through its session, step by step")

    def step(self, frames, state):
        self.history += [float(w.sum()) for w in state[1]]
        return self.inner.step(frames, state)

    def empty_state(self, frames):
        return self.inner.empty_state(frames)

    def describe(self) -> str:
        return "recording " + self.inner.describe()


@pytest.fixture(scope="module")
def engine():
    return open_engine("video_small", backend="torch", device="cpu")


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A weights folder where "fast" and "video" are shipped (the files only need to exist here)."""
    folder = tmp_path / "weights"
    folder.mkdir()
    for name in ("fast", "video"):
        (folder / f"{name}.safetensors").write_bytes(b"")
    monkeypatch.setattr(sources, "weights_dir", lambda: folder)
    return folder


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(np.int16)


# -- the default model ---------------------------------------------------------------------------------------


def test_videos_and_streams_default_to_the_video_student_when_it_is_shipped(shipped, caplog):
    assert sources.SHIPPED["video"] == "video_small"
    assert sources.default_model("cpu", video=True) == "video"
    assert sources.default_model("cpu") == "fast"
    # Still images get the larger student on every device, falling back to fast where it is not shipped.
    with caplog.at_level(logging.WARNING, logger="unweather"):
        assert sources.default_model("cpu", still=True) == "fast"
    assert "'quality' weights are not shipped" in caplog.text
    (shipped / "quality.safetensors").write_bytes(b"")
    assert sources.default_model("cpu", still=True) == "quality"
    assert model_name(RunConfig(device="cpu"), video=False) == "quality"
    caplog.clear()
    assert [is_video_input(s) for s in ("clip.mp4", "rtsp://cam/1", "/dev/video0", "photo.jpg")] == [
        True, True, True, False]
    assert model_name(RunConfig(device="cpu"), video=True) == "video"
    assert model_name(RunConfig(device="cpu", model="fast"), video=True) == "fast"
    # The larger video student, where shipped, is the default on a GPU; the CPU keeps the real-time one.
    (shipped / "video_quality.safetensors").write_bytes(b"")
    assert sources.SHIPPED["video_quality"] == "video_base"
    assert sources.default_model("cuda", video=True) == "video_quality"
    assert sources.default_model("cpu", video=True) == "video"
    (shipped / "video.safetensors").unlink()
    assert sources.default_model("cpu", video=True) == "video_quality"
    (shipped / "video_quality.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger="unweather"):
        assert sources.default_model("cpu", video=True) == "fast"
    assert not caplog.records, "an installation without the video student gets its frame model without a word"


def test_models_lists_the_video_weights(capsys):
    assert main(["models", "--json", "--size", "64x32"]) == 0
    weights = {w["name"]: w for w in json.loads(capsys.readouterr().out)["weights"]}
    assert weights["video"]["arch"] == "video_small" and "default for videos" in weights["video"]["role"]


def test_run_help_says_what_the_default_is(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "video student `video`" in text and "`fast` on the CPU" in text and "images: `quality`" in text


def test_is_video_model_tells_video_networks_without_loading_them(tmp_path):
    from unweather.models import build, save

    assert sources.is_video_model("video_small") is True
    assert sources.is_video_model("student_small") is False
    save(build("video_small"), tmp_path / "v.safetensors")
    assert sources.is_video_model(str(tmp_path / "v.safetensors")) is True
    assert sources.is_video_model(str(tmp_path / "missing.safetensors")) is None


# -- one session per stream, its resets ---------------------------------------------------------------------------


def test_a_gap_in_timestamps_resets_the_state_and_small_drops_do_not(tmp_path, engine):
    # 25 fps: 2 frames missing after frame 6 (kept), 4 missing after frame 9 (a gap).
    pts = [0, 1, 2, 3, 4, 5, 8, 9, 10, 15, 16, 17]
    src = make_video(tmp_path / "gap.mp4", frames=len(pts), pts=pts, time_base=Fraction(1, 25), audio=False)
    recording = Recording(engine)
    stats = run(str(src), str(tmp_path / "out.mkv"), RunConfig(**VIDEO, batch=4, stats_path=str(tmp_path / "s.json")),
                engine=recording)
    assert stats.frames_out == len(pts)
    assert json.loads((tmp_path / "s.json").read_text())["resets"] == {"gap": 1}
    empty = [i for i, w in enumerate(recording.history) if w == 0.0]
    assert empty == [0, 9], recording.history  # the first frame, and the one after the gap


def test_batches_give_the_frames_one_at_a_time_would(tmp_path):
    src = make_video(tmp_path / "clip.mp4", frames=10, audio=False)
    one, four = tmp_path / "one.mkv", tmp_path / "four.mkv"
    run(str(src), str(one), RunConfig(**VIDEO))
    run(str(src), str(four), RunConfig(**VIDEO, batch=4))
    a, b = _frames(one), _frames(four)
    assert len(a) == len(b) == 10 and np.array_equal(a, b)


def test_a_cut_resets_the_state_and_is_counted(tmp_path, engine):
    path = tmp_path / "cut.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
        for i in range(8):
            image = pattern(i, 64, 48) if i < 4 else np.ascontiguousarray(255 - pattern(40 + i, 64, 48)[::-1])
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    recording = Recording(engine)
    stats = run(str(path), str(tmp_path / "out.mkv"), RunConfig(**VIDEO), engine=recording)
    assert stats.resets == {"cut": 1}
    assert [i for i, w in enumerate(recording.history) if w == 0.0] == [0, 4]


def test_several_streams_keep_their_own_state_through_the_shared_engine(tmp_path, engine):
    a = make_video(tmp_path / "a.mp4", frames=8, audio=False)
    b = tmp_path / "b.mkv"
    with av.open(str(b), "w") as out:  # another scene: mixing its state with a's would show
        stream = out.add_stream("libx264", rate=25, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
        for i in range(8):
            image = np.ascontiguousarray(255 - np.roll(pattern(i, 64, 48), i, axis=1))
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    stats = run_many([str(a), str(b)], str(tmp_path / "many") + "/", RunConfig(**VIDEO), engine=engine)
    assert [s["status"] for s in stats.streams] == ["done", "done"]
    for src in (a, b):
        alone = tmp_path / f"alone-{src.stem}.mkv"
        run(str(src), str(alone), RunConfig(**VIDEO), engine=engine)
        together = _frames(tmp_path / "many" / src.name)
        assert len(together) == 8 and np.abs(together - _frames(alone)).max() <= 2


def test_a_warm_up_is_restored_but_not_written(tmp_path, engine):
    from unweather.stream import WarmUp

    src = make_video(tmp_path / "clip.mp4", frames=16, audio=False)
    whole, warm, cold = tmp_path / "whole.mkv", tmp_path / "warm.mkv", tmp_path / "cold.mkv"
    run(str(src), str(whole), RunConfig(**VIDEO), engine=engine)
    recording = Recording(engine)
    stats = run(str(src), str(warm), RunConfig(**VIDEO), engine=recording, warmup=WarmUp(skip=2, frames=8))
    assert stats.frames_out == 6 and stats.warmup_frames == 8 and stats.frames_in == 6
    assert len(recording.history) == 14 and recording.history[0] == 0.0 and min(recording.history[1:]) > 0
    run(str(src), str(cold), RunConfig(**VIDEO), engine=engine, warmup=WarmUp(skip=10))
    reference = _frames(whole)[10:]
    warm_diff = np.abs(_frames(warm) - reference).mean(axis=(1, 2, 3))
    cold_diff = np.abs(_frames(cold) - reference).mean(axis=(1, 2, 3))
    # Warmed over 8 frames the state is nearly the whole run's; started cold here, it is far from it.
    assert warm_diff[0] < 2.0 and cold_diff[0] > 5 * warm_diff[0], (warm_diff, cold_diff)


def test_the_fleets_counting_engine_passes_the_video_network_through(engine):
    from unweather.cluster.ray_fleet import CountingEngine

    counting = CountingEngine(engine)
    assert counting.stateful
    session = VideoSession(counting)
    out = session(torch.rand(3, 3, 48, 64))
    assert out.shape == (3, 3, 48, 64) and counting.frames == 3


def test_a_still_cameras_motion_noise_is_summed_until_it_is_worth_moving_the_state(engine, monkeypatch):
    from unweather import motion

    moves = iter([0.1, 0.1, 0.1, -0.05, 3.0])
    warps: list[tuple[float, float]] = []
    real_warp = motion.warp_state
    monkeypatch.setattr(motion, "estimate", lambda prev, grey, width: motion.Motion(dx=next(moves)))
    monkeypatch.setattr(motion, "warp_state",
                        lambda bg, w, dx, dy: warps.append((dx, dy)) or real_warp(bg, w, dx, dy))
    session = VideoSession(engine)
    session(torch.rand(6, 3, 48, 64))
    # 0.1 + 0.1 + 0.1 reaches a quarter pixel at the 4th frame; then -0.05 waits and is added to the pan.
    assert [round(dx, 6) for dx, _ in warps] == [0.3, 2.95]


# -- --temporal ------------------------------------------------------------------------------------------------


def test_temporal_is_refused_with_a_video_model_in_one_line(tmp_path, capsys):
    src = make_video(tmp_path / "clip.mp4", frames=3, audio=False)
    out = tmp_path / "out.mkv"
    assert main(["run", str(src), "-o", str(out), "--model", "video_small", "--temporal", "0.5", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--temporal" in err[0] and "video model" in err[0]
    assert not out.exists()


def test_temporal_is_refused_with_the_default_video_model_but_not_for_images(tmp_path, shipped):
    from unweather.stream.runner import temporal_refusal

    config = RunConfig(temporal=0.5, device="cpu")
    refusal = temporal_refusal(config, video=True)
    assert refusal is not None and "default model" in refusal and "--model fast" in refusal
    assert temporal_refusal(config, video=False) is None
    assert temporal_refusal(RunConfig(temporal=0.5, model="fast"), video=True) is None


def test_temporal_is_refused_by_the_pipeline_for_a_video_engine_it_is_given(tmp_path, engine):
    src = make_video(tmp_path / "clip.mp4", frames=3, audio=False)
    with pytest.raises(UnweatherError, match="--temporal"):
        run(str(src), str(tmp_path / "out.mkv"), RunConfig(**VIDEO, temporal=0.5), engine=engine)
    assert not (tmp_path / "out.mkv").exists()


def test_tiles_are_refused_for_a_video_model(tmp_path):
    src = make_video(tmp_path / "clip.mp4", frames=3, audio=False)
    with pytest.raises(UnweatherError, match="--tile applies to frame models"):
        run(str(src), str(tmp_path / "out.mkv"), RunConfig(**VIDEO, tile=32, tile_overlap=8))
    assert not (tmp_path / "out.mkv").exists()


def test_continuity_tells_a_reconnection_and_a_gap_even_without_a_nominal_rate():
    from unweather.stream.pipeline import _Continuity, _Frame

    class Source:
        rate = None  # a network source that did not announce its rate

    tb = Fraction(1, 90000)

    def frame(i: int, pts: int, connection: int = 0) -> _Frame:
        return _Frame(i, pts, tb, 0.0, None, ("yuv", 48, 64), None, connection=connection)

    check = _Continuity(Source()).check
    step = 3600  # 25 fps on the 90 kHz clock
    stamps = [0, 1, 2, 3, 5, 6, 7, 12, 13]  # 1 frame missing after 3 (kept), 4 after 7 (a gap)
    reasons = [check(frame(i, s * step)) for i, s in enumerate(stamps)]
    assert reasons == [None] * 7 + ["gap", None]
    # A reconnection: the clock goes on, the connection count changes.
    assert check(frame(9, 14 * step, connection=1)) == "reconnection"
    assert check(frame(10, 15 * step, connection=1)) is None
