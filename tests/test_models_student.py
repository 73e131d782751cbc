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
# The options that leave no fixed grid on flat regions (issue: a 16-pixel pattern in skies).
GRID_FREE = {"haze_head": True, "upsample": "bilinear", "phase_balance": True, "haze_gate": True}


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


# The two layouts cover every operator: shuffle up-sampling, and the shipped grid-free one with the gated haze
# head (student_base is the same operators, deeper; each trace takes 10-20 s).
@pytest.mark.parametrize("name,options", [("student_small", {}), ("student_small", GRID_FREE),
                                          ("student_small", {**GRID_FREE, "haze_dcp": True})])
def test_onnx_export_uses_only_native_operators(name, options):
    pytest.importorskip("onnx")
    from unweather.engine.export import trace_graph

    # The graph `unweather export` writes (torch's dynamo exporter, dynamic height and width), without
    # the padding, crop and clamp the export adds around the network (nodes named "unweather_*").
    graph = trace_graph(build(name, **options).eval()).graph
    used = {node.op_type for node in graph.node if not node.name.startswith("unweather_")}
    allowed = {
        "Conv", "ConvTranspose", "Relu", "PRelu", "LeakyRelu", "Add", "Mul", "Concat", "Resize",
        "GlobalAveragePool", "ReduceMean", "Sigmoid", "Pad", "DepthToSpace", "SpaceToDepth", "Slice",
        "Constant", "Identity", "Reshape", "Transpose", "Sub", "Exp", "Clip", "Min", "ReduceMin",
        "ReduceMax", "Log",
        "Shape", "Div",  # shape arithmetic for dynamic frame sizes (the 2x2 fold of a frame of any size)
    }  # fmt: skip
    assert used <= allowed, used - allowed



def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    model.project_()  # as the trainer does after every step


@pytest.mark.parametrize("options,grid", [({}, True), (GRID_FREE, False)])
def test_flat_frame_gets_no_grid_only_from_grid_free_options(options, grid):
    # Random weights stand for any trained state: a flat input must come out flat in the interior.
    model = build("student_small", **options).eval()
    _randomise(model)
    # Large enough that the borders' zero padding does not reach the centre through 4 levels.
    x = torch.full((1, 3, 768, 768), 0.6)
    with torch.no_grad():
        out = model(x)[..., 352:416, 352:416]
    spread = float((out - out.mean(dim=(2, 3), keepdim=True)).abs().max() / out.abs().mean())
    assert (spread > 1e-4) == grid, spread


def test_phase_balanced_keeps_detail_and_balances_the_constant_response():
    from unweather.models.student import phase_balanced

    w, b = torch.randn(12, 5, 3, 3), torch.randn(12)
    bw, bb = phase_balanced(w, b)
    sums = bw.sum(dim=(2, 3)).reshape(3, 4, 5)
    torch.testing.assert_close(sums, sums[:, :1].expand(3, 4, 5))
    torch.testing.assert_close(bb.reshape(3, 4), b.reshape(3, 4).mean(1, keepdim=True).expand(3, 4))
    # The zero-sum part of every kernel (what draws edges and streaks) is unchanged.
    centred = lambda k: k - k.mean(dim=(2, 3), keepdim=True)  # noqa: E731
    torch.testing.assert_close(centred(bw), centred(w))


def test_a_closed_haze_gate_leaves_the_frame_to_the_rest_of_the_network():
    model = build("student_small", **GRID_FREE).eval()
    _randomise(model, 1)
    with torch.no_grad():
        model.haze.gate.weight.zero_()  # the gate is then its bias alone
        model.haze.gate.bias.fill_(-30.0)
        model.head.weight.zero_()
        model.head.bias.zero_()
        x = torch.rand(1, 3, 64, 64)
        torch.testing.assert_close(model(x), x, atol=1e-6, rtol=0)
        # Open, the gain is bounded by haze_max_gain: (out - A) / (x - A) never exceeds it.
        model.haze.gate.bias.fill_(30.0)
        model.haze.gain.bias.fill_(10.0)
        model.haze.airlight.weight.zero_()
        model.haze.airlight.bias.fill_(math.log(0.8 / 0.2))  # A = 0.8
        g = torch.zeros(1, model.config.context_channels, 1, 1)
        feats = torch.zeros(1, model.config.widths[0], 32, 32)
        out = model.haze(torch.full_like(x, 0.5), g, feats)
        gain = ((out - 0.8) / (0.5 - 0.8)).max()
        assert float(gain) <= model.config.haze_max_gain + 1e-4


def test_a_shuffle_student_starts_a_bilinear_one_from_the_mean_of_its_phases():
    old = build("student_small", haze_head=True).eval()
    new = build("student_small", **GRID_FREE).eval()
    state = new.adapt_state_dict(old.state_dict())
    missing, unexpected = new.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("haze.gate") for k in missing), (missing, unexpected)
    w = old.up1.conv.weight
    torch.testing.assert_close(new.up1.conv.weight, w.reshape(-1, 4, *w.shape[1:]).mean(1))
    # On a flat frame the shuffle's phases are averaged: the two networks stay close.
    x = torch.full((1, 3, 64, 64), 0.4)
    with torch.no_grad():
        assert float((new(x) - old(x)).abs().mean()) < 0.05


