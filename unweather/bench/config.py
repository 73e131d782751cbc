"""What a benchmark run measures: models, backends, precisions, resolutions, batches and repetitions."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from unweather.errors import UnweatherError

PRECISIONS = ("fp32", "fp16", "bf16")
BACKENDS = ("torch", "onnxruntime", "tensorrt")
# The reference every other combination is compared with.
BASELINE_BACKEND = "torch"
BASELINE_PRECISION = "fp32"
# Seconds one combination may measure for (from its engine being open) before it stops as timed out.
DEFAULT_TIME_LIMIT_S = 30.0

_RESOLUTION = re.compile(r"^(\d+)[xX](\d+)$")


@dataclass(frozen=True)
class Resolution:
    """A frame size in pixels."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def pixels(self) -> int:
        return self.width * self.height


def parse_resolution(text: str) -> Resolution:
    """Parse "WIDTHxHEIGHT"; sizes must be even (4:2:0 video) and at least 16 pixels."""
    match = _RESOLUTION.match(text.strip())
    if not match:
        raise UnweatherError(f"resolution {text!r} is not WIDTHxHEIGHT (for example 1280x720)")
    res = Resolution(int(match[1]), int(match[2]))
    if res.width < 16 or res.height < 16 or res.width % 2 or res.height % 2:
        raise UnweatherError(f"resolution {text!r} must be even and at least 16x16")
    return res


@dataclass(frozen=True)
class BackendSpec:
    """A backend and the options passed to `unweather.engine.open`, e.g. "torch:compile,cuda_graph".

    Attributes:
        name: the backend ("torch", "onnxruntime", "tensorrt").
        options: keyword options for the engine, in the order given.
    """

    name: str
    options: tuple[tuple[str, bool | int | float | str], ...] = ()

    @property
    def label(self) -> str:
        """The spec as the user writes it (also the name in tables and plots)."""
        if not self.options:
            return self.name
        opts = ",".join(k if v is True else f"{k}={v}" for k, v in self.options)
        return f"{self.name}:{opts}"

    @property
    def is_eager(self) -> bool:
        return not self.options


def _option_value(text: str) -> bool | int | float | str:
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_backend(text: str) -> BackendSpec:
    """Parse "NAME[:OPTION[=VALUE],...]", e.g. "torch:cuda_graph" or "onnxruntime:threads=2"."""
    name, _, rest = text.strip().partition(":")
    if name not in BACKENDS:
        raise UnweatherError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    options: list[tuple[str, bool | int | float | str]] = []
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not key.isidentifier():
            raise UnweatherError(f"backend option {item!r} in {text!r} is not NAME or NAME=VALUE")
        options.append((key, _option_value(value) if sep else True))
    return BackendSpec(name, tuple(options))


@dataclass(frozen=True)
class ModelSpec:
    """A model for `unweather.engine.open`, optionally limited to some resolutions ("msbdn@640x360").

    Attributes:
        model: a registry name or a checkpoint / ONNX / engine path.
        resolutions: the only resolutions to run it at; empty means all of the run's.
    """

    model: str
    resolutions: tuple[Resolution, ...] = ()

    @property
    def label(self) -> str:
        if not self.resolutions:
            return self.model
        return f"{self.model}@{','.join(map(str, self.resolutions))}"


def parse_model(text: str) -> ModelSpec:
    """Parse "MODEL[@WxH[,WxH...]]"."""
    text = text.strip()
    model, _, rest = text.rpartition("@")
    sizes = [r for r in rest.split(",") if r]
    # A path may contain "@": only a list of sizes after the last one is a restriction.
    if not model or not sizes or not all(_RESOLUTION.match(r) for r in sizes):
        if not text:
            raise UnweatherError("a model name is empty")
        return ModelSpec(text)
    return ModelSpec(model, tuple(parse_resolution(r) for r in sizes))


EXCLUDE_KEYS = ("model", "backend", "precision", "resolution", "batch")


@dataclass(frozen=True)
class Exclusion:
    """Combinations not to measure, e.g. "backend=torch,precision=fp16" (values may use * and ?)."""

    terms: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.terms)

    def matches(self, values: dict[str, str]) -> bool:
        """True when every term matches `values` (keys as in `EXCLUDE_KEYS`)."""
        return all(fnmatch.fnmatchcase(values[k], v) for k, v in self.terms)


def parse_exclusion(text: str) -> Exclusion:
    """Parse "KEY=PATTERN[,KEY=PATTERN...]" with KEY one of `EXCLUDE_KEYS`."""
    terms = []
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in EXCLUDE_KEYS or not value:
            raise UnweatherError(f"exclusion {text!r} is not KEY=VALUE[,KEY=VALUE] with KEY one of "
                                 f"{', '.join(EXCLUDE_KEYS)}")
        terms.append((key, value))
    if not terms:
        raise UnweatherError("an exclusion is empty")
    return Exclusion(tuple(terms))


