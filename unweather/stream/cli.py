"""`unweather run`: restore a video file, image, folder of images, capture device or network stream.

This module runs on this machine only; `unweather.cli` adds the Ray options to `run` and hands Ray runs
to `unweather.cluster.cli`. Every option either takes effect in the run it is given to or is refused
with one line saying why (`check_local_options`): none is silently ignored.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from unweather.errors import UnweatherError

if TYPE_CHECKING:
    from unweather.stream.config import RunConfig

logger = logging.getLogger(__name__)

_EPILOG = """\
examples:
  unweather run dashcam.mp4                          # -> dashcam.unweather.mp4 beside it, audio copied
  unweather run dashcam.mp4 -o clean/dashcam.mkv --model quality --stats run.json
  unweather run long.mp4 --start 1:30 --duration 20  # 20 s from 1 min 30 s (HH:MM:SS[.ms] or seconds)
  unweather run dashcam.mp4 --mask bonnet.png --strength 0.8   # white in the mask: left untouched
  unweather run photos/ -o photos_clean/             # a folder of images: same names, same formats
  unweather run rtsp://user:pass@cam/stream1 -o gate.mkv --duration 3600   # record one hour, live
  unweather run /dev/video0 -o rtsp://server:8554/clean                    # a webcam, published

Output folders that do not exist are created. -q prints only warnings and errors.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `run`."""
    p = subparsers.add_parser(
        "run", help="remove rain, snow and haze from a video, images, a camera or a stream",
        description="Restore INPUT (video file, image, folder of images, /dev/videoN, or an rtsp/rtmp/http/srt "
                    "URL) into OUTPUT (video file, image, folder ending in '/', or an rtsp/rtmp/srt URL). "
                    "Ctrl-C stops reading; frames already read are finished and the output stays playable.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="what to restore; several inputs, a folder of videos or a sources file (.yaml, .toml) "
                        "run together, sharing one engine")
    p.add_argument("-o", "--output", metavar="OUTPUT",
                   help="where to write (default: beside the input, e.g. clip.unweather.mp4); with several "
                        "inputs a folder, DIR/, that gets one output per input named after it")
    p.add_argument("--model", help="registry name, shipped weights (fast, quality, video, video_quality), "
                                   "checkpoint, .onnx or engine file (default: videos and streams: the video student "
                                   "`video` on the CPU, `video_quality` on a GPU, which carry a state from frame to "
                                   "frame, when shipped (else `fast` on the CPU, "
                                   "`quality` on a GPU); images: `quality`, which does the least harm where there "
                                   "is no weather)")
    p.add_argument("--backend", default="auto", help="torch, onnxruntime, tensorrt or auto (default)")
    p.add_argument("--precision", help="fp32, fp16, bf16 or int8 (default: the backend's choice; bf16 on the CPU "
                                       "needs native bf16: AVX-512 bf16 or AMX; int8 runs an int8 ONNX graph in "
                                       "ONNX Runtime on the CPU, see `unweather export --precision int8`)")
    p.add_argument("--allow-slow-precision", action="store_true",
                   help="run --precision bf16 on a CPU without native bf16 anyway (emulated: many times slower "
                        "than fp32; refused otherwise)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: a GPU when there is one)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint that pickles Python objects (runs code from the file)")
    p.add_argument("--batch", type=int, help="frames per inference call in offline mode (default 1)")
    p.add_argument("--tile", type=int, metavar="SIZE", help="restore frames larger than SIZE x SIZE in overlapping "
                                                         "tiles (large frames, small GPUs or TensorRT profiles)")
    p.add_argument("--tile-overlap", type=int, metavar="N", help="with --tile: pixels shared by neighbouring "
                                                                "tiles, blended across (default 32)")
    p.add_argument("--engine-batch", type=int, metavar="N",
                   help="with several inputs: most frames from all streams in one shared inference call "
                        "(default 8; 1 turns batching across streams off)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--live", dest="mode", action="store_const", const="live",
                      help="bounded latency: drop the oldest waiting frame when inference falls behind "
                           "(default for URLs and cameras)")
    mode.add_argument("--offline", dest="mode", action="store_const", const="offline",
                      help="every frame, batched (default for files and folders)")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N input frames")
    p.add_argument("--start", metavar="T", help="video files: start T into the file (seconds or HH:MM:SS[.ms]); "
                                               "the output starts there, at 0")
    p.add_argument("--duration", metavar="T", help="restore T (seconds or HH:MM:SS[.ms]); files: from --start, "
                                                  "audio cut to match; live sources: record this long")
    p.add_argument("--strength", type=float, default=1.0, metavar="S",
                   help="blend with the input after restoring, S in [0, 1]: 0 returns the input, 1 (default) "
                        "the full restoration")
    p.add_argument("--mask", metavar="FILE.png", help="greyscale (or alpha) PNG the size of the frame: white "
                                                     "regions come out exactly as they went in, grey blends")
    p.add_argument("--side-by-side", action="store_true", help="write input | output side by side")
    p.add_argument("--temporal", type=float, default=0.0, metavar="S",
                   help="still cameras: blend each restored frame with the previous one where little changed, "
                        "weight S in [0, 1), e.g. 0.8 (default 0: off; it smears a moving camera's picture); "
                        "for frame models only (fast, quality): the video model carries its own history")
    p.add_argument("--stats", metavar="FILE.json",
                   help="write the run's statistics as JSON, in every mode: per input (and per chunk on Ray) "
                        "with the node and worker that restored it")
    p.add_argument("--codec", help="video encoder: auto (default: NVENC on a GPU when it works, else "
                                   "libx264), libx264, h264_nvenc, libx265")
    p.add_argument("--crf", type=int, help="video quality, 0-51, lower is better (default 18)")
    p.add_argument("--preset", help="encoder preset (default: veryfast live, fast offline)")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="only warnings and errors: no progress bar, log lines or summary")
    net = p.add_argument_group("network sources and outputs")
    net.add_argument("--open-timeout", type=float, metavar="S", help="seconds to connect (10)")
    net.add_argument("--read-timeout", type=float, metavar="S", help="seconds per read (10)")
    net.add_argument("--stall-timeout", type=float, metavar="S",
                     help="reconnect after this long without a frame (20)")
    net.add_argument("--give-up-after", type=float, metavar="S",
                     help="end the run when the source stays away this long (300)")
    net.add_argument("--rtsp-transport", choices=("tcp", "udp"), help="RTSP transport (tcp)")
    p.set_defaults(func=handle_run, mode="auto")


# Options whose value goes into `RunConfig` unchanged when given: option dest -> RunConfig field.
_CONFIG_FIELDS = {
    "model": "model", "backend": "backend", "precision": "precision", "device": "device",
    "trust_checkpoint": "trust_checkpoint", "allow_slow_precision": "allow_slow_precision", "batch": "batch",
    "mode": "mode", "max_frames": "max_frames",
    "side_by_side": "side_by_side", "temporal": "temporal", "stats": "stats_path", "codec": "codec", "crf": "crf",
    "preset": "preset", "open_timeout": "open_timeout", "read_timeout": "read_timeout",
    "stall_timeout": "stall_timeout_network", "give_up_after": "give_up_after", "rtsp_transport": "rtsp_transport",
    "tile": "tile", "tile_overlap": "tile_overlap", "strength": "strength", "mask": "mask",
}
# Options that matter only where a network input or output is.
NETWORK_OPTIONS = {"open_timeout": "--open-timeout", "read_timeout": "--read-timeout",
                   "stall_timeout": "--stall-timeout", "give_up_after": "--give-up-after",
                   "rtsp_transport": "--rtsp-transport"}
# Options that matter only where a video is written.
VIDEO_OPTIONS = {"codec": "--codec", "crf": "--crf", "preset": "--preset"}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The `RunConfig` the arguments ask for (options not given keep `RunConfig`'s defaults).

    Raises:
        UnweatherError: a malformed --start or --duration.
    """
    from unweather.stream.config import RunConfig, parse_time

    values = {field: getattr(args, dest) for dest, field in _CONFIG_FIELDS.items()
              if getattr(args, dest, None) is not None}
    if getattr(args, "start", None) is not None:
        values["start"] = parse_time(args.start, "--start")
    if getattr(args, "duration", None) is not None:
        values["duration"] = parse_time(args.duration, "--duration")
    return RunConfig(**values, progress=not args.quiet)


