"""`run_on_ray`: the one entry point for `unweather run --ray`: files as archives, URLs as a camera fleet."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Sequence
from typing import Any

from unweather.cluster.ray_archive import ArchiveOptions, Runner, run_archive
from unweather.cluster.ray_connect import connect, disconnect
from unweather.cluster.ray_fleet import Fleet, FleetOptions
from unweather.errors import UnweatherError
from unweather.fileio import write_text_atomic
from unweather.sources_file import Source, resolve_inputs

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RayOptions:
    """Everything about a Ray run that is not the pipeline's own settings (those are the `RunConfig`).

    Attributes:
        address: "host:port" or "ray://host:port"; None joins the cluster found (RAY_ADDRESS or the
            last `ray start` here) or starts a local one.
        archive: how files are chunked, retried, resumed and spread over actors.
        fleet: how cameras are placed and supervised.
        duration: seconds to run the cameras (None: until stopped).
        num_cpus, num_gpus: resources of a local cluster, when one is started.
    """

    address: str | None = None
    archive: ArchiveOptions = dataclasses.field(default_factory=ArchiveOptions)
    fleet: FleetOptions = dataclasses.field(default_factory=FleetOptions)
    duration: float | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None


def run_on_ray(inputs: Sequence[str | Source], output_dir: str, config: Any = None,
               options: RayOptions | None = None, *, runner: Runner | None = None,
               stop_event: threading.Event | None = None) -> dict:
    """Join (or start) a Ray cluster, restore every input into `output_dir`, leave the cluster as found.

    Files are restored as archives (chunks over a pool of restorer actors, see `run_archive`); URLs
    become a camera fleet (one restartable actor per camera, see `Fleet`) that runs until
    `options.duration` passes, `stop_event` is set or Ctrl-C, while the files are restored.

    Args:
        inputs: files, folders of videos, URLs, sources files, or `Source`s.
        output_dir: folder for the outputs (files: NAME.EXT; cameras: NAME/NAME-00001.ts, ...).
        config: the `unweather.stream.RunConfig` every input starts from (sources' options override it);
            its `stats_path` receives the returned stats as JSON (cameras' live status goes to
            `stats_path`.live.json while they run).
        options: the cluster, archive and fleet options.
        runner: the pipeline (default `unweather.stream.run`).
        stop_event: set to stop the cameras.

    Returns:
        {"totals", "inputs", "chunks", "ray", "pool"} from the archive part (each input with the nodes
        and workers that restored it), and "fleet" with each camera's last status (node and worker
        included) when there were cameras.
    """
    options = options or RayOptions()
    sources = resolve_inputs(inputs)
    files = [s for s in sources if not s.is_url]
    cameras = [s for s in sources if s.is_url]
    stats_path = getattr(config, "stats_path", None)
    started = connect(options.address, num_cpus=options.num_cpus, num_gpus=options.num_gpus)
    stats: dict[str, Any] = {}
    fleet = None
    try:
        if cameras:
            fleet = Fleet(cameras, output_dir, config, options.fleet, runner)
            fleet.start()
        if files:
            stats.update(run_archive(files, output_dir, config, options.archive, runner))
        if fleet is not None:
            live = f"{stats_path}.live.json" if stats_path else None
            fleet.supervise(options.duration, stop_event, live)
    finally:
        if fleet is not None:
            stats["fleet"] = fleet.stop()
        disconnect(started)
    if stats_path:
        try:
            write_text_atomic(stats_path, json.dumps(stats, indent=2, default=str) + "\n")
        except OSError as exc:
            raise UnweatherError(f"cannot write the stats file {stats_path}: {exc.strerror or exc}.") from None
    return stats
