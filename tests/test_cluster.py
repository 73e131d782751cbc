"""Chunk planning, cutting and joining, exactly-once files and sources files (no Ray needed)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import av
import numpy as np
import pytest

from unweather.cluster.chunks import count_video_packets, cut, is_temp, join, publish, remove_temps, temp_path
from unweather.cluster.planner import clean_cuts, plan_input
from unweather.cluster.sources import apply_options, expand_inputs, load_sources
from unweather.errors import UnweatherError


def make_clip(path: str, seconds: float = 3.0, fps: int = 30, size: tuple[int, int] = (64, 48), gop: int = 15,
              audio: bool = True) -> str:
    """An H.264 clip with B-frames and a keyframe every `gop` frames, and AAC audio."""
    with av.open(path, "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.options = {"g": str(gop), "bf": "2", "preset": "veryfast", "x264-params": "scenecut=0"}
        sound = None
        if audio:
            sound = out.add_stream("aac", rate=16000)
            sound.layout = "mono"
        rng = np.random.default_rng(0)
        for i in range(int(seconds * fps)):
            img = rng.integers(0, 40, (size[1], size[0], 3), dtype=np.uint8)
            img[:, i % size[0]] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None:
            t = 0
            while t < int(seconds * 16000):
                samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(t, t + 1024) / 16000)).astype(np.float32)
                frame = av.AudioFrame.from_ndarray(samples[None], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, t
                out.mux(sound.encode(frame))
                t += 1024
            out.mux(sound.encode())
    return path


def transcode(src: str, dst: str, config: object = None, engine: object = None, stop_event: object = None) -> None:
    """Decode every frame and encode it again, keeping each frame's timestamp (a stand-in pipeline)."""
    with av.open(src) as inp, av.open(dst, "w") as out:
        vin = inp.streams.video[0]
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = vin.width, vin.height, "yuv420p"
        video.options = {"bf": "2", "g": "12"}
        for frame in inp.decode(vin):
            new = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
            new.pts, new.time_base = frame.pts, frame.time_base
            out.mux(video.encode(new))
        out.mux(video.encode())


def probe(path: str) -> dict:
    """Video pts in presentation order, frame count, and audio packets as (pts, dts, bytes)."""
    with av.open(path) as c:
        pts = sorted(p.pts for p in c.demux(c.streams.video[0]) if p.size)
        tb = c.streams.video[0].time_base
    with av.open(path) as c:
        audio = [(p.pts, p.dts, bytes(p)) for p in c.demux(c.streams.audio[0]) if p.size] if c.streams.audio else []
    with av.open(path) as c:
        times = [f.time for f in c.decode(video=0)]
    return {"pts": [p * tb for p in pts], "times": times, "audio": audio}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return make_clip(str(tmp_path_factory.mktemp("clip") / "rain.mp4"))


def test_planner_cuts_at_keyframes_without_decoding(clip):
    plan = plan_input(clip, chunk_seconds=1.0)
    assert plan.frames == 90 and plan.has_audio
    assert plan.keyframes == [0, 15, 30, 45, 60, 75]
    assert [c.frames for c in plan.chunks] == [30, 30, 30]
    assert [c.start for c in plan.chunks] == [0.0, 1.0, 2.0]
    pieces = [plan.chunk_pts(c) for c in plan.chunks]
    assert [p for piece in pieces for p in piece] == sorted(plan.pts)  # chunks partition the frames, in order
    assert len(plan_input(clip).chunks) == 1  # short files go whole by default
    assert len(plan_input(clip, chunk_seconds=0).chunks) == 1
    # A trailing piece shorter than a quarter chunk stays with the previous chunk.
    assert [c.frames for c in plan_input(clip, chunk_seconds=1.2).chunks] == [45, 45]


def test_open_gop_keyframes_are_not_cut_points():
    # Decode order I P B B | I B B P: the B-frames after the second I are shown before it (open GOP).
    pts = [0, 3, 1, 2, 6, 4, 5, 7]
    keys = [True, False, False, False, True, False, False, False]
    assert clean_cuts(pts, keys) == [0]
    # Closed GOP: the second I is shown after everything decoded before it.
    pts = [0, 3, 1, 2, 4, 7, 5, 6]
    assert clean_cuts(pts, keys) == [0, 4]


