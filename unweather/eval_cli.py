"""`unweather eval`: PSNR and SSIM of an engine on paired data sets.

It opens an engine (`unweather.engine`) and scores it with training's metrics
(`unweather.training.evaluate`), so it sits above both: training never imports the engine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from unweather.errors import UnweatherError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `eval`."""
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
    p.add_argument("--allow-slow-precision", action="store_true",
                   help="score --precision bf16 on a CPU without native bf16 anyway (emulated: many times slower "
                        "than fp32; refused otherwise)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint that pickles Python objects (runs code: only for files you trust)")
    p.add_argument("--limit", type=int, metavar="N", help="score only the first N pairs of each data set")
    p.set_defaults(func=eval_handler)


def eval_handler(args: argparse.Namespace) -> int:
    """`unweather eval`."""
    from unweather import engine as engine_mod
    from unweather.fileio import write_text_atomic
    from unweather.training.evaluate import evaluate, load_meta, markdown_table, report

    if args.limit is not None and args.limit < 1:
        raise UnweatherError(f"--limit must be at least 1, got {args.limit}")
    if args.allow_slow_precision and args.precision != "bf16":
        raise UnweatherError("--allow-slow-precision applies to --precision bf16 (emulated on CPUs without native "
                             "bf16): give --precision bf16 too.")
    datasets = load_meta(args.meta_dir, args.split, root=args.root)
    options = {key: value for key, value in (("backend", args.backend), ("device", args.device),
                                             ("precision", args.precision)) if value is not None}
    if args.trust_checkpoint:
        options["trusted"] = True
    if args.allow_slow_precision:
        options["allow_slow_precision"] = True
    eng = engine_mod.open(args.model, **options)
    log.info("evaluating %s (%s) on %s", args.model, eng.describe(), ", ".join(datasets))
    with eng:
        results = evaluate(eng, datasets, device=eng.device, limit=args.limit, progress=sys.stderr.isatty())
    print(markdown_table(results))
    if args.json:
        data = report(results, model=args.model, engine=eng.describe(), meta_dir=str(args.meta_dir),
                      split=args.split)
        try:
            write_text_atomic(args.json, json.dumps(data, indent=2) + "\n")
        except OSError as exc:
            raise UnweatherError(f"cannot write {args.json}: {exc.strerror or exc}") from None
        log.info("saved %s", args.json)
    return 0
