"""What a model argument names: a registry model, shipped weights, a checkpoint, an ONNX graph or an engine.

Also where shipped weights live, the default model, and the cache folder for exported graphs and
built engines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from unweather.errors import UnweatherError

logger = logging.getLogger(__name__)

# Shipped weight names and the architecture each holds. "video" is stored in float16 and loads as float32.
SHIPPED = {"fast": "student_small", "quality": "student_base", "video": "video_small", "video_quality": "video_base"}
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".plan", ".engine", ".trt")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model argument.

    Attributes:
        kind: "registry", "weights" (shipped), "checkpoint", "onnx" or "tensorrt".
        name: the argument as given (a name or a path).
        path: the file, for every kind but "registry".
    """

    kind: str
    name: str
    path: Path | None = None

    @property
    def is_network(self) -> bool:
        """True when torch can build the network (registry names, shipped weights, checkpoints)."""
        return self.kind in ("registry", "weights", "checkpoint")


def weights_dir() -> Path:
    """The folder of shipped weights inside the package."""
    return Path(__file__).resolve().parent.parent / "weights"


def shipped_weights(name: str) -> Path:
    """The file of shipped weights `name` (a key of `SHIPPED`), whether or not it exists."""
    return weights_dir() / f"{name}.safetensors"


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where exported graphs and built engines are kept: `override`, $UNWEATHER_CACHE, or ~/.cache/unweather."""
    if override is not None:
        return Path(override)
    if os.environ.get("UNWEATHER_CACHE"):
        return Path(os.environ["UNWEATHER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unweather"


def resolve(model: str | os.PathLike[str]) -> ModelSource:
    """Tell what `model` names; files must exist.

    Raises:
        UnweatherError: a missing file, an unknown suffix, shipped weights that are not installed,
            or a name that is none of these (the message lists what is accepted).
    """
    from unweather.models import names

    text = os.fspath(model)
    suffix = Path(text).suffix.lower()
    kinds = {**dict.fromkeys(CHECKPOINT_SUFFIXES, "checkpoint"), **dict.fromkeys(ONNX_SUFFIXES, "onnx"),
             **dict.fromkeys(ENGINE_SUFFIXES, "tensorrt")}
    if suffix in kinds:
        path = Path(text)
        what = {"checkpoint": "checkpoint", "onnx": "ONNX file", "tensorrt": "TensorRT engine file"}[kinds[suffix]]
        if not path.is_file():
            raise UnweatherError(f"{what} not found: {path}")
        return ModelSource(kinds[suffix], text, path)
    if text in names():
        return ModelSource("registry", text)
    if text in SHIPPED:
        path = shipped_weights(text)
        if not path.is_file():
            raise UnweatherError(
                f"the shipped {text!r} weights are not in this installation (expected {path}); "
                f"use a checkpoint file or a registry model ({', '.join(names())})")
        return ModelSource("weights", text, path)
    if Path(text).is_file():
        raise UnweatherError(
            f"cannot tell what {text} holds from its suffix; use {', '.join(CHECKPOINT_SUFFIXES)} for checkpoints, "
            f".onnx for ONNX graphs, {', '.join(ENGINE_SUFFIXES)} for TensorRT engines")
    raise UnweatherError(
        f"unknown model {text!r}: not a registry model ({', '.join(names())}), not shipped weights "
        f"({', '.join(SHIPPED)}) and not an existing file")


def load_network(source: ModelSource, trusted: bool = False) -> nn.Module:
    """Build the torch network of a registry name, shipped weights or a checkpoint (eval, float32, CPU)."""
    from unweather.models import build, load_checkpoint

    if source.kind == "registry":
        # Untrained weights, seeded: every open of a name gets the same network, hence one cached export.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return build(source.name).eval()
    if source.kind in ("weights", "checkpoint"):
        assert source.path is not None
        return load_checkpoint(source.path, trusted=trusted)
    raise UnweatherError(f"{source.name} is a {source.kind} file, not a torch network")


def default_model(device: str | torch.device | None = None, video: bool = False, still: bool = False) -> str:
    """The model to use when none is named.

    Frames (videos when `video` is False): "quality" on CUDA, "fast" on the CPU. Still images (`still`):
    "quality" on every device, as nothing has to keep up with a frame rate and it does far less harm
    where there is no weather (a night city's lit windows: 34.6 dB against its input, 22 with "fast").
    When the preferred weights are not shipped, the other shipped frame weights are used, then
    "identity"; either fallback is logged as a warning, never silent. Videos and streams (`video`):
    "video_quality" (quality's frame network) on CUDA and "video" (fast's, real time on a CPU) elsewhere,
    when shipped, else the other video student, else the frame model, without a word (the video
    students are optional).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if video:
        order = ("video_quality", "video") if torch.device(device).type == "cuda" else ("video", "video_quality")
        for name in order:
            if shipped_weights(name).is_file():
                return name
    preferred = "quality" if still or torch.device(device).type == "cuda" else "fast"
    other = "fast" if preferred == "quality" else "quality"
    if shipped_weights(preferred).is_file():
        return preferred
    if shipped_weights(other).is_file():
        logger.warning("the %r weights are not shipped in this installation; using %r instead", preferred, other)
        return other
    logger.warning("no trained weights are shipped in this installation (%s); using 'identity', which passes "
                   "frames through unchanged", weights_dir())
    return "identity"


def is_video_model(model: str | os.PathLike[str]) -> bool | None:
    """Whether `model` is a video network (it carries a state from frame to frame), without loading it.

    Told from the name (registry and shipped), a safetensors checkpoint's metadata, an ONNX graph's
    inputs or a TensorRT engine's sidecar; None where that cannot be told without opening the model
    (a pickled checkpoint, an engine without a sidecar) or the model does not resolve.
    """
    try:
        source = resolve(model)
    except UnweatherError:
        return None
    if source.kind == "registry":
        return _arch_is_video(source.name)
    if source.kind == "weights":
        return _arch_is_video(SHIPPED[source.name])
    assert source.path is not None
    try:
        if source.kind == "checkpoint" and source.path.suffix.lower() == ".safetensors":
            from unweather.models import read_metadata

            arch = read_metadata(source.path).get("arch")
            return _arch_is_video(arch) if arch else None
        if source.kind == "onnx":
            from unweather.engine.export import is_stateful_graph, load_graph

            return is_stateful_graph(load_graph(source.path))
        if source.kind == "tensorrt":
            from unweather.engine.tensorrt_build import read_sidecar

            meta = read_sidecar(source.path) or {}
            return bool(meta["stateful"]) if "stateful" in meta else None
    except UnweatherError:
        return None
    return None


def _arch_is_video(arch: str) -> bool | None:
    from unweather.models import build, names

    if arch not in names():
        return None
    with torch.device("meta"):
        return bool(getattr(build(arch), "stateful", False))


def network_digest(net: nn.Module) -> str:
    """A SHA-256 of a network's architecture, options and weights: the key of its exported graphs."""
    from unweather.models.checkpoint import unwrap

    net = unwrap(net)
    h = hashlib.sha256()
    h.update(str(getattr(net, "arch", type(net).__name__)).encode())
    h.update(json.dumps(getattr(net, "arch_options", {}), sort_keys=True, default=str).encode())
    for key, value in sorted(net.state_dict().items()):
        h.update(key.encode())
        h.update(str(value.dtype).encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
