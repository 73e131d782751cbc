"""ONNX export: FP32, FP16 and INT8 graphs with named, dynamically shaped input and output, checked numerically.

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

INT8 is the FP32 graph with QuantizeLinear/DequantizeLinear pairs on its convolutions' inputs and
weights, calibrated on real frames (the bundled demo photo, plus the user's own): see
`unweather.engine.quantize`. Its gate compares it with the FP32 graph in ONNX Runtime on the bundled
check photo, clean and under rendered rain, snow and haze (never used for calibration), and the
user's frames; below `min_psnr` it names the convolutions to keep in float.
Both gates record what they measured in the graph's metadata ("unweather.gate").

A video network (`stateful`, e.g. `video_small`) carries a state from frame to frame, and its graph
takes it and returns it as explicit tensors: "input" (N, 3, H, W), "background" (N, C, H, W: the
network's `state_channels`, fixed in the graph) and "weight" (N, 1, H, W) in, "output",
"background_out" and "weight_out" out (`VIDEO_INPUTS`, `VIDEO_OUTPUTS`), static ranks and no loops,
so every backend runs it one step per call. The padding
applies to all three inputs and the crop to all three outputs (the state stays at the frame's size);
only "output" is clamped. Its FP16 gate runs sequences of frames through the FP32 and FP16 networks,
each carrying its own state, and compares every frame's output. INT8 covers frame networks only.
"""

from __future__ import annotations

import copy
import dataclasses
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
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from unweather.errors import UnweatherError
from unweather.fileio import atomic_path
from unweather.media import IMAGE_SUFFIXES, VIDEO_EXTENSIONS, is_image_file, is_video_file, read_rgb
from unweather.models.padding import min_single_reflect_side, pad_for_graph

if TYPE_CHECKING:
    from unweather.engine.quantize import Int8Result

logger = logging.getLogger(__name__)

INPUT_NAME = "frames"
OUTPUT_NAME = "restored"
# A video network's graph: the frame and its state in, the output and the next state out (in this order).
VIDEO_INPUTS = ("input", "background", "weight")
VIDEO_OUTPUTS = ("output", "background_out", "weight_out")
# The FP16 gate of a video network runs the check frames as a sequence of this many frames.
_GATE_SEQUENCE = 6
DEFAULT_OPSET = 18
# torch's exporter writes opset 18 and converts upwards only (onnxscript's converter starts at 18).
MIN_OPSET = 18
PRECISIONS = ("fp32", "fp16", "int8")
# The accuracy gates' least PSNR in dB: FP16 against torch FP32, INT8 against the FP32 graph.
DEFAULT_MIN_PSNR = {"fp16": 40.0, "int8": 35.0}
# Calibration frames are cropped (never resized) to at most this size, to keep the check quick.
_MAX_CHECK_SIZE = 512
_MAX_CALIBRATION_FRAMES = 16
# Activations beyond this magnitude in FP32 are at risk in FP16 (max 65504, and sums grow).
_FP16_RISK = 8192.0
# The layout of the graphs we write: 1, padded frames in (Engine padded); 2, any frame size in, the
# graph pads, crops and clamps; 3, the same with no Transpose at the students' input and no Softmax in the video
# fusion (the same functions, faster on CPUs). Part of the export cache's key, so no old graph is reused.
GRAPH_FORMAT = 3
# Names of the tensors and constants the wrapper adds around the exported network.
_PREFIX = "unweather_"


@dataclass
class ExportConfig:
    """How to export.

    Attributes:
        precision: "fp32", "fp16" (FP16 weights and arithmetic, FP32 input and output) or "int8"
            (QDQ: INT8 convolutions, FP32 input and output).
        opset: the ONNX opset (18 or newer).
        min_psnr: the accuracy gate's least PSNR in dB (None: 40 for FP16 against torch FP32, 35 for
            INT8 against the FP32 graph).
        keep_fp32: FP16: module-name patterns kept in FP32; INT8: convolutions kept in float, as
            patterns over node or module names (several per entry, separated by commas).
        calibration_frames: a folder of images, an image or a video: frames checked by the gate
            beside the bundled photo, and for INT8 also calibrated on.
    """

    precision: str = "fp32"
    opset: int = DEFAULT_OPSET
    min_psnr: float | None = None
    keep_fp32: tuple[str, ...] = ()
    calibration_frames: str | os.PathLike[str] | None = None

    def least_psnr(self) -> float:
        """The gate's threshold for this precision."""
        return self.min_psnr if self.min_psnr is not None else DEFAULT_MIN_PSNR.get(self.precision, 0.0)


