"""Building TensorRT engines from our ONNX graphs, and the engine cache.

The network comes from TensorRT's ONNX parser and is built strongly typed: precision is what the
graph says (an FP16 export computes in FP16), never a builder flag. TensorRT 11 removed the
weak-typing flags (BuilderFlag.FP16 and friends) and always builds strongly typed, keeping the
STRONGLY_TYPED creation flag only for compatibility; TensorRT 10 needs the flag. `api_for`
decides what to call from the version, compared with `packaging.version`.

Engines are cached under a key made of the ONNX file's SHA-256, the optimisation profile, the
workspace limit, the TensorRT version and the GPU's name and compute capability. Each engine is
written to a temporary file and renamed, with a sidecar JSON describing it; an engine whose
sidecar is missing or disagrees (other TensorRT, other GPU, other graph, truncated or changed
file) is rebuilt. A timing cache beside the engines makes rebuilds fast.

Everything here except `build_engine` and the functions that read the installed TensorRT or GPU
is plain Python, testable without TensorRT.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from packaging.version import InvalidVersion, Version

from unweather.errors import UnweatherError
from unweather.fileio import write_bytes_atomic

logger = logging.getLogger(__name__)

Shape = tuple[int, int, int, int]
T = TypeVar("T")
MIN_TENSORRT = Version("10.0")
FORMAT = "unweather-tensorrt-engine/1"
DEFAULT_MIN = (1, 3, 64, 64)
DEFAULT_OPT = (1, 3, 720, 1280)
DEFAULT_MAX = (4, 3, 1088, 1920)


class EngineLoadError(UnweatherError):
    """An engine file that this TensorRT cannot deserialise (other version, other GPU, damaged file)."""


@dataclass(frozen=True)
class Profile:
    """An optimisation profile for the frames input: smallest, typical and largest NxCxHxW.

    For graphs that pad frames themselves (unweather exports since graph format 2) these are frame
    sizes, any height and width; for older graphs, the padded sizes the network runs at. A video
    network's state inputs get the same sizes (`input_profiles`).
    """

    min: Shape = DEFAULT_MIN
    opt: Shape = DEFAULT_OPT
    max: Shape = DEFAULT_MAX

    def to_dict(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        return cls(*(tuple(int(d) for d in data[k]) for k in ("min", "opt", "max")))

    def describe(self) -> str:
        return f"min {format_shape(self.min)}, opt {format_shape(self.opt)}, max {format_shape(self.max)}"


def format_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def parse_shape(text: str) -> Shape:
    """Parse "NxCxHxW" (e.g. "1x3x720x1280")."""
    parts = re.split(r"[x,]", text.strip().lower())
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise UnweatherError(f"bad shape {text!r}: expected NxCxHxW with positive sizes, e.g. 1x3x720x1280")
    return dims  # type: ignore[return-value]


def check_profile(profile: Profile, multiple: int = 1, min_size: int = 1, pads_in_graph: bool = False) -> None:
    """Raise UnweatherError unless min <= opt <= max, C == 3, and the heights and widths suit the graph.

    A graph that pads frames itself (`pads_in_graph`) takes frame sizes: any height and width from
    the smallest its single reflection covers (`min_single_reflect_side`). Other graphs take padded
    sizes: multiples of `multiple`, at least `min_size`.
    """
    from unweather.models.padding import min_single_reflect_side

    least = min_single_reflect_side(multiple, min_size) if pads_in_graph else 1
    for name, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
        if shape[1] != 3:
            raise UnweatherError(f"--{name}-shape {format_shape(shape)}: frames have 3 channels")
        for dim, label in ((shape[2], "height"), (shape[3], "width")):
            if pads_in_graph:
                if dim < least:
                    raise UnweatherError(
                        f"--{name}-shape {format_shape(shape)}: the {label} must be at least {least} for this "
                        f"graph (it reflect-pads frames to a multiple of {multiple}; smaller frames are padded "
                        "before the engine)")
            elif dim % multiple or dim < min_size:
                raise UnweatherError(
                    f"--{name}-shape {format_shape(shape)}: the {label} must be a multiple of {multiple}"
                    + (f" and at least {min_size}" if min_size > 1 else "")
                    + " for this network (frames are padded to it before the engine)")
    for i, label in enumerate(("batch", "channels", "height", "width")):
        if not profile.min[i] <= profile.opt[i] <= profile.max[i]:
            raise UnweatherError(f"profile {profile.describe()}: the {label} must satisfy min <= opt <= max")


def input_profiles(inputs: list[str], profile: Profile, channels: dict[str, int] | None = None
                   ) -> dict[str, tuple[Shape, Shape, Shape]]:
    """The (min, opt, max) shape of every input of a graph, from the frames' `profile`.

    A frame network has one input; a video network three (`unweather.engine.export.VIDEO_INPUTS`): the
    frame, and its state at the frame's size with the channels the graph declares (`channels`, by
    name; by default those of our video students: 6 for the state, 1 for the weight).

    Raises:
        UnweatherError: inputs that are neither.
    """
    from unweather.engine.export import VIDEO_INPUTS

    if len(inputs) == 1:
        return {inputs[0]: (profile.min, profile.opt, profile.max)}
    if sorted(inputs) != sorted(VIDEO_INPUTS):
        raise UnweatherError(f"the graph has inputs {', '.join(inputs)}; an engine takes one (frames) or a video "
                             f"network's three ({', '.join(VIDEO_INPUTS)})")
    channels = {**dict(zip(VIDEO_INPUTS, (3, 6, 1))), **{k: v for k, v in (channels or {}).items() if v > 0}}
    return {name: tuple((n, channels[name], h, w) for n, _, h, w in (profile.min, profile.opt, profile.max))
            for name in inputs}


def check_graph_profile(onnx_path: str | os.PathLike[str], profile: Profile) -> dict[str, Any]:
    """Check `profile` against what the ONNX graph's metadata says it takes; return those facts.

    Returns:
        pad_multiple, min_size, pads_in_graph (the graph pads, crops and clamps frames itself, so
        the profile is in frame sizes), clamped and stateful (a video network), for the engine's sidecar.
    """
    from unweather.engine.export import read_onnx_metadata

    meta = read_onnx_metadata(onnx_path)
    facts = {
        "pad_multiple": int(meta.get("unweather.pad_multiple", 1)),
        "min_size": int(meta.get("unweather.min_size", 1)),
        "pads_in_graph": meta.get("unweather.pads_in_graph") == "reflect",
        "clamped": bool(meta.get("unweather.clamped")),
        "stateful": meta.get("unweather.stateful") == "true",
    }
    check_profile(profile, facts["pad_multiple"], facts["min_size"], facts["pads_in_graph"])
    return facts


def shape_problem(shape: tuple[int, ...], low: tuple[int, ...], high: tuple[int, ...]) -> str | None:
    """Why `shape` is outside the profile range [`low`, `high`], or None when it fits."""
    if len(shape) != len(low):
        return f"input of rank {len(shape)}, the engine takes rank {len(low)}"
    for i, label in enumerate(("batch", "channels", "height", "width")[: len(shape)]):
        if not low[i] <= shape[i] <= high[i]:
            return f"{label} {shape[i]} is outside {low[i]}..{high[i]}"
    return None


def profile_error(shape: tuple[int, ...], low: tuple[int, ...], high: tuple[int, ...],
                  padded: bool = True) -> UnweatherError | None:
    """The error for an input outside an engine's profile (None when it fits).

    `padded`: the engine takes padded frames (an older graph); else the shape is the frames' own.
    """
    problem = shape_problem(shape, low, high)
    if problem is None:
        return None
    what = f"input {format_shape(shape)} (after padding)" if padded else f"frames {format_shape(shape)}"
    return UnweatherError(
        f"{what} does not fit the TensorRT engine's profile "
        f"(min {format_shape(low)}, max {format_shape(high)}): {problem}; rebuild the engine with a larger "
        "--max-shape (or smaller --min-shape), or use tiles (--tile) for large frames")


@dataclass(frozen=True)
class TensorRTApi:
    """What the installed TensorRT needs from us, decided by its version.

    Attributes:
        version: the TensorRT version.
        strongly_typed_flag: pass NetworkDefinitionCreationFlag.STRONGLY_TYPED to create_network
            (required for strong typing on 10.x; on 11+ strong typing is unconditional and the
            flag is ignored, so it is left out).
        weak_typing_flags: whether BuilderFlag.FP16/BF16/INT8 exist (10.x; removed in 11). We
            never set them; the graph carries precision.
    """

    version: Version
    strongly_typed_flag: bool
    weak_typing_flags: bool


def api_for(version: str) -> TensorRTApi:
    """Decide how to drive TensorRT `version`.

    Raises:
        UnweatherError: an unparsable version or one older than 10.0.
    """
    try:
        parsed = Version(version)
    except InvalidVersion as exc:
        raise UnweatherError(f"cannot understand the TensorRT version {version!r}") from exc
    if parsed < MIN_TENSORRT:
        raise UnweatherError(f"TensorRT {version} is too old; unweather needs TensorRT {MIN_TENSORRT} or newer "
                             "(pip install 'unweather[tensorrt]')")
    major = parsed.release[0]
    return TensorRTApi(version=parsed, strongly_typed_flag=major == 10, weak_typing_flags=major == 10)


def cache_key(onnx_sha256: str, profile: Profile, tensorrt_version: str, gpu_name: str,
              compute_capability: str, workspace_mb: int | None = None) -> str:
    """The engine cache key: SHA-256 over everything that makes an engine valid for a machine."""
    fields = {
        "format": FORMAT,
        "onnx_sha256": onnx_sha256,
        "profile": profile.to_dict(),
        "tensorrt": tensorrt_version,
        "gpu": gpu_name,
        "compute_capability": compute_capability,
        "workspace_mb": workspace_mb,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def sidecar_path(plan: str | os.PathLike[str]) -> Path:
    """The JSON metadata file beside an engine file."""
    return Path(f"{os.fspath(plan)}.json")


def read_sidecar(plan: str | os.PathLike[str]) -> dict[str, Any] | None:
    """An engine's sidecar metadata, or None when it is missing or unreadable."""
    path = sidecar_path(plan)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def rebuild_reason(plan: str | os.PathLike[str], expected: dict[str, Any], check_hash: bool = True) -> str | None:
    """Why the engine at `plan` must be (re)built for `expected` metadata, or None when it can be used.

    `expected` holds the fields of a fresh build's sidecar that identify it: key, tensorrt, gpu,
    compute_capability, onnx_sha256, profile. The file's size and (with `check_hash`) SHA-256 are
    compared with its sidecar, which catches truncated and overwritten engines.
    """
    plan = Path(plan)
    if not plan.is_file():
        return "no engine built yet"
    meta = read_sidecar(plan)
    if meta is None:
        return "its metadata is missing or unreadable"
    for field, label in (("tensorrt", "TensorRT"), ("gpu", "GPU"), ("compute_capability", "compute capability"),
                         ("onnx_sha256", "ONNX graph"), ("profile", "profile")):
        if field in expected and meta.get(field) != expected[field]:
            return f"it was built for another {label} ({meta.get(field)} instead of {expected[field]})"
    if "key" in expected and meta.get("key") != expected["key"]:
        return "its cache key differs"
    size = plan.stat().st_size
    if meta.get("plan_size") != size:
        return f"the file is {size} bytes, its metadata says {meta.get('plan_size')} (truncated or replaced)"
    if check_hash and meta.get("plan_sha256") != _sha256(plan):
        return "the file's contents changed since it was built"
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename (mode 0o666 less the
    umask, as for any new file)."""
    write_bytes_atomic(path, data)


def write_engine(plan_path: str | os.PathLike[str], data: bytes, meta: dict[str, Any]) -> dict[str, Any]:
    """Write an engine and then its sidecar (size and SHA-256 of `data` added to `meta`); return the sidecar.

    Both go through a temporary file and a rename; the sidecar comes second, so a crash in between
    leaves an engine without metadata, which `rebuild_reason` rejects.
    """
    plan_path = Path(plan_path)
    write_atomic(plan_path, data)
    meta = {**meta, "format": FORMAT, "plan_size": len(data), "plan_sha256": hashlib.sha256(data).hexdigest()}
    write_atomic(sidecar_path(plan_path), (json.dumps(meta, indent=2) + "\n").encode())
    return meta


def engine_path(cache: str | os.PathLike[str], onnx_path: str | os.PathLike[str], key: str) -> Path:
    """Where the cache keeps the engine of `onnx_path` under `key`."""
    return Path(cache) / "engines" / f"{Path(onnx_path).stem}-{key[:16]}.plan"


def timing_cache_path(cache: str | os.PathLike[str], expected: dict[str, Any]) -> Path:
    """The cache's timing cache for one TensorRT version and GPU (a timing cache is valid for those only)."""
    tag = re.sub(r"[^A-Za-z0-9.]+", "-", f"{expected['tensorrt']}-{expected['gpu']}-{expected['compute_capability']}")
    return Path(cache) / "engines" / f"timing-{tag}.cache"