def given(args: argparse.Namespace, names: dict[str, str]) -> list[str]:
    """The options among `names` (dest -> option) that were given, by option name."""
    return [option for dest, option in names.items() if getattr(args, dest, None) not in (None, False)]


def check_shared_options(args: argparse.Namespace, network: bool) -> None:
    """Refuse, in one line, options that cannot apply to any run: `network` says whether the run has a
    network input or output.

    Raises:
        UnweatherError: the first option that would be ignored.
    """
    if getattr(args, "tile_overlap", None) is not None and getattr(args, "tile", None) is None:
        raise UnweatherError("--tile-overlap applies to tiles: give --tile SIZE too.")
    if getattr(args, "allow_slow_precision", False) and getattr(args, "precision", None) != "bf16":
        raise UnweatherError("--allow-slow-precision applies to --precision bf16 (emulated on CPUs without native "
                             "bf16): give --precision bf16 too.")
    if not network and (names := given(args, NETWORK_OPTIONS)):
        raise UnweatherError(f"{names[0]} applies to network inputs and outputs (rtsp://, rtmp://, http(s)://, "
                             "srt://), and this run has none.")


def has_network(inputs: Sequence[str], output: str | None) -> bool:
    """Whether a run of `inputs` into `output` may touch the network (a sources file may list cameras)."""
    from unweather.media import is_url
    from unweather.sources_file import is_sources_file

    return any(is_url(i) or is_sources_file(i) for i in inputs) or (output is not None and is_url(output))