def test_cut_and_join_keep_timestamps_frames_and_audio(clip, tmp_path):
    plan = plan_input(clip, chunk_seconds=1.0)
    restored = []
    for chunk in plan.chunks:
        piece = str(tmp_path / f"piece{chunk.index}.mkv")
        cut(chunk, piece)
        assert count_video_packets(piece) == chunk.frames
        out = str(tmp_path / f"restored{chunk.index}.mkv")
        transcode(piece, out)
        restored.append(out)
    joined = str(tmp_path / "joined.mp4")
    result = join(plan, restored, joined)
    source, got = probe(clip), probe(joined)
    assert result["frames"] == 90 and len(got["times"]) == 90
    assert got["pts"] == source["pts"]
    assert got["times"] == source["times"]
    assert got["audio"] == source["audio"] and result["audio_packets"] == len(source["audio"])
    assert not [n for n in os.listdir(tmp_path) if is_temp(n)]


def test_join_refuses_missing_chunks_or_frames(clip, tmp_path):
    plan = plan_input(clip, chunk_seconds=1.0)
    piece = str(tmp_path / "piece.mkv")
    cut(plan.chunks[0], piece)
    with pytest.raises(UnweatherError, match="2 restored chunks for 3 planned"):
        join(plan, [piece, piece], str(tmp_path / "x.mp4"))
    plan.chunks[1] = dataclasses.replace(plan.chunks[1], frames=31)
    with pytest.raises(UnweatherError, match="chunk 1 came back with 30 frames, expected 31"):
        join(plan, [piece, piece, piece], str(tmp_path / "x.mp4"))
    assert not os.path.exists(tmp_path / "x.mp4")
    assert not [n for n in os.listdir(tmp_path) if is_temp(n)]


def _frames_of(path: str) -> np.ndarray:
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.int16)


def test_chunks_of_a_video_network_start_warm_and_write_every_frame(tmp_path):
    """A chunk restored with its lead-in matches the unchunked run right after the boundary; cold, it does not."""
    from media import make_video

    from unweather.cluster.planner import lead_in
    from unweather.cluster.ray_archive import run_chunk
    from unweather.engine import open as open_engine
    from unweather.stream import RunConfig, run

    src = str(make_video(tmp_path / "clip.mp4", frames=50, audio=False, options={
        "g": "10", "bf": "2", "crf": "12", "x264-params": "scenecut=0:open-gop=0"}))
    plan = plan_input(src, chunk_seconds=1.0)
    assert len(plan.chunks) == 2 and plan.chunks[1].first_packet == 30
    lead = lead_in(plan, plan.chunks[1], 0.5)
    assert lead is not None and lead.first_packet == 10 and (lead.skip, lead.frames) == (8, 12)
    assert lead_in(plan, plan.chunks[0], 0.5) is None and lead_in(plan, plan.chunks[1], 0.0) is None

    config = RunConfig(model="video_small", backend="torch", device="cpu", codec="libx264", crf=0, progress=False)
    engine = open_engine("video_small", backend="torch", device="cpu")
    whole = str(tmp_path / "whole.mkv")
    run(src, whole, config, engine=engine)
    outputs = {}
    for name, seconds in (("warm", 0.5), ("cold", 0.0)):
        pieces = []
        for chunk in plan.chunks:
            piece = str(tmp_path / f"{name}{chunk.index}.mkv")
            run_chunk(chunk, piece, run, config, engine, lead=lead_in(plan, chunk, seconds))
            assert count_video_packets(piece) == chunk.frames
            pieces.append(piece)
        outputs[name] = str(tmp_path / f"{name}.mkv")
        assert join(plan, pieces, outputs[name])["frames"] == 50
    reference = _frames_of(whole)
    assert not [n for n in os.listdir(tmp_path) if is_temp(n)]
    diff = {name: np.abs(_frames_of(path) - reference).mean(axis=(1, 2, 3)) for name, path in outputs.items()}
    assert len(reference) == 50 and all(len(d) == 50 for d in diff.values())
    assert diff["warm"][:30].max() == diff["cold"][:30].max() == 0  # the first chunk is the unchunked run's
    assert diff["warm"][30] < 1.0 and diff["cold"][30] > 5 * diff["warm"][30], (diff["warm"][30:], diff["cold"][30:])


