"""Live cameras as Ray actors: a killed actor and a removed node come back, a camera with no room is pending."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from netservers import RtspServer, requires_gst_rtsp, wait_for

from unweather.cluster.ray_fleet import Fleet, FleetOptions, segment_paths
from unweather.cluster.sources import Source

try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError:  # the [ray] extra is optional
    ray = None

pytestmark = [pytest.mark.ray, pytest.mark.rtsp]


@dataclasses.dataclass
class FakeConfig:
    """Stands in for RunConfig."""

    fps: int = 15


def record(src: str, dst: str, config: FakeConfig | None = None, engine=None, stop_event=None) -> dict:
    """A stand-in live pipeline: network frames through the engine into MPEG-TS, flushed per packet."""
    import torch

    from unweather.stream.network import TIME_BASE, NetworkOptions, NetworkSource

    source = NetworkSource(src, NetworkOptions(open_timeout=5, read_timeout=5, stall_timeout=5,
                                               give_up_after=20), stop_event=stop_event)
    frames = 0
    try:
        with av.open(dst, "w", format="mpegts", options={"flush_packets": "1"}) as out:
            video = None
            for frame, _ in source.frames():
                if video is None:
                    video = out.add_stream("libx264", rate=15)
                    video.width, video.height, video.pix_fmt = frame.width, frame.height, "yuv420p"
                    video.options = {"preset": "ultrafast", "tune": "zerolatency", "g": "15"}
                    video.codec_context.time_base = TIME_BASE
                x = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None].float() / 255
                y = (engine(x)[0].permute(1, 2, 0) * 255).round().byte().numpy()
                new = av.VideoFrame.from_ndarray(np.ascontiguousarray(y), format="rgb24")
                new.pts, new.time_base = frame.pts, TIME_BASE
                out.mux(video.encode(new))
                frames += 1
            if video is not None:
                out.mux(video.encode())
    finally:
        source.close()
    return {"frames": frames, "dropped": 0}


@pytest.fixture
def cluster():
    if ray is None:
        pytest.skip("Ray is not installed (pip install 'unweather[ray]')")
    requires_gst_rtsp()
    os.environ["RAY_AUTH_MODE"] = "disabled"
    if ray.is_initialized():
        ray.shutdown()
    address_file = Path("/tmp/ray/ray_current_cluster")
    before = address_file.read_text() if address_file.exists() else None
    small = 80 * 1024 * 1024
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "object_store_memory": small,
                                                      "include_dashboard": False})
    # Three one-GPU nodes (logical GPUs): two cameras and one spare.
    for _ in range(3):
        c.add_node(num_cpus=0, num_gpus=1, object_store_memory=small)
    c.wait_for_nodes(timeout=60)
    c.connect(namespace="unweather")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()
        # Cluster records its address for `ray.init()`; put back what was there.
        if before is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(before)


def plays(path: str) -> int:
    with av.open(path) as c:
        return sum(1 for _ in c.decode(video=0))


def test_cameras_come_back_after_a_kill_and_a_lost_node(cluster, tmp_path):
    servers = [RtspServer(tmp_path, name=f"cam{i}", size="96x64", fps=15).start() for i in range(2)]
    fleet = Fleet([Source("gate", servers[0].url()), Source("yard", servers[1].url())], str(tmp_path / "rec"),
                  FakeConfig(), FleetOptions(gpus_per_camera=1, retry_seconds=0.5, call_timeout=3), runner=record)
    try:
        fleet.start()

        def recording(name: str, restarts: int = 0, segments: int = 1) -> bool:
            s = fleet.poll()[name]
            return (s["state"] == "running" and s.get("frames", 0) > 10 and s["restarts"] >= restarts
                    and s.get("segments", 0) >= segments)

        assert wait_for(lambda: recording("gate") and recording("yard"), timeout=90, interval=0.5), fleet.poll()
        status = fleet.poll()
        assert status["gate"]["fps"] > 0 and status["gate"]["dropped"] == 0

        os.kill(status["gate"]["pid"], signal.SIGKILL)
        assert wait_for(lambda: recording("gate", restarts=1, segments=2), timeout=60, interval=0.5), fleet.poll()

        yard_node = fleet.poll()["yard"]["node"]
        (node,) = [n for n in cluster.worker_nodes if n.node_id == yard_node]
        cluster.remove_node(node)
        assert wait_for(lambda: recording("yard", restarts=1, segments=2), timeout=90, interval=0.5), fleet.poll()
        assert fleet.poll()["yard"]["node"] != yard_node

        # Every GPU is taken now: a third camera is reported pending, and asking does not hang.
        fleet.start([Source("dock", servers[0].url())])
        began = time.monotonic()
        status = fleet.poll()
        assert time.monotonic() - began < 15
        assert status["dock"]["state"] == "pending" and "GPU" in status["dock"]["error"]
        assert status["gate"]["state"] == status["yard"]["state"] == "running"
    finally:
        final = fleet.stop()
        for server in servers:
            server.kill()
    assert final["gate"]["state"] == "stopped"
    for name in ("gate", "yard"):
        segments = segment_paths(str(tmp_path / "rec" / name), name)
        assert len(segments) >= 2
        assert all(plays(path) > 0 for path in segments), segments
