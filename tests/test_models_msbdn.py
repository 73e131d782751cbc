"""MSBDN-RDFF is the paper's network: its key list and the golden arrays of the released code."""

from __future__ import annotations

import ast
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from unweather.models import PadCrop, build

GOLDEN = Path(__file__).parent / "data" / "golden"


def golden_keys() -> list[tuple[str, list[int]]]:
    lines = (GOLDEN / "msbdn_state_dict_keys.tsv").read_text().splitlines()
    assert lines[0] == "name\tshape"
    rows = [line.split("\t") for line in lines[1:] if line]
    return [(name, list(ast.literal_eval(shape))) for name, shape in rows]


def deterministic_weights(state_dict: dict[str, torch.Tensor], phase: float = 0.0) -> dict[str, torch.Tensor]:
    """The weights of golden/README.md: a sine per entry, phase-shifted by the name's crc32."""
    weights = {}
    for name, tensor in state_dict.items():
        n = tensor.numel()
        k = np.arange(n, dtype=np.float64)
        values = np.sin(0.37 * k + phase + (zlib.crc32(name.encode("utf-8")) % 997) / 97)
        if tensor.ndim > 1:
            values *= 0.5 / np.sqrt(n / tensor.shape[0])
        else:
            values *= 0.05
        weights[name] = torch.from_numpy(values.astype(np.float32).reshape(tensor.shape))
    return weights


def test_state_dict_keys_and_shapes_are_the_releases():
    model = build("msbdn")
    ours = [(name, list(t.shape)) for name, t in model.state_dict().items()]
    ref = golden_keys()
    assert len(ref) == 390
    assert ours == ref
    assert sum(p.numel() for p in model.parameters()) == 28_712_861


@pytest.fixture(scope="module")
def golden_model() -> torch.nn.Module:
    model = build("msbdn").eval()
    model.load_state_dict(deterministic_weights(model.state_dict(), phase=0.0), strict=True)
    return model


def golden_input() -> torch.Tensor:
    h = w = 64
    k = np.arange(3 * h * w, dtype=np.float64)
    x = (0.5 + 0.5 * np.sin(0.013 * k)).astype(np.float32).reshape(1, 3, h, w)
    np.testing.assert_array_equal(x, np.load(GOLDEN / "msbdn_a_input.npy"))
    return torch.from_numpy(x)


def test_golden_arrays_set_a(golden_model):
    with torch.no_grad():
        out, taps = golden_model(golden_input(), return_feat=True)
    assert [tuple(t.shape[1:]) for t in taps] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (256, 4, 4)]
    assert tuple(t.shape[1] for t in taps) == golden_model.tap_channels
    results = {"output": out, **{f"feat{i}": t for i, t in enumerate(taps)}}
    for name, ours in results.items():
        ref = np.load(GOLDEN / f"msbdn_a_{name}.npy")
        np.testing.assert_allclose(ours.numpy(), ref, atol=2e-4, rtol=1e-4, err_msg=name)


def test_a_small_weight_change_is_detected(golden_model):
    # The golden check must be able to fail: the first convolution's weights, changed by 1 %.
    weight = golden_model.conv_input.conv2d.weight
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(1.01)
            out = golden_model(golden_input())
    finally:
        with torch.no_grad():
            weight.copy_(original)
    ref = np.load(GOLDEN / "msbdn_a_output.npy")
    assert not np.allclose(out.numpy(), ref, atol=2e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def shallow_msbdn() -> torch.nn.Module:
    return build("msbdn", res_blocks=0).eval()


@pytest.mark.parametrize("size", [(32, 32), (32, 48)])
def test_any_multiple_of_16_from_32(shallow_msbdn, size):
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        out, taps = shallow_msbdn(x, return_feat=True)
    assert out.shape == x.shape
    h, w = size
    expected = [(h // 4, w // 4), (h // 8, w // 8), (h // 16, w // 16), (h // 16, w // 16)]
    assert [t.shape[-2:] for t in taps] == expected


@pytest.mark.parametrize("size", [(1, 1), (16, 16), (5, 37)])
def test_pad_crop_runs_tiny_frames(shallow_msbdn, size):
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        assert PadCrop(shallow_msbdn)(x).shape == x.shape