def ensure_engine(onnx_path: str | os.PathLike[str], cache: str | os.PathLike[str], expected: dict[str, Any],
                  build: Callable[[Path, Path], object], force: bool = False) -> Path:
    """The cached engine for `expected` (see `expected_metadata`), calling `build(plan, timing_cache)` when
    there is none or it cannot be used (`rebuild_reason`), or when `force`."""
    plan = engine_path(cache, onnx_path, expected["key"])
    reason = "a rebuild was asked for" if force else rebuild_reason(plan, expected)
    if reason is None:
        logger.info("using the cached TensorRT engine %s", plan)
        return plan
    logger.info("building the TensorRT engine %s: %s", plan.name, reason)
    build(plan, timing_cache_path(cache, expected))
    return plan


def load_or_rebuild(load: Callable[[], T], rebuild: Callable[[str], object]) -> T:
    """`load()`; when it raises `EngineLoadError`, `rebuild(reason)` once and load again.

    An engine that does not deserialise (built by another TensorRT, for another GPU, or damaged
    after its metadata was written) is rebuilt, never a crash; a second failure is raised.
    """
    try:
        return load()
    except EngineLoadError as exc:
        logger.warning("%s; rebuilding it", exc)
        rebuild(str(exc))
    return load()


# ---- parts that need TensorRT and a GPU --------------------------------------------------------------


