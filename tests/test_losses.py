"""The losses against values computed by hand on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unweather.errors import UnweatherError
from unweather.training import losses
from unweather.training.vgg import ENV_VAR, VGG19Features, load_vgg19


def two_levels(x: torch.Tensor) -> list[torch.Tensor]:
    """A tiny fixed feature extractor: the image itself and its 2x2 average."""
    return [x, F.avg_pool2d(x, 2)]


def const(*values: float) -> torch.Tensor:
    """A batch of constant 1x2x2 images."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()


def test_l1_is_mean_absolute_difference():
    a = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    b = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert losses.l1(a, b).item() == pytest.approx((1 + 0 + 2 + 3) / 4)
    with pytest.raises(ValueError):
        losses.l1(a, b[..., :1])


def test_scr_by_hand():
    # anchor 0, positive 1, negative 2 everywhere: each level's ratio is 1 / 2.
    value = losses.scr(two_levels, const(0.0), const(1.0), const(2.0), weights=(1.0, 0.5))
    assert value.item() == pytest.approx(1.0 * 0.5 + 0.5 * 0.5, rel=1e-6)


def test_scr_pairs_each_output_with_its_own_input():
    anchor, positive = const(0.0, 1.0), const(0.5, 0.5)
    negative = const(0.5, 3.0)
    # L1(a, p) = (0.5 + 0.5) / 2; L1(a, n) = (|0 - 0.5| + |1 - 3|) / 2 = 1.25.
    value = losses.scr(two_levels, anchor, positive, negative, weights=(1.0, 1.0))
    assert value.item() == pytest.approx(2 * 0.5 / (1.25 + 1e-7), rel=1e-6)


def test_hcr_by_hand_uses_every_anchor_negative_pair():
    anchor, positive = const(0.0, 1.0), const(0.5, 0.5)
    negatives = const(0.5, 3.0, 1.0)  # three negatives for two anchors
    # Pairs: a=0 -> 0.5, 3, 1; a=1 -> 0.5, 2, 0: mean 7/6. L1(a, p) = 0.5. Ratio 3/7 per level.
    value = losses.hcr(two_levels, anchor, positive, negatives, weights=(1.0, 0.5))
    assert value.item() == pytest.approx(1.5 * 3 / 7, rel=1e-6)
    paired_only = losses.scr(two_levels, anchor, positive, negatives[:2], weights=(1.0, 0.5))
    assert paired_only.item() != pytest.approx(value.item(), rel=1e-3)


def test_pairwise_l1_matches_a_double_loop():
    torch.manual_seed(1)
    a, n = torch.rand(3, 2, 4, 4), torch.rand(5, 2, 4, 4)
    expected = sum((a[i] - n[j]).abs().mean() for i in range(3) for j in range(5)) / 15
    assert losses.pairwise_l1(a, n).item() == pytest.approx(expected.item(), rel=1e-6)


def test_contrastive_terms_detach_positive_and_negative():
    anchor = torch.rand(2, 1, 4, 4, requires_grad=True)
    positive = torch.rand(2, 1, 4, 4, requires_grad=True)
    negative = torch.rand(2, 1, 4, 4, requires_grad=True)
    for fn in (losses.scr, losses.hcr):
        anchor.grad = positive.grad = negative.grad = None
        fn(two_levels, anchor, positive, negative, (1.0, 1.0)).backward()
        assert anchor.grad is not None and anchor.grad.abs().sum() > 0
        assert positive.grad is None and negative.grad is None


def test_level_weights():
    assert losses.VGG_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    assert VGG19Features.weights == losses.VGG_WEIGHTS
    assert losses.TAP_WEIGHTS == (1 / 8, 1 / 4, 1 / 2, 1.0)
    # Each level's ratio is scaled by its own weight: level 0 ratio 1/2, level 1 ratio 1/4.
    anchor = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]
    positive = [torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1)]
    negative = [torch.full((1, 1, 2, 2), 2.0), torch.full((1, 1, 1, 1), 4.0)]
    value = losses.contrastive(anchor, positive, negative, (1 / 32, 1.0))
    assert value.item() == pytest.approx(0.5 / 32 + 0.25, rel=1e-6)


def test_balanced_l1_by_hand():
    # Group "haze": input error 0.4, prediction error 0.2; group "rain": input error 0.1, prediction 0.05.
    target = torch.zeros(4, 1, 2, 2)
    inputs = const(0.4, 0.4, 0.1, 0.1)
    prediction = const(0.2, 0.2, 0.05, 0.05)
    groups = [("haze", 0, 2), ("rain", 2, 4)]
    value = losses.balanced_l1(prediction, target, inputs, groups)
    mean_error = 0.25
    expected = 0.5 * 0.2 * mean_error / 0.4 + 0.5 * 0.05 * mean_error / 0.1
    assert value.item() == pytest.approx(expected, rel=1e-6)
    # Equal relative errors contribute equally, unlike a plain L1 dominated by haze.
    assert 0.5 * 0.2 * mean_error / 0.4 == pytest.approx(0.5 * 0.05 * mean_error / 0.1)
    # A clean group (input = target) keeps weight 1.
    clean = losses.balanced_l1(const(0.1), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), [("clean", 0, 1)])
    assert clean.item() == pytest.approx(0.1)


def test_vgg19_features_shapes_and_frozen():
    net = VGG19Features(weights=None)
    out = net(torch.rand(1, 3, 32, 32))
    assert [tuple(o.shape) for o in out] == [(1, 64, 32, 32), (1, 128, 16, 16), (1, 256, 8, 8),
                                             (1, 512, 4, 4), (1, 512, 2, 2)]
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training


def test_vgg19_loads_torchvision_layout_and_reports_missing(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(UnweatherError, match="--vgg19-weights"):
        load_vgg19(None)
    with pytest.raises(UnweatherError, match="does not exist"):
        load_vgg19(tmp_path / "vgg19-dcbb9e9d.pth")
    # A file laid out as torchvision's vgg19 (features.* and classifier.*) loads by index.
    source = VGG19Features(weights=None)
    state = {}
    for (start, _), block in zip(((0, 2), (2, 7), (7, 12), (12, 21), (21, 30)), source.slices, strict=True):
        for key, value in block.state_dict().items():
            index, name = key.split(".", 1)
            state[f"features.{start + int(index)}.{name}"] = value.clone()
    state["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    monkeypatch.setenv(ENV_VAR, str(path))
    loaded = load_vgg19(None)
    x = torch.rand(1, 3, 16, 16)
    for a, b in zip(loaded(x), source(x), strict=True):
        torch.testing.assert_close(a, b)
    del state["features.28.weight"]
    torch.save(state, path)
    with pytest.raises(UnweatherError, match="features.28.weight"):
        load_vgg19(path)


def test_inputs_are_checked():
    with pytest.raises(ValueError):
        losses.scr(two_levels, const(0.0), const(0.0, 1.0), const(0.0), (1.0, 1.0))
    with pytest.raises(ValueError):
        losses.hcr(two_levels, const(0.0), const(0.0), torch.zeros(1, 2, 2, 2), (1.0, 1.0))
    with pytest.raises(ValueError):
        losses.contrastive([torch.zeros(1)], [torch.zeros(1)], [torch.zeros(1)], (1.0, 2.0))
    assert math.isfinite(losses.scr(two_levels, const(0.0), const(0.0), const(0.0), (1.0, 1.0)).item())
