"""The bi-level meta-gradient (Eq. 4 through a one-step look-ahead), checked against finite differences."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mckd.method import MethodServices, MultiModalModel
from mckd.method.bilevel import bilevel_meta_step, lookahead_meta_loss, optimizer_step_scale
from mckd.method.mckd import MCKD, MCKDOptions
from mckd.method.meta import meta_loss

ALPHA, ETA = 0.5, 0.5


def tiny_problem():
    """Three modalities of different sizes, float64, with a partly missing training batch."""
    torch.manual_seed(0)
    sizes = {"a": 3, "b": 5, "c": 2}
    encoders = {m: nn.Sequential(nn.Linear(d, 4), nn.Tanh()) for m, d in sizes.items()}
    model = MultiModalModel(list(sizes), encoders, nn.Linear(12, 3)).double()
    weights = mckd_method(ALPHA).weights.double()
    train_inputs = [torch.randn(6, d, dtype=torch.float64) for d in sizes.values()]
    train_present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    train_target = torch.randint(0, 3, (6,))
    val_inputs = [torch.randn(5, d, dtype=torch.float64) for d in sizes.values()]
    val_target = torch.randint(0, 3, (5,))
    return model, weights, (train_inputs, train_present, train_target), (val_inputs, val_target)


def mckd_method(alpha: float) -> MCKD:
    """The MCKD training method whose own inner objective the look-ahead differentiates."""
    method = MCKD(MCKDOptions(alpha=alpha, meta_mode="bilevel"), ["a", "b", "c"], seed=1)
    method.setup(MethodServices(task_loss=F.cross_entropy))
    return method


def reference_lookahead_loss(model, raw, train, val, scale=None) -> float:
    """The same quantity computed another way: a copied model, a Python loop over pairs, an in-place SGD step."""
    (xs, present, y), (val_xs, val_y) = train, val
    w = torch.softmax(raw, dim=0)
    student = copy.deepcopy(model)
    out = student(xs, present)
    ckd = torch.zeros((), dtype=torch.float64)
    n = len(xs)
    for b in range(present.shape[0]):
        for i in range(n):
            for j in range(n):
                if i != j and present[b, i] and present[b, j]:
                    distance = (out.features[b, i].detach() - out.features[b, j]).abs().mean()
                    ckd = ckd + w[i] / w[j] * distance
    inner = F.cross_entropy(out.prediction, y) + ALPHA * ckd / present.shape[0]
    names, params = zip(*student.named_parameters())
    grads = torch.autograd.grad(inner, params, allow_unused=True)
    with torch.no_grad():
        for name, param, grad in zip(names, params, grads):
            if grad is not None:
                param -= ETA * (1.0 if scale is None else scale[name]) * grad
    all_present = torch.ones(val_y.shape[0], n, dtype=torch.bool)
    return float(F.cross_entropy(student(val_xs, all_present, feature_scale=w).prediction, val_y).detach())


def bilevel_gradient(model, weights, train, val, eta=ETA, alpha=ALPHA, scale=None) -> torch.Tensor:
    inner = mckd_method(alpha).inner_objective
    loss = lookahead_meta_loss(model, weights(), *train, *val, F.cross_entropy, inner, eta, step_scale=scale)
    return torch.autograd.grad(loss, [weights.raw])[0]


@pytest.mark.parametrize("preconditioned", [False, True])
def test_bilevel_gradient_matches_finite_differences_in_float64(preconditioned):
    model, weights, train, val = tiny_problem()
    model.eval()
    generator = torch.Generator().manual_seed(2)
    scale = ({name: torch.rand(p.shape, generator=generator, dtype=torch.float64) * 2 for name, p in
              model.named_parameters()} if preconditioned else None)
    analytic = bilevel_gradient(model, weights, train, val, scale=scale)
    h = 1e-6
    numeric = torch.zeros_like(analytic)
    for k in range(len(numeric)):
        step = torch.zeros_like(weights.raw)
        step[k] = h
        raw = weights.raw.detach()
        numeric[k] = (reference_lookahead_loss(model, raw + step, train, val, scale)
                      - reference_lookahead_loss(model, raw - step, train, val, scale)) / (2 * h)
    assert torch.allclose(analytic, numeric, rtol=1e-6, atol=1e-9), (analytic, numeric)


def test_bilevel_gradient_differs_from_first_order_only_through_the_lookahead():
    model, weights, train, val = tiny_problem()
    model.eval()
    first_order = torch.autograd.grad(meta_loss(model, weights, *val, F.cross_entropy), [weights.raw])[0]
    no_step = bilevel_gradient(model, weights, train, val, eta=0.0)
    no_ckd = bilevel_gradient(model, weights, train, val, alpha=0.0)
    full = bilevel_gradient(model, weights, train, val)
    assert torch.allclose(no_step, first_order, rtol=1e-10, atol=1e-12)
    # without CKD the look-ahead does not depend on w: only the scaling term remains, at theta'
    assert not torch.allclose(full, no_ckd, rtol=1e-3, atol=1e-6)
    assert not torch.allclose(full, first_order, rtol=1e-3, atol=1e-6)


def test_bilevel_step_changes_only_the_weights_and_restores_train_mode():
    model, weights, train, val = tiny_problem()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    raw_before = weights.raw.detach().clone()
    optimizer = torch.optim.Adam([weights.raw], lr=1e-2)
    loss = bilevel_meta_step(model, weights, optimizer, *train, *val, F.cross_entropy,
                             mckd_method(ALPHA).inner_objective, ETA)
    assert torch.isfinite(loss)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not torch.equal(raw_before, weights.raw.detach())


def test_optimizer_step_scale_is_adams_preconditioner_and_sgd_momentum_gain():
    model, weights, train, val = tiny_problem()
    adam = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-8)
    assert optimizer_step_scale(adam, model) is None  # no step taken yet: the plain step
    for _ in range(3):
        adam.zero_grad()
        F.cross_entropy(model(train[0], train[1]).prediction, train[2]).backward()
        adam.step()
    scale = optimizer_step_scale(adam, model)
    name, param = next(iter(model.named_parameters()))
    v_hat = adam.state[param]["exp_avg_sq"] / (1 - 0.99**3)
    assert torch.allclose(scale[name], 1 / (v_hat.sqrt() + 1e-8))
    sgd = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    assert all(value == pytest.approx(10.0) for value in optimizer_step_scale(sgd, model).values())
