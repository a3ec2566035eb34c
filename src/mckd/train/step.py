"""One iteration's optimiser steps: each of the method's optimisers on the loss of its own step function.

:func:`train_step` is the default inner step on its own (forward, ``l_task``
plus the method's terms, backward, one optimiser step): what benchmarks time
and tests call. :func:`take_steps` is what the loop runs: every optimiser of
the method (:meth:`TrainingMethod.configure_optimizers`) that is due this
iteration, in order, each on the loss of its step function, computed through
:class:`Trainee` so that DistributedDataParallel sees every forward pass.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from mckd.errors import MckdError
from mckd.method.base import MethodServices, Optimization, StepOutput, TrainingMethod
from mckd.tasks import Task


class Trainee(nn.Module):
    """The model and the method's own parts as one module (what DDP wraps); calling it runs one step function.

    ``trainee(step, batch, present)`` returns ``method.<step>(model, batch,
    present)``, a :class:`StepOutput`: under ``torchrun`` every step's forward
    pass goes through DistributedDataParallel's ``forward``, so the gradients
    of the model and of the parts it used are averaged over processes.
    """

    def __init__(self, model: nn.Module, method: TrainingMethod) -> None:
        super().__init__()
        self.model = model
        self.parts = method.parts
        self.method = method  # not a module: its parts are registered above

    def forward(self, step: str, batch: Mapping[str, Any], present: torch.Tensor) -> StepOutput:
        return getattr(self.method, step)(self.model, batch, present)


def check_step(step: Any, method: TrainingMethod, function: str) -> StepOutput:
    """``step`` as returned by ``method.<function>``, checked: a :class:`StepOutput` with a scalar loss and
    declared scalar values; anything else is one :class:`MckdError` naming the method and its function."""
    where = f"method {method.name!r}: {function}"
    if not isinstance(step, StepOutput):
        raise MckdError(f"{where} returned {type(step).__name__}, not a StepOutput(loss, logged)")
    if not isinstance(step.loss, torch.Tensor) or step.loss.numel() != 1 or not step.loss.requires_grad:
        shape = tuple(step.loss.shape) if isinstance(step.loss, torch.Tensor) else type(step.loss).__name__
        raise MckdError(f"{where} returned a loss of shape {shape}: a scalar tensor in the graph is needed "
                        "(average per-sample losses)")
    declared = method.loss_names()
    unknown = [name for name in step.logged if name not in declared]
    if unknown:
        raise MckdError(f"{where} logged {sorted(unknown)}, which the method does not declare (it declares "
                        f"{list(declared)}: list every name in loss_names, or the default step's terms in "
                        "loss_term_names)")
    odd = [name for name, value in step.logged.items() if not isinstance(value, torch.Tensor) or value.numel() != 1]
    if odd:
        raise MckdError(f"{where} logged {odd} as other than a scalar tensor")
    return step


def optimizer_step(trainee: Callable[..., StepOutput], optimization: Optimization, batch: Mapping[str, Any],
                   present: torch.Tensor, autocast: Callable[[], Any] = contextlib.nullcontext,
                   method: TrainingMethod | None = None) -> StepOutput:
    """The loss of ``optimization``'s step function (checked when ``method`` is given), backward, one step."""
    with autocast():
        step = trainee(optimization.step, batch, present)
    if method is not None:
        step = check_step(step, method, optimization.step)
    optimization.optimizer.zero_grad(set_to_none=True)
    step.loss.backward()
    optimization.optimizer.step()
    return step


def take_steps(trainee: Callable[..., StepOutput], method: TrainingMethod, optimizations: Sequence[Optimization],
               schedulers: Sequence[Any], batch: Mapping[str, Any], present: torch.Tensor, iteration: int,
               autocast: Callable[[], Any] = contextlib.nullcontext) -> tuple[dict[str, torch.Tensor], StepOutput, float]:
    """Step every optimiser due at ``iteration`` (1-based), in order, then its schedule.

    Returns the detached logged values of every step taken, the first
    optimiser's :class:`StepOutput` and the learning rate it used.
    """
    logged: dict[str, torch.Tensor] = {}
    first: StepOutput | None = None
    lr = optimizations[0].optimizer.param_groups[0]["lr"]
    for index, (optimization, scheduler) in enumerate(zip(optimizations, schedulers)):
        if index > 0 and iteration % optimization.every:
            continue
        step = optimizer_step(trainee, optimization, batch, present, autocast, method)
        scheduler.step()
        logged.update({name: value.detach() for name, value in step.logged.items()})
        first = first or step
    assert first is not None
    return logged, first, lr


def train_step(
    model: torch.nn.Module,
    method: TrainingMethod,
    task: Task,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, Any],
    present: torch.Tensor,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> dict[str, torch.Tensor]:
    """One inner iteration (Eq. 4 inner): the method's training step, backward, one step of ``optimizer``.

    Args:
        model: the multi-modal model.
        method: the training method (:meth:`~mckd.method.base.TrainingMethod.training_step`; the default
            is ``l_task + sum_k weight_k * term_k``).
        task: gives the task loss (lent to the method if it was not set up).
        optimizer: the model's optimiser.
        batch: ``inputs`` (N tensors ``[B, *X_n]``) and ``target`` on the model's device.
        present: bool ``[B, N]``, what each sample keeps in this iteration.
        autocast: a factory of the mixed-precision context (:func:`mckd.train.optim.autocast_context`).

    Returns:
        The detached losses by name: ``task`` and each of the method's terms (unweighted).
    """
    if method.services is None:
        method.setup(MethodServices(task_loss=task.loss))
    step = optimizer_step(lambda name, b, p: getattr(method, name)(model, b, p), Optimization("model", optimizer),
                          batch, present, autocast, method)
    return {name: value.detach() for name, value in step.logged.items()}
