"""Subcommands of `unweather.training`: `synth` (paired weather data).

`unweather eval` scores an engine on paired data: it joins training's metrics and the engine, so it
lives above both, in `unweather.eval_cli`.
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `synth`."""
    p = subparsers.add_parser(
        "synth", help="make paired rain/snow/haze training data from clean photos",
        description="Add synthetic rain, snow and haze to random crops of clean photos and write "
                    "DIR/train/<weather>_meta_train.json and DIR/valid/<weather>_meta_valid.json "
                    "(lists of [ground truth, input] paths relative to DIR), split by photo.")
    p.add_argument("photos", nargs="+", help="photo files or folders of photos")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--weather", nargs="+", default=["rain", "snow", "haze"], choices=["rain", "snow", "haze"],
                   help="weather types, one data set each (default: all three)")
    p.add_argument("--crops", type=int, default=40, help="crops per photo and weather type (default 40)")
    p.add_argument("--size", type=int, default=128, help="side of the square crops in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--valid-fraction", type=float, default=0.2,
                   help="share of the photos held out for validation (default 0.2)")
    p.add_argument("--clean-pairs", type=int, default=0, metavar="N",
                   help="also write a 'clean' data set of N crops per photo whose input is the ground truth")
    p.set_defaults(func=synth_handler)


def synth_handler(args: argparse.Namespace) -> int:
    """`unweather synth`."""
    import time

    from unweather.training.synth import find_photos, synthesize

    photos = find_photos(args.photos)
    start = time.perf_counter()
    record = synthesize(photos, args.out, weathers=args.weather, crops=args.crops, size=args.size,
                        seed=args.seed, valid_fraction=args.valid_fraction, clean_pairs=args.clean_pairs,
                        progress=sys.stderr.isatty())
    counts = ", ".join(f"{k} {v}" for k, v in sorted(record["counts"].items()))
    print(f"{len(record['photos']['train'])} training and {len(record['photos']['valid'])} validation photos; "
          f"pairs: {counts}; {time.perf_counter() - start:.1f} s; written to {args.out}")
    return 0