@dataclass
class ExportReport:
    """What an export wrote and measured.

    Attributes:
        path: the ONNX file.
        precision: "fp32", "fp16" or "int8".
        operators: the ONNX operator types in the graph, sorted.
        max_abs_diff: largest |ONNX Runtime - torch FP32| on a random test input.
        psnr: FP16 and INT8: PSNR in dB of the graph against its reference (`reference`), per checked frame.
        reference: what the gate compared with ("torch fp32", "the fp32 graph").
        kept_fp32: modules (FP16) or convolutions (INT8) kept in FP32.
        calibration: INT8: the frames the activation ranges come from.
        initializer_types: count of stored weight tensors per ONNX data type name.
    """

    path: Path
    precision: str
    operators: list[str]
    max_abs_diff: float
    psnr: dict[str, float] = field(default_factory=dict)
    reference: str = ""
    kept_fp32: list[str] = field(default_factory=list)
    calibration: list[str] = field(default_factory=list)
    initializer_types: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for the command line."""
        lines = [(f"wrote {self.path} ({self.precision}, {len(self.operators)} operator types: "
                  f"{', '.join(self.operators)})"),
                 f"largest |ONNX Runtime - torch fp32| on a random input: {self.max_abs_diff:.3g}"]
        if self.calibration:
            lines.append(f"calibrated on {len(self.calibration)} frame(s): {', '.join(self.calibration)}")
        if self.psnr:
            worst = min(self.psnr.values())
            lines.append(f"{self.precision} graph vs {self.reference}: {worst:.2f} dB worst over {len(self.psnr)} "
                         "frame(s) (" + ", ".join(f"{k} {v:.2f}" for k, v in self.psnr.items()) + ")")
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


class HalfVideoGraph(HalfGraph):
    """`HalfGraph` of a video network: the frame and its state in FP32, the output and next state in FP32."""

    stateful = True

    def forward(self, frames: torch.Tensor, bg: torch.Tensor, weight: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _cast(self.net(*_cast((frames, bg, weight), torch.float16)), torch.float32)


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
    wrapper = HalfVideoGraph if is_stateful(net) else HalfGraph
    return wrapper(model).eval(), outer


def is_stateful(net: nn.Module) -> bool:
    """Whether `net` is a video network: `forward(x, bg, weight) -> (y, bg', weight')` (see `VIDEO_INPUTS`)."""
    from unweather.models.checkpoint import unwrap

    return bool(getattr(unwrap(net), "stateful", False))


def _empty_state(net: nn.Module, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A video network's empty state for `frames` (its `initial_state`)."""
    from unweather.models.checkpoint import unwrap

    return unwrap(net).initial_state(frames)


def is_stateful_graph(model: object) -> bool:
    """Whether an ONNX model is a video network's graph: our metadata says so, or it has our three inputs."""
    props = {p.key: p.value for p in model.metadata_props}
    if "unweather.stateful" in props:
        return props["unweather.stateful"] == "true"
    return [i.name for i in model.graph.input] == list(VIDEO_INPUTS)


def _example_size(multiple: int, min_size: int) -> int:
    from unweather.models.padding import padded_size

    return padded_size(64, multiple, min_size)


