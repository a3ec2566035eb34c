"""What the peer methods and the bi-level meta step change in the training loop.

:func:`mckd.train.train` stays one readable loop and calls a few methods of
:class:`MethodVariants`; each reads ``config.method`` and does MCKD's thing
unless a switch says otherwise:

- :meth:`MethodVariants.auxiliary_loss`: ShaSpec's alignment and domain losses
  (``method.shared_specific``), else zero;
- :meth:`MethodVariants.distillation_loss`: MCKD's weighted all-pairs CKD, or
  LCKD's teacher-to-others CKD (``method.distill: teacher``);
- :meth:`MethodVariants.meta_step`: the authors' first-order step, or the
  bi-level one (``method.meta_mode: bilevel``);
- :meth:`MethodVariants.after_iteration`: LCKD's teacher election every
  ``method.teacher_every`` iterations, and observers (the analyses).

:func:`shared_specific_model` turns the model a network builder made into
ShaSpec's, so every network works with ShaSpec unchanged.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import torch
from torch import nn

from mckd.data.bundle import DataBundle
from mckd.method.bilevel import bilevel_meta_step
from mckd.method.distill import cross_modal_distillation_loss
from mckd.method.lckd import elect_teacher, teacher_distillation_loss
from mckd.method.meta import meta_step
from mckd.method.model import ModelOutput, MultiModalModel
from mckd.method.shaspec import ChannelLinear, ShaSpecModel, domain_classification_loss, shared_alignment_loss

# An observer: called as observer(iteration, experiment) after every inner iteration (1-based).
Observer = Callable[[int, Any], None]


class MethodVariants:
    """The training loop's hooks for the method switches of ``config.method``.

    Args:
        experiment: the run's :class:`mckd.build.Experiment`.
        device: where the model lives.
        record: writes one entry to the run's ``metrics.jsonl`` (LCKD logs its teachers).
        observers: extra callables run after every iteration.
        optimizer: the model's optimiser (its state preconditions the bi-level
            look-ahead when ``method.lookahead_step`` is ``optimizer``).
    """

    def __init__(
        self,
        experiment: Any,
        device: torch.device,
        record: Callable[[dict[str, Any]], None] = lambda entry: None,
        observers: Sequence[Observer] = (),
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.experiment = experiment
        self.optimizer = optimizer
        self.method = experiment.config.method
        self.device = device
        self.record = record
        self.observers = list(observers)
        self.teacher: int | None = None
        if self.method.distill == "teacher" and self.method.alpha > 0:
            self.elect(0)

    def auxiliary_loss(self, output: ModelOutput, present: torch.Tensor) -> torch.Tensor | float:
        """ShaSpec's ``align_weight * l_align + domain_weight * l_domain``; 0 for other models."""
        if "domain_logits" not in output.extras:
            return 0.0
        align = shared_alignment_loss(output.extras["shared"], present)
        domain = domain_classification_loss(output.extras["domain_logits"], present)
        return self.method.align_weight * align + self.method.domain_weight * domain

    def distillation_loss(self, output: ModelOutput, present: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The CKD term (without alpha): MCKD's weighted pairs, or LCKD's elected teacher to the others."""
        method = self.method
        if method.distill == "teacher":
            assert self.teacher is not None
            return teacher_distillation_loss(output.features, present, self.teacher, method.p, method.ckd_reduction)
        return cross_modal_distillation_loss(output.features, present, weights, method.p, method.ckd_reduction)

    def meta_step(
        self,
        weight_optimizer: torch.optim.Optimizer,
        val: dict[str, Any],
        train_batch: dict[str, Any],
        train_present: torch.Tensor,
        model_lr: float,
    ) -> torch.Tensor:
        """One meta step on a validation batch: first-order, or bi-level through a look-ahead on ``train_batch``."""
        experiment, method = self.experiment, self.method
        model, weights, loss = experiment.model, experiment.weights, experiment.task.loss
        if method.meta_mode == "bilevel":
            eta = method.lookahead_lr if method.lookahead_lr > 0 else model_lr
            scale = optimizer_step_scale(self.optimizer, model) if method.lookahead_step == "optimizer" else None
            return bilevel_meta_step(
                model, weights, weight_optimizer, train_batch["inputs"], train_present, train_batch["target"],
                val["inputs"], val["target"], loss, method.alpha, eta, method.p, method.ckd_reduction, scale,
            )
        return meta_step(model, weights, weight_optimizer, val["inputs"], val["target"], loss)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps so that a resumed run continues exactly (:mod:`mckd.train`): LCKD's teacher."""
        return {"teacher": self.teacher}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher = state["teacher"]

    def after_iteration(self, iteration: int) -> None:
        """LCKD's election every ``teacher_every`` iterations; then the observers."""
        if self.teacher is not None and iteration % self.method.teacher_every == 0:
            self.elect(iteration)
        for observer in self.observers:
            observer(iteration, self.experiment)

    def elect(self, iteration: int) -> int:
        """Score each modality alone on the validation split; the best becomes the teacher."""
        from mckd.evaluate import evaluate_subsets

        experiment = self.experiment
        model, task, modalities = experiment.model, experiment.task, experiment.bundle.modalities
        was_training = model.training
        rows = evaluate_subsets(model, task, experiment.bundle.val, experiment.config.eval.batch_size, self.device,
                                subsets=[(m,) for m in modalities])
        model.train(was_training)
        metric = task.primary_metric
        scores = [float(row[metric]) for row in rows]
        self.teacher = elect_teacher(scores, task.higher_is_better[metric])
        self.record({"iteration": iteration, "kind": "teacher", "teacher": modalities[self.teacher],
                     "scores": dict(zip(modalities, scores))})
        return self.teacher


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


def _reinitialised(module: nn.Module) -> nn.Module:
    """A deep copy with fresh parameters (every submodule that has ``reset_parameters``)."""
    clone = copy.deepcopy(module)
    for sub in clone.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
    return clone


@torch.no_grad()
def shared_specific_model(model: MultiModalModel, bundle: DataBundle) -> ShaSpecModel:
    """ShaSpec over the network a builder made: its encoders, its fusion, its decoder.

    - one shared encoder (inputs of one shape): it stays the shared encoder;
      each modality gets a freshly initialised copy as its specific encoder;
    - one encoder per modality: those become the specific encoders; the shared
      encoder is a fresh copy of each (a stem, since the inputs differ) followed
      by shared layers (a channel-wise linear map and ReLU per level).

    Feature channels are read from one dry forward pass on a zero sample.
    """
    if isinstance(model, ShaSpecModel):
        return model
    example = [torch.zeros((1,) + tuple(bundle.input_shapes[m])) for m in model.modalities]
    was_training = model.training
    model.eval()
    levels = model.encode(example, torch.ones(1, model.num_modalities, dtype=torch.bool))
    model.train(was_training)
    channels = [int(level.shape[2]) for level in levels]
    if model.shared_encoder is not None:
        specific = {m: _reinitialised(model.shared_encoder) for m in model.modalities}
        shared: nn.Module | dict[str, nn.Module] = model.shared_encoder
        heads = None
    else:
        assert model.encoders is not None
        specific = {m: model.encoders[m] for m in model.modalities}
        shared = {m: _reinitialised(model.encoders[m]) for m in model.modalities}
        heads = [nn.Sequential(ChannelLinear(c, c), nn.ReLU()) for c in channels]
    return ShaSpecModel(model.modalities, specific, shared, model.decoder, channels, heads,
                        fusion=model.fusion, distill_level=model.distill_level)


__all__ = ["MethodVariants", "Observer", "shared_specific_model"]
