"""ONNX export: FP32 and FP16 graphs with named, dynamically shaped input and output, checked numerically.

The graph takes "frames" (N, 3, H, W) float32 in [0, 1] and returns "restored" of the same shape,
clamped to [0, 1]. Batch, height and width are dynamic and any size: the graph pads the frames
itself, by reflection at the bottom and right to the network's `pad_multiple` (and at least its
`min_size`), exactly as `unweather.models.pad_to_multiple` does, runs the network and crops back
(Shape, Gather, Mod, Sub, Add, Max, Concat, Pad in reflect mode, Slice, then Clip: operators that
ONNX Runtime and TensorRT's parser run natively). One reflection covers sides from
`min_single_reflect_side` up (9 pixels for a multiple of 16); `Engine` pads smaller frames before
the graph. The metadata says so ("unweather.pads_in_graph", "unweather.min_frame_side",
"unweather.clamped"), and TensorRT profiles are given in frame sizes.

FP16 is carried by the graph itself, the way strongly typed TensorRT wants it: the network is
exported in half precision (weights stored as FP16, arithmetic in FP16) with casts at the edges,
so input and output stay float32. Modules named with `keep_fp32` (shell-style patterns over module
names, e.g. "context.*") stay in FP32 with casts around them. An FP16 export must pass an accuracy
gate: ONNX Runtime on the CPU runs the FP16 graph on real frames (the bundled photo, plus the
user's own), which must be free of NaN and Inf and within `min_psnr` dB of torch FP32.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unweather.errors import UnweatherError
from unweather.fileio import atomic_path
from unweather.models.padding import min_single_reflect_side, pad_for_graph

logger = logging.getLogger(__name__)

INPUT_NAME = "frames"
OUTPUT_NAME = "restored"
DEFAULT_OPSET = 18
MIN_OPSET = 17
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# Calibration frames are cropped (never resized) to at most this size, to keep the check quick.
_MAX_CHECK_SIZE = 512
_MAX_CALIBRATION_FRAMES = 16
# Activations beyond this magnitude in FP32 are at risk in FP16 (max 65504, and sums grow).
_FP16_RISK = 8192.0
# The layout of the graphs we write: 1, padded frames in (Engine padded); 2, any frame size in, the
# graph pads, crops and clamps. Part of the export cache's key, so no old graph is reused.
GRAPH_FORMAT = 2
# Names of the tensors and constants the wrapper adds around the exported network.
_PREFIX = "unweather_"


@dataclass
class ExportConfig:
    """How to export.

    Attributes:
        precision: "fp32" or "fp16" (FP16 weights and arithmetic, FP32 input and output).
        opset: the ONNX opset (17 or newer).
        min_psnr: the FP16 accuracy gate in dB against torch FP32.
        keep_fp32: module-name patterns kept in FP32 in an FP16 graph.
        calibration_frames: a folder of images checked by the FP16 gate beside the bundled photo.
    """

    precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    min_psnr: float = 40.0
    keep_fp32: tuple[str, ...] = ()
    calibration_frames: str | os.PathLike[str] | None = None


@dataclass
class ExportReport:
    """What an export wrote and measured.

    Attributes:
        path: the ONNX file.
        precision: "fp32" or "fp16".
        operators: the ONNX operator types in the graph, sorted.
        max_abs_diff: largest |ONNX Runtime - torch FP32| on a random test input.
        psnr: FP16 only: PSNR in dB of the graph against torch FP32, per checked frame.
        kept_fp32: modules kept in FP32.
        initializer_types: count of stored weight tensors per ONNX data type name.
    """

    path: Path
    precision: str
    operators: list[str]
    max_abs_diff: float
    psnr: dict[str, float] = field(default_factory=dict)
    kept_fp32: list[str] = field(default_factory=list)
    initializer_types: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for the command line."""
        lines = [(f"wrote {self.path} ({self.precision}, {len(self.operators)} operator types: "
                  f"{', '.join(self.operators)})"),
                 f"largest |ONNX Runtime - torch fp32| on a random input: {self.max_abs_diff:.3g}"]
        if self.psnr:
            worst = min(self.psnr.values())
            lines.append(f"fp16 graph vs torch fp32: {worst:.2f} dB worst over {len(self.psnr)} frame(s) ("
                         + ", ".join(f"{k} {v:.2f}" for k, v in self.psnr.items()) + ")")
        if self.kept_fp32:
            lines.append(f"kept in fp32: {', '.join(self.kept_fp32)}")
        lines.append("stored weights: " + ", ".join(f"{n} {t}" for t, n in sorted(self.initializer_types.items())))
        return "\n".join(lines)