def test_temporary_names_publish_and_cleanup(tmp_path):
    final = str(tmp_path / "cam.mp4")
    tmp = temp_path(final)
    assert tmp.endswith(".mp4") and is_temp(tmp) and not is_temp(final)
    assert str(os.getpid()) in os.path.basename(tmp)
    with open(tmp, "w") as f:
        f.write("x")
    publish(tmp, final)
    assert os.path.exists(final) and not os.path.exists(tmp)
    stale = temp_path(final)
    open(stale, "w").close()
    assert remove_temps(str(tmp_path)) == [stale]
    assert os.listdir(tmp_path) == ["cam.mp4"]


def test_sources_file_yaml_and_toml(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"")
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""
        defaults: {model: fast}
        sources:
          - {name: gate, url: "rtsp://user:pw@10.0.0.5/s1", output: rec/gate/, options: {device: cuda}}
          - {name: day-1, path: v.mp4, output: out/day1.mp4}
    """))
    gate, day = load_sources(str(tmp_path / "s.yaml"))
    assert gate.is_url and gate.input == "rtsp://user:pw@10.0.0.5/s1"
    assert gate.output == str(tmp_path / "rec" / "gate") + os.sep
    assert gate.options == {"model": "fast", "device": "cuda"}
    assert day.input == str(tmp_path / "v.mp4") and not day.is_url and day.options == {"model": "fast"}
    (tmp_path / "s.toml").write_text(textwrap.dedent("""
        [[cameras]]
        name = "gate"
        url = "rtsp://10.0.0.5/s1"
        [cameras.options]
        device = "cpu"
    """))
    (toml_gate,) = load_sources(str(tmp_path / "s.toml"))
    assert toml_gate.name == "gate" and toml_gate.options == {"device": "cpu"}


@pytest.mark.parametrize("body, message", [
    ("sources: [{name: a, url: 'rtsp://x/1'}, {name: a, url: 'rtsp://x/2'}]", "duplicate"),
    ("sources: [{name: a}]", "exactly one of 'url' or 'path'"),
    ("sources: [{name: a, url: 'rtsp://u:secret@x/1', fps: 3}]", "unknown key"),
    ("sources: [{name: 'a b', url: 'rtsp://x/1'}]", "'name' must be"),
    ("sources: [{name: a, url: 'cam.mp4'}]", "is not a URL"),
    ("cams: []", "unknown top-level"),
    ("sources: [", "not valid YAML"),
])
def test_sources_file_errors_are_one_clear_line(tmp_path, body, message):
    path = tmp_path / "s.yml"
    path.write_text(body)
    with pytest.raises(UnweatherError, match=message) as info:
        load_sources(str(path))
    assert "\n" not in str(info.value).strip() or "YAML" in str(info.value)
    assert "secret" not in str(info.value)


def test_expand_inputs_and_options(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("b.mkv", "a.mp4", "notes.txt"):
        (folder / name).write_bytes(b"")
    (tmp_path / "a.mov").write_bytes(b"")
    sources = expand_inputs([str(folder), str(tmp_path / "a.mov"), "rtsp://u:p@cam.local:554/live"])
    assert [s.name for s in sources] == ["a", "b", "a-2", "cam.local_554_live"]
    assert sources[1].input == str(folder / "b.mkv")
    with pytest.raises(UnweatherError, match="not a file, a folder or a URL"):
        expand_inputs([str(tmp_path / "missing.mp4")])

    @dataclasses.dataclass
    class Config:
        model: str = "fast"
        batch: int = 1

    assert apply_options(Config(), {"batch": 4}) == Config(batch=4)
    with pytest.raises(UnweatherError, match="unknown option"):
        apply_options(Config(), {"fps": 3})


def test_single_machine_path_never_imports_ray():
    code = ("import sys, unweather.cli, unweather.stream, unweather.stream.cli, unweather.cluster, "
            "unweather.cluster.planner, unweather.cluster.chunks, unweather.cluster.sources; "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_resolve_inputs_mixes_sources_files_folders_and_urls(tmp_path):
    from unweather.cluster.ray_run import resolve_inputs

    (tmp_path / "v.mp4").write_bytes(b"")
    (tmp_path / "cams.toml").write_text('[[sources]]\nname = "gate"\nurl = "rtsp://10.0.0.5/s1"\n')
    sources = resolve_inputs([str(tmp_path / "cams.toml"), str(tmp_path / "v.mp4")])
    assert [(s.name, s.is_url) for s in sources] == [("gate", True), ("v", False)]


def test_pool_shape_asks_for_gpu_shares_and_no_cpu():
    from unweather.cluster.ray_archive import ArchiveOptions, _pool_shape

    assert _pool_shape(ArchiveOptions(), {"CPU": 16, "GPU": 2}, 100) == (2, 1.0, 0.0)
    assert _pool_shape(ArchiveOptions(gpus_per_actor=0.5), {"CPU": 16, "GPU": 2}, 100) == (4, 0.5, 0.0)
    assert _pool_shape(ArchiveOptions(gpus_per_actor=0.5), {"CPU": 16, "GPU": 2}, 3) == (3, 0.5, 0.0)
    assert _pool_shape(ArchiveOptions(), {"CPU": 8}, 100) == (4, 0.0, 1.0)


def test_ray_options_parse():
    import argparse

    from unweather.cluster.cli import AUTO, add_ray_arguments, split_address

    parser = argparse.ArgumentParser()
    parser.add_argument("inputs", nargs="*")
    add_ray_arguments(parser)
    args = parser.parse_args(["a.mp4", "--ray", "--chunk-seconds", "60", "--resume", "--max-failed", "2"])
    assert (args.ray, args.chunk_seconds, args.resume, args.max_failed) == (AUTO, 60.0, True, 2)
    args = parser.parse_args(["--ray", "10.0.0.1:6379", "a.mp4"])
    assert args.ray == "10.0.0.1:6379" and args.inputs == ["a.mp4"] and args.max_failed is None
    assert parser.parse_args(["a.mp4"]).ray is None
    assert split_address(AUTO, ["a.mp4"]) == (None, ["a.mp4"])
    assert split_address("head:6379", ["a.mp4"]) == ("head:6379", ["a.mp4"])
    assert split_address("ray://10.0.0.1:10001", []) == ("ray://10.0.0.1:10001", [])
    assert split_address("b.mp4", ["a.mp4"]) == (None, ["b.mp4", "a.mp4"])


def test_run_on_ray_takes_its_options_whole(tmp_path, monkeypatch):
    """Options reach the archive as given: once `run_on_ray`'s own chunk_seconds/resume/max_failed
    keyword defaults overwrote them (ArchiveOptions(resume=True) ran with resume off)."""
    import inspect

    from unweather.cluster import ray_run
    from unweather.cluster.ray_archive import ArchiveOptions
    from unweather.cluster.ray_run import RayOptions, run_on_ray

    params = inspect.signature(run_on_ray).parameters
    assert list(params) == ["inputs", "output_dir", "config", "options", "runner", "stop_event"]
    seen = {}
    monkeypatch.setattr(ray_run, "connect", lambda address, **kw: seen.update(address=address, **kw) or False)
    monkeypatch.setattr(ray_run, "disconnect", lambda started: None)
    monkeypatch.setattr(ray_run, "run_archive", lambda files, out, config, options, runner: seen.update(
        files=[f.name for f in files], options=options) or {})
    (tmp_path / "v.mp4").write_bytes(b"")
    archive = ArchiveOptions(resume=True, chunk_seconds=30.0, max_failed=2, actors=3, progress=False)
    run_on_ray([str(tmp_path / "v.mp4")], str(tmp_path / "out"), None,
               RayOptions(address="head:6379", archive=archive, num_cpus=4))
    assert seen["options"] == archive and seen["options"].resume is True
    assert seen["address"] == "head:6379" and seen["num_cpus"] == 4 and seen["files"] == ["v"]
