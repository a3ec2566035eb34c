"""Cross-modal distillation over every pair with equal weights: MCKD without the meta-learned importance.

The inner objective adds ``alpha * sum_{i != j present} l_ckd(f_i, f_j)``
(every ratio ``w_i / w_j`` is 1) and no meta step is taken. Against ``mckd``
it asks whether the learned importance weights matter; against ``baseline``,
whether distillation does. It is also the worked example of adding a method
(README, "Adding a method"): this file and one import line in
``mckd/method/__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mckd.errors import ConfigError
from mckd.method.base import Batch, Term, TrainingMethod, register_training_method
from mckd.method.distill import cross_modal_distillation_loss
from mckd.method.model import ModelOutput


@dataclass
class UniformCKDOptions:
    """Options of the ``ckd_uniform`` method."""

    alpha: float = 0.1  # weight of the distillation term
    p: int = 1  # 1 (L1) or 2 (L2)
    ckd_reduction: Literal["mean", "norm"] = "mean"  # per-element mean or the vector norm

    def validate(self, path: str) -> None:
        if self.alpha < 0 or self.p not in (1, 2):
            raise ConfigError(f"{path}: alpha must be >= 0 and p 1 or 2, got alpha {self.alpha}, p {self.p}")


@register_training_method(UniformCKDOptions)
class UniformCKD(TrainingMethod):
    """All ordered pairs of present modalities distilled with weight 1."""

    name = "ckd_uniform"
    description = "cross-modal distillation over all pairs with equal weights, no meta step (MCKD without w)"

    def loss_term_names(self) -> tuple[str, ...]:
        return ("ckd",)

    def loss_terms(self, output: ModelOutput, present: torch.Tensor,
                   weights: torch.Tensor | None = None, batch: Batch | None = None) -> dict[str, Term]:
        ones = torch.ones(len(self.modalities), device=output.features.device)  # (N,): every ratio is 1
        ckd = cross_modal_distillation_loss(output.features, present, ones, self.options.p, self.options.ckd_reduction)
        return {"ckd": Term(self.options.alpha, ckd)}