def _dynamic_shapes(multiple: int, min_size: int, inputs: int = 1) -> tuple[dict[int, object], ...]:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    if multiple > 1:
        lo = max(1, math.ceil(min_size / multiple))
        height = multiple * Dim("height_blocks", min=lo, max=8192 // multiple)
        width = multiple * Dim("width_blocks", min=lo, max=8192 // multiple)
    else:
        height = Dim("padded_height", min=max(2, min_size), max=8192)
        width = Dim("padded_width", min=max(2, min_size), max=8192)
    # A video network's state shares the frame's batch, height and width.
    return ({0: batch, 2: height, 3: width},) * inputs


def _quiet_torch_onnx() -> list[tuple[logging.Logger, int]]:
    # The exporter logs one warning per optional torchvision operator it cannot register, and
    # onnxscript a traceback when it cannot convert to an older opset (refused below, in one line).
    saved = []
    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export",
                 "onnxscript.version_converter"):
        log = logging.getLogger(name)
        saved.append((log, log.level))
        log.setLevel(logging.ERROR)
    return saved


def export_onnx(net: nn.Module, path: str | os.PathLike[str], config: ExportConfig | None = None) -> ExportReport:
    """Export `net` to `path` as ONNX, check it, and (FP16, INT8) gate its accuracy.

    The file is written under a temporary name and renamed only once every check passed.

    Raises:
        UnweatherError: a bad option, a graph the checker refuses, or an FP16 or INT8 graph that
            produces NaN/Inf or falls below its least PSNR (the message names `--keep-fp32`).
    """

    from unweather.models.checkpoint import unwrap

    config = config or ExportConfig()
    if config.precision not in PRECISIONS:
        raise UnweatherError(f"ONNX export supports {', '.join(PRECISIONS)}, not {config.precision!r}")
    if config.opset < MIN_OPSET:
        raise UnweatherError(f"opset {config.opset} is too old; use {MIN_OPSET} or newer")
    if config.keep_fp32 and config.precision == "fp32":
        raise UnweatherError("--keep-fp32 applies only to --precision fp16 or int8")
    for value, option in ((config.min_psnr, "--min-psnr"), (config.calibration_frames, "--calibration-frames")):
        if value is not None and config.precision == "fp32":
            raise UnweatherError(f"{option} applies only to --precision fp16 or int8 (an fp32 graph has no gate)")
    stateful = is_stateful(net)
    if stateful and config.precision == "int8":
        raise UnweatherError("int8 export covers frame networks; export this video network in fp32 or fp16")
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
    with atomic_path(path, suffix=".onnx") as tmp, tempfile.TemporaryDirectory(prefix="unweather-export-") as folder:
        if config.precision == "int8":
            fp32_path = Path(folder) / "fp32.onnx"
            _trace(base, base, fp32_path, dataclasses.replace(config, precision="fp32"), [])
            result = _quantize(fp32_path, tmp, config, calibration, multiple, min_size)
            kept = result.kept_fp32
        else:
            _trace(base, module, tmp, config, kept)
        model = load_graph(tmp)
        report = ExportReport(path=path, precision=config.precision, operators=graph_operators(model),
                              max_abs_diff=0.0, kept_fp32=kept, initializer_types=initializer_types(model))
        session = _cpu_session(tmp)
        # A size the graph has to pad (when the network needs padding at all), cropped back.
        test = torch.rand(1, 3, size + 5, size + multiple * max(1, 32 // multiple) + 3,
                          generator=torch.Generator().manual_seed(0))
        if stateful:
            # A state the frames could have left: a background near the frame, some evidence.
            g = torch.Generator().manual_seed(1)
            planes = _empty_state(base, test)[0].shape[1] // 3
            near = [test + 0.1 * torch.rand(test.shape, generator=g) for _ in range(planes)]
            state = (torch.cat(near, 1).clamp(0, 1),
                     16.0 * torch.rand(1, 1, *test.shape[-2:], generator=g))
            expected = [t.numpy() for t in reference_step(base, test, *state)]
            got = session.run(list(VIDEO_OUTPUTS), dict(zip(VIDEO_INPUTS, (t.numpy() for t in (test, *state)))))
            report.max_abs_diff = max(float(np.abs(a.astype(np.float32) - b).max()) for a, b in zip(got, expected))
        else:
            expected = reference_output(base, test).numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: test.numpy()})[0]
            report.max_abs_diff = float(np.abs(got.astype(np.float32) - expected).max())
        if config.precision == "fp16" and stateful:
            sequences = [("bundled photo", gate_sequence())] + frame_sequences(calibration)
            report.psnr = fp16_sequence_gate(base, session, sequences, config.least_psnr(), multiple, min_size,
                                             half=module)
            report.reference = "torch fp32"
            _set_metadata(tmp, {"unweather.gate": gate_record(
                "torch fp32 over sequences carrying the state (the graph in ONNX Runtime, and the fp16 network in "
                "torch)", config.least_psnr(), report.psnr)})
        elif config.precision == "fp16":
            frames = [("bundled photo", bundled_photo())] + calibration
            report.psnr = fp16_gate(base, session, frames, config.least_psnr(), multiple, min_size, half=module)
            report.reference = "torch fp32"
            _set_metadata(tmp, {"unweather.gate": gate_record(
                "torch fp32 (the graph in ONNX Runtime, and the fp16 network in torch)", config.least_psnr(),
                report.psnr)})
        elif config.precision == "int8":
            report.psnr, report.reference, report.calibration = result.psnr, "the fp32 graph", result.calibration
    logger.debug("%s", report.summary())
    return report


