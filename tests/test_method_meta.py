"""Eq. 4: the inner step never moves w; the meta step moves only w, towards the useful modality."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mckd.method.distill import cross_modal_distillation_loss
from mckd.method.meta import meta_loss, meta_step
from mckd.method.model import MultiModalModel
from mckd.method.weights import ImportanceWeights


def _informative_and_noise(samples: int = 256, seed: int = 0):
    """Two classes; modality ``signal`` is +1/-1 by class, ``noise`` is a fair coin.

    The decoder adds both: logits = (s + n, -(s + n)). Scaling ``signal`` up sharpens
    every prediction; scaling ``noise`` up helps half the samples less than it hurts
    the other half (cross-entropy is convex), so the meta step should favour ``signal``.
    """
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 2, (samples,), generator=generator)
    signal = (1 - 2 * target).float().unsqueeze(1)  # (S, 1): +1 for class 0, -1 for class 1
    noise = (torch.randint(0, 2, (samples, 1), generator=generator) * 2 - 1).float()
    decoder = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        decoder.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
    model = MultiModalModel(["signal", "noise"], {"signal": nn.Identity(), "noise": nn.Identity()}, decoder)
    return model, [signal, noise], target


@pytest.mark.parametrize("normalisation", ["softmax", "sigmoid"])
def test_meta_step_moves_w_towards_the_modality_whose_weighted_features_lower_the_validation_loss(normalisation):
    model, inputs, target = _informative_and_noise()
    weights = ImportanceWeights(["signal", "noise"], normalisation)
    with torch.no_grad():
        weights.raw.zero_()  # start with equal importance
    optimizer = torch.optim.Adam([weights.raw], lr=0.05)
    history = [weights().detach().clone()]
    losses = []
    for _ in range(20):
        losses.append(meta_step(model, weights, optimizer, inputs, target, F.cross_entropy).item())
        history.append(weights().detach().clone())
    signal = torch.stack(history)[:, 0]
    noise = torch.stack(history)[:, 1]
    assert bool((signal[1:] > signal[:-1]).all()), signal
    assert bool((noise[1:] < noise[:-1]).all()), noise
    assert losses[-1] < losses[0]


def test_meta_step_is_one_adam_step_along_the_validation_gradient_of_w_computed_by_hand():
    model, inputs, target = _informative_and_noise(samples=64, seed=3)
    weights = ImportanceWeights(["signal", "noise"], "softmax")
    with torch.no_grad():
        weights.raw.copy_(torch.tensor([0.2, 0.6]))
    raw = weights.raw.detach().clone().requires_grad_(True)
    w = torch.softmax(raw, dim=0)
    fused = torch.cat([w[0] * inputs[0], w[1] * inputs[1]], dim=1)  # (B, 2): D(concat w_i f_i)
    logits = torch.stack([fused.sum(1), -fused.sum(1)], dim=1)
    F.cross_entropy(logits, target).backward()
    lr = 0.01
    optimizer = torch.optim.Adam([weights.raw], lr=lr)
    before = weights.raw.detach().clone()
    meta_step(model, weights, optimizer, inputs, target, F.cross_entropy)
    # Adam's first step, no weight decay: -lr * g / (|g| + eps) = -lr * sign(g)
    torch.testing.assert_close(weights.raw.detach() - before, -lr * torch.sign(raw.grad), rtol=1e-4, atol=1e-7)


def _model_with_state() -> MultiModalModel:
    torch.manual_seed(0)
    encoders = {
        "a": nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5)),
        "b": nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5)),
    }
    decoder = nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    return MultiModalModel(["a", "b"], encoders, decoder)


def test_meta_step_moves_only_w_and_leaves_the_model_bit_identical():
    model = _model_with_state()
    model.train()
    weights = ImportanceWeights(["a", "b"], generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam([weights.raw], lr=1e-2, weight_decay=1e-2)
    inputs = [torch.randn(16, 4), torch.randn(16, 3)]
    target = torch.randint(0, 3, (16,))
    state = {k: v.clone() for k, v in model.state_dict().items()}  # parameters and batch-norm statistics
    raw_before = weights.raw.detach().clone()
    meta_step(model, weights, optimizer, inputs, target, F.cross_entropy)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in model.parameters())
    assert model.training  # mode restored after the step
    assert not torch.equal(weights.raw.detach(), raw_before)


def test_meta_loss_uses_every_modality_and_the_weighted_features():
    model = _model_with_state()
    model.eval()
    weights = ImportanceWeights(["a", "b"], generator=torch.Generator().manual_seed(2))
    inputs = [torch.randn(5, 4), torch.randn(5, 3)]
    target = torch.randint(0, 3, (5,))
    loss = meta_loss(model, weights, inputs, target, F.cross_entropy)
    output = model(inputs, torch.ones(5, 2, dtype=torch.bool), feature_scale=weights())
    torch.testing.assert_close(loss, F.cross_entropy(output.prediction, target))


def test_inner_step_does_not_move_w():
    model = _model_with_state()
    model.train()
    weights = ImportanceWeights(["a", "b"], generator=torch.Generator().manual_seed(1))
    raw_before = weights.raw.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    inputs = [torch.randn(16, 4), torch.randn(16, 3)]
    present = torch.ones(16, 2, dtype=torch.bool)
    present[:5, 1] = False
    target = torch.randint(0, 3, (16,))
    output = model(inputs, present)
    loss = F.cross_entropy(output.prediction, target) + 0.1 * cross_modal_distillation_loss(
        output.features, present, weights()
    )
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert weights.raw.grad is None
    assert torch.equal(weights.raw.detach(), raw_before)