class Float32Island(nn.Module):
    """Runs a module in FP32 inside an FP16 network: floating inputs cast up, outputs cast back down."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.float()

    def forward(self, *args: object) -> object:
        return _cast(self.module(*_cast(args, torch.float32)), torch.float16)


def _cast(value: object, dtype: torch.dtype) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


class HalfGraph(nn.Module):
    """FP32 frames in, the network in FP16, FP32 restored frames out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames.to(torch.float16)).to(torch.float32)


def half_model(net: nn.Module, keep_fp32: Sequence[str] = ()) -> tuple[nn.Module, list[str]]:
    """An FP16 copy of `net` with FP32 input/output; modules matching `keep_fp32` stay FP32.

    Returns:
        The wrapped copy and the names of the modules kept in FP32.

    Raises:
        UnweatherError: a pattern matches no module.
    """
    model = copy.deepcopy(net).eval().half()
    names = [name for name, _ in model.named_modules() if name]
    kept: list[str] = []
    for pattern in keep_fp32:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            examples = ", ".join(n for n in names if "." not in n)
            raise UnweatherError(f"--keep-fp32 {pattern!r} matches no module of the network; top-level modules: "
                                 f"{examples}")
        kept.extend(m for m in matched if m not in kept)
    # An outer island already covers its submodules.
    outer = [n for n in kept if not any(n.startswith(k + ".") for k in kept if k != n)]
    for name in outer:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Float32Island(getattr(parent, attr)))
    return HalfGraph(model).eval(), outer


def _example_size(multiple: int, min_size: int) -> int:
    from unweather.models.padding import padded_size

    return padded_size(64, multiple, min_size)


