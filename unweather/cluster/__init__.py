"""Scale-out on Ray: archives in chunks over a pool of restorer actors, and live camera fleets.

Nothing here imports Ray until a function that needs it runs; Ray is the optional `[ray]` extra.
`cluster` builds on `stream` (the pipeline each actor runs); `stream` never imports `cluster`.
"""

from __future__ import annotations

from typing import Any


def run_on_ray(*args: Any, **kwargs: Any) -> dict:
    """Restore files and run cameras on a Ray cluster; see `unweather.cluster.ray_run.run_on_ray`."""
    from unweather.cluster.ray_run import run_on_ray as _run_on_ray

    return _run_on_ray(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "RayOptions":
        from unweather.cluster.ray_run import RayOptions

        return RayOptions
    if name == "ArchiveOptions":
        from unweather.cluster.ray_archive import ArchiveOptions

        return ArchiveOptions
    if name == "FleetOptions":
        from unweather.cluster.ray_fleet import FleetOptions

        return FleetOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ArchiveOptions", "FleetOptions", "RayOptions", "run_on_ray"]
