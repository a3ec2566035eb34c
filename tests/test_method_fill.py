"""Eq. 2: a missing modality's features are the mean of the present ones of the same sample."""

from __future__ import annotations

import pytest
import torch

from mckd.method.fill import fill_missing_features, zero_missing_features


def _fill_by_loops(features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    out = features.clone()
    for b in range(features.shape[0]):
        here = [n for n in range(features.shape[1]) if present[b, n]]
        mean = sum(features[b, n] for n in here) / len(here)
        for n in range(features.shape[1]):
            if not present[b, n]:
                out[b, n] = mean
    return out


def test_fill_by_hand_on_two_samples():
    features = torch.tensor(
        [
            [[1.0, 2.0], [3.0, 6.0], [99.0, -99.0]],  # third missing -> mean of the first two
            [[5.0, 5.0], [-7.0, 8.0], [0.5, 1.5]],  # only the third present
        ]
    )
    present = torch.tensor([[True, True, False], [False, False, True]])
    filled = fill_missing_features(features, present)
    expected = torch.tensor(
        [
            [[1.0, 2.0], [3.0, 6.0], [2.0, 4.0]],
            [[0.5, 1.5], [0.5, 1.5], [0.5, 1.5]],
        ]
    )
    assert torch.equal(filled, expected)


def test_fill_is_per_sample_for_every_mask_and_feature_shape():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(16, 4, 3, 2, 2, generator=generator)  # [B, N, C, H, W]
    present = torch.rand(16, 4, generator=generator) < 0.5
    present[:, 0] |= ~present.any(dim=1)  # no empty sample
    filled = fill_missing_features(features, present)
    torch.testing.assert_close(filled, _fill_by_loops(features, present))


def test_fill_keeps_present_features_and_ignores_the_values_of_missing_ones():
    features = torch.randn(3, 3, 5)
    present = torch.tensor([[True, False, True], [True, True, True], [False, True, False]])
    garbage = features.clone()
    garbage[~present] = 1e6
    torch.testing.assert_close(fill_missing_features(features, present), fill_missing_features(garbage, present))
    assert torch.equal(fill_missing_features(features, present)[present], features[present])


def test_fill_gives_missing_inputs_no_gradient_and_shares_the_mean_among_present_ones():
    features = torch.randn(1, 3, 4, requires_grad=True)
    present = torch.tensor([[True, True, False]])
    fill_missing_features(features, present).sum().backward()
    # each present modality appears once itself and 1/2 of a time in the filled third
    assert torch.equal(features.grad[0, 0], torch.full((4,), 1.5))
    assert torch.equal(features.grad[0, 1], torch.full((4,), 1.5))
    assert torch.equal(features.grad[0, 2], torch.zeros(4))


def test_fill_refuses_a_sample_with_nothing_present():
    with pytest.raises(ValueError, match="no modality present"):
        fill_missing_features(torch.zeros(2, 2, 3), torch.tensor([[True, False], [False, False]]))


def test_fill_refuses_a_mask_of_the_wrong_shape():
    with pytest.raises(ValueError, match="present"):
        fill_missing_features(torch.zeros(2, 3, 4), torch.ones(2, 2, dtype=torch.bool))


def test_zero_fill_sets_missing_features_to_zero():
    features = torch.ones(2, 2, 3)
    present = torch.tensor([[True, False], [False, True]])
    zeroed = zero_missing_features(features, present)
    assert torch.equal(zeroed[present], torch.ones(2, 3))
    assert torch.equal(zeroed[~present], torch.zeros(2, 3))
