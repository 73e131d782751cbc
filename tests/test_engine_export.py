"""ONNX export: ONNX Runtime vs torch parity at any frame size from one file (the graph pads, crops and clamps
itself), the FP16 graph and its accuracy gate, every operator of every exported graph (the INT8 QDQ graph too) in
TensorRT's list of natively supported ONNX operators, and exported files readable by other users (the umask).
INT8 export itself: tests/test_engine_int8.py."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from unweather.cli import main
from unweather.engine.export import (
    GRAPH_FORMAT,
    ExportConfig,
    bundled_photo,
    cached_export,
    export_onnx,
    graph_operators,
    initializer_types,
    psnr,
    read_onnx_metadata,
    trace_graph,
)
from unweather.engine.onnxruntime_backend import OnnxRuntimeEngine
from unweather.engine.torch_backend import TorchEngine
from unweather.errors import UnweatherError
from unweather.models import PadCrop, build

STUDENTS = ("student_small", "student_base")
TRT_OPERATORS = Path(__file__).parent / "data" / "tensorrt_onnx_operators.tsv"
# onnx-tensorrt docs/operators.md for TensorRT 10.0: "supports operators in the inclusive range of opset 9 to opset 20".
TRT_OPSETS = range(9, 21)


def _active_student(name: str) -> nn.Module:
    """A student whose every layer matters: default-initialised convolutions, not the near-identity start."""
    torch.manual_seed(7)
    net = build(name).eval()
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return net


class _Exports:
    """Exports made once per test module: (model, precision) -> (network, path)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made: dict[tuple[str, str], tuple[nn.Module, Path]] = {}

    def get(self, name: str, precision: str) -> tuple[nn.Module, Path]:
        key = (name, precision)
        if key not in self.made:
            if name in STUDENTS:
                net = _active_student(name)
            else:
                # MSBDN with 2 of its 18 bottleneck blocks: the same operators, a tenth of the export time.
                net = build(name, res_blocks=2).eval() if name == "msbdn" else build(name).eval()
            path = self.folder / f"{name}-{precision}.onnx"
            export_onnx(net, path, ExportConfig(precision=precision))
            self.made[key] = (net, path)
        return self.made[key]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return _Exports(tmp_path_factory.mktemp("onnx"))


def _trt_operators() -> dict[str, set[str]]:
    with TRT_OPERATORS.open() as f:
        rows = csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t")
        return {row["operator"]: set(row["types"].split(",")) for row in rows}


@pytest.mark.parametrize("name", [*STUDENTS, "msbdn"])
def test_onnxruntime_matches_torch_fp32_at_two_sizes_from_one_file(exports, name):
    net, path = exports.get(name, "fp32")
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["frames"] and [o.name for o in model.graph.output] == ["restored"]
    assert model.opset_import[0].version >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[2].dim_param and dims[3].dim_param and dims[1].dim_value == 3
    engine = OnnxRuntimeEngine(path, threads=1)
    for size in ((64, 64), (48, 80)):
        x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(sum(size)))
        with torch.no_grad():
            expected = PadCrop(net)(x).clamp(0, 1)
        diff = float((engine(x) - expected).abs().max())
        print(f"{name} fp32 {size[0]}x{size[1]}: max |ORT - torch| = {diff:.2e}")
        assert diff < 1e-4


