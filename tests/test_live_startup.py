"""Live runs do not drop frames while they start (engine, encoder, an RTSP source's probing burst), nor
after a reconnection, and the statistics count drops by cause: `startup` and `overload`."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import av
import pytest
import torch
from media import make_video, playable
from netservers import RtspServer, requires_gst_rtsp, wait_for

from unweather.stream import RunConfig, run
from unweather.stream import pipeline as pipeline_mod


class SlowStart:
    """An engine whose first call after `arm()` takes `first` seconds more (a lazy build or warm-up, as
    TensorRT contexts and CUDA graphs have), and every call `each` seconds more: identity, or `inner`."""

    def __init__(self, first: float = 0.0, each: float = 0.0, inner=None) -> None:
        self.inner = inner
        self.device = inner.device if inner is not None else torch.device("cpu")
        self.first, self.each = first, each
        self.calls = 0
        self._armed = True

    def arm(self, first: float) -> None:
        self.first, self._armed = first, True

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if self._armed:
            self._armed = False
            time.sleep(self.first)
        time.sleep(self.each)
        self.calls += 1
        return self.inner(frames) if self.inner is not None else frames.clone()

    def describe(self) -> str:
        return "slow-start " + (self.inner.describe() if self.inner is not None else "identity")

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


def _live(**kwargs) -> RunConfig:
    return RunConfig(mode="live", progress=False, **kwargs)


# ---------------------------------------------------------------- a camera-paced file


def test_a_slow_first_call_drops_nothing(tmp_path: Path) -> None:
    # 40 frames at 25 FPS, and a first call of 1 s: 25 frames arrive before the first is restored.
    src = make_video(tmp_path / "cam.mp4", frames=40, size=(64, 48), audio=False)
    stats = run(str(src), str(tmp_path / "out.mkv"), _live(stats_path=str(tmp_path / "s.json")),
                engine=SlowStart(first=1.0))
    assert stats.frames_in == stats.frames_out == 40 and playable(tmp_path / "out.mkv") == 40
    assert stats.dropped == 0
    assert json.loads((tmp_path / "s.json").read_text())["drops"] == {"startup": 0, "overload": 0}
    # The backlog waited in the decode queue, beyond its live capacity of 2.
    assert stats.queues["decode"]["max_depth"] > 10


def test_a_start_longer_than_the_hold_drops_the_oldest_as_startup(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pipeline_mod, "_STARTUP_HOLD_S", 0.4)  # 2 + 10 frames at 25 FPS
    src = make_video(tmp_path / "cam.mp4", frames=40, size=(64, 48), audio=False)
    stats = run(str(src), str(tmp_path / "out.mkv"), _live(), engine=SlowStart(first=1.2))
    assert stats.drops["startup"] >= 10 and stats.drops["overload"] == 0
    assert stats.dropped == stats.drops["startup"] and stats.frames_out + stats.dropped == stats.frames_in == 40
    assert stats.queues["decode"]["max_depth"] == 12
    assert "dropped: " in stats.summary() and "while starting" in stats.summary()


def test_a_machine_that_falls_behind_drops_as_overload(tmp_path: Path) -> None:
    # 80 ms a frame for a 25 FPS source: half the frames cannot be restored, start-up or not.
    src = make_video(tmp_path / "cam.mp4", frames=40, size=(64, 48), audio=False)
    stats = run(str(src), str(tmp_path / "out.mkv"), _live(), engine=SlowStart(each=0.08))
    assert stats.drops["overload"] >= 10 and stats.drops["startup"] == 0
    assert stats.frames_out + stats.dropped == stats.frames_in == 40
    assert "falling behind the source" in stats.summary()


# ---------------------------------------------------------------- an RTSP camera


@pytest.fixture
def camera(tmp_path):
    requires_gst_rtsp()
    server = RtspServer(tmp_path, fps=25).start()
    yield server
    server.kill()


@pytest.mark.rtsp
def test_rtsp_camera_with_a_slow_to_open_engine_writes_every_frame(camera, tmp_path, monkeypatch):
    from unweather.cli import main
    from unweather.stream import runner

    opened = runner.open_engine

    def slow_open(config: RunConfig, video: bool = False) -> SlowStart:
        time.sleep(1.0)
        return SlowStart(first=1.0, inner=opened(config, video))

    monkeypatch.setattr(runner, "open_engine", slow_open)
    out, stats_path = tmp_path / "out.mkv", tmp_path / "stats.json"
    assert main(["run", camera.url(), "-o", str(out), "--model", "identity", "--max-frames", "40",
                 "--stats", str(stats_path)]) == 0
    stats = json.loads(stats_path.read_text())
    assert stats["frames_in"] == stats["frames_out"] == 40, stats
    assert stats["drops"] == {"startup": 0, "overload": 0} and stats["dropped"] == 0
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 40


@pytest.mark.rtsp
def test_a_reconnection_starts_again_without_drops(camera, tmp_path):
    engine = SlowStart()
    done: dict = {}
    config = _live(max_frames=100, open_timeout=2, read_timeout=2, stall_timeout_network=4, give_up_after=30)

    def record() -> None:
        try:
            done["stats"] = run(camera.url(), str(tmp_path / "out.mkv"), config, engine=engine)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            done["error"] = exc

    thread = threading.Thread(target=record)
    thread.start()
    try:
        assert wait_for(lambda: engine.calls >= 25, 30)
        camera.kill()
        time.sleep(1.0)
        engine.arm(0.5)  # the first call after the outage is slow again
        camera.start()
        thread.join(60)
    finally:
        camera.kill()
        thread.join(10)
    assert "error" not in done, done.get("error")
    stats = done["stats"]
    assert stats.reconnections >= 1
    assert stats.frames_in == stats.frames_out == 100, stats.to_dict()
    assert stats.drops == {"startup": 0, "overload": 0}
