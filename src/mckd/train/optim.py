"""The model's optimiser, its learning-rate schedule and mixed precision, from the ``train:`` section."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable

import torch

from mckd.config import TrainConfig
from mckd.method.base import Optimization


def make_optimizer(params: Any, train: TrainConfig) -> torch.optim.Optimizer:
    """The model's optimiser from ``train.*``."""
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(
        params, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov, weight_decay=train.weight_decay
    )


def lr_factor(iteration: int, total: int, per_epoch: int, train: TrainConfig) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based) of ``total``."""
    if train.schedule == "step":
        return train.gamma ** math.floor(iteration / max(1, round(train.step_epochs * per_epoch)))
    if train.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * iteration / total))
    if train.schedule == "poly":
        return (1.0 - iteration / total) ** train.poly_power
    return 1.0


def default_optimization(train: TrainConfig, total: int,
                         per_epoch: int) -> Callable[[Iterable[torch.nn.Parameter]], Optimization]:
    """``default(params)``: the ``train:`` section's optimiser over ``params`` with its schedule, named ``model``.

    What :meth:`mckd.method.base.TrainingMethod.configure_optimizers` is given.
    """

    def default(params: Iterable[torch.nn.Parameter]) -> Optimization:
        return Optimization("model", make_optimizer(params, train),
                            schedule=lambda step: lr_factor(step, total, per_epoch, train))

    return default


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` on ``device``; ``None`` is full float32.

    ``auto`` is bf16 on a CUDA device that supports it and float32 elsewhere;
    ``bf16`` is honoured on the CPU too (slow there, but it tests the path).
    """
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def autocast_context(precision: str, device: torch.device) -> Callable[[], Any]:
    """A factory of the autocast context of ``train.precision`` (a no-op context in float32)."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)