def check_local_options(args: argparse.Namespace, config: RunConfig, many: bool) -> None:
    """Refuse, in one line, options given to a run on this machine that it would ignore.

    Raises:
        UnweatherError: the first such option, and why it does not apply.
    """
    from unweather.stream.runner import default_output, is_live, is_video_input

    check_shared_options(args, has_network(args.inputs, args.output))
    check_temporal(config, any(is_video_input(i) for i in args.inputs))
    if args.engine_batch is not None:
        if not many:
            raise UnweatherError("--engine-batch shares one engine between several inputs; with one input, "
                                 "use --batch.")
        if args.engine_batch < 1:
            raise UnweatherError(f"--engine-batch must be at least 1, not {args.engine_batch}.")
    if many:
        live = [args.mode == "live"]
        outputs: list[str] = []
        if given(args, VIDEO_OPTIONS):
            from unweather.stream.multi import plan_streams

            plans = plan_streams(args.inputs, args.output, config)
            live, outputs = [p.live for p in plans], [p.output for p in plans]
    else:
        live = [is_live(args.inputs[0], config)]
        outputs = [args.output or default_output(args.inputs[0], live[0])]
    if args.batch is not None and all(live):
        raise UnweatherError("--batch applies to offline runs; live mode restores each frame as it comes "
                             "(add --offline to keep every frame and batch them).")
    if outputs and (names := given(args, VIDEO_OPTIONS)) and not any(_writes_video(o) for o in outputs):
        raise UnweatherError(f"{names[0]} applies to video outputs, and this run writes images.")


def check_temporal(config: RunConfig, video: bool) -> None:
    """Refuse `--temporal` with a video model (`video`: the run has videos or streams, whose default it may be).

    Raises:
        UnweatherError: one line saying why, and what to do instead.
    """
    from unweather.stream.runner import temporal_refusal

    if refusal := temporal_refusal(config, video):
        raise UnweatherError(refusal)


def _writes_video(output: str) -> bool:
    from unweather.media import VIDEO_OUTPUTS, is_url

    return is_url(output) or os.path.splitext(output)[1].lower() in VIDEO_OUTPUTS


def handle_run(args: argparse.Namespace) -> int:
    """Run the pipeline; SIGINT/SIGTERM stop reading and finish the output, a second one stops at once."""
    from unweather.stream.multi import wants_many
    from unweather.stream.runner import run
    from unweather.stream.signals import stop_on_signals

    config = config_from_args(args)
    config.validate()
    many = wants_many(args.inputs)
    check_local_options(args, config, many)
    stop = threading.Event()
    with stop_on_signals(stop) as received:
        if many:
            from unweather.stream.multi import run_many

            stats = run_many(args.inputs, args.output, config, stop_event=stop,
                             max_batch=getattr(args, "engine_batch", None))
        else:
            stats = run(args.inputs[0], args.output, config, stop_event=stop)
    if not args.quiet:
        print(stats.summary(), file=sys.stderr)
    else:
        for warning in getattr(stats, "warnings", list)():
            logger.warning("warning: %s", warning)
    if many and stats.failed:
        names = ", ".join(entry["name"] for entry in stats.failed)
        print(f"unweather: error: {len(stats.failed)} of {len(stats.streams)} inputs failed: {names}",
              file=sys.stderr)
        return 1
    # Stopped by a signal: the output is complete up to there, but the input was not all read.
    return 128 + received[0] if received else 0