def _session(path: Path) -> ort.InferenceSession:
    """The graph alone in ONNX Runtime, as another program would run it (no unweather Engine around it)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


# 16:9 frames that are no multiple of 16 (each side off by one more), small odd sizes, and multiples of 16.
PARITY_SIZES = {"student_small": [(360, 640), (362, 642), (33, 47), (64, 96), (1080, 1920)],
                "student_base": [(360, 640), (362, 642), (33, 47), (64, 96)],
                "msbdn": [(33, 47), (20, 40), (64, 96)]}  # min_size 32: 20 rows are padded to 32


@pytest.mark.parametrize("name", [*STUDENTS, "msbdn"])
def test_the_graph_alone_takes_any_frame_size_and_matches_the_torch_engine(exports, name):
    net, path = exports.get(name, "fp32")
    meta = read_onnx_metadata(path)
    assert meta["unweather.pads_in_graph"] == "reflect" and meta["unweather.graph_format"] == str(GRAPH_FORMAT)
    assert meta["unweather.min_frame_side"] == ("17" if name == "msbdn" else "9") and meta["unweather.clamped"]
    session = _session(path)
    torch_engine = TorchEngine(net)
    for h, w in PARITY_SIZES[name]:
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        expected = torch_engine(x)
        got = session.run(["restored"], {"frames": x.numpy()})[0]
        assert got.shape == tuple(x.shape)
        diff = float(np.abs(got - expected.numpy()).max())
        print(f"{name} fp32 graph alone {w}x{h}: max |ORT - torch engine| = {diff:.2e}")
        assert diff < 1e-3


def test_the_engine_pads_only_frames_too_small_for_the_graph(exports):
    net, path = exports.get("student_small", "fp32")
    engine = OnnxRuntimeEngine(path, threads=1)
    assert engine.pads_in_graph and engine.output_clamped
    seen: list[tuple[int, ...]] = []
    infer = engine.infer
    engine.infer = lambda frames: (seen.append(tuple(frames.shape)), infer(frames))[1]
    torch_engine = TorchEngine(net)
    for h, w in ((33, 47), (9, 9), (8, 40), (5, 7), (1, 1)):
        x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h + w))
        assert float((engine(x) - torch_engine(x)).abs().max()) < 1e-3
    # Frames the graph's single reflection covers go in as they are (no padding twice); 8 rows need 8 more,
    # which one reflection of 8 rows cannot give, so those frames are padded to 16 before the graph.
    assert seen == [(2, 3, 33, 47), (2, 3, 9, 9), (2, 3, 16, 48), (2, 3, 16, 16), (2, 3, 16, 16)]
    with pytest.raises(Exception, match="Pad reflect"):
        _session(path).run(["restored"], {"frames": np.zeros((1, 3, 8, 40), np.float32)})


@pytest.mark.parametrize("name", STUDENTS)
def test_fp16_graph_has_fp16_weights_fp32_io_and_passes_40_db_on_the_photo(exports, name):
    net, path = exports.get(name, "fp16")
    model = onnx.load(str(path))
    types = initializer_types(model)
    assert types.get("float16", 0) > 0 and "float" not in types, types
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    engine = OnnxRuntimeEngine(path, precision="fp16", threads=1)
    photo = bundled_photo()
    out = engine(photo)
    with torch.no_grad():
        expected = net(photo)
    assert torch.isfinite(out).all()
    value = psnr(out.numpy(), expected.numpy())
    print(f"{name} fp16 graph vs torch fp32 on the bundled photo: {value:.2f} dB")
    assert value >= 40.0
    # Not trivially equal either: FP16 arithmetic leaves a visible trace.
    assert float((out - expected).abs().max()) > 0
    # The fp16 graph pads, crops and clamps too: alone, at a size that is no multiple of 16.
    odd = photo[..., :250, :243]
    got = _session(path).run(["restored"], {"frames": odd.numpy()})[0]
    assert got.shape == tuple(odd.shape) and got.min() >= 0 and got.max() <= 1
    value = psnr(got, TorchEngine(net)(odd).numpy())
    print(f"{name} fp16 graph alone at 243x250 vs the torch fp32 engine: {value:.2f} dB")
    assert value >= 40.0


@pytest.mark.parametrize("name, precision", [(n, p) for n in (*STUDENTS, "msbdn") for p in ("fp32", "fp16")]
                         + [("student_small", "int8")])
def test_every_exported_operator_is_native_in_tensorrt(exports, name, precision):
    if name == "msbdn" and precision == "fp16":
        # The same exporter without its accuracy gate: MSBDN in torch fp16 on a CPU takes minutes.
        model = trace_graph(build("msbdn", res_blocks=1).eval(), "fp16")
    else:
        model = onnx.load(str(exports.get(name, precision)[1]))
    supported = _trt_operators()
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset in TRT_OPSETS, f"opset {opset} is outside what TensorRT 10.0's parser takes"
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}, "custom domains need plugins"
    model = onnx.shape_inference.infer_shapes(model)
    # The padding in front of the network, the crop and the clamp behind it are in the list too.
    assert {"Pad", "Slice", "Clip"} <= set(graph_operators(model))
    pads = [n for n in model.graph.node if n.op_type == "Pad" and n.name.startswith("unweather_")]
    assert [onnx.helper.get_attribute_value(a) for a in pads[0].attribute if a.name == "mode"] == [b"reflect"]
    assert model.graph.node[-1].op_type == "Clip" and model.graph.node[-1].output[0] == "restored"
    if name in STUDENTS:
        # The stem reads the frame with one strided convolution: a Transpose there cost a tenth of `fast` on a CPU.
        assert "Transpose" not in graph_operators(model)
    if precision == "fp16":
        assert "float" not in initializer_types(model), "an fp16 graph stores fp32 weights"
    if precision == "int8":
        assert {"QuantizeLinear", "DequantizeLinear"} <= set(graph_operators(model))
    missing = [op for op in graph_operators(model) if op not in supported]
    assert not missing, f"{name} {precision}: not native in TensorRT: {missing}"
    types = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.INT8: "INT8"}
    initializers = {t.name: t for t in model.graph.initializer}
    value_types = {v.name: v.type.tensor_type.elem_type
                   for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)}
    value_types.update({name: t.data_type for name, t in initializers.items()})
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            # The table's types are what these take in (float to quantize, INT8 to dequantize), and the
            # parser wants zero points of 0: explicit, symmetric quantization.
            kind = types.get(value_types.get(node.input[0]))
            assert kind in supported[node.op_type], f"{node.op_type} of {kind} is not native in TensorRT"
            zero_point = onnx.numpy_helper.to_array(initializers[node.input[2]])
            assert zero_point.dtype == np.int8 and not zero_point.any(), f"{node.name}: zero point not 0"
            continue
        for output in node.output:
            kind = types.get(value_types.get(output))
            if kind in ("FP32", "FP16"):
                assert kind in supported[node.op_type], f"{node.op_type} in {kind} is not native in TensorRT"


def test_export_command_prints_the_check(tmp_path, capsys):
    out = tmp_path / "identity.onnx"
    assert main(["export", "--model", "identity", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "largest |ONNX Runtime - torch fp32|" in text


class _Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class _Overflowing(nn.Module):
    """Scales by 1000, squares (up to 1e6: beyond FP16's 65504), scales back: fine in FP32 only."""

    pad_multiple = 1

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Conv2d(3, 3, 1)
        self.tail = nn.Sequential(_Square(), nn.Conv2d(3, 3, 1))
        with torch.no_grad():
            self.scale.weight.copy_(1000 * torch.eye(3)[:, :, None, None])
            self.tail[1].weight.copy_(1e-6 * torch.eye(3)[:, :, None, None])
            self.scale.bias.zero_()
            self.tail[1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.scale(x))


class _Cancelling(nn.Module):
    """x + 1000 - 1000: exact in FP32, steps of 0.5 in FP16, so about 16 dB."""

    pad_multiple = 1

    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.tensor(1000.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift - self.shift


def test_fp16_gate_refuses_inf_and_names_the_option(tmp_path):
    out = tmp_path / "overflow.onnx"
    with pytest.raises(UnweatherError, match=r"NaN/Inf.*--keep-fp32") as info:
        export_onnx(_Overflowing(), out, ExportConfig(precision="fp16"))
    assert "tail.0 (|x| up to" in str(info.value)  # the largest activations are named
    assert not out.exists()
    report = export_onnx(_Overflowing(), out, ExportConfig(precision="fp16", keep_fp32=("tail*",)))
    assert out.is_file() and report.kept_fp32 == ["tail"]
    assert min(report.psnr.values()) >= 40


def test_fp16_gate_fails_below_the_threshold(tmp_path):
    with pytest.raises(UnweatherError, match=r"only \d+\.\d+ dB.*threshold 40 dB.*--keep-fp32"):
        export_onnx(_Cancelling(), tmp_path / "c.onnx", ExportConfig(precision="fp16"))
    report = export_onnx(_Cancelling(), tmp_path / "c.onnx", ExportConfig(precision="fp16", min_psnr=10))
    assert 10 <= min(report.psnr.values()) < 40
    # What the gate measured travels with the file.
    gate = json.loads(read_onnx_metadata(tmp_path / "c.onnx")["unweather.gate"])
    assert gate["min_psnr"] == 10 and gate["worst_psnr"] == pytest.approx(min(report.psnr.values()), abs=1e-3)
    assert set(gate["psnr"]) == set(report.psnr)


def test_calibration_frames_are_checked_too(tmp_path):
    import cv2

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(frames / "a.png"), rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    report = export_onnx(_Overflowing(), tmp_path / "o.onnx",
                         ExportConfig(precision="fp16", keep_fp32=("tail",), calibration_frames=frames))
    assert {k.rsplit(" (", 1)[0] for k in report.psnr} == {"bundled photo", "a.png"}


def test_export_options_are_checked(tmp_path):
    net = build("identity")
    with pytest.raises(UnweatherError, match="opset 13 is too old"):
        export_onnx(net, tmp_path / "a.onnx", ExportConfig(opset=13))
    with pytest.raises(UnweatherError, match="only to --precision fp16"):
        export_onnx(net, tmp_path / "a.onnx", ExportConfig(keep_fp32=("x",)))
    # An fp32 graph has no gate: its options are refused rather than ignored.
    with pytest.raises(UnweatherError, match="--min-psnr applies only to --precision fp16 or int8"):
        export_onnx(net, tmp_path / "a.onnx", ExportConfig(min_psnr=30))
    with pytest.raises(UnweatherError, match="--calibration-frames applies only to --precision fp16 or int8"):
        export_onnx(net, tmp_path / "a.onnx", ExportConfig(calibration_frames=tmp_path))
    with pytest.raises(UnweatherError, match="supports fp32, fp16, int8, not 'bf16'"):
        export_onnx(net, tmp_path / "a.onnx", ExportConfig(precision="bf16"))
    with pytest.raises(UnweatherError, match="matches no module"):
        export_onnx(_Overflowing(), tmp_path / "a.onnx", ExportConfig(precision="fp16", keep_fp32=("nothing*",)))
    with pytest.raises(UnweatherError, match="not found"):
        export_onnx(net, tmp_path / "a.onnx", ExportConfig(precision="fp16", calibration_frames=tmp_path / "none"))


# ---- outputs clamped to [0, 1] by every backend ----------------------------------------------------------


class _Amplifier(nn.Module):
    """3x - 1: values from -1 to 2 for frames in [0, 1], so only a clamp keeps the output in range."""

    pad_multiple = 16

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(3 * torch.eye(3)[:, :, None, None])
            self.conv.bias.fill_(-1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _saturated(h: int = 40, w: int = 50) -> torch.Tensor:
    """A frame of only black and white pixels (and a grey band): the extremes a network overshoots on."""
    x = (torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    x[..., :4, :] = 0.5
    return x


def test_every_backend_clamps_its_output_to_0_1(tmp_path):
    net = _Amplifier().eval()
    x = _saturated()
    with torch.no_grad():
        raw = PadCrop(net)(x)
    assert float(raw.min()) < -0.9 and float(raw.max()) > 1.9  # without a clamp the output leaves [0, 1]
    path = tmp_path / "amplifier.onnx"
    export_onnx(net, path)
    outputs = {
        "torch engine": TorchEngine(net)(x),
        "onnxruntime engine": OnnxRuntimeEngine(path, threads=1)(x),
        "graph alone": torch.from_numpy(_session(path).run(["restored"], {"frames": x.numpy()})[0]),
    }
    for name, out in outputs.items():
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0, name
        torch.testing.assert_close(out, raw.clamp(0, 1), atol=1e-6, rtol=0, msg=name)


def test_a_graph_made_elsewhere_is_clamped_by_the_engine(tmp_path):
    from onnx import TensorProto, helper

    # 3x - 1, without our metadata: the engine pads and clamps around it.
    three = helper.make_tensor("three", TensorProto.FLOAT, [], [3.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("Mul", ["frames", "three"], ["scaled"]), helper.make_node("Sub", ["scaled", "one"],
                                                                                         ["restored"])]
    shape = ["N", 3, "H", "W"]
    graph = helper.make_graph(nodes, "amplifier", [helper.make_tensor_value_info("frames", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("restored", TensorProto.FLOAT, shape)],
                              initializer=[three, one])
    path = tmp_path / "elsewhere.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    engine = OnnxRuntimeEngine(path, threads=1)
    assert not engine.pads_in_graph and not engine.output_clamped
    out = engine(_saturated())
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_the_torch_engine_clamps_without_touching_the_callers_frames():
    engine = TorchEngine(build("identity"))  # the network hands back its input tensor
    x = torch.full((1, 3, 16, 16), 1.5)
    x[..., :8, :] = -0.5
    out = engine(x)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    assert float(x.max()) == 1.5 and float(x.min()) == -0.5


# ---- files: permissions and the export cache -------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_exported_graphs_get_the_permissions_of_an_ordinary_new_file(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        export_onnx(build("identity"), tmp_path / "identity.onnx")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "identity.onnx").stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["identity.onnx"]  # the temporary file is gone


def test_a_failed_export_leaves_no_file(tmp_path):
    with pytest.raises(UnweatherError, match="NaN/Inf"):
        export_onnx(_Overflowing(), tmp_path / "o.onnx", ExportConfig(precision="fp16"))
    assert list(tmp_path.iterdir()) == []


def test_cached_exports_are_keyed_by_the_graph_format(tmp_path):
    from unweather.engine.sources import network_digest

    net = build("identity")
    # A graph at the name the previous layout (padded frames only) was cached under is never picked up.
    stale = tmp_path / "onnx" / f"identity-fp32-opset18-{network_digest(net)[:16]}.onnx"
    stale.parent.mkdir()
    stale.write_bytes(b"an old graph")
    path = cached_export(net, "fp32", tmp_path)
    assert path != stale and f"-g{GRAPH_FORMAT}-" in path.name
    assert read_onnx_metadata(path)["unweather.graph_format"] == str(GRAPH_FORMAT)
    assert stale.read_bytes() == b"an old graph"
    assert cached_export(net, "fp32", tmp_path) == path