def _dynamic_shapes(multiple: int, min_size: int) -> tuple[dict[int, object]]:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    if multiple > 1:
        lo = max(1, math.ceil(min_size / multiple))
        height = multiple * Dim("height_blocks", min=lo, max=8192 // multiple)
        width = multiple * Dim("width_blocks", min=lo, max=8192 // multiple)
    else:
        height = Dim("padded_height", min=max(2, min_size), max=8192)
        width = Dim("padded_width", min=max(2, min_size), max=8192)
    return ({0: batch, 2: height, 3: width},)


def _quiet_torch_onnx() -> list[tuple[logging.Logger, int]]:
    # The exporter logs one warning per optional torchvision operator it cannot register.
    saved = []
    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export"):
        log = logging.getLogger(name)
        saved.append((log, log.level))
        log.setLevel(logging.ERROR)
    return saved


def export_onnx(net: nn.Module, path: str | os.PathLike[str], config: ExportConfig | None = None) -> ExportReport:
    """Export `net` to `path` as ONNX, check it, and (FP16) gate its accuracy.

    The file is written under a temporary name and renamed only once every check passed.

    Raises:
        UnweatherError: a bad option, a graph the checker refuses, or an FP16 graph that
            produces NaN/Inf or falls below `min_psnr` (the message names `--keep-fp32`).
    """

    from unweather.models.checkpoint import unwrap

    config = config or ExportConfig()
    if config.precision not in ("fp32", "fp16"):
        raise UnweatherError(f"ONNX export supports fp32 and fp16, not {config.precision!r}")
    if config.opset < MIN_OPSET:
        raise UnweatherError(f"opset {config.opset} is too old; use {MIN_OPSET} or newer")
    if config.keep_fp32 and config.precision != "fp16":
        raise UnweatherError("--keep-fp32 applies only to --precision fp16")
    calibration = load_frames(config.calibration_frames) if config.calibration_frames else []

    base = unwrap(net).eval().float().cpu()
    multiple = int(getattr(base, "pad_multiple", 1))
    min_size = int(getattr(base, "min_size", 1))
    kept: list[str] = []
    module = base
    if config.precision == "fp16":
        module, kept = half_model(base, config.keep_fp32)
    size = _example_size(multiple, min_size)

    path = Path(path)
    with atomic_path(path, suffix=".onnx") as tmp:
        model = _trace(base, module, tmp, config, kept)
        report = ExportReport(path=path, precision=config.precision, operators=graph_operators(model),
                              max_abs_diff=0.0, kept_fp32=kept, initializer_types=initializer_types(model))
        session = _cpu_session(tmp)
        # A size the graph has to pad (when the network needs padding at all), cropped back.
        test = torch.rand(1, 3, size + 5, size + multiple * max(1, 32 // multiple) + 3,
                          generator=torch.Generator().manual_seed(0))
        expected = reference_output(base, test).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: test.numpy()})[0]
        report.max_abs_diff = float(np.abs(got.astype(np.float32) - expected).max())
        if config.precision == "fp16":
            frames = [("bundled photo", bundled_photo())] + calibration
            report.psnr = fp16_gate(base, session, frames, config.min_psnr, multiple, min_size, half=module)
    logger.debug("%s", report.summary())
    return report


def reference_output(net: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """What an exported graph computes, in torch: pad as `Engine` does, run `net`, crop, clamp to [0, 1]."""
    from unweather.models.padding import pad_to_multiple

    h, w = frames.shape[-2:]
    multiple = int(getattr(net, "pad_multiple", 1))
    min_size = int(getattr(net, "min_size", 1))
    with torch.no_grad():
        out = net(pad_to_multiple(frames, multiple, min_size))[..., :h, :w]
    return out.clamp(0.0, 1.0)


def _trace(base: nn.Module, module: nn.Module, path: Path, config: ExportConfig, kept: list[str]) -> object:
    """Export `module` (`base`, or its FP16 wrapper) to `path` with our metadata; run the ONNX checker."""
    import onnx

    multiple = int(getattr(base, "pad_multiple", 1))
    min_size = int(getattr(base, "min_size", 1))
    size = _example_size(multiple, min_size)
    # Batch 2: an example of batch 1 lets torch.export specialise the batch dimension to 1.
    example = torch.rand(2, 3, size, size)
    saved_levels = _quiet_torch_onnx()
    try:
        logger.info("exporting %s (%s, opset %d)", getattr(base, "arch", type(base).__name__), config.precision,
                    config.opset)
        with torch.no_grad(), warnings.catch_warnings():
            # torch's own pytree deprecation inside the exporter; nothing a user can act on.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=config.opset, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=_dynamic_shapes(multiple, min_size))
    finally:
        for log, level in saved_levels:
            log.setLevel(level)
    model = onnx.load(str(path))
    _rename_io(model)
    wrap_pad_crop_clamp(model, multiple, min_size)
    metadata = {
        "unweather.arch": str(getattr(base, "arch", type(base).__name__)),
        "unweather.options": json.dumps(getattr(base, "arch_options", {}), sort_keys=True, default=str),
        "unweather.precision": config.precision,
        "unweather.pad_multiple": str(multiple),
        "unweather.min_size": str(min_size),
        "unweather.graph_format": str(GRAPH_FORMAT),
        # The graph takes frames of any size: it reflect-pads them to what the network needs, from
        # sides of min_frame_side up (smaller frames are padded to pad_multiple before it).
        "unweather.pads_in_graph": "reflect",
        "unweather.min_frame_side": str(min_single_reflect_side(multiple, min_size)),
        "unweather.clamped": "[0, 1]",
        "unweather.keep_fp32": json.dumps(kept),
        "unweather.torch": torch.__version__,
    }
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise UnweatherError(f"the exported graph fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
    return model


def trace_graph(net: nn.Module, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                keep_fp32: Sequence[str] = ()) -> object:
    """The ONNX graph `export_onnx` writes for `net`, without its numerical checks (no file is kept).

    For inspecting a graph's operators and types; a file to run comes from `export_onnx`, whose
    FP16 accuracy gate this skips.
    """
    from unweather.models.checkpoint import unwrap

    if precision not in ("fp32", "fp16"):
        raise UnweatherError(f"ONNX export supports fp32 and fp16, not {precision!r}")
    base = unwrap(net).eval().float().cpu()
    module, kept = half_model(base, keep_fp32) if precision == "fp16" else (base, [])
    config = ExportConfig(precision=precision, opset=opset, keep_fp32=tuple(keep_fp32))
    with tempfile.TemporaryDirectory(prefix="unweather-trace-") as folder:
        return _trace(base, module, Path(folder) / "graph.onnx", config, kept)


def wrap_pad_crop_clamp(model: object, multiple: int, min_size: int = 1) -> None:
    """Make an exported network's graph take any frame size and return values in [0, 1], in place.

    In front of the network: the frames' height and width (Shape, Gather), the padded size
    max(ceil(size / multiple) * multiple, padded_size(1)) (Mod, Sub, Add, Max) and a reflect Pad
    at the bottom and right; behind it: a Slice back to the frames' size and a Clip to [0, 1].
    A network that needs no padding (multiple 1, no minimum size) gets only the Clip. The frames'
    dimensions are named "batch", "height" and "width" (the network's own keep theirs).
    """
    from onnx import helper, numpy_helper

    from unweather.models.padding import padded_size

    graph = model.graph
    frames, restored = graph.input[0], graph.output[0]
    net_in, net_out = f"{_PREFIX}padded", f"{_PREFIX}network_output"
    smallest = padded_size(1, multiple, min_size)
    pads = multiple > 1 or smallest > 1
    nodes = list(graph.node)
    for node in nodes:
        node.input[:] = [(net_in if pads else INPUT_NAME) if n == INPUT_NAME else n for n in node.input]
        node.input[:] = [net_out if n == OUTPUT_NAME else n for n in node.input]
        node.output[:] = [net_out if n == OUTPUT_NAME else n for n in node.output]

    def const(name: str, values: object, dtype: object = np.int64) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), _PREFIX + name))
        return _PREFIX + name

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        name = output if output.startswith(_PREFIX) else _PREFIX + output
        return helper.make_node(op, inputs, [output], name=name, **attrs)

    head, tail = [], []
    crop_to = None
    if pads:
        hw_name = _PREFIX + "frame_hw"
        mult = const("multiple", [multiple, multiple])
        head += [
            node("Shape", [INPUT_NAME], _PREFIX + "frame_shape"),
            node("Gather", [_PREFIX + "frame_shape", const("hw_axes", [2, 3])], hw_name, axis=0),
            node("Mod", [hw_name, mult], _PREFIX + "remainder"),
            node("Sub", [mult, _PREFIX + "remainder"], _PREFIX + "to_next"),
            node("Mod", [_PREFIX + "to_next", mult], _PREFIX + "round_up"),
            node("Add", [hw_name, _PREFIX + "round_up"], _PREFIX + "rounded_hw"),
            node("Max", [_PREFIX + "rounded_hw", const("smallest", [smallest, smallest])], _PREFIX + "padded_hw"),
            node("Sub", [_PREFIX + "padded_hw", hw_name], _PREFIX + "pad_hw"),
            node("Concat", [const("no_pads", [0] * 6), _PREFIX + "pad_hw"], _PREFIX + "pads", axis=0),
            node("Pad", [INPUT_NAME, _PREFIX + "pads"], net_in, mode="reflect"),
        ]
        crop_to = hw_name
    out_type = restored.type.tensor_type.elem_type
    out_dtype = helper.tensor_dtype_to_np_dtype(out_type)
    clip_in = net_out
    if crop_to is not None:
        clip_in = _PREFIX + "cropped"
        tail.append(node("Slice", [net_out, const("crop_starts", [0, 0]), crop_to, const("crop_axes", [2, 3])],
                         clip_in))
    tail.append(node("Clip", [clip_in, const("zero", 0.0, out_dtype), const("one", 1.0, out_dtype)], OUTPUT_NAME))
    del graph.node[:]
    graph.node.extend(head + nodes + tail)

    # The network's own input and output keep their (padded) shapes as value_info.
    inner = []
    if pads:
        inner.append(helper.make_tensor_value_info(net_in, frames.type.tensor_type.elem_type, _dims(frames)))
    inner.append(helper.make_tensor_value_info(net_out, out_type, _dims(restored)))
    graph.value_info.extend(inner)
    for value in (frames, restored):
        dims = value.type.tensor_type.shape.dim
        for dim, label in zip(dims, ("batch", None, "height", "width")):
            if label is not None:
                dim.Clear()
                dim.dim_param = label


