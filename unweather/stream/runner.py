"""`run`: open the input, the output and the engine, run the pipeline, report the statistics."""

from __future__ import annotations

import inspect
import json
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from unweather.errors import UnweatherError
from unweather.fileio import write_text_atomic
from unweather.media import VIDEO_OUTPUTS, is_image_file, is_url, url_scheme, video_output_extension
from unweather.redact import redact
from unweather.stream.config import RunConfig, WarmUp
from unweather.stream.sinks import ImageSink, Sink, VideoSink
from unweather.stream.sources import ImageSource, Source, is_device, open_source
from unweather.stream.stats import RunStats

if TYPE_CHECKING:
    from unweather.engine.base import Engine
    from unweather.stream.multi import EngineClient

logger = logging.getLogger(__name__)

_OUTPUT_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "srt")


def is_video_input(spec: str) -> bool:
    """Whether `spec` is a video or a stream (a video file, URL or capture device), not images."""
    if is_url(spec) or is_device(spec):
        return True
    return not (is_image_file(spec) or os.path.isdir(spec))


def model_name(config: RunConfig, video: bool = False) -> str:
    """The model `config` names, or the package's default for the input (`video`: a video or a stream;
    else still images) and the device when it names none (see `unweather.engine.default_model`)."""
    if config.model is not None:
        return config.model
    import unweather.engine as engines

    default = getattr(engines, "default_model", None)
    return default(config.device, video=video, still=not video) if default is not None else "identity"


def temporal_refusal(config: RunConfig, video: bool) -> str | None:
    """Why `config.temporal` cannot apply to the model the run uses (a video model), or None.

    Only what can be told without opening the model; `Pipeline` refuses the rest once the engine is open.
    """
    if not config.temporal:
        return None
    from unweather.engine.sources import is_video_model
    from unweather.stream.temporal import video_model_refusal

    model = model_name(config, video)
    return video_model_refusal(model, default=config.model is None) if is_video_model(model) else None


def check_engine_request(config: RunConfig, video: bool = False) -> None:
    """Refuse at once, before any file is opened, what opening the engine would refuse later.

    Args:
        config: the run's settings.
        video: the input is a video or a stream (it decides the default model).

    Raises:
        UnweatherError: an unknown model or file, an unknown device, a GPU device without CUDA, bf16
            on a CPU without native bf16 (without `allow_slow_precision`), or `temporal` with a video model.
    """
    import torch

    device = None
    if config.device:
        try:
            device = torch.device(config.device)
        except (RuntimeError, ValueError):
            raise UnweatherError(f"unsupported device {config.device!r}; use cpu, cuda or cuda:N.") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UnweatherError(f"device {config.device} was asked for, but torch sees no CUDA GPU.")
    if config.precision and not config.allow_slow_precision:
        from unweather.engine.loader import slow_precision_refusal

        on = device.type if device is not None else "cuda" if torch.cuda.is_available() else "cpu"
        if refusal := slow_precision_refusal(config.precision, on):
            raise UnweatherError(refusal)
    if config.model is not None:
        from unweather.engine.sources import resolve

        resolve(config.model)
    if refusal := temporal_refusal(config, video):
        raise UnweatherError(refusal)


def open_engine(config: RunConfig, video: bool = False) -> Engine:
    """The engine `config` asks for, via `unweather.engine.open`; logs which model it uses.

    `video`: the input is a video or a stream, so the default model is the video student when it is shipped.
    """
    import unweather.engine as engines

    model = model_name(config, video)
    params = inspect.signature(engines.open).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {}
    if config.backend and (config.backend != "auto" or getattr(params.get("backend"), "default", None) == "auto"):
        kwargs["backend"] = config.backend
    if config.precision:
        kwargs["precision"] = config.precision
    if config.device:
        kwargs["device"] = config.device
    if config.trust_checkpoint:
        if "trusted" not in params and not takes_any:
            raise UnweatherError("this engine cannot load untrusted checkpoints.")
        kwargs["trusted"] = True
    if config.allow_slow_precision:
        kwargs["allow_slow_precision"] = True
    if config.tile:
        kwargs.update(tile=config.tile, tile_overlap=config.tile_overlap)
    engine = engines.open(model, **kwargs)
    describe = getattr(engine, "describe", None)
    default = " (the default; choose one with --model)" if config.model is None else ""
    logger.info("model %s%s: %s", model, default, describe() if callable(describe) else type(engine).__name__)
    return engine