# Modules whose convolutions an int8 graph keeps in float, whatever --keep-fp32 says: the students' outputs
# (the correction head and the haze head, whose gain multiplies every pixel); 3 of 35 convolutions in `fast`.
_FLOAT_HEADS = ("head", "haze", "frame.head", "frame.haze")


def _quantize(fp32_path: Path, path: Path, config: ExportConfig, user_frames: list[tuple[str, torch.Tensor]],
              multiple: int, min_size: int) -> Int8Result:
    """The INT8 graph of the FP32 graph at `fp32_path`, gated, at `path`; returns its `Int8Result`."""
    from unweather.engine import quantize

    fp32 = load_graph(fp32_path)
    exclude = quantize.select_nodes(fp32, config.keep_fp32)
    # The output convolutions write what lands on every pixel (the correction, the haze gain): in int8
    # their rounding does too (the corpus-trained `fast` fell to 14 and 27 dB against fp32), so they stay float.
    modules = quantize.quantizable_nodes(fp32)
    exclude += [n for n, m in modules.items() if m in _FLOAT_HEADS and n not in exclude]
    if len(exclude) == len(modules):
        raise UnweatherError("no convolution is left to run in int8 (the network has none, or --keep-fp32 keeps "
                             "them all): export --precision fp32")
    # Calibrated on the demo photo and the user's frames; gated on the check photo, clean and under
    # rain, snow and haze (calibration never sees it), and the user's frames.
    calibration = [("demo photo", demo_photo())] + user_frames
    logger.info("quantizing to int8 (calibration on %d frame(s))", len(calibration))
    result = quantize.Int8Result(kept_fp32=exclude, calibration=[name for name, _ in calibration])
    result.quantized = quantize.quantize_graph(fp32_path, path, calibration, exclude, multiple, min_size)
    frames = weather_check_frames() + user_frames
    result.psnr = quantize.gate(load_graph(path), fp32, frames, config.least_psnr(), multiple, min_size)
    gate = gate_record("the fp32 graph (ONNX Runtime)", config.least_psnr(), result.psnr)
    _set_metadata(path, {"unweather.precision": "int8", **quantize.describe(result), "unweather.gate": gate})
    return result


def _set_metadata(path: Path, entries: dict[str, str]) -> None:
    """Set (add or replace) metadata entries of the ONNX file at `path`, and check it again."""
    import onnx

    model = onnx.load(str(path))
    _replace_metadata(model, {**{p.key: p.value for p in model.metadata_props}, **entries})
    onnx.save(model, str(path))
    _check(path)


def _replace_metadata(model: object, entries: dict[str, str]) -> None:
    """Make `entries` the metadata of the ONNX `model` (in memory)."""
    del model.metadata_props[:]
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise UnweatherError(f"the exported graph fails the ONNX checker: {str(exc).splitlines()[0]}") from exc


def gate_record(reference: str, min_psnr: float, psnr: dict[str, float]) -> str:
    """The "unweather.gate" metadata: what a gate compared with, its threshold and what it measured (JSON)."""

    def db(value: float) -> float | str:
        # JSON has no infinity: identical outputs are recorded as "inf".
        return round(value, 3) if math.isfinite(value) else "inf"

    return json.dumps({"reference": reference, "min_psnr": min_psnr, "worst_psnr": db(min(psnr.values())),
                       "psnr": {k: db(v) for k, v in psnr.items()}})


