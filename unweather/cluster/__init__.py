"""Scale-out on Ray: archives in chunks over a pool of restorer actors, and live camera fleets.

Nothing here imports Ray until a function that needs it runs; Ray is the optional `[ray]` extra.
"""

from __future__ import annotations

from typing import Any


def run_on_ray(*args: Any, **kwargs: Any) -> dict:
    """Restore files and run cameras on a Ray cluster; see `unweather.cluster.ray_run.run_on_ray`."""
    from unweather.cluster.ray_run import run_on_ray as _run_on_ray

    return _run_on_ray(*args, **kwargs)


__all__ = ["run_on_ray"]
