"""One `--stats` in every mode (one input, several, Ray archive, Ray fleet), each input saying where it was
restored; inputs whose container cannot be written back (.webm) get .mkv outputs; a Ray run says nothing
of Ray's own notices."""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from media import make_video, playable

from unweather.cli import main
from unweather.stream import RunConfig
from unweather.stream.multi import plan_streams

# What Ray says on its own on a plain run, and must not here.
RAY_NOISE = ("Token authentication", "Progress bars disabled", "constructor arguments in the object store",
             "ray-project/ray/issues/53727", "Traceback")


@pytest.fixture
def clips(tmp_path: Path) -> tuple[Path, Path]:
    a = make_video(tmp_path / "a.mp4", frames=6, size=(32, 24))
    b = make_video(tmp_path / "b.webm", frames=5, size=(32, 24), codec="libvpx-vp9", audio=False, options={})
    return a, b


def test_stats_of_one_input_say_where_it_ran(clips, tmp_path):
    stats = tmp_path / "one.json"
    assert main(["run", str(clips[0]), "-o", str(tmp_path / "one.mp4"), "--model", "identity", "-q",
                 "--stats", str(stats)]) == 0
    data = json.loads(stats.read_text())
    assert data["frames"] == 6
    assert data["nodes"] == [socket.gethostname()] and data["workers"] == [str(os.getpid())]


def test_several_inputs_with_a_webm_write_mkv_and_stats_per_input(clips, tmp_path):
    out = tmp_path / "out"
    # Planned as .mkv: the sink writes no .webm (VP9 in WebM is not what the encoder makes).
    plans = plan_streams([str(c) for c in clips], f"{out}/", RunConfig(model="identity"))
    assert [os.path.basename(p.output) for p in plans] == ["a.mp4", "b.mkv"]
    stats = tmp_path / "many.json"
    assert main(["run", *map(str, clips), "-o", f"{out}/", "--model", "identity", "-q", "--stats", str(stats)]) == 0
    assert sorted(os.listdir(out)) == ["a.mp4", "b.mkv"]
    assert playable(out / "a.mp4") == 6 and playable(out / "b.mkv") == 5
    data = json.loads(stats.read_text())
    assert [s["status"] for s in data["streams"]] == ["done", "done"]
    assert all(s["nodes"] == [socket.gethostname()] and s["workers"] == [str(os.getpid())] for s in data["streams"])
    assert data["total"]["frames_out"] == 11


def _unweather(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "unweather.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _ray() -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'unweather[ray]')")


@pytest.mark.ray
def test_ray_archive_writes_stats_per_input_and_chunk_and_no_ray_noise(clips, tmp_path):
    _ray()
    done = _unweather("run", *map(str, clips), "-o", "out/", "--ray", "--model", "identity", "--stats", "s.json",
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for noise in RAY_NOISE:
        assert noise not in done.stderr, done.stderr
    assert "restored 2 of 2 file(s)" in done.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["a.mp4", "b.mkv"]
    data = json.loads((tmp_path / "s.json").read_text())
    assert [i["status"] for i in data["inputs"]] == ["done", "done"]
    for entry in data["inputs"]:
        chunks = [c for c in data["chunks"] if c["name"] == entry["name"]]
        assert chunks and all(c["node"] and c["worker"] for c in chunks)
        assert entry["nodes"] == sorted({c["node"] for c in chunks})
        assert entry["workers"] == [c["worker"] for c in chunks]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.ray
def test_ray_fleet_writes_stats_per_camera(tmp_path):
    _ray()
    www = tmp_path / "www"
    www.mkdir()
    make_video(www / "cam.mp4", frames=50, size=(32, 24), audio=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/cam.mp4"
        done = _unweather("run", url, "-o", "rec/", "--ray", "--duration", "8", "--model", "identity",
                          "--stats", "f.json", cwd=tmp_path)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    for noise in RAY_NOISE:
        assert noise not in done.stderr, done.stderr
    (camera,) = json.loads((tmp_path / "f.json").read_text())["fleet"].values()
    assert camera["state"] == "stopped" and camera["frames"] > 0
    assert camera["nodes"] == [camera["node"]] and camera["workers"] == [camera["worker"]] and camera["worker"]