def reference_output(net: nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """What an exported graph computes, in torch: pad as `Engine` does, run `net`, crop, clamp to [0, 1]."""
    from unweather.models.padding import pad_to_multiple

    h, w = frames.shape[-2:]
    multiple = int(getattr(net, "pad_multiple", 1))
    min_size = int(getattr(net, "min_size", 1))
    with torch.no_grad():
        out = net(pad_to_multiple(frames, multiple, min_size))[..., :h, :w]
    return out.clamp(0.0, 1.0)


def reference_step(net: nn.Module, frames: torch.Tensor, bg: torch.Tensor, weight: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a video network's graph computes, in torch: pad all three as `Engine.step` does, run `net`, crop
    all three, clamp the output to [0, 1]."""
    from unweather.models.padding import pad_to_multiple

    h, w = frames.shape[-2:]
    multiple = int(getattr(net, "pad_multiple", 1))
    min_size = int(getattr(net, "min_size", 1))
    with torch.no_grad():
        out, new_bg, new_weight = net(*(pad_to_multiple(t, multiple, min_size) for t in (frames, bg, weight)))
    return out[..., :h, :w].clamp(0.0, 1.0), new_bg[..., :h, :w], new_weight[..., :h, :w]


def _trace(base: nn.Module, module: nn.Module, path: Path, config: ExportConfig, kept: list[str]) -> object:
    """Export `module` (`base`, or its FP16 wrapper) to `path` with our metadata; run the ONNX checker."""
    import onnx

    multiple = int(getattr(base, "pad_multiple", 1))
    min_size = int(getattr(base, "min_size", 1))
    size = _example_size(multiple, min_size)
    # Batch 2: an example of batch 1 lets torch.export specialise the batch dimension to 1.
    example = (torch.rand(2, 3, size, size),)
    names = [INPUT_NAME], [OUTPUT_NAME]
    stateful = is_stateful(base)
    if stateful:
        bg, weight = _empty_state(base, example[0])
        example = (*example, torch.rand_like(bg), 16.0 * torch.rand_like(weight))
        names = list(VIDEO_INPUTS), list(VIDEO_OUTPUTS)
    saved_levels = _quiet_torch_onnx()
    try:
        logger.info("exporting %s (%s, opset %d)", getattr(base, "arch", type(base).__name__), config.precision,
                    config.opset)
        with torch.no_grad(), warnings.catch_warnings():
            # torch's own pytree deprecation inside the exporter; nothing a user can act on.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
            # A video network's state shares the frame's dimensions; the exporter says it names them once.
            warnings.filterwarnings("ignore", category=UserWarning, message=".*axis name.*will not be used.*")
            torch.onnx.export(module, example, str(path), input_names=names[0], output_names=names[1],
                              opset_version=config.opset, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=_dynamic_shapes(multiple, min_size, len(example)))
    finally:
        for log, level in saved_levels:
            log.setLevel(level)
    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != config.opset:
        raise UnweatherError(f"torch's exporter wrote opset {opset} for this network, not the {config.opset} asked "
                             f"for (it cannot convert every operator down); use --opset {opset}")
    _rename_io(model, *names)
    _drop_stack_traces(model)
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
        # A video network: its state goes in and out beside the frame (VIDEO_INPUTS, VIDEO_OUTPUTS).
        "unweather.stateful": "true" if stateful else "false",
        "unweather.keep_fp32": json.dumps(kept),
        "unweather.torch": torch.__version__,
    }
    _replace_metadata(model, metadata)
    onnx.save(model, str(path))
    _check(path)
    return model


def _drop_stack_traces(model: object) -> None:
    # torch's exporter records each node's Python stack, with the paths of this machine's files;
    # a graph given to others carries no such paths. The module names ("name_scopes") stay.
    for node in model.graph.node:
        keep = [(p.key, p.value) for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        if len(keep) != len(node.metadata_props):
            del node.metadata_props[:]
            for key, value in keep:
                entry = node.metadata_props.add()
                entry.key, entry.value = key, value


def trace_graph(net: nn.Module, precision: str = "fp32", opset: int = DEFAULT_OPSET,
                keep_fp32: Sequence[str] = ()) -> object:
    """The ONNX graph `export_onnx` writes for `net`, without its numerical checks (no file is kept).

    For inspecting a graph's operators and types; a file to run comes from `export_onnx`, whose
    FP16 accuracy gate this skips. INT8 graphs need calibration and come from `export_onnx` only.
    """
    from unweather.models.checkpoint import unwrap

    if precision not in ("fp32", "fp16"):
        raise UnweatherError(f"trace_graph writes fp32 and fp16 graphs, not {precision!r}")
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
    dimensions are named "batch", "height" and "width" (the network's own keep theirs). A video
    network's state inputs are padded like the frame and its state outputs cropped like the output,
    not clamped (the evidence counts frames).
    """
    from onnx import helper, numpy_helper

    from unweather.models.padding import padded_size

    graph = model.graph
    frames, restored = graph.input[0], graph.output[0]
    inputs, outputs = list(graph.input), list(graph.output)
    smallest = padded_size(1, multiple, min_size)
    pads = multiple > 1 or smallest > 1
    # The first input and output keep the names frame graphs have always had inside.
    net_ins = {v.name: f"{_PREFIX}padded" + (f"_{v.name}" if i else "") for i, v in enumerate(inputs)}
    net_outs = {v.name: f"{_PREFIX}network_output" + (f"_{v.name}" if i else "") for i, v in enumerate(outputs)}
    nodes = list(graph.node)
    for node in nodes:
        node.input[:] = [(net_ins[n] if pads else n) if n in net_ins else n for n in node.input]
        node.input[:] = [net_outs.get(n, n) for n in node.input]
        node.output[:] = [net_outs.get(n, n) for n in node.output]

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
            node("Shape", [frames.name], _PREFIX + "frame_shape"),
            node("Gather", [_PREFIX + "frame_shape", const("hw_axes", [2, 3])], hw_name, axis=0),
            node("Mod", [hw_name, mult], _PREFIX + "remainder"),
            node("Sub", [mult, _PREFIX + "remainder"], _PREFIX + "to_next"),
            node("Mod", [_PREFIX + "to_next", mult], _PREFIX + "round_up"),
            node("Add", [hw_name, _PREFIX + "round_up"], _PREFIX + "rounded_hw"),
            node("Max", [_PREFIX + "rounded_hw", const("smallest", [smallest, smallest])], _PREFIX + "padded_hw"),
            node("Sub", [_PREFIX + "padded_hw", hw_name], _PREFIX + "pad_hw"),
            node("Concat", [const("no_pads", [0] * 6), _PREFIX + "pad_hw"], _PREFIX + "pads", axis=0),
        ]
        head += [node("Pad", [v.name, _PREFIX + "pads"], net_ins[v.name], mode="reflect") for v in inputs]
        crop_to = hw_name
    out_type = restored.type.tensor_type.elem_type
    out_dtype = helper.tensor_dtype_to_np_dtype(out_type)
    if crop_to is not None:
        starts, axes = const("crop_starts", [0, 0]), const("crop_axes", [2, 3])
        # The state outputs are cropped straight into their names; the output is then clamped, last.
        tail += [node("Slice", [net_outs[v.name], starts, crop_to, axes], v.name) for v in outputs[1:]]
    else:
        tail += [node("Identity", [net_outs[v.name]], v.name) for v in outputs[1:]]
    clip_in = net_outs[restored.name]
    if crop_to is not None:
        clip_in = _PREFIX + "cropped"
        tail.append(node("Slice", [net_outs[restored.name], starts, crop_to, axes], clip_in))
    tail.append(node("Clip", [clip_in, const("zero", 0.0, out_dtype), const("one", 1.0, out_dtype)],
                     restored.name))
    del graph.node[:]
    graph.node.extend(head + nodes + tail)

    # The network's own inputs and outputs keep their (padded) shapes as value_info.
    inner = []
    if pads:
        inner += [helper.make_tensor_value_info(net_ins[v.name], v.type.tensor_type.elem_type, _dims(v))
                  for v in inputs]
    inner += [helper.make_tensor_value_info(net_outs[v.name], v.type.tensor_type.elem_type, _dims(v))
              for v in outputs]
    graph.value_info.extend(inner)
    for value in (*inputs, *outputs):
        dims = value.type.tensor_type.shape.dim
        for dim, label in zip(dims, ("batch", None, "height", "width")):
            if label is not None:
                dim.Clear()
                dim.dim_param = label


def _dims(value: object) -> list[object]:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in value.type.tensor_type.shape.dim]


