"""Subcommands of `unweather.models`: `models` lists the registry, `convert` writes our format."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands."""
    parser = subparsers.add_parser(
        "models",
        help="list the shipped weights (fast, quality, video, video_quality) and the networks: parameters, "
             "FLOPs per pixel, taps",
        description="List the trained weights shipped with the package (what --model fast, quality and video "
        "load), then the registered networks with their parameters, FLOPs per pixel (a multiply-add counts 2), "
        "the size multiple frames are padded to, and the channels of their four feature taps.",
    )
    parser.add_argument(
        "--size",
        default="1280x720",
        metavar="WxH",
        help="frame size (width x height) the FLOPs are counted at (default 1280x720)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=models_handler)

    parser = subparsers.add_parser(
        "convert",
        help="convert a checkpoint (released .pth, state_dict, ...) to our safetensors format",
        description="Load any accepted checkpoint and write it as a safetensors file whose metadata "
        "names the architecture and its options, so that loading it needs nothing else.",
    )
    parser.add_argument("checkpoint", type=Path, help="the checkpoint to convert")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the .safetensors file to write")
    parser.add_argument(
        "--arch",
        help="the architecture, when the checkpoint does not say and it is not recognised from its keys",
    )
    parser.add_argument(
        "--options",
        metavar="JSON",
        help="architecture options as a JSON object, e.g. '{\"res_blocks\": 18}' (overrides the file's)",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a checkpoint that needs full unpickling (this runs code from the file: only for "
        "files from a source you trust)",
    )
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    parser.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra metadata entry (repeatable), e.g. data=... or run=...",
    )
    parser.set_defaults(func=convert_handler)


def _parse_size(text: str) -> tuple[int, int]:
    """(height, width) from "WIDTHxHEIGHT", as video tools write sizes (1280x720)."""
    from unweather.errors import UnweatherError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UnweatherError(f"--size must be WIDTHxHEIGHT, e.g. 1280x720, not {text!r}") from None
    if h < 1 or w < 1:
        raise UnweatherError(f"--size must be positive, not {text!r}")
    return h, w


# What each shipped weights file is for (the file's own metadata gives its network and training).
SHIPPED_ROLES = {"fast": "the small student, for real time on a CPU",
                 "quality": "the larger student, for GPUs and offline work; the default for images",
                 "video": "the video student (fast's network and a temporal state), for real time; the "
                          "default for videos and streams on a CPU",
                 "video_quality": "the larger video student (quality's network and a temporal state), for GPUs "
                                  "and offline work; the default for videos and streams on a GPU"}


def describe_weights() -> list[dict[str, object]]:
    """One row per shipped weights file: name, network, size, weathers, validation PSNR and role."""
    from unweather.engine.sources import SHIPPED, shipped_weights
    from unweather.models import read_metadata

    rows = []
    for name, arch in SHIPPED.items():
        path = shipped_weights(name)
        row: dict[str, object] = {"name": name, "arch": arch, "installed": path.is_file(),
                                  "role": SHIPPED_ROLES.get(name, "")}
        if path.is_file():
            meta = read_metadata(path)
            row["arch"] = meta.get("arch", arch)
            row["size_mb"] = round(path.stat().st_size / 1e6, 2)
            try:
                row["weathers"] = json.loads(meta.get("weathers", "[]"))
                row["val_psnr"] = json.loads(meta.get("val_psnr", "{}")).get("score")
            except (json.JSONDecodeError, AttributeError):
                row["weathers"], row["val_psnr"] = [], None
        rows.append(row)
    return rows


def describe_models(height: int, width: int) -> list[dict[str, object]]:
    """Return one row per registered network: name, parameters, FLOPs, pad multiple, taps."""
    import torch

    from unweather.models import build, count_flops, names
    from unweather.models.registry import describe

    rows = []
    for name in names():
        with torch.device("meta"):
            model = build(name)
        flops = count_flops(model, height, width)
        rows.append(
            {
                "name": name,
                "parameters": sum(p.numel() for p in model.parameters()),
                "flops_per_pixel": flops / (height * width),
                "gflops_per_frame": flops / 1e9,
                "pad_multiple": int(getattr(model, "pad_multiple", 1)),
                "tap_channels": list(getattr(model, "tap_channels", ())),
                "description": describe(name),
            }
        )
    return rows


def models_handler(args: argparse.Namespace) -> int:
    """Print the registry as a table (or JSON)."""
    height, width = _parse_size(args.size)
    rows = describe_models(height, width)
    weights = describe_weights()
    if args.json:
        print(json.dumps({"width": width, "height": height, "weights": weights, "models": rows}, indent=2))
        return 0
    print("shipped weights (--model NAME):")
    for w in weights:
        if not w["installed"]:
            print(f"  {w['name']:<8} {w['arch']} - not in this installation")
            continue
        psnr = f", synthetic-validation PSNR {w['val_psnr']:.1f} dB" if w.get("val_psnr") else ""
        weathers = "/".join(w.get("weathers") or []) or "?"
        print(f"  {w['name']:<8} {w['arch']}, {weathers}, {w['size_mb']:.1f} MB{psnr}: {w['role']}")
    print("\nnetworks (as --model NAME they are untrained: for testing the video path and for conversion):")
    header = ("name", "params", "FLOP/pixel", f"GFLOP/{width}x{height}", "pad", "taps", "description")
    table = [
        (
            str(r["name"]),
            f"{r['parameters']:,}",
            f"{r['flops_per_pixel'] / 1e3:,.1f} k",
            f"{r['gflops_per_frame']:,.2f}",
            str(r["pad_multiple"]),
            "/".join(str(c) for c in r["tap_channels"]),
            str(r["description"]),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in (header, *table)) for i in range(len(header))]
    for row in (header, *table):
        cells = [
            cell.rjust(w) if 0 < i < 5 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))
        ]
        print("  ".join(cells).rstrip())
    return 0


def convert_handler(args: argparse.Namespace) -> int:
    """Convert one checkpoint to our safetensors format."""
    import torch

    from unweather.errors import UnweatherError
    from unweather.models import load_checkpoint, save

    metadata = {"source": args.checkpoint.name}
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UnweatherError(f"--metadata takes KEY=VALUE, not {item!r}")
        metadata[key] = value
    options = {}
    if args.options:
        try:
            options = json.loads(args.options)
        except json.JSONDecodeError as exc:
            raise UnweatherError(f"--options is not valid JSON ({exc})") from None
        if not isinstance(options, dict):
            raise UnweatherError("--options must be a JSON object")
    model = load_checkpoint(args.checkpoint, trusted=args.trust_checkpoint, arch=args.arch, **options)
    try:
        save(model, args.output, metadata=metadata, dtype=torch.float16 if args.half else None)
    except ValueError as exc:
        raise UnweatherError(str(exc)) from exc
    except OSError as exc:
        raise UnweatherError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {args.output}: {model.arch} {json.dumps(model.arch_options)}, {params:,} parameters, "
        f"{args.output.stat().st_size / 1e6:.1f} MB"
    )
    return 0