def _dims(value: object) -> list[object]:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in value.type.tensor_type.shape.dim]


def _rename_io(model: object) -> None:
    # The dynamo exporter honours input_names; make sure both names are exact whatever it did.
    graph = model.graph
    if graph.input[0].name != INPUT_NAME or graph.output[0].name != OUTPUT_NAME:
        renames = {graph.input[0].name: INPUT_NAME, graph.output[0].name: OUTPUT_NAME}
        for node in graph.node:
            node.input[:] = [renames.get(n, n) for n in node.input]
            node.output[:] = [renames.get(n, n) for n in node.output]
        graph.input[0].name = INPUT_NAME
        graph.output[0].name = OUTPUT_NAME


def graph_operators(model: object) -> list[str]:
    """The operator types used in an ONNX model's main graph and any subgraphs, sorted."""
    ops: set[str] = set()

    def visit(graph: object) -> None:
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.g is not None and len(attr.g.node):
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    visit(model.graph)
    return sorted(ops)


def initializer_types(model: object) -> dict[str, int]:
    """How many stored weight tensors (initializers and Constant nodes with >1 element) each data type has.

    The index constants of the padding and cropping around the network are not weights and not counted.
    """
    import onnx

    counts: dict[str, int] = {}
    tensors = [t for t in model.graph.initializer if not t.name.startswith(_PREFIX)]
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    for t in tensors:
        if int(np.prod(t.dims)) > 1:
            name = onnx.TensorProto.DataType.Name(t.data_type).lower()
            counts[name] = counts.get(name, 0) + 1
    return counts


