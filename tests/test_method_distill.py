"""Eq. 5 and the inner CKD term of Eq. 4, against hand-computed values and a loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import ckd_by_loops
from mckd.method.distill import (
    cross_modal_distillation_loss,
    fused_pairwise_feature_distance,
    pairwise_feature_distance,
)


# One sample, two modalities f_1 = [1, 2], f_2 = [3, 5], w = [1/4, 3/4]: |f_1 - f_2| = [2, 3].
# Ordered pairs (1 -> 2) with ratio 1/3 and (2 -> 1) with ratio 3: total ratio 10/3.
HAND = {
    (1, "mean"): 10 / 3 * 2.5,  # mean |d| = 5/2
    (1, "norm"): 10 / 3 * 5.0,  # ||d||_1 = 5
    (2, "mean"): 10 / 3 * 6.5,  # mean d^2 = 13/2
    (2, "norm"): 10 / 3 * math.sqrt(13.0),  # ||d||_2
}


@pytest.mark.parametrize("p,reduction", list(HAND))
def test_ckd_loss_by_hand_on_two_modalities(p, reduction):
    features = torch.tensor([[[1.0, 2.0], [3.0, 5.0]]])
    present = torch.ones(1, 2, dtype=torch.bool)
    weights = torch.tensor([0.25, 0.75])
    loss = cross_modal_distillation_loss(features, present, weights, p=p, reduction=reduction)
    assert loss.item() == pytest.approx(HAND[(p, reduction)], rel=1e-6)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("reduction", ["mean", "norm"])
def test_ckd_loss_matches_a_loop_over_ordered_pairs_present_in_each_sample(p, reduction):
    generator = torch.Generator().manual_seed(p + 10 * len(reduction))
    features = torch.randn(6, 4, 3, 2, generator=generator, dtype=torch.float64)  # [B, N, C, S]
    present = torch.rand(6, 4, generator=generator) < 0.6
    present[:, 1] |= ~present.any(dim=1)
    weights = torch.softmax(torch.randn(4, generator=generator, dtype=torch.float64), dim=0)
    loss = cross_modal_distillation_loss(features, present, weights, p=p, reduction=reduction)
    expected = ckd_by_loops(features, present, weights, p, reduction)
    torch.testing.assert_close(loss, expected)


def test_ckd_ignores_pairs_with_a_missing_modality():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(3, 3, 4, generator=generator)
    present = torch.tensor([[True, True, False], [True, False, False], [False, True, True]])
    weights = torch.tensor([0.2, 0.3, 0.5])
    changed = features.clone()
    changed[~present] = torch.randn(int((~present).sum()), 4, generator=generator) * 100
    base = cross_modal_distillation_loss(features, present, weights)
    assert cross_modal_distillation_loss(changed, present, weights).item() == pytest.approx(base.item(), rel=1e-6)
    # sample 1 has one modality: no pair; only (0,1) of sample 0 and (1,2) of sample 2 count
    d01 = (features[0, 0] - features[0, 1]).abs().mean()
    d12 = (features[2, 1] - features[2, 2]).abs().mean()
    expected = ((0.2 / 0.3 + 0.3 / 0.2) * d01 + (0.3 / 0.5 + 0.5 / 0.3) * d12) / 3
    assert base.item() == pytest.approx(expected.item(), rel=1e-5)


def test_ckd_loss_is_zero_when_no_sample_has_two_modalities():
    features = torch.randn(4, 3, 5, requires_grad=True)
    present = torch.eye(3, dtype=torch.bool)[[0, 1, 2, 0]]
    loss = cross_modal_distillation_loss(features, present, torch.tensor([0.2, 0.3, 0.5]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_ckd_teacher_side_receives_no_gradient():
    # Two modalities: f_1's gradient comes only from the pair where it is the student
    # (teacher 2, ratio w_2 / w_1). Were the teacher not detached, the pair (1 -> 2)
    # would add w_1 / w_2 * sign(f_1 - f_2) / D as well.
    features = torch.tensor([[[1.0, 4.0, -2.0], [3.0, 0.0, -1.0]]], requires_grad=True)
    w = torch.tensor([0.2, 0.8])
    loss = cross_modal_distillation_loss(features, torch.ones(1, 2, dtype=torch.bool), w, p=1)
    loss.backward()
    sign = torch.sign(features[0, 0] - features[0, 1]).detach()
    torch.testing.assert_close(features.grad[0, 0], (0.8 / 0.2) * sign / 3)
    torch.testing.assert_close(features.grad[0, 1], (0.2 / 0.8) * -sign / 3)


@pytest.mark.parametrize("p,reduction", list(HAND))
def test_ckd_gradient_equals_that_of_the_loop_with_explicitly_detached_teachers(p, reduction):
    generator = torch.Generator().manual_seed(3)
    data = torch.randn(5, 3, 4, generator=generator, dtype=torch.float64)
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)
    weights = torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64)
    ours = data.clone().requires_grad_(True)
    cross_modal_distillation_loss(ours, present, weights, p=p, reduction=reduction).backward()
    reference = data.clone().requires_grad_(True)
    ckd_by_loops(reference, present, weights, p, reduction).backward()
    torch.testing.assert_close(ours.grad, reference.grad)


def test_ckd_ratio_receives_no_gradient():
    raw = torch.tensor([0.1, 0.5, -0.3], requires_grad=True)
    weights = torch.softmax(raw, dim=0)
    features = torch.randn(2, 3, 4, requires_grad=True)
    loss = cross_modal_distillation_loss(features, torch.ones(2, 3, dtype=torch.bool), weights)
    loss.backward()
    assert raw.grad is None
    assert features.grad is not None


def test_ckd_pulls_a_low_weight_student_harder_than_a_high_weight_one():
    features = torch.tensor([[[0.0], [1.0]]], requires_grad=True)
    cross_modal_distillation_loss(features, torch.ones(1, 2, dtype=torch.bool), torch.tensor([0.9, 0.1])).backward()
    assert features.grad[0, 1].abs().item() == pytest.approx(81 * features.grad[0, 0].abs().item(), rel=1e-5)


def test_ckd_gradient_is_finite_for_identical_features_with_the_l2_norm():
    features = torch.ones(2, 3, 4, requires_grad=True)
    loss = cross_modal_distillation_loss(features, torch.ones(2, 3, dtype=torch.bool), torch.ones(3) / 3, 2, "norm")
    loss.backward()
    assert torch.isfinite(features.grad).all()


def test_pairwise_distance_entry_i_j_compares_teacher_i_with_student_j():
    features = torch.tensor([[[0.0, 0.0], [1.0, 3.0], [-2.0, 2.0]]])
    distance = pairwise_feature_distance(features, p=1, reduction="norm")[0]
    assert distance.tolist() == [[0.0, 4.0, 4.0], [4.0, 0.0, 4.0], [4.0, 4.0, 0.0]]
    squared = pairwise_feature_distance(features, p=2, reduction="mean")[0]
    assert squared[1, 2].item() == pytest.approx((9 + 1) / 2)


def test_ckd_refuses_a_wrong_p_reduction_or_weight_shape():
    features, present = torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="p must be"):
        cross_modal_distillation_loss(features, present, torch.ones(2), p=3)
    with pytest.raises(ValueError, match="reduction"):
        cross_modal_distillation_loss(features, present, torch.ones(2), reduction="sum")
    with pytest.raises(ValueError, match="weights"):
        cross_modal_distillation_loss(features, present, torch.ones(3))


@pytest.mark.parametrize("p,reduction", list(HAND))
def test_fused_and_broadcast_distances_agree_in_value_and_gradient(p, reduction):
    generator = torch.Generator().manual_seed(4)
    data = torch.randn(4, 5, 3, 2, generator=generator, dtype=torch.float64)
    data[0, 1] = data[0, 0]  # a zero distance off the diagonal too
    fused = data.clone().requires_grad_(True)
    broadcast = data.clone().requires_grad_(True)
    a = fused_pairwise_feature_distance(fused, p, reduction)
    b = pairwise_feature_distance(broadcast, p, reduction)
    torch.testing.assert_close(a, b)
    upstream = torch.rand(4, 5, 5, generator=generator, dtype=torch.float64)
    (a * upstream).sum().backward()
    (b * upstream).sum().backward()
    assert torch.isfinite(fused.grad).all()
    torch.testing.assert_close(fused.grad, broadcast.grad)


def test_ckd_loss_with_the_ratio_in_the_graph_can_be_differentiated_twice():
    # The bi-level look-ahead differentiates the inner gradient again, with respect to w.
    raw = torch.tensor([0.1, 0.5, -0.3], dtype=torch.float64, requires_grad=True)
    features = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    present = torch.ones(2, 3, dtype=torch.bool)
    loss = cross_modal_distillation_loss(features, present, torch.softmax(raw, 0), p=2, detach_weights=False)
    (grad,) = torch.autograd.grad(loss, features, create_graph=True)
    (second,) = torch.autograd.grad(grad.pow(2).sum(), raw)
    assert torch.isfinite(second).all() and second.abs().sum() > 0
    detached = cross_modal_distillation_loss(features, present, torch.softmax(raw, 0), p=2)
    torch.testing.assert_close(loss, detached)
