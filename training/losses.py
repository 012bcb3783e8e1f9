"""Losses of the reward model. Plain PyTorch, no Django."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return values.mean() if values.numel() else values.sum()
    weight = torch.broadcast_to(weight, values.shape)
    return (values * weight).sum() / weight.sum().clamp_min(1e-12)


def bradley_terry_loss(
    r_a: torch.Tensor, r_b: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted cross-entropy of P(a > b) = sigmoid(r_a - r_b) against soft targets.

    A tie's target is 0.5 (PickScore, HPSv2): its loss is smallest when the two rewards are equal, so
    ties teach the model "these are as good as each other" instead of being thrown away. The minimum
    of the loss is the targets' entropy (ln 2 for a tie), not zero. Shapes broadcast, so ``[E, P]``
    rewards of an ensemble work with ``[P]`` targets and ``[E, P]`` bootstrap weights.
    """
    logits = r_a - r_b
    target = torch.broadcast_to(target.to(logits.dtype), logits.shape)
    per_pair = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return _weighted_mean(per_pair, weight)


def criterion_loss(
    predicted: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared error on the 1-5 scale (rescaled to 0-1), over the ratings that exist (NaN = missing).

    Regression rather than an ordinal (cumulative-link) model, on purpose: the targets are usually the
    mean of several annotators' ratings (3.67 is a real target, not a class), scoring stores and
    filters on one expected score per criterion, and with five evenly anchored levels the equal-spacing
    assumption a regression makes is what the rating guide asks annotators to do. The prediction is
    squashed into 1-5 by the model (1 + 4 * sigmoid), so regression can never leave the scale. An
    ordinal head would need four thresholds per criterion and member for no gain on these targets.
    """
    target = torch.broadcast_to(target.to(predicted.dtype), predicted.shape)
    observed = ~torch.isnan(target)
    if not observed.any():
        return predicted.sum() * 0.0
    err = torch.where(observed, (predicted - torch.nan_to_num(target)) / 4.0, torch.zeros_like(predicted))
    mask = observed.to(predicted.dtype)
    if weight is not None:
        mask = mask * torch.broadcast_to(weight.unsqueeze(-1), predicted.shape)
    return (err.square() * mask).sum() / mask.sum().clamp_min(1e-12)