def is_live(spec: str, config: RunConfig) -> bool:
    """Live mode for network URLs and capture devices unless the config says otherwise."""
    if config.mode != "auto":
        return config.mode == "live"
    return is_url(spec) or is_device(spec)


def default_output(spec: str, live: bool = False) -> str:
    """A name beside the input: clip.mp4 -> clip.unweather.mp4, photos/ -> photos.unweather/.

    URLs and capture devices record into unweather-YYYYmmdd-HHMMSS.mkv in the current folder
    (Matroska: playable even if the process is killed).
    """
    if is_url(spec) or is_device(spec):
        return time.strftime("unweather-%Y%m%d-%H%M%S.mkv")
    path = spec.rstrip("/" + os.sep) or spec
    if os.path.isdir(path):
        return path + ".unweather" + os.sep
    stem, ext = os.path.splitext(path)
    if is_image_file(path):
        return f"{stem}.unweather{ext.lower()}"
    return f"{stem}.unweather{video_output_extension(path, live)}"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def open_sink(output: str, source: Source, config: RunConfig, live: bool, gpu: bool) -> Sink:
    """The output `output` names: a media server URL, a video file, an image, or a folder of images."""
    scheme = url_scheme(output)
    if scheme:
        if scheme not in _OUTPUT_SCHEMES:
            raise UnweatherError(f"cannot publish to {redact(output)}: use an rtsp://, rtmp:// or srt:// URL.")
        return VideoSink(output, source, live=True, codec=config.codec, crf=config.crf, preset=config.preset,
                         gpu=gpu, network_options=config.network_options())
    ext = os.path.splitext(output)[1].lower()
    if output.endswith(("/", os.sep)) or os.path.isdir(output) or not ext:
        return ImageSink(output, folder=True)
    if is_image_file(output):
        if isinstance(source, ImageSource) and not source.single:
            raise UnweatherError(f"{output} is one image but the input is a folder: give a folder as output.")
        if not isinstance(source, ImageSource) and source.total != 1:
            raise UnweatherError(f"{output} is one image but the input is a video: give a folder as output.")
        return ImageSink(output, folder=False)
    if ext in VIDEO_OUTPUTS:
        return VideoSink(output, source, live=live, codec=config.codec, crf=config.crf, preset=config.preset, gpu=gpu)
    raise UnweatherError(f"cannot tell what to write from {output!r}: use .mp4, .mkv, .mov, .ts, an image "
                         "extension, a folder ending in '/', or an rtsp/rtmp/srt URL.")


def make_output_folder(output: str) -> list[str]:
    """Create the missing folders above a local `output` (a file, or a folder ending in '/').

    Returns:
        The folders created, deepest first (`remove_folders` takes them away again if nothing is written).

    Raises:
        UnweatherError: a folder cannot be created (a file in the way, no permission).
    """
    if is_url(output):
        return []
    folder = os.path.dirname(os.path.abspath(output.rstrip("/" + os.sep) or output))
    missing = []
    path = folder
    while path and not os.path.lexists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    if missing:
        try:
            os.makedirs(folder)
        except OSError as exc:
            shown = os.path.dirname(output.rstrip("/" + os.sep)) or folder
            raise UnweatherError(f"cannot create the output folder {shown}: {exc.strerror or exc}.") from None
    return missing


def remove_folders(folders: list[str]) -> None:
    """Remove `folders` (deepest first) where they are still empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def here() -> tuple[str, str]:
    """This process's node and worker, as stats name them: the host name and the process id."""
    return socket.gethostname(), str(os.getpid())


