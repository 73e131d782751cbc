"""Many inputs on one machine: one run, one shared engine that batches across streams, outputs never mixed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from media import decode_planes, make_video, pattern, playable

import unweather.engine as engines
from unweather.cli import main
from unweather.errors import UnweatherError
from unweather.stream import RunConfig
from unweather.stream.multi import SharedEngine, plan_streams, run_many
from unweather.stream.runner import run

ROOT = Path(__file__).resolve().parent.parent
SIZE = (64, 48)


def _clip(path: Path, k: int, frames: int = 6, rate: int = 25) -> Path:
    """A clip whose content depends on `k` (shifted pattern, permuted and for odd k inverted colours)."""
    w, h = SIZE
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate, options={"crf": "10", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = Fraction(1, rate)
        for i in range(frames):
            img = np.roll(pattern(i + 13 * k, w, h), k, axis=-1)
            img = 255 - img if k % 2 else img
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def _mean_diff(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> float:
    return float(np.mean([np.abs(x[0].astype(int) - y[0].astype(int)).mean() for x, y in zip(a, b)]))


class _Counting:
    """A real engine, counting the frames of each call made to it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.sizes: list[int] = []

    @property
    def device(self):
        return self.inner.device

    def describe(self) -> str:
        return self.inner.describe()

    def __call__(self, frames):
        self.sizes.append(frames.shape[0])
        return self.inner(frames)


def test_several_files_give_the_frames_of_separate_runs_without_mixing(tmp_path: Path, capsys) -> None:
    clips = [_clip(tmp_path / f"cam{k}.mp4", k) for k in range(3)]
    stats_path = tmp_path / "stats.json"
    rc = main(["run", *map(str, clips), "-o", str(tmp_path / "out") + "/", "--model", "identity", "--crf", "0",
               "--stats", str(stats_path), "-q"])
    assert rc == 0, capsys.readouterr().err
    shared = [decode_planes(tmp_path / "out" / f"cam{k}.mp4") for k in range(3)]
    for k, clip in enumerate(clips):
        alone = tmp_path / f"alone{k}.mp4"
        run(str(clip), str(alone), RunConfig(model="identity", crf=0, progress=False))
        separate = decode_planes(alone)
        assert len(shared[k]) == len(separate) == 6
        for a, b in zip(shared[k], separate):
            for pa, pb in zip(a, b):
                np.testing.assert_array_equal(pa, pb)
    # The clips differ a lot, so an output holding another stream's frames could not pass the check above.
    assert _mean_diff(shared[0], shared[1]) > 20 and _mean_diff(shared[1], shared[2]) > 20
    data = json.loads(stats_path.read_text())
    assert [s["name"] for s in data["streams"]] == ["cam0", "cam1", "cam2"]
    assert all(s["status"] == "done" and s["frames_out"] == 6 for s in data["streams"])
    assert data["total"]["frames_out"] == 18 and data["total"]["failed"] == 0
    assert data["engines"][0]["frames"] == 18 and data["engines"][0]["streams"] == 3


def test_shared_engine_batches_streams_and_matches_separate_runs_within_tolerance(tmp_path: Path) -> None:
    clips = [_clip(tmp_path / f"c{k}.mp4", k, frames=5) for k in range(4)]
    counting = _Counting(engines.open("student_small", device="cpu"))
    config = RunConfig(crf=0, progress=False, mode="offline")
    stats = run_many([str(c) for c in clips], str(tmp_path / "shared") + "/", config, engine=counting)
    engine = stats.engines[0]
    # Counted in the engine itself: every frame once, and fewer calls than frames, some holding several streams.
    assert sum(counting.sizes) == engine["frames"] == 20
    assert len(counting.sizes) == engine["calls"] < 20
    assert max(counting.sizes) > 1 and max(int(k) for k in engine["streams_per_call"]) > 1
    assert max(counting.sizes) <= engine["max_batch"] == 8
    assert {str(n): counting.sizes.count(n) for n in set(counting.sizes)} == engine["batch_sizes"]
    for k, clip in enumerate(clips):
        alone = tmp_path / f"alone{k}.mp4"
        run(str(clip), str(alone), config, engine=counting.inner)
        got, want = decode_planes(tmp_path / "shared" / f"c{k}.mp4"), decode_planes(alone)
        assert len(got) == len(want) == 5
        for a, b in zip(got, want):
            for pa, pb in zip(a, b):
                diff = np.abs(pa.astype(int) - pb.astype(int))
                assert diff.max() <= 2 and diff.mean() < 0.05