def _rename_io(model: object, inputs: Sequence[str] = (INPUT_NAME,), outputs: Sequence[str] = (OUTPUT_NAME,)
               ) -> None:
    # The dynamo exporter honours input_names; make sure every name is exact whatever it did.
    graph = model.graph
    values = [*graph.input, *graph.output]
    wanted = [*inputs, *outputs]
    renames = {v.name: name for v, name in zip(values, wanted) if v.name != name}
    if renames:
        for node in graph.node:
            node.input[:] = [renames.get(n, n) for n in node.input]
            node.output[:] = [renames.get(n, n) for n in node.output]
        for value, name in zip(values, wanted):
            value.name = name


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


def gate_sequence() -> list[torch.Tensor]:
    """The check photo as a short clip with fresh weather in every frame (clean, rain, snow, haze, ...)."""
    frames = [frame for _, frame in weather_check_frames()]
    return [frames[0] if i == 0 else frames[1 + (i - 1) % (len(frames) - 1)] for i in range(_GATE_SEQUENCE)]


def frame_sequences(frames: list[tuple[str, torch.Tensor]]) -> list[tuple[str, list[torch.Tensor]]]:
    """The user's check frames as sequences for a video network's gate: runs of consecutive frames of one size
    (a video's frames spread over it, a folder's images), named after their first frame."""
    sequences: list[tuple[str, list[torch.Tensor]]] = []
    for name, frame in frames:
        if sequences and sequences[-1][1][-1].shape == frame.shape:
            sequences[-1][1].append(frame)
        else:
            sequences.append((name, [frame]))
    return sequences


