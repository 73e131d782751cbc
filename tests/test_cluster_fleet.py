"""Live cameras as Ray actors: a killed actor and a removed node come back, a camera with no room is pending."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import av
import pytest
from netservers import RtspServer, requires_gst_rtsp, wait_for

from unweather.cluster.ray_fleet import Fleet, FleetOptions, segment_paths
from unweather.cluster.sources import Source
from unweather.stream import RunConfig

try:
    import ray
    from ray.cluster_utils import Cluster
except ImportError:  # the [ray] extra is optional
    ray = None

pytestmark = [pytest.mark.ray, pytest.mark.rtsp]


def live_config() -> RunConfig:
    return RunConfig(model="identity", progress=False, open_timeout=5, read_timeout=5, stall_timeout_network=5,
                     give_up_after=30)


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
    servers = [RtspServer(tmp_path, name=f"cam{i}", size="160x96", fps=15) for i in range(2)]
    for server in servers:
        # Noise: a camera's real bitrate, so the recording reaches the disk within seconds.
        server.args += ["--pattern", "snow"]
        server.start()
    fleet = Fleet([Source("gate", servers[0].url()), Source("yard", servers[1].url())], str(tmp_path / "rec"),
                  live_config(), FleetOptions(gpus_per_camera=1, retry_seconds=0.5, call_timeout=3))
    try:
        fleet.start()

        def recording(name: str, restarts: int = 0, segments: int = 1) -> bool:
            s = fleet.poll()[name]
            return (s["state"] == "running" and s.get("frames", 0) > 10 and s["restarts"] >= restarts
                    and s.get("segments", 0) >= segments and os.path.exists(s["segment"])
                    and os.path.getsize(s["segment"]) > 0)

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
