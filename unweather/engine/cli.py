"""Subcommands of `unweather.engine`: `export` (ONNX) and `build` (TensorRT engine)."""

from __future__ import annotations

import argparse

_EXPORT_EPILOG = """\
examples:
  unweather export --model fast -o fast.onnx
  unweather export --model quality --precision fp16 --calibration-frames my_frames/ -o quality-fp16.onnx
  unweather export --model student.safetensors --precision fp16 --keep-fp32 'context.*' -o student-fp16.onnx
  unweather export --model fast --precision int8 --calibration-frames dashcam.mp4 -o fast-int8.onnx
  unweather run dashcam.mp4 --model fast --precision int8     # exported (and gated) on first use, then cached
"""

_BUILD_EPILOG = """\
examples:
  unweather build quality-fp16.onnx -o quality.plan
  unweather build quality-fp16.onnx -o quality-4k.plan --opt-shape 1x3x2160x3840 --max-shape 1x3x2160x3840
  unweather run dashcam.mp4 --model quality.plan        # or --model quality --backend tensorrt: built and cached
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's subcommands."""
    p = subparsers.add_parser(
        "export", help="export a model to ONNX (fp32, or fp16 or int8 behind an accuracy gate)",
        description="Export a model to ONNX with a dynamic batch, height and width (any frame size: the graph pads, "
                    "crops and clamps to [0, 1] itself), check it with the ONNX checker "
                    "and compare ONNX Runtime with torch. --precision fp16 writes FP16 weights and arithmetic with "
                    "FP32 input and output, and refuses a graph below --min-psnr against torch FP32 on real frames. "
                    "--precision int8 writes a QDQ graph (INT8 convolutions, symmetric, weights per channel: "
                    "TensorRT's explicit quantization, and ONNX Runtime runs it on the CPU) calibrated on real "
                    "frames, and refuses it below --min-psnr against the FP32 graph, naming the convolutions to keep "
                    "in float.",
        epilog=_EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="registry name, shipped weights (fast, quality, video, video_quality) or checkpoint "
                                   "(default: the default model for the CPU); a video network's graph takes and "
                                   "returns its state too (input, background, weight -> output, background_out, "
                                   "weight_out)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="graph precision (default: fp32)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset, 18 or newer (default: 18)")
    p.add_argument("--calibration-frames", metavar="DIR|IMAGE|VIDEO",
                   help="your own frames (a folder of images, an image, or a video: 16 frames spread over it), "
                        "checked by the fp16 and int8 gates besides the bundled photo, and calibrated on for int8")
    p.add_argument("--min-psnr", type=float, default=None,
                   help="the gate's least PSNR in dB (default: 40 for fp16 against torch fp32, 35 for int8 against "
                        "the fp32 graph)")
    p.add_argument("--keep-fp32", nargs="+", default=[], metavar="PATTERN",
                   help="fp16: modules kept in fp32, shell-style patterns over module names (e.g. 'context.*' head); "
                        "int8: convolutions kept in float, node or module names, comma-separated "
                        "(e.g. node_conv2d_3,head.*)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a pickled checkpoint that needs full unpickling (runs code from the file)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    p.set_defaults(func=export_handler)

    b = subparsers.add_parser(
        "build", help="build a TensorRT engine from an ONNX file (needs TensorRT and a GPU)",
        description="Build a strongly typed TensorRT engine from an ONNX file exported by `unweather export`: "
                    "the graph's precision is the engine's, and the profile's shapes are frame sizes (the graph "
                    "pads frames to the network's multiple itself). Writes FILE.plan and FILE.plan.json (metadata); "
                    "a timing cache beside it speeds up later builds.",
        epilog=_BUILD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("onnx", metavar="FILE.onnx", help="the ONNX graph")
    b.add_argument("-o", "--output", required=True, metavar="FILE.plan", help="the engine file to write")
    b.add_argument("--min-shape", default=None, metavar="NxCxHxW",
                   help="smallest frames, in frame sizes (the graph pads them itself; default: 1x3x64x64)")
    b.add_argument("--opt-shape", default=None, metavar="NxCxHxW",
                   help="frames tuned for, e.g. 1x3x1080x1920 (default: 1x3x720x1280)")
    b.add_argument("--max-shape", default=None, metavar="NxCxHxW", help="largest frames (default: 4x3x1088x1920)")
    b.add_argument("--workspace", type=int, default=None, metavar="MB", help="builder workspace limit in MB")
    b.add_argument("--device", default="cuda", help="CUDA device to build for (default: cuda)")
    b.add_argument("--force", action="store_true", help="build even when FILE.plan is up to date for this graph, "
                                                    "profile, TensorRT and GPU")
    b.set_defaults(func=build_handler)


def export_handler(args: argparse.Namespace) -> int:
    """`unweather export`."""
    from unweather.engine.export import DEFAULT_OPSET, ExportConfig, export_onnx
    from unweather.engine.sources import default_model, load_network, resolve
    from unweather.errors import UnweatherError

    source = resolve(args.model or default_model("cpu"))
    if not source.is_network:
        raise UnweatherError(f"{source.name} is a {source.kind} file; export takes a registry name, shipped weights "
                             "or a checkpoint")
    net = load_network(source, trusted=args.trust_checkpoint)
    config = ExportConfig(precision=args.precision, opset=args.opset or DEFAULT_OPSET, min_psnr=args.min_psnr,
                          keep_fp32=tuple(args.keep_fp32), calibration_frames=args.calibration_frames)
    report = export_onnx(net, args.output, config)
    print(report.summary())
    return 0


def build_handler(args: argparse.Namespace) -> int:
    """`unweather build`."""
    from pathlib import Path

    from unweather.engine.tensorrt_build import (
        Profile,
        build_engine,
        expected_metadata,
        parse_shape,
        read_sidecar,
        rebuild_reason,
    )
    from unweather.errors import UnweatherError

    default = Profile()
    profile = Profile(
        parse_shape(args.min_shape) if args.min_shape else default.min,
        parse_shape(args.opt_shape) if args.opt_shape else default.opt,
        parse_shape(args.max_shape) if args.max_shape else default.max,
    )
    onnx = Path(args.onnx)
    if not onnx.is_file():
        raise UnweatherError(f"ONNX file not found: {onnx}")
    if not args.force:
        reason = rebuild_reason(args.output, expected_metadata(onnx, profile, args.device, args.workspace))
        if reason is None:
            meta = read_sidecar(args.output) or {}
            print(f"{args.output} is up to date (TensorRT {meta.get('tensorrt')}, {meta.get('gpu')}, "
                  f"{profile.describe()}); --force builds it again")
            return 0
    meta = build_engine(onnx, args.output, profile, args.workspace, args.device)
    print(f"wrote {args.output} ({meta['precision']}, TensorRT {meta['tensorrt']}, {meta['gpu']}, "
          f"{profile.describe()}, {meta['build_seconds']} s) and {args.output}.json")
    return 0