def fp16_sequence_gate(base: nn.Module, session: object, sequences: list[tuple[str, list[torch.Tensor]]],
                       min_psnr: float, multiple: int, min_size: int, half: nn.Module | None = None
                       ) -> dict[str, float]:
    """`fp16_gate` for a video network: each sequence runs through torch FP32, the graph in ONNX Runtime and
    `half` (the FP16 network in torch), each carrying its own state from an empty one, and every frame's
    output is compared with FP32's; the state is checked for NaN/Inf too.

    Returns:
        PSNR in dB per frame and run ("NAME frame I (onnxruntime)", "NAME frame I (torch fp16)").
    """
    from unweather.models.padding import pad_to_multiple

    results: dict[str, float] = {}
    for name, frames in sequences:
        h, w = frames[0].shape[-2:]
        empty = _empty_state(base, frames[0])
        states = {"fp32": empty, "onnxruntime": empty, "torch fp16": empty}
        for i, frame in enumerate(frames):
            expected, states["fp32"] = _sequence_step(base, frame, states["fp32"], multiple, min_size)
            graph_in = [pad_for_graph(t, multiple, min_size) for t in (frame, *states["onnxruntime"])]
            got = session.run(list(VIDEO_OUTPUTS), dict(zip(VIDEO_INPUTS, (t.numpy() for t in graph_in))))
            out, bg, weight = (torch.from_numpy(t.astype(np.float32))[..., :h, :w] for t in got)
            states["onnxruntime"] = (bg, weight)
            runs = [("onnxruntime", out)]
            if half is not None:
                out16, states["torch fp16"] = _sequence_step(half, frame, states["torch fp16"], multiple, min_size)
                runs.append(("torch fp16", out16))
            for run, got_out in runs:
                bad = sum(int((~torch.isfinite(t)).sum()) for t in (got_out, *states[run]))
                if bad:
                    raise UnweatherError(
                        f"the fp16 network produced {bad} NaN/Inf values on {name} frame {i} ({run}): "
                        f"{_overflow_hint(base, pad_to_multiple(frame, multiple, min_size))}; keep those layers in "
                        "fp32 with --keep-fp32 PATTERN (a module whose output fits fp16)")
                results[f"{name} frame {i} ({run})"] = psnr(got_out.numpy(), expected.numpy())
    worst = min(results, key=results.get)
    if results[worst] < min_psnr:
        raise UnweatherError(
            f"the fp16 network reaches only {results[worst]:.2f} dB against fp32 on {worst}, its state carried "
            f"from the sequence's first frame (threshold {min_psnr:g} dB); keep the sensitive layers in fp32 with "
            "--keep-fp32 PATTERN, or export --precision fp32")
    return results


