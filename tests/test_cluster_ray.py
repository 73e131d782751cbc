"""Archives on a local Ray cluster: a killed worker, chunking with audio, resume, failures, capacity."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import av
import numpy as np
import pytest
from test_cluster import make_clip, probe

from unweather.cluster import run_on_ray
from unweather.cluster.chunks import is_temp
from unweather.cluster.ray_archive import ArchiveOptions
from unweather.cluster.ray_run import RayOptions
from unweather.errors import UnweatherError
from unweather.stream import RunConfig, run

try:
    import ray
except ImportError:  # the [ray] extra is optional
    ray = None

pytestmark = pytest.mark.ray


@dataclasses.dataclass
class FakeConfig:
    """Stands in for RunConfig: inputs whose path contains one of `fail_on` raise."""

    fail_on: tuple[str, ...] = ()


def transcode(src: str, dst: str, config: FakeConfig | None = None, engine=None, stop_event=None) -> None:
    """A stand-in pipeline that can be told to fail: decode, run the engine, encode losslessly."""
    import torch

    if config is not None and any(word in src for word in config.fail_on):
        raise RuntimeError(f"refusing {os.path.basename(src)}")
    with av.open(src) as inp, av.open(dst, "w") as out:
        vin = inp.streams.video[0]
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = vin.width, vin.height, "yuv420p"
        video.options = {"bf": "2", "g": "12", "qp": "0"}
        for frame in inp.decode(vin):
            x = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None].float() / 255
            y = (engine(x)[0].permute(1, 2, 0) * 255).round().byte().numpy()
            new = av.VideoFrame.from_ndarray(np.ascontiguousarray(y), format="rgb24")
            new.pts, new.time_base = frame.pts, frame.time_base
            out.mux(video.encode(new))
        out.mux(video.encode())


def frames_of(path: str) -> list[np.ndarray]:
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def temps_under(folder: str) -> list[str]:
    return [os.path.join(r, n) for r, _, names in os.walk(folder) for n in names if is_temp(n)]


@pytest.fixture(scope="module")
def cluster():
    if ray is None:
        pytest.skip("Ray is not installed (pip install 'unweather[ray]')")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=80 * 1024 * 1024, namespace="unweather")
    # Ray workers import this module's functions by value: it is not on their path.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def six(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("six")
    # The first is longer, so a worker is surely caught in the middle of one.
    return [make_clip(str(folder / f"cam{i}.mp4"), seconds=3.0 if i == 0 else 1.0, size=(96, 64), audio=i % 2 == 0)
            for i in range(6)]


def lossless(**kwargs) -> RunConfig:
    # Lossless, so frames compare exactly: lossy libx264 output differs from run to run here (the first
    # encode in a process differs from later ones), while the frames the engine produced do not.
    return RunConfig(model="identity", codec="libx264", crf=0, progress=False, **kwargs)


def archive(**kwargs) -> RayOptions:
    return RayOptions(archive=ArchiveOptions(progress=False, **kwargs))


def test_six_files_with_a_worker_killed(cluster, six, tmp_path):
    out = str(tmp_path / "out")
    killed: list[int] = []

    def kill_first_worker_seen() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for path in temps_under(out):
                # temp names carry host-pid-random: kill that worker process mid-chunk
                pid = int(os.path.basename(path).split(".part")[0].rsplit(".", 1)[1].split("-")[-2])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_first_worker_seen, daemon=True)
    killer.start()
    stats = run_on_ray(six, out, lossless(stats_path=str(tmp_path / "stats.json")), archive(actors=2))
    killer.join(5)
    assert killed, "no worker was caught mid-chunk"
    assert stats["totals"]["done"] == 6 and stats["totals"]["failed"] == 0
    assert sorted(os.listdir(out)) == [f"cam{i}.mp4" for i in range(6)]
    assert temps_under(out) == [] and temps_under(str(tmp_path)) == []
    handled = {c["name"]: c for c in stats["chunks"]}
    assert set(handled) == {f"cam{i}" for i in range(6)}
    assert killed[0] not in {c["pid"] for c in stats["chunks"]}  # its chunk was redone elsewhere
    assert all(c["node"] and c["worker"] for c in stats["chunks"])
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written["totals"]["done"] == 6
    # Every input names where it was restored: the node and worker of its chunks.
    for entry in written["inputs"]:
        chunks = [c for c in written["chunks"] if c["name"] == entry["name"] and c["status"] == "done"]
        assert entry["nodes"] == [chunks[-1]["node"]] and chunks[-1]["worker"] in entry["workers"]
    for src in six:
        single = str(tmp_path / ("single-" + os.path.basename(src)))
        run(src, single, lossless())
        name = os.path.join(out, os.path.basename(src))
        got, want = frames_of(name), frames_of(single)
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
        assert probe(name)["times"] == probe(single)["times"] == probe(src)["times"]


def test_chunked_run_keeps_frames_timestamps_and_audio(cluster, tmp_path):
    clip = make_clip(str(tmp_path / "rain.mp4"), seconds=3.0)
    whole = run_on_ray([clip], str(tmp_path / "whole"), lossless(), archive())
    chunked = run_on_ray([clip], str(tmp_path / "chunked"), lossless(), archive(chunk_seconds=1.0))
    assert whole["inputs"][0]["chunks"] == 1 and chunked["inputs"][0]["chunks"] == 3
    a, b, src = probe(whole["inputs"][0]["output"]), probe(chunked["inputs"][0]["output"]), probe(clip)
    assert len(b["times"]) == len(a["times"]) == 90
    assert b["times"] == a["times"] == src["times"]
    assert b["pts"] == a["pts"] == src["pts"]
    assert b["audio"] == a["audio"] == src["audio"] and len(src["audio"]) > 0
    got, want = frames_of(chunked["inputs"][0]["output"]), frames_of(whole["inputs"][0]["output"])
    assert all(np.array_equal(x, y) for x, y in zip(got, want))


def test_chunks_of_a_video_network_start_warm(cluster, tmp_path):
    from media import make_video

    from unweather.cluster.planner import plan_input

    clip = str(make_video(tmp_path / "still.mp4", frames=75, audio=False, options={
        "g": "10", "bf": "2", "crf": "12", "x264-params": "scenecut=0:open-gop=0"}))
    config = RunConfig(model="video_small", backend="torch", device="cpu", codec="libx264", crf=0)
    whole = run_on_ray([clip], str(tmp_path / "whole"), config, archive(actors=1))
    chunked = run_on_ray([clip], str(tmp_path / "chunked"), config, archive(chunk_seconds=1.0, actors=2))
    starts = [c.first_packet for c in plan_input(clip, 1.0).chunks]
    assert chunked["inputs"][0]["chunks"] == len(starts) == 3
    assert whole["inputs"][0]["frames"] == chunked["inputs"][0]["frames"] == 75
    got, want = (np.stack(frames_of(s["inputs"][0]["output"])).astype(np.int16) for s in (chunked, whole))
    assert got.shape == want.shape and probe(chunked["inputs"][0]["output"])["times"] == probe(clip)["times"]
    # Each chunk starts with the state its lead-in warmed: right after a boundary it is the unchunked run's.
    for start in starts[1:]:
        assert np.abs(got[start:start + 3] - want[start:start + 3]).mean() < 1.0, start


def test_failed_chunk_is_reported_then_resumed(cluster, tmp_path):
    clip = make_clip(str(tmp_path / "gate.mp4"), seconds=3.0)
    out = str(tmp_path / "out")
    bad = FakeConfig(fail_on=("-00001-input",))  # the cut of chunk 1
    first = run_on_ray([clip], out, bad, archive(chunk_seconds=1.0, retries=1), runner=transcode)
    (entry,) = first["inputs"]
    assert entry["status"] == "failed" and entry["name"] == "gate"
    assert "chunk 1" in entry["error"] and "refusing" in entry["error"]
    assert [c["attempts"] for c in first["chunks"] if c["status"] == "failed"] == [2]
    assert not os.path.exists(os.path.join(out, "gate.mp4")) and temps_under(out) == []
    # The next run, with resume, restores only the missing chunk (another config would start over).
    again = run_on_ray([clip], out, bad, archive(chunk_seconds=1.0, resume=True), runner=_fixed_transcode)
    assert again["inputs"][0]["status"] == "done"
    assert [c["index"] for c in again["chunks"]] == [1]
    assert probe(os.path.join(out, "gate.mp4"))["times"] == probe(clip)["times"]
    assert not os.path.exists(os.path.join(out, ".unweather-work"))
    # Finished outputs are skipped on resume.
    third = run_on_ray([clip], out, bad, archive(resume=True), runner=transcode)
    assert third["inputs"][0]["status"] == "skipped" and third["chunks"] == []


def _fixed_transcode(src, dst, config=None, engine=None, stop_event=None):
    transcode(src, dst, None, engine, stop_event)


@dataclasses.dataclass
class UnknownModelConfig:
    model: str = "no-such-model"


def test_engine_errors_are_reported_and_max_failed_stops_the_rest(cluster, tmp_path):
    clips = [make_clip(str(tmp_path / f"clip{i}.mp4"), seconds=0.5, audio=False) for i in range(4)]
    stats = run_on_ray(clips, str(tmp_path / "out"), UnknownModelConfig(),
                       archive(max_failed=0, actors=1, retries=0), runner=transcode)
    totals = stats["totals"]
    assert totals["failed"] >= 1 and totals["not_run"] >= 1 and totals["done"] == 0
    assert totals["failed"] + totals["not_run"] == 4
    failed = [i for i in stats["inputs"] if i["status"] == "failed"]
    assert all("cannot build the engine" in i["error"] and "no-such-model" in i["error"] for i in failed)


def test_no_capacity_fails_within_the_timeout(cluster, tmp_path):
    clip = make_clip(str(tmp_path / "a.mp4"), seconds=0.5, audio=False)
    began = time.monotonic()
    with pytest.raises(UnweatherError, match="no room"):
        run_on_ray([clip], str(tmp_path / "out"), FakeConfig(), archive(gpus_per_actor=4, start_timeout=3),
                   runner=transcode)
    assert time.monotonic() - began < 60


def test_connect_ignores_a_stale_cluster_file_and_refuses_a_dead_address(tmp_path):
    if ray is None:
        pytest.skip("Ray is not installed (pip install 'unweather[ray]')")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    (tmp_path / "ray_current_cluster").write_text(dead)
    code = f"""
import time, ray
from unweather.cluster.ray_connect import connect
from unweather.errors import UnweatherError
from unweather.stream import RunConfig, run
t = time.monotonic()
try:
    connect({dead!r}, timeout=1)
except UnweatherError as exc:
    assert "no Ray cluster answers" in str(exc), exc
else:
    raise AssertionError("joined a dead address")
assert not ray.is_initialized() and time.monotonic() - t < 10
assert connect(None, temp_dir={str(tmp_path)!r}, num_cpus=1, num_gpus=0) is True
assert ray.is_initialized() and ray.cluster_resources()["CPU"] == 1
ray.shutdown()
"""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)
