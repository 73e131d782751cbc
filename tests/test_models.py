"""Every registered network: interface, gradients; the registry; size handling by pad/crop."""

from __future__ import annotations

import pytest
import torch

from unweather.errors import UnweatherError
from unweather.models import PadCrop, UnknownModelError, build, names, pad_to_multiple

# Small options keep every check fast; msbdn also gets one full-size check below.
FAST_OPTIONS = {"msbdn": {"res_blocks": 1}}


def test_registry_lists_the_networks():
    assert {"identity", "msbdn", "student_small", "student_base"} <= set(names())
    assert names() == sorted(names())


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownModelError) as info:
        build("msbdnn")
    message = str(info.value)
    assert "msbdnn" in message
    for name in names():
        assert name in message
    assert isinstance(info.value, UnweatherError)


def test_build_records_arch_and_options():
    model = build("msbdn", res_blocks=3)
    assert model.arch == "msbdn" and model.arch_options == {"res_blocks": 3}
    assert len(model.dehaze) == 3


# The frame networks; the video students take a state too (tests/test_video_model.py).
FRAME_NETWORKS = [n for n in names() if not n.startswith("video_")]


@pytest.mark.parametrize("name", FRAME_NETWORKS)
def test_interface(name):
    model = build(name, **FAST_OPTIONS.get(name, {})).eval()
    assert model.pad_multiple == 16
    assert len(model.tap_channels) == 4
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        out = model(x)
        out2, taps = model(x, return_feat=True)
    assert out.shape == x.shape
    torch.testing.assert_close(out, out2)
    assert [tuple(t.shape[1:]) for t in taps] == [
        (c, 32 // s, 48 // s) for c, s in zip(model.tap_channels, (4, 8, 16, 16))
    ]


def _assert_every_parameter_learns(model: torch.nn.Module, size: int = 32) -> None:
    x = torch.rand(2, 3, size, size)
    out = model(x)
    (out - x.flip(-1)).abs().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("name", [n for n in FRAME_NETWORKS if n != "identity"])
def test_every_parameter_gets_a_gradient(name):
    _assert_every_parameter_learns(build(name, **FAST_OPTIONS.get(name, {})))


def test_every_parameter_of_full_msbdn_gets_a_gradient():
    _assert_every_parameter_learns(build("msbdn"))


SIZES = [(h, w) for h in (1, 2, 3, 5, 8, 15, 16, 17, 31, 37) for w in (1, 2, 7, 16, 19, 33)]


@pytest.mark.parametrize("multiple", [1, 8, 16])
def test_pad_to_multiple_keeps_every_pixel(multiple):
    for h, w in SIZES:
        x = torch.rand(2, 3, h, w)
        padded = pad_to_multiple(x, multiple)
        assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
        assert padded.shape[-2] - h < multiple and padded.shape[-1] - w < multiple
        assert torch.equal(padded[..., :h, :w], x)


def test_pad_to_multiple_reflects_and_honours_min_size():
    x = torch.arange(5.0).reshape(1, 1, 1, 5)
    assert pad_to_multiple(x, 8)[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1]
    # A 1-pixel dimension cannot be reflected: it is replicated.
    assert torch.equal(pad_to_multiple(x, 8)[0, 0, 1:], pad_to_multiple(x, 8)[0, 0, :1].expand(7, 8))
    assert pad_to_multiple(torch.rand(1, 3, 17, 5), 16, min_size=32).shape[-2:] == (32, 32)


class _Shift(torch.nn.Module):
    """Checks the size multiple and adds 1: a shift or resize by the wrapper would show."""

    pad_multiple = 16
    tap_channels = (3, 3, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2] % 16 == 0 and x.shape[-1] % 16 == 0
        return x + 1.0


def test_pad_crop_gives_back_the_input_size_and_pixels():
    wrapped = PadCrop(_Shift())
    for h, w in SIZES:
        x = torch.rand(1, 3, h, w)
        out = wrapped(x)
        assert out.shape == x.shape
        torch.testing.assert_close(out, x + 1.0)


@pytest.mark.parametrize("name", ["identity", "student_small"])
def test_pad_crop_runs_registered_networks_at_odd_sizes(name):
    wrapped = PadCrop(build(name)).eval()
    for h, w in [(1, 1), (7, 3), (37, 19), (18, 33)]:
        x = torch.rand(1, 3, h, w)
        with torch.no_grad():
            assert wrapped(x).shape == x.shape
    with torch.no_grad():
        x = torch.rand(1, 3, 37, 19)
        assert torch.equal(PadCrop(build("identity"))(x), x)