def test_engine_batch_one_turns_batching_off(tmp_path: Path) -> None:
    clips = [_clip(tmp_path / f"c{k}.mp4", k, frames=3) for k in range(2)]
    counting = _Counting(engines.open("identity", device="cpu"))
    stats = run_many([str(c) for c in clips], str(tmp_path / "o") + "/", RunConfig(progress=False),
                     engine=counting, max_batch=1)
    assert counting.sizes == [1] * 6 and stats.engines[0]["batch_sizes"] == {"1": 6}


def test_live_streams_keep_dropping_the_oldest_frame_behind_a_shared_engine(tmp_path: Path) -> None:
    # Paced like cameras at 50 FPS, far faster than msbdn restores two streams on a CPU; long enough to
    # outlast the start-up, during which frames wait rather than drop.
    clips = [_clip(tmp_path / f"live{k}.mp4", k, frames=100, rate=50) for k in range(2)]
    engine = engines.open("msbdn", device="cpu")
    stats = run_many([str(c) for c in clips], str(tmp_path / "rec") + "/", RunConfig(mode="live", progress=False),
                     engine=engine)
    assert sum(s["dropped"] for s in stats.streams) > 0
    for s in stats.streams:
        assert s["mode"] == "live" and s["status"] == "done" and s["output"].endswith(".mkv")
        assert s["frames_out"] + s["dropped"] == s["frames_in"] == 100
        assert s["drops"]["overload"] > 0
        assert s["queues"]["decode"]["max_depth"] <= 2 + 2 * 50  # 2 s of frames held while starting
        assert playable(s["output"]) == s["frames_out"]