def _sequence_step(net: nn.Module, frame: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], multiple: int,
                   min_size: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One step of a video network in torch as `Engine.step` takes it: padded in, cropped out (not clamped)."""
    from unweather.models.padding import pad_to_multiple

    h, w = frame.shape[-2:]
    with torch.no_grad():
        out, bg, weight = net(*(pad_to_multiple(t, multiple, min_size) for t in (frame, *state)))
    return out[..., :h, :w], (bg[..., :h, :w], weight[..., :h, :w])


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
            base(x, *base.initial_state(x)) if is_stateful(base) else base(x)
    finally:
        for h in hooks:
            h.remove()
    top = sorted(peaks.items(), key=lambda kv: -kv[1])[:3]
    risky = [f"{n} (|x| up to {v:.3g})" for n, v in top if v >= _FP16_RISK]
    if risky:
        return "activations at risk of fp16 overflow: " + ", ".join(risky)
    return "largest activations: " + ", ".join(f"{n} ({v:.3g})" for n, v in top)


def _to_frame(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0).contiguous()


def _read_image(path: Path) -> torch.Tensor:
    return _to_frame(read_rgb(path))


def center_crop(frame: torch.Tensor, size: int) -> torch.Tensor:
    """The central at most `size` x `size` pixels of `frame` (never resized)."""
    h, w = frame.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return frame[..., top:top + min(h, size), left:left + min(w, size)]


def bundled_photo() -> torch.Tensor:
    """The small photo shipped for accuracy checks, (1, 3, H, W) float32 in [0, 1]."""
    return _read_image(_assets() / "check_photo.jpg")


def weather_check_frames() -> list[tuple[str, torch.Tensor]]:
    """The check photo, clean and under rendered rain, snow and haze (scripts/check_weather.py), as (name, frame)."""
    weathers = [(f"bundled photo, {w}", _read_image(_assets() / f"check_{w}.jpg")) for w in ("rain", "snow", "haze")]
    return [("bundled photo", bundled_photo()), *weathers]


def demo_photo() -> torch.Tensor:
    """The 800 x 450 photo shipped for the demo (INT8 calibration's default frame), (1, 3, H, W) in [0, 1]."""
    return _read_image(_assets() / "demo_photo.jpg")


def _assets() -> Path:
    return Path(__file__).resolve().parent.parent / "assets"


def load_frames(source: str | os.PathLike[str]) -> list[tuple[str, torch.Tensor]]:
    """Frames to calibrate and check on, center-cropped to at most 512 x 512, as (name, frame).

    Args:
        source: a folder of images (sorted, the first 16), an image, or a video (16 frames spread
            over its length).
    """
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if is_image_file(p))
        if not files:
            raise UnweatherError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {source}")
        if len(files) > _MAX_CALIBRATION_FRAMES:
            logger.info("using the first %d of %d calibration frames", _MAX_CALIBRATION_FRAMES, len(files))
        frames = [(p.name, _read_image(p)) for p in files[:_MAX_CALIBRATION_FRAMES]]
    elif not source.is_file():
        raise UnweatherError(f"calibration frames not found: {source} (a folder of images, an image or a video)")
    elif is_image_file(source):
        frames = [(source.name, _read_image(source))]
    elif is_video_file(source):
        frames = video_frames(source, _MAX_CALIBRATION_FRAMES)
    else:
        raise UnweatherError(f"{source} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a video "
                             f"({', '.join(VIDEO_EXTENSIONS)})")
    return [(name, center_crop(frame, _MAX_CHECK_SIZE)) for name, frame in frames]


def video_frames(path: Path, count: int) -> list[tuple[str, torch.Tensor]]:
    """Up to `count` frames spread evenly over the video at `path`, named "FILE frame N"."""
    import av

    from unweather.media import open_video

    with open_video(path) as (container, stream):
        # Every step-th frame; a container that does not count its frames gives its first `count`.
        step = max(1, (stream.frames or 0) // count)
        frames = []
        try:
            for index, frame in enumerate(container.decode(stream)):
                if index % step == 0:
                    frames.append((f"{path.name} frame {index}", _to_frame(frame.to_ndarray(format="rgb24"))))
                    if len(frames) == count:
                        break
        except av.FFmpegError as exc:
            raise UnweatherError(f"cannot decode {path}: {exc}") from exc
    if not frames:
        raise UnweatherError(f"no frames could be decoded from {path}")
    return frames


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
    """The precision an ONNX graph computes in: its metadata, else int8 for a QDQ graph, else fp16 when
    most weights are FP16."""
    meta = read_onnx_metadata(path)
    if meta.get("unweather.precision"):
        return meta["unweather.precision"]
    model = load_graph(path)
    if {"QuantizeLinear", "DequantizeLinear"} & set(graph_operators(model)):
        return "int8"
    counts = initializer_types(model)
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
