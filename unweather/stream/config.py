"""What a run does: `RunConfig`, one dataclass shared by the command line, Python callers and Ray."""

from __future__ import annotations

import re
from dataclasses import dataclass

from unweather.errors import UnweatherError

MODES = ("auto", "live", "offline")

_CLOCK = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


def parse_time(text: str, what: str = "time") -> float:
    """Seconds from "90", "90.5", "1:30" (MM:SS) or "01:02:03.250" (HH:MM:SS[.ms]).

    Raises:
        UnweatherError: `text` is none of these, or negative.
    """
    value = str(text).strip()
    try:
        seconds = float(value)
    except ValueError:
        match = _CLOCK.match(value)
        if not match or float(match[3]) >= 60 or (match[1] is not None and int(match[2]) >= 60):
            raise UnweatherError(f"{what} {text!r} is not seconds or HH:MM:SS[.ms] (e.g. 90, 1:30, 00:01:30.5)."
                                 ) from None
        seconds = int(match[1] or 0) * 3600 + int(match[2]) * 60 + float(match[3])
    if not seconds >= 0 or seconds == float("inf"):
        raise UnweatherError(f"{what} must be a number of seconds, 0 or more, not {text!r}.")
    return seconds


@dataclass(frozen=True)
class WarmUp:
    """Frames at the start of an input that only prepare a video network's state (a chunk's lead-in).

    An archive chunk restored on its own would start its video network with no history, and the
    boundary would show; its input instead starts earlier, at a keyframe, and these frames come first.

    Attributes:
        skip: frames decoded and dropped: they only lead the decoder from the keyframe to the rest.
        frames: frames after those that are restored, to warm the state, and not written.
    """

    skip: int = 0
    frames: int = 0

    @property
    def total(self) -> int:
        """Frames of the input that are not written."""
        return self.skip + self.frames


