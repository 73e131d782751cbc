"""The student family: tap interface, FLOP budgets, ONNX-friendly operators, global residual."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unweather.models import build, count_flops
from unweather.models.student import Student, StudentConfig

STUDENTS = ["student_small", "student_base"]


@pytest.mark.parametrize("name", STUDENTS)
def test_taps_at_quarter_eighth_sixteenth(name):
    model = build(name).eval()
    x = torch.rand(2, 3, 48, 80)
    with torch.no_grad():
        out, taps = model(x, return_feat=True)
    assert out.shape == x.shape
    assert model.pad_multiple == 16
    assert len(taps) == 4 == len(model.tap_channels)
    assert [tuple(t.shape) for t in taps] == [
        (2, model.tap_channels[0], 12, 20),
        (2, model.tap_channels[1], 6, 10),
        (2, model.tap_channels[2], 3, 5),
        (2, model.tap_channels[3], 3, 5),
    ]


def test_flop_budgets():
    small = count_flops(build("student_small"), 256, 256) / 256**2
    base = count_flops(build("student_base"), 256, 256) / 256**2
    assert 1_000 < small <= 20_000
    assert 60_000 <= base <= 140_000


def test_count_flops_counts_a_known_convolution():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # 2 FLOP per multiply-add: 2 * 8 outputs * 27 inputs per output pixel.
    assert count_flops(conv, 16, 32) == 2 * 8 * 27 * 16 * 32


def test_count_flops_pads_like_padcrop():
    model = build("student_small")
    assert count_flops(model, 17, 30) == count_flops(model, 32, 32)


def test_msbdn_flops_match_the_paper():
    # METHOD.md: about 550 GFLOP for one 1280x720 frame.
    with torch.device("meta"):
        model = build("msbdn")
    assert count_flops(model, 720, 1280) == pytest.approx(550e9, rel=0.01)


def test_global_residual_keeps_a_constant_frame_close():
    # The correction path starts small: an untrained student is near the identity.
    model = build("student_small").eval()
    x = torch.full((1, 3, 32, 32), 0.5)
    with torch.no_grad():
        assert (model(x) - x).abs().max() < 0.1


def test_options_override_and_round_trip_through_json_lists():
    model = build("student_small", widths=[8, 16, 24, 32], bottleneck_depth=1)
    assert model.tap_channels == (16, 24, 32, 32)
    assert model.config == StudentConfig(widths=(8, 16, 24, 32), bottleneck_depth=1)
    assert model.arch_options == {"widths": [8, 16, 24, 32], "bottleneck_depth": 1}
    with pytest.raises(ValueError):
        Student(StudentConfig(widths=(8, 16, 24)))


def test_min_filter_is_a_minimum_over_the_window():
    from unweather.models.student import _min_filter

    x = torch.rand(2, 3, 20, 28)
    expected = -F.max_pool2d(-x, 7, stride=1, padding=3)
    assert torch.equal(_min_filter(x, 7), expected)
    # Brute force on one pixel near a corner, where the window is cut by the border.
    assert _min_filter(x, 7)[1, 2, 1, 2] == x[1, 2, 0:5, 0:6].min()


def test_haze_head_starts_neutral_and_inverts_the_scattering_model():
    torch.manual_seed(0)
    plain = build("student_small").eval()
    model = build("student_small", haze_head=True).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(model.optional_prefixes) for k in missing)
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), atol=1e-6, rtol=0)
        # Given the true airlight and transmission, the head alone recovers the scene exactly.
        scene, airlight, t = torch.rand(1, 3, 32, 48), torch.tensor([0.8, 0.82, 0.9]), 0.3
        hazy = scene * t + airlight.view(1, 3, 1, 1) * (1 - t)
        model.haze.airlight.weight.zero_()
        model.haze.airlight.bias.copy_(torch.logit(airlight))
        model.haze.gain.bias.fill_(math.log(1 / t))
        g = torch.zeros(1, model.config.context_channels, 1, 1)
        features = torch.rand(1, model.config.widths[0], 16, 24)
        torch.testing.assert_close(model.haze(hazy, g, features), scene, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,options", [(n, {}) for n in STUDENTS] + [("student_small", {"haze_head": True})])
def test_onnx_export_uses_only_native_operators(name, options, tmp_path):
    onnx = pytest.importorskip("onnx")
    model = build(name, **options).eval()
    path = tmp_path / "student.onnx"
    torch.onnx.export(
        model,
        (torch.rand(1, 3, 32, 48),),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamo=False,
        opset_version=17,
    )
    graph = onnx.load(str(path)).graph
    used = {node.op_type for node in graph.node}
    allowed = {
        "Conv", "ConvTranspose", "Relu", "PRelu", "LeakyRelu", "Add", "Mul", "Concat", "Resize",
        "GlobalAveragePool", "ReduceMean", "Sigmoid", "Pad", "DepthToSpace", "SpaceToDepth", "Slice",
        "Constant", "Identity", "Reshape", "Transpose", "Sub", "Exp", "Clip", "Min", "ReduceMin",
        "ReduceMax",
    }  # fmt: skip
    assert used <= allowed, used - allowed