def _engine_on_gpu(engine: Engine | EngineClient) -> bool:
    device = getattr(engine, "device", None)
    return getattr(device, "type", str(device)) == "cuda"


def write_stats(stats: RunStats, path: str) -> None:
    """Write `stats` as JSON (atomically: a temporary file renamed)."""
    try:
        write_text_atomic(path, json.dumps(stats.to_dict(), indent=2) + "\n")
    except OSError as exc:
        raise UnweatherError(f"cannot write the stats file {path}: {exc.strerror or exc}.") from None


def run(input: str, output: str | None = None, config: RunConfig | None = None,
        engine: Engine | EngineClient | None = None,
        stop_event: threading.Event | None = None, warmup: WarmUp | None = None) -> RunStats:
    """Restore `input` into `output` and return the run's statistics.

    Args:
        input: a video file, image, folder of images, capture device (/dev/videoN) or network URL.
        output: a video file (.mp4 .mkv .mov .ts), image, folder (ends in '/'), or rtsp/rtmp/srt URL;
            None: a name beside the input (see `default_output`).
        config: the settings (None: defaults).
        engine: an open engine to use as is (e.g. one built once for many files); None opens the one
            `config` asks for, and closes it at the end.
        stop_event: set it from any thread to stop reading; frames already read are finished and the
            output is closed, playable.
        warmup: leading frames of the input that only warm a video network's state (an archive chunk's
            lead-in); they are restored and not written.

    Raises:
        UnweatherError: bad input, unwritable output, or a failure while running (the output then
            holds every frame written before it).
    """
    from unweather.stream.pipeline import Pipeline

    config = config or RunConfig()
    config.validate()
    spec = os.fspath(input)
    video = is_video_input(spec)
    # Everything that can be refused without work is refused before anything is created or announced.
    if engine is None:
        check_engine_request(config, video)
    mask = None
    if config.mask:
        from unweather.stream.mask import load_mask

        mask = load_mask(config.mask)
    live = is_live(spec, config)
    announce = output is None
    output = os.fspath(default_output(spec, live) if output is None else output)
    if not is_url(output) and not is_url(spec) and _same_file(spec, output):
        raise UnweatherError(f"the output {output} is the input: choose another name.")
    own_event = stop_event is None
    stop_event = threading.Event() if stop_event is None else stop_event
    wants_audio = not is_url(output) and os.path.splitext(output)[1].lower() in VIDEO_OUTPUTS
    source = open_source(spec, config, live, wants_audio, stop_event, own_event)
    sink: Sink | None = None
    folders: list[str] = []
    owned = engine is None
    try:
        folders = make_output_folder(output)
        sink = open_sink(output, source, config, live, gpu=False)
        if engine is None:
            engine = open_engine(config, video)
        if isinstance(sink, VideoSink):
            sink.gpu = _engine_on_gpu(engine)
        pipeline = Pipeline(source, sink, engine, config, live, stop_event, mask=mask,
                            announce=redact(output) if announce else None, warmup=warmup)
        logger.debug("%s -> %s: %s mode", redact(spec), redact(output), "live" if live else "offline")
        stats = pipeline.run()
    except BaseException:
        if sink is not None and not sink.frames_written:
            sink.discard()
        if sink is None or not sink.frames_written:
            remove_folders(folders)
        raise
    finally:
        source.close()
        if owned and engine is not None:
            engine.close()
    if not sink.frames_written:
        sink.discard()
        remove_folders(folders)
    stats.input = redact(spec)
    stats.output = redact(output)
    stats.nodes, stats.workers = [here()[0]], [here()[1]]
    stats.model = config.model or getattr(engine, "model", None) or model_name(config, video)
    if config.stats_path:
        write_stats(stats, config.stats_path)
    if stats.error:
        error = UnweatherError(stats.error)
        error.stats = stats  # what was done before the error, for callers that report many inputs
        raise error
    return stats
