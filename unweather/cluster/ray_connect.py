"""Join a Ray cluster or start a local one, never hanging on a dead address."""

from __future__ import annotations

import logging
import os
import socket

from unweather.errors import UnweatherError

log = logging.getLogger(__name__)

NAMESPACE = "unweather"


def require_ray():
    """Import Ray or raise one clear error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise UnweatherError("running on Ray needs the ray extra: pip install 'unweather[ray]'") from exc
    return ray


def _address_file(temp_dir: str | None) -> str:
    return os.path.join(temp_dir or os.path.join(os.environ.get("TMPDIR", "/tmp"), "ray"),
                        "ray_current_cluster")


def _read_address_file(temp_dir: str | None) -> str | None:
    try:
        with open(_address_file(temp_dir)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def reachable(address: str, timeout: float = 3.0) -> bool:
    """Whether something accepts TCP connections at `host:port` (a Ray GCS address)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return False
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def connect(address: str | None = None, *, timeout: float = 10.0, num_cpus: int | None = None,
            num_gpus: int | None = None, object_store_memory: int | None = None,
            temp_dir: str | None = None) -> bool:
    """Connect this process to Ray.

    Args:
        address: "host:port" or "ray://host:port" joins that cluster; None or "auto" joins the cluster
            named by RAY_ADDRESS or by the last `ray start` on this machine, and starts a local one when
            there is none or the one recorded there is dead (a stale file, not a user's choice).
        timeout: seconds to wait for an address to answer.
        num_cpus, num_gpus, object_store_memory: resources of a local cluster this call starts.
        temp_dir: Ray's temp folder, where `ray start` records the last cluster's address.

    Returns:
        True when this call started a local cluster (the caller stops it with `ray.shutdown()`).
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING, "namespace": NAMESPACE,
             "log_to_driver": False}
    if address in (None, "", "auto"):
        env = os.environ.get("RAY_ADDRESS")
        if env:
            address = env
        else:
            recorded = _read_address_file(temp_dir)
            if recorded and reachable(recorded, timeout):
                log.info("joining the Ray cluster at %s", recorded)
                ray.init(address=recorded, **quiet)
                return False
            if recorded:
                log.warning("the Ray cluster recorded at %s does not answer; starting a local one", recorded)
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                     object_store_memory=object_store_memory, **quiet)
            log.info("started a local Ray cluster: %s", ray.cluster_resources())
            return True
    if address == "local":
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                 object_store_memory=object_store_memory, **quiet)
        return True
    if not address.startswith("ray://") and not reachable(address, timeout):
        raise UnweatherError(f"no Ray cluster answers at {address} (is `ray start --head` running there?)")
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, TimeoutError) as exc:
        raise UnweatherError(f"cannot join the Ray cluster at {address}: {exc}") from exc
    return False
