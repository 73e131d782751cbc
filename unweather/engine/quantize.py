"""INT8 graphs: static QDQ quantization of an exported FP32 graph, its accuracy gate, and the nodes that lose most.

The INT8 graph is the FP32 export with QuantizeLinear/DequantizeLinear pairs on every convolution's
input and weights: INT8 with zero points of 0 (symmetric), weights per output channel, biases left in
FP32. That is TensorRT's explicit-quantization format (its parser takes Q/DQ only with zero points
of 0 and INT8 data, no INT32 biases; quantize the inputs of weighted layers, not their outputs), and
ONNX Runtime's CPU provider runs the same file. Activation scales come from the min and max over
calibration frames.

Only convolutions are quantized, and only where they read: they hold nearly all the arithmetic,
while what their outputs feed (the residual correction added to the frame, the exponential of the
haze gain, the sigmoid gates of the global context, the skip additions) is where one INT8 step
weighs most in the output. Quantizing convolution outputs and every reader of a quantized tensor
too (ONNX Runtime's default) took the `fast` model from 48 dB to 26 dB median, 34 dB to 15 dB
worst, against FP32 over 27 rainy, snowy and hazy 640x360 frames (benchmarks/int8.py).

ONNX Runtime runs such a graph on the CPU as float convolutions over dequantized weights and
activations (it fuses INT8 kernels only where an output is quantized too): an accuracy-faithful
file for TensorRT and other INT8 runtimes, not a CPU speed-up. On an AVX2 CPU without VNNI no INT8
flavour measured was faster than the FP32 graph (benchmarks/results/int8*.json).

The gate runs the INT8 graph and the FP32 graph in ONNX Runtime on real frames and wants a least PSNR;
below it, each quantized convolution is put back in float on its own and the ones whose return gains
most are named (`--keep-fp32` keeps them in float: `nodes_to_exclude`).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from unweather.engine.export import INPUT_NAME, OUTPUT_NAME, center_crop, psnr
from unweather.errors import UnweatherError
from unweather.models.padding import pad_for_graph

logger = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv",)
# The nodes named when the gate refuses, and the largest frame side the search runs at (each
# candidate is one more ONNX Runtime session and run).
_SUGGESTED = 3
_SEARCH_SIZE = 256


@dataclass
class Int8Result:
    """What quantization wrote and measured.

    Attributes:
        psnr: PSNR in dB of the INT8 graph against the FP32 graph, per gate frame.
        kept_fp32: the convolutions left in float (node names).
        calibration: the names of the calibration frames.
        quantized: how many convolutions run in INT8.
    """

    psnr: dict[str, float] = field(default_factory=dict)
    kept_fp32: list[str] = field(default_factory=list)
    calibration: list[str] = field(default_factory=list)
    quantized: int = 0


def quantizable_nodes(model: object) -> dict[str, str]:
    """The nodes INT8 quantization covers, by node name, with the module each comes from ("" if unknown).

    The module is the path torch's exporter records in the node's "pkg.torch.onnx.name_scopes"
    metadata (e.g. "enc1.0.conv1").
    """
    nodes = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS:
            scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
            nodes[node.name] = _module_of(scopes)
    return nodes


def _module_of(scopes: str) -> str:
    # "['', 'enc1', 'enc1.0', 'enc1.0.conv1', 'conv2d_2']": the module is the last scope but the op's own.
    try:
        names = ast.literal_eval(scopes) if scopes else []
    except (ValueError, SyntaxError):
        return ""
    return str(names[-2]) if len(names) >= 2 else ""


def select_nodes(model: object, patterns: Sequence[str]) -> list[str]:
    """The quantizable nodes that `patterns` name: shell-style patterns over node or module names.

    A pattern may hold several, separated by commas ("node_conv2d_3,head.*").

    Raises:
        UnweatherError: a pattern matches no quantizable node.
    """
    nodes = quantizable_nodes(model)
    chosen: list[str] = []
    for pattern in (p.strip() for text in patterns for p in text.split(",")):
        if not pattern:
            continue
        matched = [n for n, m in nodes.items()
                   if fnmatch.fnmatchcase(n, pattern) or (m and fnmatch.fnmatchcase(m, pattern))]
        if not matched:
            examples = ", ".join(_label(n, m) for n, m in list(nodes.items())[:6])
            raise UnweatherError(f"--keep-fp32 {pattern!r} matches no convolution of the graph (node or module "
                                 f"names), e.g. {examples}")
        chosen.extend(n for n in matched if n not in chosen)
    return chosen


def _label(node: str, module: str) -> str:
    return f"{node} ({module})" if module else node


def quantize_graph(fp32_path: Path, out_path: Path, calibration: list[tuple[str, torch.Tensor]],
                   exclude: Sequence[str] = (), multiple: int = 1, min_size: int = 1) -> int:
    """Write the INT8 QDQ graph of the FP32 graph at `fp32_path` to `out_path`, calibrated on `calibration`.

    Args:
        fp32_path: an FP32 graph written by `unweather.engine.export` (it pads frames itself).
        out_path: the INT8 graph to write.
        calibration: (name, frame) pairs, frames (1, 3, H, W) in [0, 1].
        exclude: convolutions (node names) left in float.
        multiple: the network's size multiple (frames too small for the graph are padded to it).
        min_size: the network's least height and width.

    Returns:
        How many convolutions were quantized.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self._frames = iter([pad_for_graph(frame, multiple, min_size).numpy() for _, frame in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            frame = next(self._frames, None)
            return None if frame is None else {INPUT_NAME: frame}

    with tempfile.TemporaryDirectory(prefix="unweather-int8-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        # ONNX Runtime's own preparation (shape inference, basic optimisation); its symbolic shape
        # inference cannot follow the in-graph padding's dynamic sizes, ONNX's own can.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out_path), Frames(), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=False,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                           "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS)})
    model = onnx.load(str(out_path))
    _float_outside_convolutions(model)
    if exclude:
        # The quantizer leaves an excluded convolution's weights in float, but its input still passes
        # through a Q/DQ pair when another convolution reads the same tensor: feed it the float tensor,
        # so a convolution kept in float reads and computes in float.
        fp32 = onnx.load(str(fp32_path))
        reference = {n.name: n for n in fp32.graph.node}
        for node in model.graph.node:
            if node.name in exclude:
                _feed_float(model, node, reference[node.name], fp32)
    _drop_unused(model)
    # ONNX Runtime's preparation declares every operator domain it knows (com.microsoft, ...); the
    # graph uses the standard one only, and TensorRT's parser reads any other as needing a plugin.
    used = {n.domain for n in model.graph.node} | {"", "ai.onnx"}
    kept = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    onnx.save(model, str(out_path))
    return len(quantized_nodes(model))


def quantized_nodes(model: object) -> list[str]:
    """The convolutions of a QDQ graph that read dequantized (INT8) input."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.input[0] in dequantized]


def _float_outside_convolutions(model: object) -> None:
    """Give every reader of a quantized activation other than a convolution the float tensor instead.

    The quantizer hands all readers of a tensor the dequantized copy once one convolution quantizes
    it: the residual additions would then carry INT8 steps around the convolutions.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    source = {}
    for node in model.graph.node:
        quantize = producers.get(node.input[0])
        if node.op_type == "DequantizeLinear" and quantize is not None and quantize.op_type == "QuantizeLinear":
            source[node.output[0]] = quantize.input[0]
    for node in model.graph.node:
        if node.op_type not in QUANTIZED_OPS:
            node.input[:] = [source.get(name, name) for name in node.input]


def _feed_float(model: object, node: object, original: object, fp32: object) -> None:
    """Give `node` of the QDQ graph `model` the float inputs it has in the FP32 graph (`original`, of `fp32`)."""
    node.input[:] = original.input
    present = {t.name for t in model.graph.initializer}
    weights = {t.name: t for t in fp32.graph.initializer}
    model.graph.initializer.extend(weights[n] for n in original.input if n in weights and n not in present)


def _drop_unused(model: object) -> None:
    """Remove nodes whose outputs nothing reads (Q/DQ pairs left behind), then unread initializers."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(t)


def gate(int8_model: object, fp32_model: object, frames: list[tuple[str, torch.Tensor]], min_psnr: float,
         multiple: int = 1, min_size: int = 1) -> dict[str, float]:
    """PSNR of the INT8 graph against the FP32 graph on `frames`; raise below `min_psnr` naming the nodes to keep.

    Returns:
        PSNR in dB per frame.

    Raises:
        UnweatherError: NaN/Inf in the INT8 output, or a frame below `min_psnr` (the message names the
            convolutions whose return to float gains most, for `--keep-fp32`).
    """
    int8, fp32 = _session(int8_model), _session(fp32_model)
    results: dict[str, float] = {}
    for name, frame in frames:
        h, w = frame.shape[-2:]
        x = pad_for_graph(frame, multiple, min_size).numpy()
        expected = _run(fp32, x)[..., :h, :w]
        got = _run(int8, x)[..., :h, :w]
        if not np.isfinite(got).all():
            raise UnweatherError(f"the int8 graph produced {int((~np.isfinite(got)).sum())} NaN/Inf values on {name}; "
                                 "export --precision fp32 or fp16")
        results[name] = psnr(got, expected)
    worst = min(results, key=results.get)
    if results[worst] < min_psnr:
        logger.info("int8 graph at %.2f dB on %s, below %g dB: trying each convolution in float", results[worst],
                    worst, min_psnr)
        frame = center_crop(dict(frames)[worst], _SEARCH_SIZE)
        ranked = rank_nodes(int8_model, fp32_model, pad_for_graph(frame, multiple, min_size).numpy())
        labels = quantizable_nodes(fp32_model)
        top = [(n, gain) for n, gain in ranked[:_SUGGESTED] if gain > 0.05]
        lost = (f"the int8 graph reaches only {results[worst]:.2f} dB against fp32 on {worst} "
                f"(threshold {min_psnr:g} dB)")
        if not top:
            raise UnweatherError(f"{lost}; no single convolution gains when kept in float: export --precision fp16 "
                                 "or fp32")
        named = ", ".join(f"{_label(n, labels.get(n, ''))} +{gain:.1f} dB" for n, gain in top)
        raise UnweatherError(f"{lost}; the convolutions that lose most (gain when kept in float alone): {named}; keep "
                             f"them in float with --keep-fp32 {','.join(n for n, _ in top)}, or export --precision "
                             "fp16 or fp32")
    return results


def rank_nodes(int8_model: object, fp32_model: object, frame: np.ndarray) -> list[tuple[str, float]]:
    """Each quantized convolution with the PSNR it gains, on `frame`, when it alone runs in float; best first.

    A convolution is put back in float as `--keep-fp32` does it: it reads the float tensors it reads
    in the FP32 graph (its input before the Q/DQ pair, its original weights).
    """
    from onnx import ModelProto

    expected = _run(_session(fp32_model), frame)
    baseline = psnr(_run(_session(int8_model), frame), expected)
    reference = {n.name: n for n in fp32_model.graph.node}
    quantized = set(quantized_nodes(int8_model))
    gains = []
    for index, node in enumerate(int8_model.graph.node):
        if node.name not in quantized or node.name not in reference:
            continue
        variant = ModelProto()
        variant.CopyFrom(int8_model)
        _feed_float(variant, variant.graph.node[index], reference[node.name], fp32_model)
        gains.append((node.name, psnr(_run(_session(variant), frame), expected) - baseline))
    return sorted(gains, key=lambda item: -item[1])


def _session(model: object) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


def _run(session: object, x: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].astype(np.float32)


def describe(result: Int8Result) -> dict[str, str]:
    """The graph metadata that records how the INT8 graph was made."""
    import onnxruntime as ort

    quantization = {"format": "QDQ", "activations": "int8, symmetric, per tensor", "weights":
                    "int8, symmetric, per output channel", "bias": "fp32", "operators": list(QUANTIZED_OPS),
                    "calibration": "min/max", "calibration_frames": result.calibration, "quantized": result.quantized,
                    "onnxruntime": ort.__version__}
    return {"unweather.quantization": json.dumps(quantization), "unweather.keep_fp32": json.dumps(result.kept_fp32)}
