"""`unweather bench`: FPS and latency of every backend against the PyTorch baseline, with plots."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shlex

from unweather.bench.config import DEFAULT_TIME_LIMIT_S

logger = logging.getLogger(__name__)

DEFAULT_BACKENDS = ("torch", "onnxruntime", "tensorrt")
DEFAULT_PRECISIONS = ("fp32", "fp16")
# torch has few fp16 kernels on the CPU (several times slower than fp32); bf16 runs natively on CPUs with
# AVX-512 bf16 or AMX, and is skipped with the reason on the others.
DEFAULT_CPU_PRECISIONS = ("fp32", "bf16")
DEFAULT_RESOLUTIONS = ("640x360", "1280x720")

_EPILOG = """\
examples:
  unweather bench                                    # the default model, every backend, synthetic clip
                                                     # (a few minutes at most: 30 s per combination)
  unweather bench dashcam.mp4 --resolutions 1920x1080 --json bench.json --plot bench.png
  unweather bench --models student_small msbdn@640x360 --backends torch torch:cuda_graph tensorrt \\
      --precisions fp32 fp16 --device cuda --markdown table.md
  unweather bench --models fast --backends torch --precisions fp32 --live 25 --frames 250
      # also live at 25 FPS, as a camera: latency p50/p95/p99 and dropped frames

A backend may carry engine options: torch:compile, torch:cuda_graph, onnxruntime:threads=2,
onnxruntime:device=cpu. A model may be limited to some resolutions: msbdn@640x360.

