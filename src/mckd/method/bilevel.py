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
first-order gradient. The inner objective is passed in by the training method
(:class:`mckd.method.mckd.MCKD` passes its own), so the look-ahead always
differentiates the objective the loop optimises.

theta' is a dict of tensors evaluated with :func:`torch.func.functional_call`:
the model is never copied and its parameters are never changed; only ``w`` is
stepped. Like the first-order step, the look-ahead runs in eval mode (no
dropout noise in the meta-gradient, batch-norm statistics untouched). Cost: one
extra forward and a double backward through the training batch per step
(``benchmarks/bilevel_cost.py`` measures it).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from mckd.method.model import ModelOutput, MultiModalModel
from mckd.method.weights import ImportanceWeights

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The inner objective of a training batch: (output, present [B, N], target, weights [N] in the graph) -> scalar.
InnerObjective = Callable[[ModelOutput, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def lookahead_meta_loss(
    model: MultiModalModel,
    weights: torch.Tensor,
    train_inputs: Sequence[torch.Tensor],
    train_present: torch.Tensor,
    train_target: torch.Tensor,
    val_inputs: Sequence[torch.Tensor],
    val_target: torch.Tensor,
    loss_fn: LossFn,
    inner_objective: InnerObjective,
    lookahead_lr: float,
    step_scale: Mapping[str, torch.Tensor | float] | None = None,
) -> torch.Tensor:
    """``l_meta`` at the look-ahead parameters theta'(w), differentiable in ``weights``.

    Args:
        model: the multi-modal model at theta (not changed; call in the mode you want, eval for the meta step).
        weights: normalised importance weights ``[N]``, in the graph (e.g. ``ImportanceWeights()()``).
        train_inputs, train_present, train_target: the training batch of the look-ahead:
            N tensors ``[B, *X_n]``, bool ``[B, N]``, targets ``[B, ...]``.
        val_inputs, val_target: the validation batch, every modality present.
        loss_fn: the task loss ``loss_fn(prediction, target) -> scalar`` (the meta loss on validation).
        inner_objective: the training method's own inner objective on the training
            batch, with the weights kept in the graph (MCKD: the task loss plus
            ``alpha * sum (w_i / w_j) l_ckd``, ratio not detached); it must be
            twice differentiable.
        lookahead_lr: eta, the step size of the look-ahead.
        step_scale: optional per-parameter factor (by parameter name; a tensor of
            the parameter's shape or a number), ``theta' = theta - eta * scale * grad``:
            a preconditioner that makes the look-ahead the step the model's
            optimiser would take (see :func:`optimizer_step_scale`).
            It is treated as a constant. ``None``: the plain gradient step.

    Returns:
        A scalar whose gradient in ``weights`` is the bi-level meta-gradient.
    """
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())

    output = model(train_inputs, train_present)  # at theta
    inner = inner_objective(output, train_present, train_target, weights)
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
    inner_objective: InnerObjective,
    lookahead_lr: float,
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
            loss_fn, inner_objective, lookahead_lr, step_scale,
        )
        (grad,) = torch.autograd.grad(loss, [weights.raw])
    finally:
        model.train(was_training)
    optimizer.zero_grad(set_to_none=True)
    weights.raw.grad = grad
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def optimizer_step_scale(optimizer: torch.optim.Optimizer | None, model: nn.Module) -> dict[str, Any] | None:
    """Per-parameter factors that turn ``eta * grad`` into the step the model's optimiser takes, to first order.

    - Adam / AdamW: ``1 / (sqrt(v_hat) + eps)`` from the optimiser's second
      moments (the cumulative effect of a gradient change through the first
      moment is one);
    - SGD with momentum ``mu``: ``1 / (1 - mu)``, the total step a persistent
      gradient change causes;
    - plain SGD, or before the optimiser's first step: ``None`` (the plain step).
    """
    if optimizer is None:
        return None
    names = {id(param): name for name, param in model.named_parameters()}
    scale: dict[str, Any] = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            name = names.get(id(param))
            if name is None:
                continue
            if "exp_avg_sq" in state:
                step = float(state["step"])
                bias = 1 - group["betas"][1] ** step
                scale[name] = 1.0 / ((state["exp_avg_sq"] / bias).sqrt() + group["eps"])
            elif group.get("momentum", 0) > 0:
                scale[name] = 1.0 / (1.0 - group["momentum"])
    return scale or None
