"""Command-line glue for `unweather run --ray`: the options, and the handler that picks this machine or Ray.

`unweather.cli` adds these options to `run` with `add_ray_arguments(parser)` and makes `handle_run` its
handler: without `--ray` it refuses the Ray-only options and hands over to `unweather.stream.cli`; with
`--ray` it refuses what cannot apply on Ray and runs `run_on_ray`. Nothing here imports Ray until a Ray
run starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
from typing import Any

from unweather.errors import UnweatherError

log = logging.getLogger(__name__)

AUTO = "auto"

# Options of archive runs (files) and of camera fleets (URLs): dest -> option.
ARCHIVE_OPTIONS = {"chunk_seconds": "--chunk-seconds", "resume": "--resume", "max_failed": "--max-failed",
                   "actors": "--actors", "gpus_per_actor": "--gpus-per-actor"}
FLEET_OPTIONS = {"gpus_per_camera": "--gpus-per-camera"}


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the cluster options of `unweather run`."""
    group = parser.add_argument_group("Ray cluster (pip install 'unweather[ray]')")
    group.add_argument("--ray", nargs="?", const=AUTO, default=None, metavar="ADDRESS",
                       help="run on a Ray cluster: ADDRESS (host:port or ray://host:port), or alone for the "
                            "cluster found here (RAY_ADDRESS, `ray start`) or a new local one")
    group.add_argument("--chunk-seconds", type=float, default=None, metavar="N",
                       help="files: cut them into chunks of at least N seconds at keyframes (default: whole "
                            "files up to 5 min, 120 s chunks beyond; 0: whole files)")
    group.add_argument("--resume", action="store_true",
                       help="files: keep finished chunks and outputs of an earlier run into the same -o folder")
    group.add_argument("--max-failed", type=int, default=None, metavar="N",
                       help="files: stop scheduling once more than N inputs have failed (default: never)")
    group.add_argument("--actors", type=int, default=None, metavar="N",
                       help="files: restorer actors (default: one per GPU share, or CPUs / 2)")
    group.add_argument("--gpus-per-actor", type=float, default=None, metavar="F",
                       help="files: GPU share of each actor, e.g. 0.5 for two per GPU (default 1)")
    group.add_argument("--gpus-per-camera", type=float, default=None, metavar="F",
                       help="cameras: GPU share of each camera actor (default 0.25)")
    group.add_argument("--ray-stats", default=None, metavar="PATH", help="deprecated: use --stats")
    parser.set_defaults(ray=None)


