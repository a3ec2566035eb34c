"""MCKD as a training method: weighted cross-modal distillation and the meta step on the importance weights.

Per training batch, the inner objective of Eq. 4 adds
``alpha * sum_{i != j present} (w_i / w_j) l_ckd(f_i, f_j)`` to the task loss
(:func:`mckd.method.distill.cross_modal_distillation_loss`, teacher side and
ratio detached). Every ``meta_every`` iterations, ``meta_batches`` meta steps
move ``w`` on the meta-validation split (Eq. 4 outer): the authors' first-order
step (:func:`mckd.method.meta.meta_step`) or the bi-level one through a
one-step look-ahead of this inner objective (:mod:`mckd.method.bilevel`).

The ``baseline`` preset is this method with ``alpha: 0`` and ``meta: false``:
the same network and data, no distillation and no meta step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import torch

from mckd.errors import ConfigError
from mckd.method.base import Batch, Term, TrainingMethod, combine, register_preset, register_training_method
from mckd.method.bilevel import bilevel_meta_step, optimizer_step_scale
from mckd.method.distill import cross_modal_distillation_loss
from mckd.method.meta import meta_step
from mckd.method.model import ModelOutput, MultiModalModel
from mckd.method.weights import ImportanceWeights


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class MCKDOptions:
    """Options of the ``mckd`` method (paper defaults)."""

    alpha: float = 0.1  # weight of the CKD term in Eq. 4; 0 turns distillation off
    p: int = 1  # norm of Eq. 5: 1 (paper default) or 2 (ablation)
    ckd_reduction: Literal["mean", "norm"] = "mean"  # mean |f_i-f_j|^p per element (authors' code) or ||f_i-f_j||_p (paper text)
    weight_norm: Literal["softmax", "sigmoid", "relu"] = "softmax"  # normalisation of Eq. 6
    meta: bool = True  # take meta steps on the importance weights; false keeps them at their random start
    meta_every: int = 1  # inner iterations between meta steps
    meta_batches: int = 1  # validation batches (one Adam step each) per meta step
    meta_lr: float = 1e-2  # Adam learning rate of the importance weights
    meta_weight_decay: float = 1e-2  # Adam weight decay of the importance weights
    meta_mode: Literal["first_order", "bilevel"] = "first_order"  # authors' step, or through a one-step look-ahead
    lookahead_lr: float = 0.0  # bilevel: step size of the look-ahead; 0 uses the model optimiser's current lr
    lookahead_step: Literal["sgd", "optimizer"] = "sgd"  # bilevel: theta - eta*grad, or preconditioned as the optimiser steps

    def validate(self, path: str) -> None:
        _require(self.alpha >= 0, f"{path}.alpha must be >= 0, got {self.alpha}")
        _require(self.p in (1, 2), f"{path}.p must be 1 or 2, got {self.p}")
        _require(self.meta_every >= 1, f"{path}.meta_every must be >= 1, got {self.meta_every}")
        _require(self.meta_batches >= 1, f"{path}.meta_batches must be >= 1, got {self.meta_batches}")
        _require(self.meta_lr > 0, f"{path}.meta_lr must be > 0, got {self.meta_lr}")
        _require(self.meta_weight_decay >= 0, f"{path}.meta_weight_decay must be >= 0, got {self.meta_weight_decay}")
        _require(self.lookahead_lr >= 0, f"{path}.lookahead_lr must be >= 0, got {self.lookahead_lr}")
        _require(self.meta or self.meta_mode == "first_order",
                 f"{path}.meta_mode is bilevel but {path}.meta is false: a bi-level meta step needs meta steps")
        _require(self.meta_mode == "bilevel" or (self.lookahead_lr == 0 and self.lookahead_step == "sgd"),
                 f"{path}.lookahead_lr and {path}.lookahead_step only apply to meta_mode: bilevel; "
                 "leave them at 0.0 and sgd or set meta_mode: bilevel")


@register_training_method(MCKDOptions)
class MCKD(TrainingMethod):
    """Meta-learned cross-modal knowledge distillation (Wang et al., 2024)."""

    name = "mckd"
    description = "MCKD: cross-modal distillation weighted by meta-learned importance (the paper)"
    supports_lookahead = True

    def __init__(self, options: MCKDOptions, modalities: Sequence[str], seed: int) -> None:
        super().__init__(options, modalities, seed)
        generator = torch.Generator().manual_seed(seed)  # its own stream: the global RNG is left as it was
        self.weights = ImportanceWeights(self.modalities, options.weight_norm, generator=generator)
        self.optimizer = torch.optim.Adam([self.weights.raw], lr=options.meta_lr,
                                          weight_decay=options.meta_weight_decay)
        self.meta_batches = options.meta_batches

    def to(self, device: torch.device) -> "MCKD":
        self.weights.to(device)  # in place: the optimiser keeps the same parameter
        return self

    def loss_term_names(self) -> tuple[str, ...]:
        return ("ckd",) if self.options.alpha > 0 else ()

    def loss_terms(self, output: ModelOutput, present: torch.Tensor,
                   weights: torch.Tensor | None = None, batch: Batch | None = None) -> dict[str, Term]:
        """``{"ckd": Term(alpha, sum (w_i/w_j) l_ckd)}`` (nothing when alpha is 0).

        With ``weights`` (the bi-level look-ahead) the ratio stays in the graph
        and the twice-differentiable distance is used.
        """
        options = self.options
        if options.alpha <= 0:
            return {}
        lookahead = weights is not None
        ckd = cross_modal_distillation_loss(output.features, present, weights if lookahead else self.weights(),
                                            options.p, options.ckd_reduction, detach_weights=not lookahead)
        return {"ckd": Term(options.alpha, ckd)}

    @property
    def takes_meta_steps(self) -> bool:
        return self.options.meta

    def meta_due(self, iteration: int) -> bool:
        return self.options.meta and iteration % self.options.meta_every == 0

    def meta_step(self, model: MultiModalModel, val: Batch, train: Batch, train_present: torch.Tensor,
                  model_lr: float) -> torch.Tensor:
        """The first-order step, or the bi-level one through a look-ahead of this method's inner objective."""
        assert self.services is not None, "setup() first"
        options, task_loss = self.options, self.services.task_loss
        if options.meta_mode == "first_order":
            return meta_step(model, self.weights, self.optimizer, val["inputs"], val["target"], task_loss)
        eta = options.lookahead_lr if options.lookahead_lr > 0 else model_lr
        scale = (optimizer_step_scale(self.services.model_optimizer, model)
                 if options.lookahead_step == "optimizer" else None)
        return bilevel_meta_step(model, self.weights, self.optimizer, train["inputs"], train_present, train["target"],
                                 val["inputs"], val["target"], task_loss, self.inner_objective, eta, scale)

    def inner_objective(self, output: ModelOutput, present: torch.Tensor, target: torch.Tensor,
                        weights: torch.Tensor) -> torch.Tensor:
        """Eq. 4's inner objective with the weights ``[N]`` in the graph: what the look-ahead differentiates."""
        assert self.services is not None, "setup() first"
        return combine(self.services.task_loss(output.prediction, target), self.loss_terms(output, present, weights))

    def meta_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def importance(self) -> torch.Tensor | None:
        if not self.options.meta and self.options.alpha == 0:
            return None  # the baseline preset: its weights stay at their random start and weigh nothing, so none are logged
        return self.weights()

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.weights.load_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])


register_preset("baseline", "mckd", {"method.alpha": 0.0, "method.meta": False},
                "the same network and data without distillation or meta step")
register_preset("mckd_bilevel", "mckd", {"method.meta_mode": "bilevel"},
                "MCKD with the bi-level meta-gradient of Eq. 4 through a one-step look-ahead (method/bilevel.py)")
register_preset("mckd_bilevel_opt", "mckd", {"method.meta_mode": "bilevel", "method.lookahead_step": "optimizer"},
                "bi-level MCKD whose look-ahead is preconditioned as the model's optimiser steps (Adam: 1/(sqrt(v)+eps))")
register_preset("zero_fill", "mckd", {"method.alpha": 0.0, "method.meta": False, "model.fill": "zero"},
                "missing features are zeros, no distillation: how mmFormer and RFNet drop absent modalities")
register_preset("hemis", "mckd", {"method.alpha": 0.0, "method.meta": False, "model.fusion": "hemis"},
                "HeMIS (Havaei et al., 2016): mean and variance over the present modalities replace concatenation")
