"""ONNX export: ONNX Runtime vs torch parity at two sizes from one file, the FP16 graph and its accuracy gate,
and every operator of every exported graph in TensorRT's list of natively supported ONNX operators."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from unweather.cli import main
from unweather.engine.export import (
    ExportConfig,
    bundled_photo,
    export_onnx,
    graph_operators,
    initializer_types,
    psnr,
    trace_graph,
)
from unweather.engine.onnxruntime_backend import OnnxRuntimeEngine
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
            expected = PadCrop(net)(x)
        diff = float((engine(x) - expected).abs().max())
        print(f"{name} fp32 {size[0]}x{size[1]}: max |ORT - torch| = {diff:.2e}")
        assert diff < 1e-4


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


@pytest.mark.parametrize("name, precision", [(n, p) for n in (*STUDENTS, "msbdn") for p in ("fp32", "fp16")])
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
    if precision == "fp16":
        assert "float" not in initializer_types(model), "an fp16 graph stores fp32 weights"
    missing = [op for op in graph_operators(model) if op not in supported]
    assert not missing, f"{name} {precision}: not native in TensorRT: {missing}"
    float_types = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16"}
    value_types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.output)}
    for node in model.graph.node:
        for output in node.output:
            kind = float_types.get(value_types.get(output))
            if kind is not None:
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
    with pytest.raises(UnweatherError, match="matches no module"):
        export_onnx(_Overflowing(), tmp_path / "a.onnx", ExportConfig(precision="fp16", keep_fp32=("nothing*",)))
    with pytest.raises(UnweatherError, match="not found"):
        export_onnx(net, tmp_path / "a.onnx", ExportConfig(precision="fp16", calibration_frames=tmp_path / "none"))