@dataclass
class RunConfig:
    """Settings of one `unweather.stream.run`.

    Attributes:
        model: registry name, shipped weights ("fast", "quality", "video", "video_quality"), checkpoint, .onnx or engine
            file; None: the package's default for the input and device (`unweather.engine.default_model`:
            "video" for videos and streams when it is shipped, else "fast" on the CPU, "quality" on CUDA).
        backend, precision, device: passed to `unweather.engine.open` (None/"auto": its choice).
        trust_checkpoint: allow unpickling a checkpoint that is not plain tensors (runs code from it).
        allow_slow_precision: run bf16 on a CPU that only emulates it (many times slower than fp32;
            refused otherwise, see `unweather.cpu.bf16_refusal`).
        batch: frames per inference call in offline mode (live mode always uses 1).
        mode: "live" (bounded latency: drop the oldest waiting frame when inference falls behind),
            "offline" (never drop, batch) or "auto" (live for network URLs and capture devices).
        max_frames: stop after this many input frames.
        side_by_side: write input | output side by side.
        temporal: still cameras: blend each restored frame with the previous output where they nearly
            agree, with this weight in [0, 1) (0: off); `unweather.stream.temporal.TemporalFilter`. For
            frame models only: a video model carries its own history, and is refused with it.
        stats_path: also write the run's statistics as JSON there.
        codec: "auto" (NVENC when the engine is on a GPU and the encoder opens, else libx264),
            "libx264", "h264_nvenc", "libx265", ...
        crf: constant quality (libx264/libx265 CRF, NVENC CQ); lower is better and larger.
        preset: encoder preset; None picks "veryfast" live and "fast" offline for libx264.
        image_rate: frame rate given to a video made from images.
        queue_size: capacity of each queue between stages (offline); live queues hold 1-2 frames.
        stall_timeout: a stage that gets no work for this long (seconds) stops the run with an error.
        max_pixels: larger frames are refused (width x height).
        progress: show a progress bar on stderr when it is a terminal.
        open_timeout, read_timeout, stall_timeout_network, give_up_after: network source timeouts
            (seconds; see `unweather.stream.network.NetworkOptions`).
        rtsp_transport: "tcp" (default) or "udp" for RTSP sources and outputs.
        device_size, device_rate, device_format: capture-device settings (e.g. "1280x720", 30, "mjpeg").
        tile, tile_overlap: restore frames larger than tile x tile in overlapping tiles (None: whole frames).
        start: video files: seek to this many seconds from the start; the output starts there at 0
            (text such as "1:30" or "00:01:30.5" is parsed, see `parse_time`).
        duration: restore this many seconds (files: of the file from `start`, audio cut to match;
            live sources and images: stop once the frames read span this long).
        strength: blend of the restoration with the input after inference, in [0, 1]: 0 returns the
            input, 1 (default) the full restoration.
        mask: a greyscale or alpha PNG the size of the frame (resized with a warning otherwise):
            white leaves a pixel exactly as it came in, black restores it fully, grey blends.
    """

    model: str | None = None
    backend: str = "auto"
    precision: str | None = None
    device: str | None = None
    trust_checkpoint: bool = False
    allow_slow_precision: bool = False
    batch: int = 1
    mode: str = "auto"
    max_frames: int | None = None
    side_by_side: bool = False
    temporal: float = 0.0
    stats_path: str | None = None
    codec: str = "auto"
    crf: int = 18
    preset: str | None = None
    image_rate: float = 25.0
    queue_size: int = 8
    stall_timeout: float = 600.0
    max_pixels: int = 8192 * 8192
    progress: bool = True
    open_timeout: float = 10.0
    read_timeout: float = 10.0
    stall_timeout_network: float = 20.0
    give_up_after: float = 300.0
    rtsp_transport: str = "tcp"
    device_size: str | None = None
    device_rate: float | None = None
    device_format: str | None = None
    tile: int | None = None
    tile_overlap: int = 32
    start: float | None = None
    duration: float | None = None
    strength: float = 1.0
    mask: str | None = None

    def __post_init__(self) -> None:
        # Times may be given as text, as on the command line and in sources files ("1:30", "00:01:30.5").
        if isinstance(self.start, str):
            self.start = parse_time(self.start, "start")
        if isinstance(self.duration, str):
            self.duration = parse_time(self.duration, "duration")

    def validate(self) -> None:
        """Raise UnweatherError for settings that cannot work."""
        if self.mode not in MODES:
            raise UnweatherError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}.")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise UnweatherError(f"batch must be a positive integer, not {self.batch!r}.")
        if self.max_frames is not None and self.max_frames < 1:
            raise UnweatherError(f"max_frames must be at least 1, not {self.max_frames}.")
        from unweather.stream.temporal import check_strength

        check_strength(self.temporal)
        if not 0 <= self.crf <= 51:
            raise UnweatherError(f"crf must be between 0 and 51, not {self.crf}.")
        if self.queue_size < 1:
            raise UnweatherError(f"queue_size must be at least 1, not {self.queue_size}.")
        if not self.stall_timeout > 0:
            raise UnweatherError(f"stall_timeout must be positive, not {self.stall_timeout}.")
        if not self.image_rate > 0:
            raise UnweatherError(f"image_rate must be positive, not {self.image_rate}.")
        if self.start is not None and not 0 <= self.start < float("inf"):
            raise UnweatherError(f"start must be at least 0 seconds, not {self.start}.")
        if self.duration is not None and not 0 < self.duration < float("inf"):
            raise UnweatherError(f"duration must be more than 0 seconds, not {self.duration}.")
        if not 0.0 <= self.strength <= 1.0:
            raise UnweatherError(f"strength must be between 0 and 1, not {self.strength}.")

    def network_options(self):
        """The `NetworkOptions` these settings give."""
        from unweather.stream.network import NetworkOptions

        return NetworkOptions(open_timeout=self.open_timeout, read_timeout=self.read_timeout,
                              stall_timeout=self.stall_timeout_network, give_up_after=self.give_up_after,
                              rtsp_transport=self.rtsp_transport)
