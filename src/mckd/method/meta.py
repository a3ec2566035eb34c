"""The meta step on the importance weights, the outer objective of Eq. 4.

On a validation batch with every modality present, the features are scaled
by the normalised weights, ``l_meta(y, D(concat_i w_i * f_i))``, and only
``w`` is stepped: the model's parameters receive no gradient and are not
changed. This is the authors' first-order step, taken every ``meta_every``
inner iterations.

The model is put in eval mode for the step (dropout off, batch-norm running
statistics untouched), so the meta step changes nothing but ``w``; its
previous mode is restored afterwards.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from mckd.method.model import MultiModalModel
from mckd.method.weights import ImportanceWeights

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def meta_loss(
    model: MultiModalModel,
    weights: ImportanceWeights,
    inputs: Sequence[torch.Tensor],
    target: torch.Tensor,
    loss_fn: LossFn,
) -> torch.Tensor:
    """``l_meta(y, D(concat_i w_i * f_i))`` with every modality present (scalar)."""
    batch = target.shape[0]
    present = torch.ones(batch, model.num_modalities, dtype=torch.bool, device=target.device)
    output = model(inputs, present, feature_scale=weights())
    return loss_fn(output.prediction, target)


def meta_step(
    model: MultiModalModel,
    weights: ImportanceWeights,
    optimizer: torch.optim.Optimizer,
    inputs: Sequence[torch.Tensor],
    target: torch.Tensor,
    loss_fn: LossFn,
) -> torch.Tensor:
    """One optimiser step on ``weights.raw`` only; returns the detached meta loss.

    Args:
        model: the multi-modal model (its parameters are not changed).
        weights: the importance weights; ``optimizer`` must hold ``weights.raw``.
        inputs: N validation tensors ``[B, *X_n]``, all modalities present.
        target: validation targets ``[B, ...]``.
        loss_fn: the task loss, ``loss_fn(prediction, target) -> scalar``.
    """
    was_training = model.training
    model.eval()
    try:
        loss = meta_loss(model, weights, inputs, target, loss_fn)
        (grad,) = torch.autograd.grad(loss, [weights.raw])  # model parameters get nothing
    finally:
        model.train(was_training)
    optimizer.zero_grad(set_to_none=True)
    weights.raw.grad = grad
    optimizer.step()
    return loss.detach()
