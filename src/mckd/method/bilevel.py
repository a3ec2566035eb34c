"""The bi-level meta-gradient of Eq. 4: the outer loss differentiated through the inner step.

The authors' meta step (:mod:`mckd.method.meta`) is first order: it
differentiates ``l_meta(y, D(concat_i w_i * f_i))`` in ``w`` with the model's
parameters theta held fixed, so ``w`` learns only through the feature scaling.
Eq. 4 is a bi-level problem, though: theta is the minimiser of the inner
objective, which depends on ``w`` through the distillation ratios. This module
takes the standard one-step approximation of that dependence (as in DARTS and
MAML):

    theta'(w) = theta - eta * grad_theta [ l_task + alpha * sum_{i != j} (w_i / w_j) l_ckd(f_i, f_j) ]
    step w on  d/dw  l_meta(y_val, D_theta'(w)(concat_i w_i * f_i))

The ratio ``w_i / w_j`` is *not* detached on this path (the teacher side of
``l_ckd`` still is, as in the inner step), so the gradient has two parts: the
first-order one (through the scaling ``w_i * f_i``) and the look-ahead one
(how changing the ratios would move theta, and how that move changes the
validation loss). With ``eta = 0`` or ``alpha = 0`` it is exactly the
first-order gradient.

theta' is a dict of tensors evaluated with :func:`torch.func.functional_call`:
the model is never copied and its parameters are never changed; only ``w`` is
stepped. Like the first-order step, the look-ahead runs in eval mode (no
dropout noise in the meta-gradient, batch-norm statistics untouched). Cost: one
extra forward and a double backward through the training batch per step
(``benchmarks/bilevel_cost.py`` measures it).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch.func import functional_call

from mckd.method.distill import cross_modal_distillation_loss
from mckd.method.model import MultiModalModel
from mckd.method.weights import ImportanceWeights

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def lookahead_meta_loss(
    model: MultiModalModel,
    weights: torch.Tensor,
    train_inputs: Sequence[torch.Tensor],
    train_present: torch.Tensor,
    train_target: torch.Tensor,
    val_inputs: Sequence[torch.Tensor],
    val_target: torch.Tensor,
    loss_fn: LossFn,
    alpha: float,
    lookahead_lr: float,
    p: int = 1,
    reduction: str = "mean",
    step_scale: Mapping[str, torch.Tensor | float] | None = None,
) -> torch.Tensor:
    """``l_meta`` at the look-ahead parameters theta'(w), differentiable in ``weights``.

    Args:
        model: the multi-modal model at theta (not changed; call in the mode you want, eval for the meta step).
        weights: normalised importance weights ``[N]``, in the graph (e.g. ``ImportanceWeights()()``).
        train_inputs, train_present, train_target: the training batch of the look-ahead:
            N tensors ``[B, *X_n]``, bool ``[B, N]``, targets ``[B, ...]``.
        val_inputs, val_target: the validation batch, every modality present.
        loss_fn: the task loss ``loss_fn(prediction, target) -> scalar``.
        alpha: weight of the CKD term in the inner objective.
        lookahead_lr: eta, the step size of the look-ahead.
        p, reduction: the CKD distance (see :func:`mckd.method.distill.pairwise_feature_distance`).
        step_scale: optional per-parameter factor (by parameter name; a tensor of
            the parameter's shape or a number), ``theta' = theta - eta * scale * grad``:
            a preconditioner that makes the look-ahead the step the model's
            optimiser would take (see :func:`mckd.variants.optimizer_step_scale`).
            It is treated as a constant. ``None``: the plain gradient step.

    Returns:
        A scalar whose gradient in ``weights`` is the bi-level meta-gradient.
    """
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())

    output = model(train_inputs, train_present)  # at theta
    inner = loss_fn(output.prediction, train_target)
    if alpha > 0:
        ckd = cross_modal_distillation_loss(output.features, train_present, weights, p, reduction, detach_weights=False)
        inner = inner + alpha * ckd
    grads = torch.autograd.grad(inner, [params[n] for n in names], create_graph=True, allow_unused=True)
    lookahead = dict(params)
    for name, grad in zip(names, grads):
        if grad is not None:  # None: the parameter did not take part (a modality absent from the batch)
            scale = 1.0 if step_scale is None else step_scale.get(name, 1.0)
            lookahead[name] = params[name] - lookahead_lr * scale * grad  # theta'(w)

    batch = val_target.shape[0]
    val_present = torch.ones(batch, model.num_modalities, dtype=torch.bool, device=val_target.device)
    val_output = functional_call(model, (lookahead, buffers), (val_inputs, val_present), {"feature_scale": weights})
    return loss_fn(val_output.prediction, val_target)


def bilevel_meta_step(
    model: MultiModalModel,
    weights: ImportanceWeights,
    optimizer: torch.optim.Optimizer,
    train_inputs: Sequence[torch.Tensor],
    train_present: torch.Tensor,
    train_target: torch.Tensor,
    val_inputs: Sequence[torch.Tensor],
    val_target: torch.Tensor,
    loss_fn: LossFn,
    alpha: float,
    lookahead_lr: float,
    p: int = 1,
    reduction: str = "mean",
    step_scale: Mapping[str, torch.Tensor | float] | None = None,
) -> torch.Tensor:
    """One optimiser step on ``weights.raw`` along the bi-level meta-gradient; returns the detached loss.

    Arguments as :func:`lookahead_meta_loss`; ``optimizer`` must hold
    ``weights.raw``. The model's parameters receive no gradient and are not
    changed; the model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        loss = lookahead_meta_loss(
            model, weights(), train_inputs, train_present, train_target, val_inputs, val_target,
            loss_fn, alpha, lookahead_lr, p, reduction, step_scale,
        )
        (grad,) = torch.autograd.grad(loss, [weights.raw])
    finally:
        model.train(was_training)
    optimizer.zero_grad(set_to_none=True)
    weights.raw.grad = grad
    optimizer.step()
    return loss.detach()
