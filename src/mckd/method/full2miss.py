"""Full2miss (Shen and Gao, IPMI 2019): a full-modality teacher, and the missing-modality model aligned to it adversarially.

Shen and Gao train a network on complete (full-modality) data, then adapt
the network that must work with a modality missing to it by domain
adaptation on feature maps: a discriminator learns to tell the full-modality
network's feature maps from the missing-modality network's, and the latter is
trained to fool it, so its features of incomplete inputs look like features
of complete ones. No code is published; SMIL's and the MCKD paper's Table 2
report it as "Full2miss".

Here, in one run:

- the **teacher** is a copy of the model (a part of the method, training
  only, :attr:`parts` ``["teacher"]``), trained with the task loss on batches
  of the training split's complete samples
  (:attr:`MethodServices.complete_batch`), every modality present, with its
  own optimiser (the ``train:`` section's, and its schedule);
- the **student** is the model (what is evaluated): the task loss on the
  training batch as the missing policy leaves it, plus

      adversarial_weight * BCE(D(h_s), real)      h_s: the student's fused features of incomplete samples

- the **discriminator** ``D`` (an MLP on the fused decoder input at the
  distillation level, positions averaged, as the GAN's) has its own Adam
  optimiser, stepped every ``disc_every`` iterations on

      BCE(D(h_t), real) + BCE(D(h_s), fake)       h_t: the teacher's fused features of the complete batch

  (both detached).

Choices that are ours (the paper publishes none of them for classification):
teacher and student trained together from the same initial weights (the
paper trains the full-modality network first and starts the
missing-modality one from it); the aligned feature is the fused decoder
input (the concatenation of the modalities' features, missing ones filled by
the model's fill, Eq. 2 by default); unpaired alignment (the student's
incomplete samples against the teacher's complete batch), as domain
adaptation; non-saturating BCE, Adam lr ``disc_lr`` with betas (0.5, 0.999),
the adversarial weight. Any number of modalities: an incomplete sample is
any that lacks one.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mckd.method.base import Batch, Optimization, StepOutput, TrainingMethod, register_training_method
from mckd.method.gan import DiscriminatorOptions, FeatureDiscriminator
from mckd.method.model import ModelOutput, ModelSpec, MultiModalModel


def forward_with_fused(model: MultiModalModel, inputs: Sequence[torch.Tensor],
                       present: torch.Tensor) -> tuple[ModelOutput, torch.Tensor]:
    """The model's forward pass and its fused decoder input at the distillation level (``[B, C_f, *S]``)."""
    levels = model.encode(inputs, present)
    fused = model.fuse(levels, present)
    output = ModelOutput(prediction=model.decode(fused), features=levels[model.distill_level], levels=levels)
    return output, fused[model.distill_level]


def adversarial_losses(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(BCE(D(real), 1) + BCE(D(fake), 0), BCE(D(fake), 1))``: the discriminator's and the student's losses.

    Either side may be empty (no sample): its terms are then left out (zero).
    """
    zero = sum(p.sum() * 0 for p in discriminator.parameters())  # every parameter takes part in the backward pass
    disc, student = zero, zero
    if real.shape[0]:
        logits = discriminator(real)
        disc = disc + F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    if fake.shape[0]:
        logits = discriminator(fake)
        disc = disc + F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
        student = student + F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    return disc, student


@dataclass
class Full2missOptions(DiscriminatorOptions):
    """Options of the ``full2miss`` method: its discriminator's (``adversarial_weight``: the model's adversarial loss)."""


@register_training_method(Full2missOptions)
class Full2miss(TrainingMethod):
    """A full-modality teacher; the model's features of incomplete inputs aligned to the teacher's adversarially."""

    name = "full2miss"
    description = ("Full2miss (Shen and Gao, 2019): a full-modality teacher trained on complete samples; the model's "
                   "fused features of incomplete samples aligned to the teacher's by a discriminator")
    uses_complete_batches = True

    def __init__(self, options: Full2missOptions, modalities: Sequence[str], seed: int) -> None:
        super().__init__(options, modalities, seed)
        self._complete: Batch | None = None  # this iteration's complete batch
        self._student: torch.Tensor | None = None  # the student's fused features of incomplete samples (detached)
        self._teacher: torch.Tensor | None = None  # the teacher's fused features of the complete batch (detached)

    def wrap_model(self, model: MultiModalModel, spec: ModelSpec) -> MultiModalModel:
        fused = type(model.fusion_module).output_channels(len(spec.modalities), spec.feature_channels[spec.distill_level])
        self.parts["teacher"] = copy.deepcopy(model)  # the same initial weights as the student
        self.parts["discriminator"] = FeatureDiscriminator(fused, self.options.disc_hidden)
        return model

    def configure_optimizers(self, model: MultiModalModel,
                             default: Callable[[Iterable[nn.Parameter]], Optimization]) -> list[Optimization]:
        teacher = dataclasses.replace(default(self.parts["teacher"].parameters()), name="teacher", step="teacher_step")
        discriminator = torch.optim.Adam(self.parts["discriminator"].parameters(), lr=self.options.disc_lr,
                                         betas=(0.5, 0.999))
        return [default(model.parameters()), teacher,
                Optimization("discriminator", discriminator, every=self.options.disc_every, step="discriminator_step")]

    def loss_names(self) -> tuple[str, ...]:
        return ("task", "adversarial", "teacher", "disc")

    def training_step(self, model: MultiModalModel, batch: Batch, present: torch.Tensor) -> StepOutput:
        """The student: ``l_task + adversarial_weight * BCE(D(h_s), real)`` on the training batch."""
        assert self.services is not None and self.services.complete_batch is not None, "setup() first"
        self._complete = self.services.complete_batch()
        output, fused = forward_with_fused(model, batch["inputs"], present)
        task = self.services.task_loss(output.prediction, batch["target"])
        incomplete = fused[~present.to(torch.bool).all(dim=1)]  # (I, C_f, *S)
        self._student = incomplete.detach()
        _, adversarial = adversarial_losses(self.parts["discriminator"], incomplete[:0], incomplete)
        loss = task + self.options.adversarial_weight * adversarial
        return StepOutput(loss, {"task": task, "adversarial": adversarial}, output)

    def teacher_step(self, model: MultiModalModel, batch: Batch, present: torch.Tensor) -> StepOutput:
        """The teacher: the task loss on this iteration's complete batch, every modality present."""
        assert self.services is not None and self._complete is not None, "the model's step runs first"
        complete = self._complete
        everything = torch.ones_like(complete["present"], dtype=torch.bool)
        output, fused = forward_with_fused(self.parts["teacher"], complete["inputs"], everything)
        self._teacher = fused.detach()
        loss = self.services.task_loss(output.prediction, complete["target"])
        return StepOutput(loss, {"teacher": loss})

    def discriminator_step(self, model: MultiModalModel, batch: Batch, present: torch.Tensor) -> StepOutput:
        """``BCE(D(h_t), real) + BCE(D(h_s), fake)`` on this iteration's features."""
        assert self._teacher is not None and self._student is not None, "the model's and the teacher's steps run first"
        disc, _ = adversarial_losses(self.parts["discriminator"], self._teacher, self._student)
        return StepOutput(disc, {"disc": disc})

    def state_dict(self) -> dict[str, Any]:
        return {}
