"""A video network's ONNX graph: its state as explicit inputs and outputs, parity with torch over frames that carry
the state (any frame size, the graph pads and crops all three), the FP16 gate over a sequence, TensorRT's native
operators, and the ONNX Runtime engine's `step`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from unweather.cli import main
from unweather.engine import open as open_engine
from unweather.engine.export import (
    VIDEO_INPUTS,
    VIDEO_OUTPUTS,
    ExportConfig,
    export_onnx,
    graph_operators,
    initializer_types,
    read_onnx_metadata,
)
from unweather.engine.onnxruntime_backend import OnnxRuntimeEngine
from unweather.engine.session import VideoSession
from unweather.engine.torch_backend import TorchEngine
from unweather.errors import UnweatherError
from unweather.models import build

TRT_OPERATORS = Path(__file__).parent / "data" / "tensorrt_onnx_operators.tsv"


def _active_video() -> nn.Module:
    """A video student whose every layer matters: default-initialised convolutions, not the near-identity start."""
    torch.manual_seed(3)
    net = build("video_small").eval()
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            module.reset_parameters()
    return net


def _clip(frames: int, height: int, width: int) -> torch.Tensor:
    """A scene panning one pixel a frame, with fresh noise (the weather) in every frame."""
    g = torch.Generator().manual_seed(height * width)
    scene = torch.rand(1, 3, height // 4 + 1, width // 4 + 2, generator=g)
    scene = torch.nn.functional.interpolate(scene, size=(height, width + frames), mode="bilinear")
    noise = (torch.rand(frames, 1, height, width, generator=g) > 0.97).float()
    return torch.cat([scene[..., i:i + width] for i in range(frames)]).clamp(0, 1) * (1 - noise) + noise


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video-onnx")
    net = _active_video()
    reports = {p: export_onnx(net, folder / f"video-{p}.onnx", ExportConfig(precision=p)) for p in ("fp32", "fp16")}
    return net, reports


def test_the_graph_takes_and_returns_the_state_with_dynamic_sizes_and_static_ranks(exported):
    _, reports = exported
    model = onnx.load(str(reports["fp32"].path))
    assert [i.name for i in model.graph.input] == list(VIDEO_INPUTS) == ["input", "background", "weight"]
    assert [o.name for o in model.graph.output] == list(VIDEO_OUTPUTS) == ["output", "background_out", "weight_out"]
    for value, channels in zip((*model.graph.input, *model.graph.output), (3, 6, 1) * 2):
        dims = value.type.tensor_type.shape.dim
        assert len(dims) == 4, value.name
        assert [d.dim_param for d in dims] == ["batch", "", "height", "width"] and dims[1].dim_value == channels
    # No Softmax over channels (ONNX Runtime transposes the whole map for it) and no Transpose at all.
    assert not {"Loop", "Scan", "If", "Softmax", "Transpose"} & set(graph_operators(model))
    meta = read_onnx_metadata(reports["fp32"].path)
    assert meta["unweather.stateful"] == "true" and meta["unweather.pads_in_graph"] == "reflect"
    # All three inputs are padded the same way, and all three outputs cropped back.
    pads = [n for n in model.graph.node if n.op_type == "Pad" and n.name.startswith("unweather_")]
    slices = [n for n in model.graph.node if n.op_type == "Slice" and n.name.startswith("unweather_")]
    assert sorted(n.input[0] for n in pads) == sorted(VIDEO_INPUTS) and len(slices) == 3
    assert model.graph.node[-1].op_type == "Clip" and model.graph.node[-1].output[0] == "output"


@pytest.mark.parametrize("height, width", [(48, 64), (33, 47)])
def test_onnxruntime_matches_torch_over_frames_that_carry_the_state(exported, height, width):
    net, reports = exported
    ort_engine = OnnxRuntimeEngine(reports["fp32"].path, threads=1)
    torch_engine = TorchEngine(net)
    assert ort_engine.stateful and torch_engine.stateful and ort_engine.pads_in_graph
    # The state's channels come from the graph in ONNX Runtime and from the network in torch.
    assert ort_engine.state_channels == torch_engine.state_channels == net.state_channels == 6
    clip = _clip(5, height, width)
    state_t = state_o = ort_engine.empty_state(clip[:1])
    worst = 0.0
    for frame in clip.unbind(0):
        out_t, state_t = torch_engine.step(frame[None], state_t)
        out_o, state_o = ort_engine.step(frame[None], state_o)
        assert out_o.shape == (1, 3, height, width) and state_o[1].shape == (1, 1, height, width)
        worst = max(worst, *(float((a - b).abs().max()) for a, b in zip((out_t, *state_t), (out_o, *state_o))))
    assert worst <= 1e-3
    assert float(state_t[1].min()) > 0  # the state did carry evidence from frame to frame


def test_a_session_over_the_onnxruntime_engine_restores_like_torch(exported):
    net, reports = exported
    engine = open_engine(reports["fp32"].path, device="cpu", threads=1)
    assert engine.stateful
    # Called on frames (a still image, a benchmark), it restores each with no history: a step from empty.
    frame = torch.rand(1, 3, 48, 64)
    empty = (torch.zeros(1, 6, 48, 64), torch.zeros(1, 1, 48, 64))
    assert torch.equal(engine(frame), engine.step(frame, empty)[0])
    clip = _clip(4, 48, 64)
    got, want = VideoSession(engine)(clip), VideoSession(TorchEngine(net))(clip)
    assert float((got - want).abs().max()) <= 1e-3


def test_the_fp16_gate_runs_a_sequence_with_its_state(exported):
    _, reports = exported
    report = reports["fp16"]
    model = onnx.load(str(report.path))
    # Every stored weight is fp16: the only fp32 tensor is what ONNX wants in fp32, the upsampling's scales.
    scales = {n.input[2] for n in model.graph.node if n.op_type == "Resize" and len(n.input) > 2}
    fp32 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims)
            and int(np.prod(t.dims)) > 1}
    assert initializer_types(model)["float16"] > 50 and fp32 <= scales
    frames = [k for k in report.psnr if k.startswith("bundled photo frame ")]
    assert len(frames) == 2 * 6  # six frames, in ONNX Runtime and in torch fp16
    assert min(report.psnr.values()) >= 40.0
    gate = json.loads(read_onnx_metadata(report.path)["unweather.gate"])
    assert gate["min_psnr"] == 40.0 and len(gate["psnr"]) == len(report.psnr)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_operator_of_the_video_graph_is_native_in_tensorrt(exported, precision):
    _, reports = exported
    with TRT_OPERATORS.open() as f:
        rows = csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t")
        supported = {row["operator"]: set(row["types"].split(",")) for row in rows}
    model = onnx.shape_inference.infer_shapes(onnx.load(str(reports[precision].path)))
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    missing = [op for op in graph_operators(model) if op not in supported]
    assert not missing, f"not native in TensorRT: {missing}"
    types = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16"}
    value_types = {v.name: v.type.tensor_type.elem_type
                   for v in (*model.graph.input, *model.graph.value_info, *model.graph.output)}
    for node in model.graph.node:
        for output in node.output:
            kind = types.get(value_types.get(output))
            if kind is not None:
                assert kind in supported[node.op_type], f"{node.op_type} in {kind} is not native in TensorRT"


def test_export_command_writes_the_shipped_video_student(tmp_path, monkeypatch, capsys):
    from unweather.engine import sources
    from unweather.models import load_checkpoint, save

    weights = tmp_path / "weights"
    weights.mkdir()
    save(build("video_small"), weights / "video.safetensors", dtype=torch.float16)
    monkeypatch.setattr(sources, "weights_dir", lambda: weights)
    assert all(p.dtype == torch.float32 for p in load_checkpoint(weights / "video.safetensors").parameters())
    out = tmp_path / "video.onnx"
    assert main(["export", "--model", "video", "-o", str(out)]) == 0
    assert "largest |ONNX Runtime - torch fp32|" in capsys.readouterr().out
    assert [i.name for i in onnx.load(str(out)).graph.input] == list(VIDEO_INPUTS)


def test_int8_export_of_a_video_network_is_refused_in_one_line(tmp_path):
    with pytest.raises(UnweatherError, match="int8") as info:
        export_onnx(build("video_small"), tmp_path / "v.onnx", ExportConfig(precision="int8"))
    assert "\n" not in str(info.value) and not (tmp_path / "v.onnx").exists()


def test_graph_states_match_the_frame_size_for_any_batch(exported):
    _, reports = exported
    import onnxruntime as ort

    session = ort.InferenceSession(str(reports["fp32"].path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((2, 3, 21, 30), dtype=np.float32)
    out, bg, weight = session.run(list(VIDEO_OUTPUTS), {"input": x, "background": np.zeros((2, 6, 21, 30), np.float32),
                                                        "weight": np.zeros((2, 1, 21, 30), np.float32)})
    assert out.shape == (2, 3, 21, 30) and bg.shape == (2, 6, 21, 30) and weight.shape == (2, 1, 21, 30)
    assert 0.0 <= out.min() and out.max() <= 1.0