Only what makes sense on this machine is measured; the rest is listed as skipped, with the reason:
backends or devices that are missing, bf16 on a CPU without native bf16 (AVX-512 bf16 or AMX: it is
emulated there, many times slower) and torch fp16 on the CPU (few kernels). --allow-slow-precision
measures those too; --precisions bf16 on such a CPU is refused without it. The table's header names
the CPU with its flags.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` subcommand."""
    parser = subparsers.add_parser(
        "bench", help="measure FPS and latency of every backend against the PyTorch baseline",
        description="Measure, for every model, backend, precision, resolution and batch, the engine alone "
                    "and the whole decode-infer-encode pipeline, against torch fp32 eager on the same frames.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", help="video file or stream to take frames from "
                        "(default: a synthetic rainy clip made at each resolution)")
    parser.add_argument("--models", nargs="+", metavar="MODEL", help="registry names, checkpoints or .onnx "
                        "files, optionally MODEL@WxH[,WxH] (default: the default model for the device)")
    parser.add_argument("--backends", nargs="+", metavar="BACKEND", default=list(DEFAULT_BACKENDS),
                        help=f"backends, optionally with options (default: {' '.join(DEFAULT_BACKENDS)})")
    parser.add_argument("--precisions", nargs="+", metavar="P",
                        help=f"fp32, fp16, bf16 (default: {' '.join(DEFAULT_PRECISIONS)} on a GPU, "
                             f"{' '.join(DEFAULT_CPU_PRECISIONS)} on the CPU)")
    parser.add_argument("--resolutions", nargs="+", metavar="WxH",
                        help="frame sizes; an input is resized to each, only for the benchmark "
                             f"(default: {' '.join(DEFAULT_RESOLUTIONS)}, or the input's own size)")
    parser.add_argument("--batch", nargs="+", type=int, default=[1], metavar="N", help="batch sizes (default: 1)")
    parser.add_argument("--frames", type=int, default=32, help="frames in the clip, one repetition (default: 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (default: 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed engine calls first (default: 3)")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="KEY=VALUE[,...]",
                        help="combinations not to measure, e.g. backend=torch,precision=fp16 (keys: model, "
                             "backend, precision, resolution, batch; values may use * and ?)")
    parser.add_argument("--max-call-seconds", type=float, metavar="S",
                        help="skip a combination whose first engine call takes longer than S seconds")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, metavar="S",
                        help="stop measuring a combination S seconds after its engine is open (the engine alone "
                             "gets half of it when the pipeline is measured too) and report it as timed out with "
                             f"what it measured so far; 0: no limit (default: {DEFAULT_TIME_LIMIT_S:g})")
    parser.add_argument("--allow-slow-precision", action="store_true",
                        help="also measure bf16 on a CPU without native bf16 and torch fp16 on the CPU (many times "
                             "slower than fp32; skipped, or refused when asked for with --precisions, otherwise)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--json", metavar="FILE", help="write every measurement with machine info as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="draw FPS per backend and latency distributions")
    parser.add_argument("--markdown", metavar="FILE.md", help="write the results table as markdown")
    parser.add_argument("--no-pipeline", action="store_true", help="time the engine alone, not the pipeline")
    parser.add_argument("--live", type=float, metavar="FPS",
                        help="also feed the clip to the pipeline in live mode at FPS frames per second, as a "
                             "camera would: end-to-end latency p50/p95/p99 and dropped frames")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (it shows the ETA; off anyway when stderr is not a terminal)")
    parser.set_defaults(func=handle)


def _input_resolution(source: str) -> str:
    """The size of the first video stream of `source`, as WxH rounded down to even numbers."""
    import av

    from unweather.errors import UnweatherError
    from unweather.redact import redact

    try:
        with av.open(source, timeout=(10.0, 10.0)) as container:
            if not container.streams.video:
                raise UnweatherError(f"{redact(source)} has no video stream")
            ctx = container.streams.video[0].codec_context
            return f"{ctx.width - ctx.width % 2}x{ctx.height - ctx.height % 2}"
    except (av.FFmpegError, OSError) as exc:
        raise UnweatherError(f"cannot open {redact(source)}: {redact(str(exc))}") from exc


def command_line(args: argparse.Namespace) -> str:
    """The full command line of this run with every setting spelt out, for the results."""
    from unweather.redact import redact

    words = ["unweather", "bench"]
    if args.input:
        words.append(redact(args.input))
    words += ["--models", *args.models, "--backends", *args.backends, "--precisions", *args.precisions,
              "--resolutions", *args.resolutions, "--batch", *map(str, args.batch),
              "--frames", str(args.frames), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
              "--device", args.device]
    if args.exclude:
        words += ["--exclude", *args.exclude]
    if args.max_call_seconds is not None:
        words += ["--max-call-seconds", f"{args.max_call_seconds:g}"]
    words += ["--time-limit", f"{args.time_limit:g}"]
    if args.allow_slow_precision:
        words.append("--allow-slow-precision")
    if args.no_pipeline:
        words.append("--no-pipeline")
    if getattr(args, "live", None) is not None:
        words += ["--live", f"{args.live:g}"]
    for flag in ("json", "plot", "markdown"):
        if getattr(args, flag):
            words += [f"--{flag}", getattr(args, flag)]
    return shlex.join(words)


def handle(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table and write the requested files."""
    from unweather.bench.config import (
        BenchConfig,
        parse_backend,
        parse_exclusion,
        parse_model,
        parse_resolution,
    )
    from unweather.bench.report import markdown_report, write_plot
    from unweather.bench.runner import measured, resolve_device, run_bench
    from unweather.errors import UnweatherError
    from unweather.machine import save_results

    if args.plot and importlib.util.find_spec("matplotlib") is None:
        # Said before the measurements, not after an hour of them.
        raise UnweatherError("--plot needs matplotlib (pip install 'unweather[bench]')")
    device = resolve_device(args.device)
    if not args.models:
        from unweather import engine

        default = getattr(engine, "default_model", None)
        args.models = [default(device) if default else "identity"]
    if not args.precisions:
        args.precisions = list(DEFAULT_CPU_PRECISIONS if device.type == "cpu" else DEFAULT_PRECISIONS)
    elif not args.allow_slow_precision:
        from unweather.engine.loader import slow_precision_refusal

        # Asked for by name: refused in one line (the defaults skip it with the reason instead).
        refusal = next(filter(None, (slow_precision_refusal(p, device.type) for p in args.precisions)), None)
        if refusal:
            raise UnweatherError(refusal)
    if not args.resolutions:
        args.resolutions = [_input_resolution(args.input)] if args.input else list(DEFAULT_RESOLUTIONS)
    config = BenchConfig(
        input=args.input,
        models=[parse_model(m) for m in args.models],
        backends=[parse_backend(b) for b in args.backends],
        precisions=list(args.precisions),
        resolutions=[parse_resolution(r) for r in args.resolutions],
        batches=list(args.batch),
        frames=args.frames,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        pipeline=not args.no_pipeline,
        exclude=[parse_exclusion(e) for e in args.exclude],
        max_call_s=args.max_call_seconds,
        live_rate=args.live,
        time_limit_s=args.time_limit or None,
        allow_slow_precision=args.allow_slow_precision,
    )
    # Each combination's results are saved as they come: a run killed after hours keeps them.
    on_result = (lambda partial: save_results(args.json, partial)) if args.json else None
    payload = run_bench(config, progress=not args.no_progress, command=command_line(args), on_result=on_result)
    report = markdown_report(payload)
    print(report)
    if args.json:
        save_results(args.json, payload)
        logger.info("results written to %s", args.json)
    if args.markdown:
        from unweather.fileio import write_text_atomic

        write_text_atomic(args.markdown, report)
        logger.info("table written to %s", args.markdown)
    if args.plot:
        write_plot(payload, args.plot)
        logger.info("plot written to %s", args.plot)
    if payload.get("interrupted"):
        return 130
    results = payload["results"]
    ok = sum(measured(r) for r in results)
    failed = sum(r["status"] == "failed" or (r.get("pipeline") or {}).get("status") == "failed"
                 or (r.get("live") or {}).get("status") == "failed" for r in results)
    if not ok:
        logger.error("no combination could be measured here (the reasons are listed above)")
    elif failed:
        logger.error("%d combination(s) failed with an error (listed above as failed)", failed)
    return 0 if ok and not failed else 1
