"""`run_on_ray`: the one entry point for `unweather run --ray`: files as archives, URLs as a camera fleet."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

from unweather.cluster.chunks import publish, temp_path
from unweather.cluster.ray_archive import ArchiveOptions, Runner, run_archive
from unweather.cluster.ray_connect import connect, require_ray
from unweather.cluster.ray_fleet import Fleet, FleetOptions
from unweather.cluster.sources import Source, resolve_inputs

log = logging.getLogger(__name__)


def run_on_ray(inputs: Sequence[str | Source], output_dir: str, config: Any = None, address: str | None = None,
               chunk_seconds: float | None = None, resume: bool = False, max_failed: int | None = None, *,
               options: ArchiveOptions | None = None, fleet_options: FleetOptions | None = None,
               runner: Runner | None = None, stats_path: str | None = None, duration: float | None = None,
               stop_event: threading.Event | None = None, num_cpus: int | None = None,
               num_gpus: int | None = None) -> dict:
    """Join (or start) a Ray cluster, restore every input into `output_dir`, leave the cluster as found.

    Files are restored as archives (chunks over a pool of restorer actors, see `run_archive`); URLs
    become a camera fleet (one restartable actor per camera, see `Fleet`) that runs until `duration`
    passes, `stop_event` is set or Ctrl-C, while the files are restored.

    Args:
        inputs: files, folders of videos, URLs, sources files, or `Source`s.
        output_dir: folder for the outputs (files: NAME.EXT; cameras: NAME/NAME-00001.ts, ...).
        config: the `unweather.stream.RunConfig` every input starts from (sources' options override it).
        address: "host:port" or "ray://host:port"; None joins the cluster found (RAY_ADDRESS or the
            last `ray start` here) or starts a local one.
        chunk_seconds, resume, max_failed: see `ArchiveOptions` (they override `options`).
        options: the other archive options (actors, GPU share, retries, timeouts).
        fleet_options: placement and supervision of cameras.
        runner: the pipeline (default `unweather.stream.run`).
        stats_path: also write the stats JSON there (and cameras' live status to `stats_path`.live.json).
        duration: seconds to run the cameras (None: until stopped).
        stop_event: set to stop the cameras.
        num_cpus, num_gpus: resources of a local cluster, when one is started.

    Returns:
        {"totals", "inputs", "chunks", "ray", "pool"} from the archive part, and "fleet" with each
        camera's last status when there were cameras.
    """
    sources = resolve_inputs(inputs)
    files = [s for s in sources if not s.is_url]
    cameras = [s for s in sources if s.is_url]
    options = dataclasses.replace(options or ArchiveOptions(), chunk_seconds=chunk_seconds, resume=resume,
                                  max_failed=max_failed)
    started = connect(address, num_cpus=num_cpus, num_gpus=num_gpus)
    stats: dict[str, Any] = {}
    fleet = None
    try:
        if cameras:
            fleet = Fleet(cameras, output_dir, config, fleet_options, runner)
            fleet.start()
        if files:
            stats.update(run_archive(files, output_dir, config, options, runner))
        if fleet is not None:
            live = f"{stats_path}.live.json" if stats_path else None
            fleet.supervise(duration, stop_event, live)
    finally:
        if fleet is not None:
            stats["fleet"] = fleet.stop()
        if started:
            require_ray().shutdown()
    if stats_path:
        tmp = temp_path(stats_path)
        with open(tmp, "w") as f:
            json.dump(stats, f, indent=2, default=str)
        publish(tmp, stats_path)
    return stats