def _cpu_session(path: Path) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two arrays of values in [0, 1] (both clipped to [0, 1] first)."""
    mse = float(np.mean((np.clip(a, 0, 1).astype(np.float64) - np.clip(b, 0, 1).astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def fp16_gate(base: nn.Module, session: object, frames: list[tuple[str, torch.Tensor]], min_psnr: float,
              multiple: int, min_size: int, half: nn.Module | None = None) -> dict[str, float]:
    """Check an FP16 graph against torch FP32 on `frames`; raise on NaN/Inf or below `min_psnr`.

    Two runs are compared with FP32: the graph in ONNX Runtime's CPU provider (the file itself),
    and `half`, the same FP16 network in torch. ONNX Runtime's CPU provider has few FP16 kernels
    and computes chains of such nodes in FP32 between inserted casts, so it does not round
    intermediate activations to FP16 and would miss an overflow inside the network; torch rounds
    every operator's output to FP16, as a GPU does.

    The graph gets the frames as they are (it pads, crops and clamps itself); torch gets them
    padded and its output is cropped, not clamped, so an overflow shows as Inf.

    Returns:
        PSNR in dB per frame and run ("NAME (onnxruntime)", "NAME (torch fp16)").
    """
    from unweather.models.padding import pad_to_multiple

    results: dict[str, float] = {}
    for name, frame in frames:
        h, w = frame.shape[-2:]
        x = pad_to_multiple(frame, multiple, min_size)
        graph_in = pad_for_graph(frame, multiple, min_size)
        with torch.no_grad():
            expected = base(x)[..., :h, :w].numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: graph_in.numpy()})[0].astype(np.float32)
            runs = [("onnxruntime", got[..., :h, :w])]
            if half is not None:
                runs.append(("torch fp16", half(x)[..., :h, :w].numpy()))
        for run, got in runs:
            if not np.isfinite(got).all():
                bad = int((~np.isfinite(got)).sum())
                raise UnweatherError(
                    f"the fp16 network produced {bad} NaN/Inf values on {name} ({run}): {_overflow_hint(base, x)}; "
                    "keep those layers in fp32 with --keep-fp32 PATTERN (a module whose output fits fp16)")
            results[f"{name} ({run})"] = psnr(got, expected)
    worst = min(results, key=results.get)
    if results[worst] < min_psnr:
        frame = dict(frames)[worst.rsplit(" (", 1)[0]]
        raise UnweatherError(
            f"the fp16 network reaches only {results[worst]:.2f} dB against fp32 on {worst} (threshold "
            f"{min_psnr:g} dB); keep the sensitive layers in fp32 with --keep-fp32 PATTERN "
            f"({_overflow_hint(base, pad_to_multiple(frame, multiple, min_size))}), or export --precision fp32")
    return results


def _overflow_hint(base: nn.Module, x: torch.Tensor) -> str:
    """Name the modules whose FP32 activations are largest: the likely FP16 casualties."""
    peaks: dict[str, float] = {}
    hooks = []
    for name, module in base.named_modules():
        if name and not list(module.children()):
            def hook(_m: nn.Module, _i: object, out: object, name: str = name) -> None:
                if isinstance(out, torch.Tensor) and out.is_floating_point():
                    peaks[name] = float(out.detach().abs().max())
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            base(x)
    finally:
        for h in hooks:
            h.remove()
    top = sorted(peaks.items(), key=lambda kv: -kv[1])[:3]
    risky = [f"{n} (|x| up to {v:.3g})" for n, v in top if v >= _FP16_RISK]
    if risky:
        return "activations at risk of fp16 overflow: " + ", ".join(risky)
    return "largest activations: " + ", ".join(f"{n} ({v:.3g})" for n, v in top)


def _read_image(path: Path) -> torch.Tensor:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UnweatherError(f"cannot read image {path}")
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).contiguous()


def _center_crop(frame: torch.Tensor, size: int) -> torch.Tensor:
    h, w = frame.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return frame[..., top:top + min(h, size), left:left + min(w, size)]


def bundled_photo() -> torch.Tensor:
    """The small photo shipped for accuracy checks, (1, 3, H, W) float32 in [0, 1]."""
    return _read_image(Path(__file__).resolve().parent.parent / "assets" / "check_photo.jpg")


def load_frames(folder: str | os.PathLike[str]) -> list[tuple[str, torch.Tensor]]:
    """The images in `folder` (sorted, at most 16), center-cropped to at most 512 x 512, as (name, frame)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UnweatherError(f"calibration frames folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UnweatherError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    if len(files) > _MAX_CALIBRATION_FRAMES:
        logger.info("checking the first %d of %d calibration frames", _MAX_CALIBRATION_FRAMES, len(files))
    return [(p.name, _center_crop(_read_image(p), _MAX_CHECK_SIZE)) for p in files[:_MAX_CALIBRATION_FRAMES]]


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The unweather.* metadata of an ONNX file (empty for graphs made elsewhere)."""
    return {p.key: p.value for p in load_graph(path).metadata_props if p.key.startswith("unweather.")}


def load_graph(path: str | os.PathLike[str]) -> object:
    """Load an ONNX model's structure (not external weights); UnweatherError when it is not ONNX."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as exc:
        raise UnweatherError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from exc


def onnx_precision(path: str | os.PathLike[str]) -> str:
    """The precision an ONNX graph computes in: its metadata, else fp16 when most weights are FP16."""
    meta = read_onnx_metadata(path)
    if meta.get("unweather.precision"):
        return meta["unweather.precision"]
    counts = initializer_types(load_graph(path))
    return "fp16" if counts.get("float16", 0) > counts.get("float", 0) else "fp32"


def cached_export(net: nn.Module, precision: str, cache: Path, opset: int = DEFAULT_OPSET) -> Path:
    """The ONNX export of `net` at `precision` from the cache, exported (and gated) on first use."""
    from unweather.engine.sources import network_digest

    arch = str(getattr(net, "arch", type(net).__name__))
    # GRAPH_FORMAT in the name: a graph written by an older unweather (one that needs padded frames) is
    # never picked up for a newer one.
    name = f"{arch}-{precision}-opset{opset}-g{GRAPH_FORMAT}-{network_digest(net)[:16]}.onnx"
    path = cache / "onnx" / name
    if path.is_file():
        logger.info("using the cached ONNX graph %s", path)
        return path
    export_onnx(net, path, ExportConfig(precision=precision, opset=opset))
    return path
