"""Eq. 6: the importance weight vector and its normalisations, checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from mckd.method.weights import RELU_EPS, ImportanceWeights


def _with_raw(values: list[float], normalisation: str) -> ImportanceWeights:
    weights = ImportanceWeights([f"m{i}" for i in range(len(values))], normalisation)
    with torch.no_grad():
        weights.raw.copy_(torch.tensor(values))
    return weights


def test_softmax_weights_are_exp_over_sum_of_exp():
    raw = [0.3, -1.2, 2.0]
    total = sum(math.exp(v) for v in raw)
    expected = [math.exp(v) / total for v in raw]
    got = _with_raw(raw, "softmax")().tolist()
    assert got == pytest.approx(expected, rel=1e-6)
    assert sum(got) == pytest.approx(1.0, rel=1e-6)


def test_sigmoid_weights_are_one_over_one_plus_exp_minus_v():
    raw = [0.3, -1.2, 2.0]
    expected = [1 / (1 + math.exp(-v)) for v in raw]
    assert _with_raw(raw, "sigmoid")().tolist() == pytest.approx(expected, rel=1e-6)


def test_relu_weights_clip_negatives_and_add_eps_so_ratios_stay_finite():
    raw = [0.5, -0.7, 0.0]
    w = _with_raw(raw, "relu")()
    assert w.tolist() == pytest.approx([0.5 + RELU_EPS, RELU_EPS, RELU_EPS], rel=1e-6, abs=1e-12)
    ratios = w.unsqueeze(1) / w.unsqueeze(0)
    assert torch.isfinite(ratios).all()


def test_initial_raw_weights_are_uniform_in_unit_interval_and_reproducible():
    a = ImportanceWeights(["x", "y", "z", "t"], generator=torch.Generator().manual_seed(7))
    b = ImportanceWeights(["x", "y", "z", "t"], generator=torch.Generator().manual_seed(7))
    assert a.raw.shape == (4,)
    assert torch.equal(a.raw, b.raw)
    assert bool(((a.raw >= 0) & (a.raw < 1)).all())
    assert a.raw.requires_grad


def test_as_dict_names_the_normalised_weights_by_modality():
    weights = _with_raw([0.0, math.log(3.0)], "softmax")
    assert weights.as_dict() == pytest.approx({"m0": 0.25, "m1": 0.75})


def test_unknown_normalisation_is_refused():
    with pytest.raises(ValueError, match="normalisation"):
        ImportanceWeights(["a", "b"], "tanh")
