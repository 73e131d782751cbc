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
        help="list the networks: parameters, FLOPs per pixel, size multiple, feature taps",
        description="List the registered networks with their parameters, FLOPs per pixel (a multiply-add "
        "counts 2), the size multiple frames are padded to, and the channels of their four feature taps.",
    )
    parser.add_argument(
        "--size",
        default="720x1280",
        metavar="HxW",
        help="frame size the FLOPs are counted at (default 720x1280)",
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
    from unweather.errors import UnweatherError

    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UnweatherError(f"--size must look like 720x1280 (height x width), not {text!r}") from None
    if h < 1 or w < 1:
        raise UnweatherError(f"--size must be positive, not {text!r}")
    return h, w


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
    if args.json:
        print(json.dumps({"height": height, "width": width, "models": rows}, indent=2))
        return 0
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
