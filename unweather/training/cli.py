"""Subcommands of `unweather.training`: `synth` (paired weather data) and `eval` (PSNR/SSIM tables)."""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands."""
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

    p = subparsers.add_parser(
        "eval", help="PSNR and SSIM of a model on paired data sets (RGB and Y)",
        description="Run a model on every pair of every *_meta_<split>.json data set of a meta folder "
                    "and report PSNR and SSIM on RGB and on Y (BT.601), with the degraded input's own "
                    "scores as a baseline, as a Markdown table (and JSON).")
    p.add_argument("--model", required=True,
                   help="registry name, shipped model name or checkpoint file (anything `unweather run` takes)")
    p.add_argument("--meta-dir", required=True, metavar="DIR",
                   help="folder with <split>/<name>_meta_<split>.json (or the JSON files directly)")
    p.add_argument("--split", default="valid", help="which split to score (default valid)")
    p.add_argument("--root", metavar="DIR", help="folder the paths in the meta files start from (default: --meta-dir)")
    p.add_argument("--json", metavar="FILE", help="also save the scores as JSON")
    p.add_argument("--backend", help="inference backend (default: the engine's choice)")
    p.add_argument("--device", help="device, e.g. cpu or cuda (default: the engine's choice)")
    p.add_argument("--precision", help="fp32, fp16 or bf16 (default: the engine's choice)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint that pickles Python objects (runs code: only for files you trust)")
    p.add_argument("--limit", type=int, metavar="N", help="score only the first N pairs of each data set")
    p.set_defaults(func=eval_handler)


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


def eval_handler(args: argparse.Namespace) -> int:
    """`unweather eval`."""
    import json
    from pathlib import Path

    from unweather import engine as engine_mod
    from unweather.errors import UnweatherError
    from unweather.training.evaluate import evaluate, load_meta, markdown_table, report

    if args.limit is not None and args.limit < 1:
        raise UnweatherError(f"--limit must be at least 1, got {args.limit}")
    datasets = load_meta(args.meta_dir, args.split, root=args.root)
    options = {key: value for key, value in (("backend", args.backend), ("device", args.device),
                                             ("precision", args.precision)) if value is not None}
    if args.trust_checkpoint:
        options["trusted"] = True
    eng = engine_mod.open(args.model, **options)
    log.info("evaluating %s (%s) on %s", args.model, eng.describe(), ", ".join(datasets))
    with eng:
        results = evaluate(eng, datasets, device=eng.device, limit=args.limit, progress=sys.stderr.isatty())
    print(markdown_table(results))
    if args.json:
        data = report(results, model=args.model, engine=eng.describe(), meta_dir=str(args.meta_dir),
                      split=args.split)
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
        log.info("saved %s", path)
    return 0