def test_the_stem_reads_the_frame_as_its_2x2_unshuffled_channels():
    # The stem is kept as a 3x3 convolution over PixelUnshuffle(2)'s 12 channels (the checkpoints' layout) and run
    # as a 6x6 stride-2 convolution of the frame: the two must be one function, borders included.
    from unweather.models.student import _unshuffled_weight

    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(16, 12, 3, 3, generator=gen), torch.randn(16, generator=gen)
    x = torch.rand(2, 3, 32, 48, generator=gen)
    want = F.conv2d(F.pixel_unshuffle(x, 2), weight, bias, padding=1)
    got = F.conv2d(x, _unshuffled_weight(weight), bias, stride=2, padding=2)
    assert got.shape == want.shape and float((got - want).abs().max()) < 1e-5


def test_the_haze_prior_starts_neutral_and_adds_the_dark_channel_gain():
    base = dict(haze_head=True, upsample="bilinear", phase_balance=True, haze_gate=True)
    torch.manual_seed(0)
    plain = Student(StudentConfig(**base)).eval()
    with_prior = Student(StudentConfig(**base, haze_prior=True)).eval()
    missing, unexpected = with_prior.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["haze.prior.bias", "haze.prior.weight"] and not unexpected
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert float((with_prior(x) - plain(x)).abs().max()) < 1e-6  # neutral until trained
        # A uniform veil c under airlight a: dark(I / A) = c / a, so the gain is -log(1 - 0.95 c / a).
        head = with_prior.haze
        gain = head._prior_gain(torch.full((1, 3, 16, 16), 0.6), torch.full((1, 3, 1, 1), 0.8))
        assert gain.shape == (1, 1, 8, 8)
        assert torch.allclose(gain, torch.full_like(gain, -math.log(1 - 0.95 * 0.6 / 0.8)), atol=1e-5)
        # Bounded like the head's own gain: an input at the airlight gives t = 0.05, clipped to 1 / max_gain.
        bright = head._prior_gain(torch.full((1, 3, 16, 16), 0.8), torch.full((1, 3, 1, 1), 0.8))
        assert torch.allclose(bright, torch.full_like(bright, head.max_z), atol=1e-5)
        head.prior.bias.fill_(1.0)
        assert float((with_prior(x) - plain(x)).abs().max()) > 1e-3


def test_the_dcp_haze_head_reads_the_airlight_from_the_image_and_inverts_the_veil():
    options = dict(haze_head=True, upsample="bilinear", phase_balance=True, haze_gate=True, haze_max_gain=10.0)
    torch.manual_seed(0)
    plain = Student(StudentConfig(**options)).eval()
    dcp = Student(StudentConfig(**options, haze_dcp=True)).eval()
    # A trained haze head starts it: the learned airlight is dropped, the strength is new.
    missing, unexpected = dcp.load_state_dict(dcp.adapt_state_dict(plain.state_dict()), strict=False)
    assert sorted(missing) == ["haze.prior.bias", "haze.prior.weight"] and not unexpected
    head = dcp.haze
    assert 0.01 < 0.95 * float(torch.sigmoid(head.prior.bias.detach())) < 0.03  # nearly neutral, still learning
    # A scene whose every 14x14 window has a black pixel, veiled uniformly (t = 0.5) under airlight A, with
    # a sky (t = 0: the airlight itself) on the left, where He et al.'s estimate reads A exactly.
    gen = torch.Generator().manual_seed(1)
    scene = torch.rand(1, 3, 64, 96, generator=gen) * 0.7
    scene[..., ::4, ::4] = 0.0
    airlight = torch.tensor([0.9, 0.85, 0.8]).view(1, 3, 1, 1)
    t = torch.full((1, 1, 64, 96), 0.5)
    t[..., :32] = 0.0
    hazy = scene * t + airlight * (1 - t)
    with torch.no_grad():
        head.prior.bias.fill_(30.0)  # full strength, 0.95
        head.gate.bias.fill_(30.0)  # gate open
        g = torch.zeros(1, dcp.config.context_channels, 1, 1)
        out = head(hazy, g, torch.zeros(1, dcp.config.widths[0], 32, 48))
    # Far from the sky: dark(I / A) = 1 - t, so t' = 1 - 0.95 (1 - t) and J = A + (I - A) / t'.
    want = airlight + (hazy - airlight) / (1 - 0.95 * 0.5)
    torch.testing.assert_close(out[..., 56:], want[..., 56:], atol=1e-5, rtol=0)
    # The sky is at the airlight: it stays there whatever the gain.
    torch.testing.assert_close(out[..., :16], hazy[..., :16], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="haze_dcp"):
        StudentConfig(haze_head=True, haze_dcp=True, haze_prior=True)