def split_address(value: str, inputs: list[str]) -> tuple[str | None, list[str]]:
    """`--ray` takes an optional address, so `--ray clip.mp4` swallows an input: give it back."""
    if value == AUTO:
        return None, list(inputs)
    if os.path.exists(value) or not re.match(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+$", value):
        return None, [value, *inputs]
    return value, list(inputs)


def handle_run(args: argparse.Namespace) -> int:
    """`unweather run`: on this machine, or on Ray with `--ray`."""
    if args.ray_stats is not None:
        if args.stats is not None and args.stats != args.ray_stats:
            raise UnweatherError("--ray-stats is the deprecated name of --stats: give --stats only.")
        log.warning("--ray-stats is deprecated: use --stats (it works in every mode)")
        args.stats = args.ray_stats
    if args.ray is None:
        from unweather.stream.cli import given

        names = given(args, {**ARCHIVE_OPTIONS, **FLEET_OPTIONS})
        if names:
            raise UnweatherError(f"{names[0]} applies to runs on Ray: add --ray.")
        from unweather.stream.cli import handle_run as run_here

        return run_here(args)
    return run_with_ray(args)


def check_ray_options(args: argparse.Namespace, files: int, cameras: int, network_output: bool) -> None:
    """Refuse, in one line, options that a Ray run with `files` files and `cameras` cameras would ignore.

    Raises:
        UnweatherError: the first such option, and why it does not apply.
    """
    from unweather.stream.cli import check_shared_options, given

    check_shared_options(args, cameras > 0 or network_output)
    if args.engine_batch is not None:
        raise UnweatherError("--engine-batch shares one engine between inputs on this machine; on Ray each "
                             "actor has its own (size the pool with --actors).")
    if args.max_frames is not None:
        raise UnweatherError("--max-frames does not apply on Ray: files are restored whole (run without --ray "
                             "to restore part of one).")
    if args.start is not None:
        raise UnweatherError("--start does not apply on Ray: files are restored whole (run without --ray to "
                             "restore part of one).")
    if files and args.duration is not None:
        raise UnweatherError("--duration on Ray sets how long cameras record; files are restored whole (run "
                             "them without --ray to restore part of one).")
    if files and args.mode == "live":
        raise UnweatherError("--live does not apply to files on Ray: their chunks keep every frame.")
    if not files and args.batch is not None and args.mode != "offline":
        raise UnweatherError("--batch applies to offline runs; cameras restore each frame as it comes (add "
                             "--offline to batch them).")
    if not files and (names := given(args, ARCHIVE_OPTIONS)):
        raise UnweatherError(f"{names[0]} applies to files on Ray, and this run has only cameras.")
    if not cameras and (names := given(args, FLEET_OPTIONS)):
        raise UnweatherError(f"{names[0]} applies to cameras on Ray, and this run has only files.")


def ray_options(args: argparse.Namespace, address: str | None, duration: float | None, progress: bool) -> Any:
    """The `RayOptions` the parsed arguments ask for."""
    from unweather.cluster.ray_archive import ArchiveOptions
    from unweather.cluster.ray_fleet import FleetOptions
    from unweather.cluster.ray_run import RayOptions

    return RayOptions(
        address=address, duration=duration,
        archive=ArchiveOptions(chunk_seconds=args.chunk_seconds, resume=args.resume, max_failed=args.max_failed,
                               actors=args.actors, gpus_per_actor=args.gpus_per_actor, progress=progress),
        fleet=FleetOptions(gpus_per_camera=args.gpus_per_camera))


def run_with_ray(args: argparse.Namespace) -> int:
    """Run the inputs on Ray as the parsed options say; print a summary; 0 when every input is done."""
    from unweather.cluster.ray_run import run_on_ray
    from unweather.media import is_url
    from unweather.sources_file import resolve_inputs
    from unweather.stream.cli import check_temporal, config_from_args

    config = config_from_args(args)
    config.validate()
    if not args.output:
        raise UnweatherError("--ray needs an output folder: -o DIR/")
    address, inputs = split_address(args.ray, list(args.inputs))
    sources = resolve_inputs(inputs)
    cameras = sum(s.is_url for s in sources)
    check_ray_options(args, len(sources) - cameras, cameras, is_url(args.output))
    # Files and cameras are videos: the default model is the video student when it is shipped.
    check_temporal(config, video=True)
    # --duration is how long the fleet records; each camera's segments run until the fleet stops.
    duration, config = config.duration, dataclasses.replace(config, duration=None)
    options = ray_options(args, address, duration, progress=not args.quiet and sys.stderr.isatty())
    stats = run_on_ray(sources, args.output, config, options)
    bad = 0
    lines = []
    if "totals" in stats:
        t = stats["totals"]
        lines.append(f"restored {t['done']} of {t['inputs']} file(s), {t['frames']} frames in {t['seconds']:.1f} s "
                     f"({t['files_per_minute']:.1f} files/min); skipped {t['skipped']}, failed {t['failed']}, "
                     f"not run {t['not_run']}")
        for entry in stats["inputs"]:
            if entry["status"] in ("failed", "not run"):
                bad += 1
                lines.append(f"  {entry['name']}: {entry['status']}: {entry['error']}")
    for name, s in stats.get("fleet", {}).items():
        lines.append(f"camera {name}: {s.get('state')}, {s.get('frames', 0)} frames, {s.get('segments', 0)} "
                     f"segment(s){', ' + s['error'] if s.get('error') else ''}")
    if not args.quiet:
        print("\n".join(lines), file=sys.stderr)
    elif bad:
        print("\n".join(line for line in lines if line.startswith("  ")), file=sys.stderr)
    return 1 if bad else 0
