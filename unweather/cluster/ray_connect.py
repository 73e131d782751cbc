"""Join a Ray cluster or start a local one, never hanging on a dead address, and without Ray's chatter.

Ray prints notices meant for its own users on a plain run: that token authentication is on (when its
mode is left to the default), driver logs of every worker. `connect` states the authentication mode
explicitly (token authentication on a local cluster it starts, and on a cluster joined with a token
at hand), sends Ray's own logging at WARNING and keeps workers' output in the session's log files;
`disconnect` puts the environment back as it was.
"""

from __future__ import annotations

import logging
import os
import socket

from unweather.errors import UnweatherError

log = logging.getLogger(__name__)

NAMESPACE = "unweather"

_AUTH_MODE = "RAY_AUTH_MODE"
# The environment variables `connect` set, with their previous values, for `disconnect`.
_ENV_SET: dict[str, str | None] = {}


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


def _set_env(name: str, value: str) -> None:
    if name not in os.environ:
        _ENV_SET.setdefault(name, None)
        os.environ[name] = value


def _token_available() -> bool:
    # Ray's own test (a token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).
    try:
        from ray._raylet import AuthenticationTokenLoader

        return bool(AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True))
    except (ImportError, AttributeError, TypeError):
        return os.path.isfile(os.path.expanduser("~/.ray/auth_token"))


def _auth_mode(starting: bool) -> None:
    """Say the authentication mode, so Ray does not warn that it chose one; a user's setting stays."""
    if _AUTH_MODE in os.environ:
        return
    if starting or _token_available():
        # Ray's default for a new cluster (it creates the token), said aloud. Ray reads its settings once,
        # on import: refresh them as Ray does when it turns token authentication on itself.
        _set_env(_AUTH_MODE, "token")
        try:
            from ray._raylet import Config

            Config.initialize("")
        except (ImportError, AttributeError):
            pass


def disconnect(started: bool) -> None:
    """Leave Ray: stop the local cluster `connect` started (`started`), and restore the environment."""
    ray = require_ray()
    if started:
        ray.shutdown()
    for name, value in _ENV_SET.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _ENV_SET.clear()


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
        True when this call started a local cluster (the caller stops it with `disconnect(True)`).
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
                _auth_mode(starting=False)
                ray.init(address=recorded, **quiet)
                return False
            if recorded:
                log.warning("the Ray cluster recorded at %s does not answer; starting a local one", recorded)
            address = "local"
    if address == "local":
        _auth_mode(starting=True)
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                 object_store_memory=object_store_memory, **quiet)
        resources = ray.cluster_resources()
        log.info("started a local Ray cluster (%g CPUs, %g GPUs)", resources.get("CPU", 0), resources.get("GPU", 0))
        return True
    if not address.startswith("ray://") and not reachable(address, timeout):
        raise UnweatherError(f"no Ray cluster answers at {address} (is `ray start --head` running there?)")
    _auth_mode(starting=False)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, TimeoutError) as exc:
        raise UnweatherError(f"cannot join the Ray cluster at {address}: {exc}") from exc
    return False
