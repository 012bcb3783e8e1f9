"""Losses against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import bradley_terry_loss, criterion_loss


def test_bradley_terry_matches_hand_computation():
    r_a = torch.tensor([2.0, 0.0, 1.0])
    r_b = torch.tensor([1.0, 0.0, 3.0])
    target = torch.tensor([1.0, 0.5, 0.5])
    weight = torch.tensor([0.5, 0.25, 0.25])
    p1 = 1 / (1 + math.exp(-1.0))
    p3 = 1 / (1 + math.exp(2.0))
    losses = [-math.log(p1), math.log(2), -(0.5 * math.log(p3) + 0.5 * math.log(1 - p3))]
    expected = 0.5 * losses[0] + 0.25 * losses[1] + 0.25 * losses[2]
    assert float(bradley_terry_loss(r_a, r_b, target, weight)) == pytest.approx(expected, rel=1e-6)


def test_tie_loss_is_smallest_at_equal_rewards():
    target = torch.tensor([0.5])
    at_equal = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0]), target)
    apart = bradley_terry_loss(torch.tensor([1.5]), torch.tensor([1.0]), target)
    assert float(at_equal) == pytest.approx(math.log(2))
    assert float(apart) > float(at_equal)


def test_bradley_terry_broadcasts_over_ensemble_members():
    r_a, r_b = torch.zeros(3, 4), torch.zeros(3, 4)
    loss = bradley_terry_loss(r_a, r_b, torch.ones(4), torch.ones(3, 4))
    assert float(loss) == pytest.approx(math.log(2))


def test_criterion_loss_skips_missing_ratings():
    predicted = torch.tensor([[3.0, 5.0], [1.0, 2.0]])
    target = torch.tensor([[5.0, float("nan")], [1.0, 4.0]])
    # errors /4: 0.5, -, 0, 0.5 -> mean of squares over 3 observed
    assert float(criterion_loss(predicted, target)) == pytest.approx((0.25 + 0 + 0.25) / 3)


def test_criterion_loss_all_missing_is_zero_with_gradient():
    predicted = torch.tensor([[3.0]], requires_grad=True)
    loss = criterion_loss(predicted, torch.tensor([[float("nan")]]))
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert predicted.grad is not None
