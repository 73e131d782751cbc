"""Losses of both stages: pixel L1 terms and the multi-contrastive regularisation (SCR, HCR).

Each loss is a pure function with its inputs checked; the tasks (`unweather.training.tasks`) hold the
frozen feature network and the weights. Nothing here places tensors on a device or downloads anything.

Contrastive term (METHOD.md), over feature levels l with weights w_l:

    C(a, p, n) = sum_l w_l * L1(f_l(a), f_l(p)) / (L1(f_l(a), f_l(n)) + 1e-7)

with the features of the positive p and the negative n detached, L1 the mean absolute difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

EPS = 1e-7
VGG_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
TAP_WEIGHTS = (1 / 8, 1 / 4, 1 / 2, 1.0)

FeatureFn = Callable[[torch.Tensor], Sequence[torch.Tensor]]


def _check_images(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    for name, shape in shapes.items():
        if len(shape) != 4:
            raise ValueError(f"{name} must be (N, C, H, W), got {shape}")
        if shape != first:
            raise ValueError(f"shapes differ: {shapes}")


def l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference: mean(|prediction - target|)."""
    if prediction.shape != target.shape:
        raise ValueError(f"shapes differ: {tuple(prediction.shape)} and {tuple(target.shape)}")
    return (prediction - target).abs().mean()


def balanced_l1(prediction: torch.Tensor, target: torch.Tensor, inputs: torch.Tensor,
                groups: Sequence[tuple[str, int, int]], reference: torch.Tensor | None = None,
                min_scale: float = 1e-3) -> torch.Tensor:
    """L1 with each group's term divided by its input error, rescaled to the mean input error.

        loss = sum_g (n_g / N) * L1_g(prediction, target) * mean_h(e_h) / e_g,
        e_g = max(L1_g(inputs, reference), min_scale)  (detached; groups with e_g <= min_scale: weight 1)

    Without this a plain L1 over mixed weathers is dominated by haze, whose errors are about ten times
    those of rain or snow. Groups whose input equals the target (clean pairs) keep weight 1.

    Args:
        prediction: the network output (N, C, H, W).
        target: what it should match (teacher output or ground truth).
        inputs: the degraded inputs the output came from.
        groups: (name, start, stop) slices of the batch covering all of it.
        reference: what `e_g` compares the inputs with (the ground truth; default `target`).
    """
    reference = target if reference is None else reference
    _check_images(prediction=prediction, target=target, inputs=inputs, reference=reference)
    n = prediction.shape[0]
    if sum(stop - start for _, start, stop in groups) != n:
        raise ValueError("groups must cover the batch")
    # Tensor arithmetic only (no Python branching on values): no host sync per step.
    with torch.no_grad():
        errors = torch.stack([(inputs[a:b] - reference[a:b]).abs().mean() for _, a, b in groups])
        degraded = errors > min_scale
        mean = (errors * degraded).sum() / degraded.sum().clamp_min(1)
        scales = torch.where(degraded, mean / errors.clamp_min(min_scale), torch.ones_like(errors))
    total = prediction.new_zeros(())
    for g, (_, a, b) in enumerate(groups):
        total = total + l1(prediction[a:b], target[a:b]) * ((b - a) / n) * scales[g]
    return total


def _ratio(anchor: Sequence[torch.Tensor], positive: Sequence[torch.Tensor], negative: Sequence[torch.Tensor],
           weights: Sequence[float], distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """sum_l w_l * L1(a_l, p_l) / (distance(a_l, n_l) + 1e-7), p_l and n_l detached."""
    if not (len(anchor) == len(positive) == len(negative) == len(weights)):
        raise ValueError("anchor, positive, negative features and weights need one entry per level")
    total = anchor[0].new_zeros(())
    for a, p, n, w in zip(anchor, positive, negative, weights, strict=True):
        total = total + w * l1(a, p.detach()) / (distance(a, n.detach()) + EPS)
    return total


def contrastive(anchor: Sequence[torch.Tensor], positive: Sequence[torch.Tensor],
                negative: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Contrastive ratio on precomputed features, one negative per anchor (SCR's form).

        sum_l w_l * L1(a_l, p_l) / (L1(a_l, n_l) + 1e-7),  p_l and n_l detached.
    """
    return _ratio(anchor, positive, negative, weights, l1)


def pairwise_l1(anchor: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Mean of L1(anchor_i, negative_j) over every pair (i, j): mean_{i,j} mean|a_i - n_j|.

    Computed one negative at a time so memory stays that of one batch of features.
    """
    if anchor.shape[1:] != negatives.shape[1:]:
        raise ValueError(f"feature shapes differ: {tuple(anchor.shape)} and {tuple(negatives.shape)}")
    total = anchor.new_zeros(())
    for j in range(negatives.shape[0]):
        total = total + (anchor - negatives[j:j + 1]).abs().mean()
    return total / negatives.shape[0]


def contrastive_all_pairs(anchor: Sequence[torch.Tensor], positive: Sequence[torch.Tensor],
                          negatives: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Contrastive ratio against every negative (HCR's form).

        sum_l w_l * L1(a_l, p_l) / (mean_{i,j} L1(a_l[i], n_l[j]) + 1e-7),  p_l and n_l detached.
    """
    return _ratio(anchor, positive, negatives, weights, pairwise_l1)


def scr(features: FeatureFn, output: torch.Tensor, positive: torch.Tensor, degraded: torch.Tensor,
        weights: Sequence[float]) -> torch.Tensor:
    """Soft contrastive regularisation: anchor the student output, negative its own degraded input.

        SCR = sum_l w_l * L1(f_l(output), f_l(positive)) / (L1(f_l(output), f_l(degraded)) + 1e-7)

    Args:
        features: the frozen feature network, returning one tensor per level.
        output: the student's outputs (anchor), with gradient.
        positive: the teachers' outputs (the paper) or the ground truth (the release).
        degraded: the student's inputs, sample i the negative of output i.
        weights: one weight per feature level.
    """
    _check_images(output=output, positive=positive, degraded=degraded)
    with torch.no_grad():
        fp, fn = features(positive), features(degraded)
    return contrastive(features(output), fp, fn, weights)


def hcr(features: FeatureFn, output: torch.Tensor, target: torch.Tensor, degraded: torch.Tensor,
        weights: Sequence[float]) -> torch.Tensor:
    """Hard contrastive regularisation: positive the ground truth, negatives every degraded input.

        HCR = sum_l w_l * L1(f_l(output), f_l(gt)) / (mean_{i,j} L1(f_l(output_i), f_l(degraded_j)) + 1e-7)

    Args:
        features: the frozen feature network.
        output: the student's outputs (anchors), with gradient.
        target: the ground truth of each output.
        degraded: every degraded input of the batch, of every weather type (any count).
    """
    _check_images(output=output, target=target)
    if degraded.dim() != 4 or degraded.shape[1:] != output.shape[1:]:
        raise ValueError(f"degraded inputs must be (M, C, H, W) like the outputs, got {tuple(degraded.shape)}")
    with torch.no_grad():
        fp, fn = features(target), features(degraded)
    return contrastive_all_pairs(features(output), fp, fn, weights)