@dataclass
class BenchConfig:
    """Everything one `unweather bench` run measures.

    Attributes:
        input: a video file or stream to take frames from; None makes a synthetic clip.
        models: the models, each optionally limited to some resolutions.
        backends: the backends with their engine options.
        precisions: the precisions to try on every backend.
        resolutions: frame sizes; an input's frames are resized to each (only for the benchmark).
        batches: batch sizes for the engine and the pipeline.
        frames: frames in the benchmark clip; one repetition runs all of them.
        repeats: timed repetitions (the spread is reported over them).
        warmup: untimed engine calls before timing.
        device: "cpu", "cuda", "cuda:N" or "auto" (CUDA when available).
        pipeline: also time the whole decode -> infer -> encode pipeline through `unweather.stream.run`.
        exclude: combinations not to measure (reported as skipped).
        max_call_s: skip a combination whose first call takes longer than this (None: never).
        sample_interval_s: how often memory, GPU utilisation and power are sampled.
        live_rate: also run the pipeline in live mode on the clip paced at this many frames per
            second, as a camera delivers them: end-to-end latency percentiles and dropped frames
            (None: not measured).
        time_limit_s: seconds each combination may measure for, from its engine being open (engine,
            pipeline and live together); one that runs out stops and is reported as timed out with
            what it measured so far (None: no limit).
        allow_slow_precision: also measure precisions this CPU only emulates or has few kernels for
            (bf16 without native bf16, torch fp16 on the CPU); skipped with the reason otherwise.
    """

    input: str | None = None
    models: list[ModelSpec] = field(default_factory=lambda: [ModelSpec("identity")])
    backends: list[BackendSpec] = field(default_factory=lambda: [BackendSpec("torch")])
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    resolutions: list[Resolution] = field(default_factory=lambda: [Resolution(640, 360)])
    batches: list[int] = field(default_factory=lambda: [1])
    frames: int = 32
    repeats: int = 3
    warmup: int = 3
    device: str = "auto"
    pipeline: bool = True
    exclude: list[Exclusion] = field(default_factory=list)
    max_call_s: float | None = None
    sample_interval_s: float = 0.05
    live_rate: float | None = None
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S
    allow_slow_precision: bool = False

    def validate(self) -> None:
        """Raise `UnweatherError` for a setting that cannot be measured."""
        for p in self.precisions:
            if p not in PRECISIONS:
                raise UnweatherError(f"unknown precision {p!r}; known precisions: {', '.join(PRECISIONS)}")
        if not self.models or not self.backends or not self.precisions or not self.resolutions:
            raise UnweatherError("a benchmark needs at least one model, backend, precision and resolution")
        if any(b < 1 for b in self.batches) or not self.batches:
            raise UnweatherError("batch sizes must be at least 1")
        if self.frames < 1 or self.repeats < 1 or self.warmup < 0:
            raise UnweatherError("--frames and --repeats must be at least 1 and --warmup at least 0")
        if self.max_call_s is not None and self.max_call_s <= 0:
            raise UnweatherError("--max-call-seconds must be positive")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise UnweatherError(f"--time-limit must be positive (0 on the command line: no limit), not "
                                 f"{self.time_limit_s:g}")
        if self.live_rate is not None and not 0 < self.live_rate <= 1000:
            raise UnweatherError(f"--live takes a frame rate above 0 (and at most 1000), not {self.live_rate:g}")
        for spec in self.models:
            extra = [r for r in spec.resolutions if r not in self.resolutions]
            if extra:
                raise UnweatherError(f"model {spec.label!r} names resolutions that are not in --resolutions: "
                                     f"{', '.join(map(str, extra))}")

    def to_dict(self) -> dict[str, object]:
        """The configuration as plain JSON types."""
        from unweather.redact import redact

        return {
            "input": redact(self.input) if self.input else None,
            "models": [m.label for m in self.models],
            "backends": [b.label for b in self.backends],
            "precisions": list(self.precisions),
            "resolutions": [str(r) for r in self.resolutions],
            "batches": list(self.batches),
            "frames": self.frames,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "device": self.device,
            "pipeline": self.pipeline,
            "exclude": [e.label for e in self.exclude],
            "max_call_s": self.max_call_s,
            "live_rate": self.live_rate,
            "time_limit_s": self.time_limit_s,
            "allow_slow_precision": self.allow_slow_precision,
        }