def test_a_bad_input_is_reported_by_name_and_the_others_go_on(tmp_path: Path, capsys) -> None:
    good = [_clip(tmp_path / f"good{k}.mp4", k, frames=4) for k in range(2)]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is no video")
    missing = tmp_path / "missing.mp4"
    stats_path = tmp_path / "s.json"
    rc = main(["run", str(good[0]), str(broken), str(missing), str(good[1]), "-o", str(tmp_path / "out") + "/",
               "--model", "identity", "--stats", str(stats_path)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "2 of 4 inputs failed: broken, missing" in err and "Traceback" not in err
    assert "broken: failed: cannot read" in err and "missing: failed: no such file" in err
    for k in range(2):
        assert playable(tmp_path / "out" / f"good{k}.mp4") == 4
    assert not (tmp_path / "out" / "broken.mp4").exists() and not (tmp_path / "out" / "missing.mp4").exists()
    data = json.loads(stats_path.read_text())
    assert [s["status"] for s in data["streams"]] == ["done", "failed", "failed", "done"]
    assert data["total"]["failed"] == 2 and data["total"]["frames_out"] == 8


def test_sources_file_options_outputs_and_folders_of_videos(tmp_path: Path) -> None:
    cams = tmp_path / "cams"
    cams.mkdir()
    for k in range(2):
        _clip(cams / f"v{k}.mp4", k, frames=4)
    (tmp_path / "cams.toml").write_text(
        '[defaults]\nmodel = "identity"\n\n'
        '[[sources]]\nname = "gate"\npath = "cams/v0.mp4"\noptions = { max_frames = 2 }\n\n'
        '[[sources]]\nname = "yard"\npath = "cams/v1.mp4"\noutput = "elsewhere/yard-clean.mkv"\n')
    stats = run_many([str(tmp_path / "cams.toml")], str(tmp_path / "out") + "/", RunConfig(progress=False))
    by_name = {s["name"]: s for s in stats.streams}
    assert by_name["gate"]["frames_out"] == 2 and by_name["yard"]["frames_out"] == 4
    assert playable(tmp_path / "out" / "gate.mp4") == 2
    assert playable(tmp_path / "elsewhere" / "yard-clean.mkv") == 4
    # A folder of videos is one input per video; a folder of images stays one input.
    plans = plan_streams([str(cams)], str(tmp_path / "o") + "/", RunConfig())
    assert [(p.name, os.path.basename(p.output)) for p in plans] == [("v0", "v0.mp4"), ("v1", "v1.mp4")]
    plans = plan_streams([str(cams / "v0.mp4"), str(tmp_path / "x" / "v0.mp4")], None, RunConfig())
    assert [p.name for p in plans] == ["v0", "v0-2"] and plans[0].output.endswith("v0.unweather.mp4")


def test_two_inputs_writing_one_output_is_a_clear_error(tmp_path: Path, capsys) -> None:
    clips = [_clip(tmp_path / f"c{k}.mp4", k, frames=2) for k in range(2)]
    (tmp_path / "same.yaml").write_text(
        "sources:\n"
        "  - {name: a, path: c0.mp4, output: out/one.mp4}\n"
        "  - {name: b, path: c1.mp4, output: out/one.mp4}\n")
    assert main(["run", str(tmp_path / "same.yaml"), "--model", "identity"]) == 1
    assert "inputs a and b would both write" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["run", *map(str, clips), "-o", str(tmp_path / "one.mp4"), "--model", "identity"]) == 1
    assert "-o must be a folder" in capsys.readouterr().err
    (tmp_path / "over.yaml").write_text(
        "sources:\n  - {name: a, path: c0.mp4, output: c1.mp4}\n  - {name: b, path: c1.mp4}\n")
    with pytest.raises(UnweatherError, match="the output of a .* is the input of b"):
        plan_streams([str(tmp_path / "over.yaml")], str(tmp_path / "o") + "/", RunConfig())


def test_a_failing_engine_call_reaches_only_its_own_stream() -> None:
    import time

    import torch

    entered, release = threading.Event(), threading.Event()

    class Picky:
        device = torch.device("cpu")

        def __call__(self, frames):
            if not entered.is_set():
                entered.set()
                release.wait(10)  # hold the first call so the next two requests wait together
            if bool((frames < 0).any()):
                raise ValueError("negative pixels")
            return frames * 2

    shared = SharedEngine(Picky(), max_batch=8)
    shared.start()
    results: dict[str, object] = {}

    def call(name: str, x) -> None:
        try:
            results[name] = shared.client(name)(x)
        except ValueError as exc:
            results[name] = exc

    inputs = {"first": torch.rand(1, 3, 4, 4), "good": torch.rand(1, 3, 4, 4), "bad": -torch.rand(1, 3, 4, 4)}
    threads = [threading.Thread(target=call, args=(name, x)) for name, x in inputs.items()]
    threads[0].start()
    assert entered.wait(10)
    threads[1].start()
    threads[2].start()
    deadline = time.monotonic() + 10
    while len(shared._pending) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for t in threads:
        t.join(10)
    shared.close()
    assert torch.equal(results["first"], inputs["first"] * 2)
    assert torch.equal(results["good"], inputs["good"] * 2)
    assert isinstance(results["bad"], ValueError)
    assert shared.stats()["streams_per_call"] == {"1": 1, "2": 1}  # good and bad went in one call


def test_sigint_finishes_every_output_and_ray_is_never_imported(tmp_path: Path) -> None:
    for k in range(2):
        make_video(tmp_path / f"long{k}.mp4", frames=150, size=SIZE, rate=25, audio=False)
    (tmp_path / "cams.yaml").write_text(
        "defaults: {model: identity, mode: live}\n"
        "sources:\n  - {name: north, path: long0.mp4}\n  - {name: south, path: long1.mp4}\n")
    script = (
        "import json, sys\n"
        "from unweather.cli import main\n"
        f"rc = main(['run', {str(tmp_path / 'cams.yaml')!r}, '-o', {str(tmp_path / 'rec') + '/'!r}, "
        f"'--stats', {str(tmp_path / 'stats.json')!r}])\n"  # not -q: the "encoding" lines are waited for
        "mods = [m for m in sys.modules if m == 'ray' or m.startswith(('ray.', 'unweather.cluster.ray'))]\n"
        "print(json.dumps({'rc': rc, 'ray': mods}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    started = 0
    lines = []
    for line in proc.stderr:
        lines.append(line)
        started += line.startswith("encoding ")
        if started == 2:
            break
    threading.Timer(0.5, proc.send_signal, (signal.SIGINT,)).start()
    out, rest = proc.communicate(timeout=60)
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"rc": 130, "ray": []}, "".join(lines) + rest
    data = json.loads((tmp_path / "stats.json").read_text())
    for s in data["streams"]:
        assert s["status"] == "stopped" and s["interrupted"] and s["error"] is None
        assert 0 < s["frames_out"] < 150
        assert playable(tmp_path / "rec" / f"{s['name']}.mkv") == s["frames_out"]
