"""`open`: from a model argument, a backend, a precision and a device to a ready `Engine`.

`backend="auto"` picks TensorRT when it and a GPU are present, else torch on CUDA, else the CPU
backend timed fastest for the model and precision on this very machine (`unweather.engine.calibrate`:
timed once, cached); the packaged `cpu_backends.json` (written by benchmarks/backends.py on one
CPU) is only the fallback when that timing cannot run. It chooses only among backends that run the
precision and device the caller asked for: an explicit precision or device is never changed, and
one that cannot be honoured is an error. bf16 on a CPU without native bf16 is refused unless
`allow_slow_precision` is given (`unweather.cpu.bf16_refusal`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unweather.engine.base import PRECISIONS, Engine
from unweather.engine.sources import SHIPPED, ModelSource, cache_dir, default_model, load_network, resolve
from unweather.errors import UnweatherError

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
COMMON_OPTIONS = {"tile", "tile_overlap", "trusted", "cache_dir", "allow_slow_precision"}
BACKEND_OPTIONS = {
    "torch": {"channels_last", "compile", "cuda_graph"},
    "onnxruntime": {"threads", "providers", "multiple", "min_size", "opset", "spin"},
    "tensorrt": {"min_shape", "opt_shape", "max_shape", "workspace", "opset"},
}
# Precisions each backend runs, per device type. ONNX Runtime's CPU provider runs FP16 graphs by
# casting around nodes that have no FP16 kernel: correct, for accuracy checks, not fast.
SUPPORTED = {
    ("torch", "cpu"): ("fp32", "bf16", "fp16"),
    ("torch", "cuda"): ("fp32", "fp16", "bf16"),
    ("onnxruntime", "cpu"): ("fp32", "fp16", "int8"),
    ("onnxruntime", "cuda"): ("fp32", "fp16"),
    ("tensorrt", "cuda"): ("fp32", "fp16"),
}


@dataclass(frozen=True)
class Choice:
    """A backend, device and precision, and why they were chosen (for the log)."""

    backend: str
    device: torch.device
    precision: str
    reason: str


def cpu_choices_path() -> Path:
    """The packaged record of the fastest CPU backend per model and precision."""
    return Path(__file__).resolve().parent / "cpu_backends.json"


def measured_cpu_backend(arch: str | None, precision: str) -> tuple[str, str]:
    """The CPU backend measured fastest for `arch` at `precision`, and where that measurement came from."""
    try:
        data = json.loads(cpu_choices_path().read_text())
    except (OSError, ValueError):
        return "torch", "no CPU measurements are packaged"
    choices = data.get("choice", {})
    source = data.get("source", "cpu_backends.json")
    for key in (arch, "*"):
        backend = choices.get(key, {}).get(precision) if key else None
        if backend in ("torch", "onnxruntime"):
            return backend, f"measured fastest for {key} {precision} on the CPU ({source})"
    return "torch", f"no CPU measurement for {arch} {precision}"


def slow_precision_refusal(precision: str | None, device_type: str) -> str | None:
    """Why `precision` should not run on `device_type` here (None where it may): bf16 on a CPU
    that only emulates it."""
    if precision != "bf16" or device_type != "cpu":
        return None
    from unweather import cpu

    return cpu.bf16_refusal(cpu.detect())


def tensorrt_installed() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def choose(source_kind: str, arch: str | None, backend: str, precision: str | None, device: str | torch.device | None,
           *, cuda: bool, tensorrt: bool, ort_cuda: bool) -> Choice:
    """Decide backend, device and precision; pure, so every rule is testable without a GPU.

    Args:
        source_kind: the model's kind (see `ModelSource`).
        arch: the model's architecture when known (for the measured CPU choice).
        backend: "auto" or a backend name.
        precision: the precision asked for, or None for the backend's default.
        device: the device asked for, or None.
        cuda: torch sees a CUDA GPU.
        tensorrt: TensorRT is importable.
        ort_cuda: ONNX Runtime has the CUDA execution provider.

    Raises:
        UnweatherError: the request cannot be honoured as asked.
    """
    if backend not in BACKENDS:
        raise UnweatherError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if precision is not None and precision not in PRECISIONS:
        raise UnweatherError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    asked = torch.device(device) if device is not None else None
    if asked is not None and asked.type not in ("cpu", "cuda"):
        raise UnweatherError(f"unsupported device {asked}; use cpu, cuda or cuda:N")
    if asked is not None and asked.type == "cuda" and not cuda:
        raise UnweatherError(f"device {asked} was asked for, but torch sees no CUDA GPU")
    if source_kind == "tensorrt" and backend not in ("auto", "tensorrt"):
        raise UnweatherError(f"a TensorRT engine file runs only with the tensorrt backend, not {backend}")
    if source_kind == "onnx" and backend == "torch":
        raise UnweatherError("an ONNX file runs with the onnxruntime or tensorrt backend, not torch")

    reason = "asked for"
    if backend == "auto":
        backend, reason = _auto(source_kind, arch, precision, asked, cuda=cuda, tensorrt=tensorrt, ort_cuda=ort_cuda)
    if asked is None:
        gpu_first = backend == "tensorrt" or (cuda and (backend == "torch" or (backend == "onnxruntime" and ort_cuda)))
        asked = torch.device("cuda" if gpu_first and cuda else "cpu")
    if backend == "tensorrt":
        if device is not None and asked.type != "cuda":
            raise UnweatherError(f"TensorRT runs only on CUDA devices, not {asked}")
        missing = ([] if tensorrt else ["TensorRT is not installed (pip install 'unweather[tensorrt]')"]) + (
            [] if cuda else ["torch sees no CUDA GPU"])
        if missing:
            raise UnweatherError(f"the tensorrt backend needs TensorRT and a CUDA GPU: {'; '.join(missing)}")
    if backend == "onnxruntime" and asked.type == "cuda" and not ort_cuda:
        raise UnweatherError("ONNX Runtime on CUDA needs onnxruntime-gpu (pip install 'unweather[gpu]')")
    if precision is None:
        precision = "fp16" if asked.type == "cuda" else "fp32"
    allowed = SUPPORTED.get((backend, asked.type), ())
    if precision not in allowed:
        raise UnweatherError(f"the {backend} backend does not run {precision} on {asked.type} "
                             f"(it runs {', '.join(allowed) or 'nothing there'})")
    return Choice(backend, asked, precision, reason)


def _auto(source_kind: str, arch: str | None, precision: str | None, asked: torch.device | None, *, cuda: bool,
          tensorrt: bool, ort_cuda: bool) -> tuple[str, str]:
    if source_kind == "tensorrt":
        return "tensorrt", "the model is a TensorRT engine"
    if precision == "int8":
        return "onnxruntime", "int8 (QDQ) graphs run in ONNX Runtime"
    on_gpu = cuda and (asked is None or asked.type == "cuda")
    if on_gpu and tensorrt and precision in (None, "fp32", "fp16"):
        return "tensorrt", "TensorRT and a CUDA GPU are present"
    if on_gpu:
        if source_kind == "onnx":
            if ort_cuda:
                return "onnxruntime", "an ONNX file on a GPU without TensorRT"
            if asked is not None:
                raise UnweatherError("an ONNX file on CUDA needs TensorRT or onnxruntime-gpu; neither is installed")
            return "onnxruntime", "an ONNX file; no GPU runtime for it, so the CPU"
        return "torch", "a CUDA GPU without TensorRT"
    if source_kind == "onnx":
        return "onnxruntime", "an ONNX file on the CPU"
    backend, why = measured_cpu_backend(arch, precision or "fp32")
    return backend, why


def _arch(source: ModelSource) -> str | None:
    if source.kind == "registry":
        return source.name
    if source.kind == "weights":
        return SHIPPED.get(source.name)
    if source.kind == "checkpoint" and source.path is not None and source.path.suffix == ".safetensors":
        from unweather.models import read_metadata

        try:
            return read_metadata(source.path).get("arch")
        except UnweatherError:
            return None
    return None


def _split_options(backend: str, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    allowed = BACKEND_OPTIONS[backend] | COMMON_OPTIONS
    unknown = sorted(set(options) - allowed)
    if unknown:
        known = ", ".join(sorted(BACKEND_OPTIONS[backend] | COMMON_OPTIONS))
        raise UnweatherError(f"option(s) {', '.join(unknown)} do not apply to the {backend} backend (its options: "
                             f"{known})")
    common = {k: options[k] for k in COMMON_OPTIONS if k in options}
    specific = {k: v for k, v in options.items() if k not in COMMON_OPTIONS}
    return common, specific


def open_engine(model: str | os.PathLike[str] | None = None, backend: str = "auto", precision: str | None = None,
                device: str | torch.device | None = None, **options: Any) -> Engine:
    """Open an engine; see `unweather.engine.open`."""
    if model is None:
        model = default_model(device)
    source = resolve(model)
    if precision is None:
        precision = _file_precision(source)
    choice = choose(source.kind, _arch(source), backend, precision, device, cuda=torch.cuda.is_available(),
                    tensorrt=tensorrt_installed(), ort_cuda=_ort_cuda())
    if not options.get("allow_slow_precision") and (refusal := slow_precision_refusal(choice.precision,
                                                                                       choice.device.type)):
        raise UnweatherError(refusal)
    engine: Engine | None = None
    net: nn.Module | None = None
    if backend == "auto" and choice.device.type == "cpu" and source.is_network:
        choice, engine, net = _calibrated(source, choice, options)
    common, specific = _split_options(choice.backend, options)
    cache = cache_dir(common.get("cache_dir"))
    if engine is None and choice.backend == "torch":
        engine = _open_torch(source, choice, common, specific, net)
    elif engine is None and choice.backend == "onnxruntime":
        engine = _open_onnxruntime(source, choice, common, specific, cache, net)
    elif engine is None:
        engine = _open_tensorrt(source, choice, common, specific, cache)
    engine.model = source.name
    if common.get("tile"):
        engine.set_tiling(int(common["tile"]), int(common.get("tile_overlap", 32)))
    logger.info("engine for %s: %s (backend %s: %s)", source.name, engine.describe(), choice.backend, choice.reason)
    return engine


def _calibrated(source: ModelSource, choice: Choice, options: dict[str, Any]
                ) -> tuple[Choice, Engine | None, nn.Module | None]:
    """The CPU backend timed fastest here for the network (`unweather.engine.calibrate`), its engine when
    it was opened while timing, and the network loaded for it; the packaged choice when timing fails.

    Only backends that run the precision on the CPU and take every engine option given are candidates.
    """
    from unweather import cpu
    from unweather.engine import calibrate

    candidates = [name for name in ("torch", "onnxruntime")
                  if choice.precision in SUPPORTED[(name, "cpu")]
                  and not set(options) - BACKEND_OPTIONS[name] - COMMON_OPTIONS
                  and (name != "onnxruntime" or importlib.util.find_spec("onnxruntime") is not None)]
    if len(candidates) == 1 and candidates[0] != choice.backend:
        return Choice(candidates[0], choice.device, choice.precision,
                      f"the only CPU backend here that runs {choice.precision} with the options given"), None, None
    if len(candidates) < 2:
        return choice, None, None
    net = load_network(source, trusted=bool(options.get("trusted", False)))
    cache = cache_dir(options.get("cache_dir"))
    openers: dict[str, Any] = {}
    for name in candidates:
        common, specific = _split_options(name, options)
        common.pop("tile", None)  # timed on whole frames; tiling is set on the winner below
        trial = Choice(name, choice.device, choice.precision, "")
        if name == "torch":
            openers[name] = lambda n, c=trial, co=common, sp=specific: _open_torch(source, c, co, dict(sp), n)
        else:
            openers[name] = lambda n, c=trial, co=common, sp=specific: _open_onnxruntime(source, c, co, dict(sp),
                                                                                        cache, n)
    caps = cpu.detect()
    try:
        decision = calibrate.calibrated_choice(net, choice.precision, openers, cache, caps.key(),
                                               f"{caps.model} ({caps.kind})", calibrate.DEFAULT)
    except Exception as exc:  # timing is an optimisation: the packaged choice still runs the model
        logger.warning("could not time the CPU backends (%s: %s); using the packaged choice", type(exc).__name__, exc)
        decision = None
    if decision is None:
        return choice, None, net
    return Choice(decision.backend, choice.device, choice.precision, decision.reason), decision.engine, net


def _file_precision(source: ModelSource) -> str | None:
    """The precision an ONNX or engine file computes in (None for networks: the backend's default)."""
    from unweather.engine.export import onnx_precision
    from unweather.engine.tensorrt_build import read_sidecar

    if source.kind == "onnx" and source.path is not None:
        return onnx_precision(source.path)
    if source.kind == "tensorrt" and source.path is not None:
        return (read_sidecar(source.path) or {}).get("precision")
    return None


def _ort_cuda() -> bool:
    from unweather.engine.onnxruntime_backend import available_providers

    return "CUDAExecutionProvider" in available_providers()


def _open_torch(source: ModelSource, choice: Choice, common: dict[str, Any], specific: dict[str, Any],
                net: nn.Module | None = None) -> Engine:
    from unweather.engine.torch_backend import TorchEngine

    if net is None:
        net = load_network(source, trusted=bool(common.get("trusted", False)))
    return TorchEngine(net, device=choice.device, precision=choice.precision, **specific)


def _graph_for(source: ModelSource, choice: Choice, common: dict[str, Any], cache: Path, opset: int | None,
               net: nn.Module | None = None) -> Path:
    """The ONNX graph to run: the file itself, or the cached export of the network at the chosen precision."""
    from unweather.engine.export import DEFAULT_OPSET, cached_export, onnx_precision

    if source.kind == "onnx":
        assert source.path is not None
        found = onnx_precision(source.path)
        if found != choice.precision:
            raise UnweatherError(f"{source.path} computes in {found}, not {choice.precision}; export the model "
                                 f"with --precision {choice.precision}, or ask for precision {found}")
        return source.path
    if choice.precision not in ("fp32", "fp16", "int8"):
        raise UnweatherError(f"ONNX graphs are exported in fp32, fp16 or int8, not {choice.precision}")
    if net is None:
        net = load_network(source, trusted=bool(common.get("trusted", False)))
    return cached_export(net, choice.precision, cache, opset or DEFAULT_OPSET)


def _open_onnxruntime(source: ModelSource, choice: Choice, common: dict[str, Any], specific: dict[str, Any],
                      cache: Path, net: nn.Module | None = None) -> Engine:
    from unweather.engine.onnxruntime_backend import OnnxRuntimeEngine

    opset = specific.pop("opset", None)
    path = _graph_for(source, choice, common, cache, opset, net)
    return OnnxRuntimeEngine(path, device=choice.device, precision=choice.precision, cache=cache, **specific)


def _open_tensorrt(source: ModelSource, choice: Choice, common: dict[str, Any], specific: dict[str, Any],
                   cache: Path) -> Engine:
    from unweather.engine.tensorrt_backend import TensorRTEngine
    from unweather.engine.tensorrt_build import (
        Profile,
        build_engine,
        cached_engine,
        load_or_rebuild,
        parse_shape,
        read_sidecar,
    )

    def load(plan: Path) -> Engine:
        return TensorRTEngine(plan, device=choice.device, precision=choice.precision)

    if source.kind == "tensorrt":
        assert source.path is not None
        plan = source.path
        meta = read_sidecar(plan) or {}
        if meta.get("precision") and meta["precision"] != choice.precision:
            raise UnweatherError(f"{plan} computes in {meta['precision']}, not {choice.precision}")

        def rebuild_file(reason: str) -> None:
            onnx_path = Path(meta.get("onnx", ""))
            if not meta or not onnx_path.is_file():
                raise UnweatherError(f"{reason}; its ONNX graph is not known or gone, so rebuild it with "
                                     f"`unweather build ONNX_FILE -o {plan}`")
            logger.info("rebuilding %s from %s", plan, onnx_path)
            build_engine(onnx_path, plan, Profile.from_dict(meta["profile"]), meta.get("workspace_mb"), choice.device)

        return load_or_rebuild(lambda: load(plan), rebuild_file)

    default = Profile()
    profile = Profile(
        parse_shape(specific["min_shape"]) if "min_shape" in specific else default.min,
        parse_shape(specific["opt_shape"]) if "opt_shape" in specific else default.opt,
        parse_shape(specific["max_shape"]) if "max_shape" in specific else default.max,
    )
    workspace = specific.get("workspace")
    onnx_path = _graph_for(source, choice, common, cache, specific.get("opset"))
    plan = cached_engine(onnx_path, cache, profile, workspace, choice.device)
    return load_or_rebuild(lambda: load(plan), lambda _reason: cached_engine(onnx_path, cache, profile, workspace,
                                                                             choice.device, force=True))