def import_tensorrt() -> Any:
    """Import TensorRT, or raise UnweatherError saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise UnweatherError("TensorRT is not installed (pip install 'unweather[tensorrt]'; it needs an "
                             "NVIDIA GPU)") from exc
    return trt


def gpu_identity(device: Any) -> tuple[str, str]:
    """The name and compute capability ("9.0") of a CUDA device."""
    import torch

    if not torch.cuda.is_available():
        raise UnweatherError("TensorRT needs a CUDA GPU, and torch sees none")
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def make_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to Python logging (errors as errors, info as debug)."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                logger.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.WARNING:
                logger.warning("TensorRT: %s", msg)
            else:
                logger.debug("TensorRT: %s", msg)

    return _Logger()


def expected_metadata(onnx_path: Path, profile: Profile, device: Any, workspace_mb: int | None) -> dict[str, Any]:
    """The identifying sidecar fields an engine built now, here, for `onnx_path` would have."""
    trt = import_tensorrt()
    gpu, capability = gpu_identity(device)
    onnx_sha = _sha256(onnx_path)
    version = str(trt.__version__)
    return {
        "format": FORMAT,
        "key": cache_key(onnx_sha, profile, version, gpu, capability, workspace_mb),
        "tensorrt": version,
        "gpu": gpu,
        "compute_capability": capability,
        "onnx_sha256": onnx_sha,
        "profile": profile.to_dict(),
        "workspace_mb": workspace_mb,
    }


def build_engine(onnx_path: str | os.PathLike[str], plan_path: str | os.PathLike[str], profile: Profile | None = None,
                 workspace_mb: int | None = None, device: Any = "cuda",
                 timing_cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Build a strongly typed engine from `onnx_path` into `plan_path` (+ sidecar JSON); return the metadata.

    Raises:
        UnweatherError: TensorRT or a GPU is missing, the parser fails (every parser error is
            logged first), the profile does not suit the graph, or the build fails.
    """
    import torch

    from unweather.engine.export import read_onnx_metadata

    trt = import_tensorrt()
    api = api_for(str(trt.__version__))
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise UnweatherError(f"ONNX file not found: {onnx_path}")
    profile = profile or Profile()
    onnx_meta = read_onnx_metadata(onnx_path)
    graph = check_graph_profile(onnx_path, profile)
    meta = expected_metadata(onnx_path, profile, device, workspace_mb)
    timing_cache = Path(timing_cache) if timing_cache else plan_path.parent / "timing.cache"

    trt_logger = make_logger(trt)
    start = time.perf_counter()
    with torch.cuda.device(torch.device(device)):
        builder = trt.Builder(trt_logger)
        flags = 0
        if api.strongly_typed_flag:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, trt_logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
            for error in errors:
                logger.error("TensorRT ONNX parser: %s", error)
            raise UnweatherError(f"TensorRT's ONNX parser rejected {onnx_path} ({len(errors)} error(s); "
                                 f"first: {errors[0] if errors else 'no detail'})")
        tensors = [network.get_input(i) for i in range(network.num_inputs)]
        # The state's channel count is static in our graphs (-1 where a graph leaves it dynamic).
        shapes = input_profiles([t.name for t in tensors], profile,
                                {t.name: int(t.shape[1]) for t in tensors if len(t.shape) == 4})

        config = builder.create_builder_config()
        if workspace_mb is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        optimisation = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            optimisation.set_shape(name, low, opt, high)
        config.add_optimization_profile(optimisation)
        cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(cache_bytes)
        if not config.set_timing_cache(cache, False):
            logger.info("the timing cache %s does not match this TensorRT or GPU; starting a new one", timing_cache)
            config.set_timing_cache(config.create_timing_cache(b""), False)

        logger.info("building a TensorRT %s engine from %s (%s); this takes a while the first time",
                    trt.__version__, onnx_path.name, profile.describe())
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise UnweatherError(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT errors above)")
        data = bytes(serialized)
        write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))

    meta.update({
        "onnx": str(onnx_path.resolve()),
        "arch": onnx_meta.get("unweather.arch"),
        "precision": onnx_meta.get("unweather.precision", "fp32"),
        # pad_multiple, min_size, and whether the engine pads, crops and clamps itself (graph format 2;
        # then the profile is in frame sizes).
        **graph,
        "built": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - start, 1),
    })
    meta = write_engine(plan_path, data, meta)
    logger.info("built %s in %.0f s", plan_path, meta["build_seconds"])
    return meta


def _parser_error(error: Any) -> str:
    parts = [str(error.desc()) if hasattr(error, "desc") else str(error)]
    node = error.node() if hasattr(error, "node") else -1
    if node is not None and node >= 0:
        name = error.node_name() if hasattr(error, "node_name") else ""
        op = error.node_operator() if hasattr(error, "node_operator") else ""
        parts.append(f"(node {node} {name} {op})".replace("  ", " "))
    return " ".join(parts)


def cached_engine(onnx_path: str | os.PathLike[str], cache: str | os.PathLike[str], profile: Profile | None = None,
                  workspace_mb: int | None = None, device: Any = "cuda", force: bool = False) -> Path:
    """The engine for `onnx_path` from the cache folder, built (or rebuilt) when needed."""
    onnx_path = Path(onnx_path)
    profile = profile or Profile()
    expected = expected_metadata(onnx_path, profile, device, workspace_mb)

    def build(plan: Path, timing_cache: Path) -> None:
        build_engine(onnx_path, plan, profile, workspace_mb, device, timing_cache=timing_cache)

    return ensure_engine(onnx_path, cache, expected, build, force=force)
