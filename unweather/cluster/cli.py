"""Command-line glue for `unweather run --ray`: the options, and a handler that returns an exit status.

`unweather.stream.cli` adds these options to `run` with `add_ray_arguments(parser)` and, when
`args.ray` is set, hands over with `run_with_ray(args, inputs, output_dir, config)`. Nothing here
imports Ray until the handler runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import Any

from unweather.errors import UnweatherError

log = logging.getLogger(__name__)

AUTO = "auto"


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the cluster options of `unweather run`."""
    group = parser.add_argument_group("Ray cluster (pip install 'unweather[ray]')")
    group.add_argument("--ray", nargs="?", const=AUTO, default=None, metavar="ADDRESS",
                       help="run on a Ray cluster: ADDRESS (host:port or ray://host:port), or alone for the "
                            "cluster found here (RAY_ADDRESS, `ray start`) or a new local one")
    group.add_argument("--chunk-seconds", type=float, default=None, metavar="N",
                       help="cut files into chunks of at least N seconds at keyframes (default: whole files "
                            "up to 5 min, 120 s chunks beyond; 0: whole files)")
    group.add_argument("--resume", action="store_true",
                       help="keep finished chunks and outputs of an earlier run into the same -o folder")
    group.add_argument("--max-failed", type=int, default=None, metavar="N",
                       help="stop scheduling once more than N inputs have failed (default: never)")
    group.add_argument("--actors", type=int, default=None, metavar="N",
                       help="restorer actors for files (default: one per GPU share, or CPUs / 2)")
    group.add_argument("--gpus-per-actor", type=float, default=None, metavar="F",
                       help="GPU share of each file actor, e.g. 0.5 for two per GPU (default 1)")
    group.add_argument("--gpus-per-camera", type=float, default=None, metavar="F",
                       help="GPU share of each camera actor (default 0.25)")
    group.add_argument("--ray-stats", default=None, metavar="PATH",
                       help="write per-input and per-chunk stats (node, worker, errors) as JSON")


def split_address(value: str, inputs: list[str]) -> tuple[str | None, list[str]]:
    """`--ray` takes an optional address, so `--ray clip.mp4` swallows an input: give it back."""
    if value == AUTO:
        return None, list(inputs)
    if os.path.exists(value) or not re.match(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+$", value):
        return None, [value, *inputs]
    return value, list(inputs)


def run_with_ray(args: argparse.Namespace, inputs: list[str], output_dir: str | None, config: Any) -> int:
    """Run `inputs` on Ray as the parsed options say; print a summary; 0 when every input is done."""
    from unweather.cluster.ray_archive import ArchiveOptions
    from unweather.cluster.ray_fleet import FleetOptions
    from unweather.cluster.ray_run import run_on_ray

    if not output_dir:
        raise UnweatherError("--ray needs an output folder: -o DIR/")
    address, inputs = split_address(args.ray, inputs)
    options = ArchiveOptions(actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                             progress=sys.stderr.isatty())
    fleet = FleetOptions(gpus_per_camera=args.gpus_per_camera)
    stats = run_on_ray(inputs, output_dir, config, address=address, chunk_seconds=args.chunk_seconds,
                       resume=args.resume, max_failed=args.max_failed, options=options, fleet_options=fleet,
                       stats_path=args.ray_stats)
    bad = 0
    if "totals" in stats:
        t = stats["totals"]
        print(f"restored {t['done']} of {t['inputs']} file(s), {t['frames']} frames in {t['seconds']:.1f} s "
              f"({t['files_per_minute']:.1f} files/min); skipped {t['skipped']}, failed {t['failed']}, "
              f"not run {t['not_run']}", file=sys.stderr)
        for entry in stats["inputs"]:
            if entry["status"] in ("failed", "not run"):
                bad += 1
                print(f"  {entry['name']}: {entry['status']}: {entry['error']}", file=sys.stderr)
    for name, s in stats.get("fleet", {}).items():
        print(f"camera {name}: {s.get('state')}, {s.get('frames', 0)} frames, {s.get('segments', 0)} segment(s)"
              f"{', ' + s['error'] if s.get('error') else ''}", file=sys.stderr)
    return 1 if bad else 0
