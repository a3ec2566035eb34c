"""The GAN baseline of SMIL's and MCKD's Table 2: the autoencoder's generators, trained against discriminators.

The model is the autoencoder's (:mod:`mckd.method.autoencoder`): a missing
modality's feature is its generator's guess from the present ones, trained by
regression. Here the guesses must also fool a discriminator ``D_n`` per
modality, which tells real features of ``n`` from generated ones at the
distillation level (a feature map is averaged over its positions, then an
MLP ``C -> hidden -> 1``):

    generator:      l_task + recon_weight * l_rec + adversarial_weight * BCE(D_n(guess), real)
    discriminator:  BCE(D_n(f_n), real) + BCE(D_n(guess), fake)      (both detached)

The discriminators are the method's own modules (:attr:`parts`): they have
their own optimiser (Adam, ``disc_lr``, betas (0.5, 0.999) as in DCGAN),
stepped on their own loss every ``disc_every`` iterations after the model's
step, on the features and guesses of that step. They are training-only: a
trained run's model is the autoencoder's.

Differences from the published baseline (SMIL's Table 2, no code published;
SMIL's repository has only the autoencoder's hook): trained in the one run
with the classifier, whose input the guess enters detached (``end_to_end``,
as the autoencoder); any number of modalities, guesses from the mean of the
present features and the presence mask (see the autoencoder), the
discriminator on the distillation level only; the choices of loss
(non-saturating BCE), weight 0.1, optimiser (Adam 1e-4, betas (0.5, 0.999)
as DCGAN) and its step frequency are ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from mckd.errors import ConfigError
from mckd.method.autoencoder import Autoencoder, AutoencoderOptions, generated_features
from mckd.method.base import Batch, Optimization, StepOutput, register_training_method
from mckd.method.model import ModelSpec, MultiModalModel


class FeatureDiscriminator(nn.Module):
    """``[P, C, *S] -> [P]`` logits: real (> 0) or generated; positions averaged first."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.flatten(start_dim=2).mean(dim=-1) if features.dim() > 2 else features  # (P, C)
        return self.net(pooled.float()).squeeze(-1)


def discriminator_logits(discriminators: nn.ModuleList, features: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """``D_n`` on ``features[b, n]`` for every pair ``(b, n)`` of ``pairs`` (bool ``[B, N]``), in row-major order."""
    return torch.cat([discriminators[n](features[pairs[:, n], n]) for n in range(pairs.shape[1])])


@dataclass
class DiscriminatorOptions:
    """A feature discriminator's options (the GAN's, Full2miss's)."""

    adversarial_weight: float = 0.1  # weight of the adversarial loss of what the discriminator judges
    disc_lr: float = 1e-4  # Adam learning rate of the discriminators (constant)
    disc_every: int = 1  # iterations between discriminator steps
    disc_hidden: int = 64  # hidden width of each discriminator

    def validate(self, path: str) -> None:
        if self.adversarial_weight < 0 or self.disc_lr <= 0 or self.disc_every < 1 or self.disc_hidden < 1:
            raise ConfigError(f"{path}: adversarial_weight must be >= 0, disc_lr > 0, disc_every and disc_hidden "
                              f">= 1; got {self.adversarial_weight}, {self.disc_lr}, {self.disc_every}, "
                              f"{self.disc_hidden}")


@dataclass
class GANOptions(DiscriminatorOptions, AutoencoderOptions):
    """Options of the ``gan`` method (the autoencoder's, then the discriminators')."""

    def validate(self, path: str) -> None:
        AutoencoderOptions.validate(self, path)
        DiscriminatorOptions.validate(self, path)


@register_training_method(GANOptions)
class GAN(Autoencoder):
    """The autoencoder's generators, also trained to fool a feature discriminator per modality (Table 2's GAN)."""

    name = "gan"
    description = ("GAN baseline (SMIL, Table 2): the autoencoder's generators trained against a discriminator per "
                   "modality with its own optimiser, stepped every disc_every iterations")

    _last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # this iteration's (real, guesses, pairs)

    def wrap_model(self, model: MultiModalModel, spec: ModelSpec) -> MultiModalModel:
        channels = spec.feature_channels[spec.distill_level]
        self.parts["discriminators"] = nn.ModuleList(
            FeatureDiscriminator(channels, self.options.disc_hidden) for _ in spec.modalities)
        return super().wrap_model(model, spec)

    def configure_optimizers(self, model: MultiModalModel,
                             default: Callable[[Iterable[nn.Parameter]], Optimization]) -> list[Optimization]:
        discriminators = torch.optim.Adam(self.parts.parameters(), lr=self.options.disc_lr, betas=(0.5, 0.999))
        return [default(model.parameters()),
                Optimization("discriminator", discriminators, every=self.options.disc_every, step="discriminator_step")]

    def loss_names(self) -> tuple[str, ...]:
        return ("task", "recon", "adversarial", "disc")

    def training_step(self, model: MultiModalModel, batch: Batch, present: torch.Tensor) -> StepOutput:
        """The autoencoder's loss plus ``adversarial_weight * BCE(D_n(guess), real)``; keeps this step's features."""
        step = super().training_step(model, batch, present)
        assert step.output is not None
        level = model.distill_level
        real = self.generator_view(step.output.levels)[level]
        guesses, pairs = generated_features(model.fill_module, real, present, level)  # type: ignore[arg-type]
        self._last = (real.detach(), guesses.detach(), pairs)
        if not bool(pairs.any()):
            adversarial = real.new_zeros(())
        else:
            logits = discriminator_logits(self.parts["discriminators"], guesses, pairs)
            adversarial = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        loss = step.loss + self.options.adversarial_weight * adversarial
        return StepOutput(loss, {**step.logged, "adversarial": adversarial}, step.output)

    def discriminator_step(self, model: MultiModalModel, batch: Batch, present: torch.Tensor) -> StepOutput:
        """``BCE(D_n(f_n), real) + BCE(D_n(guess), fake)`` on the features of this iteration's model step."""
        assert self._last is not None, "the model's step runs first"
        real, guesses, pairs = self._last
        discriminators = self.parts["discriminators"]
        if not bool(pairs.any()):
            zero = sum(p.sum() * 0 for p in discriminators.parameters())  # every part takes part in the backward pass
            return StepOutput(zero, {"disc": zero.detach()})
        real_logits = discriminator_logits(discriminators, real, pairs)
        fake_logits = discriminator_logits(discriminators, guesses, pairs)
        loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        return StepOutput(loss, {"disc": loss})

    def state_dict(self) -> dict[str, Any]:
        return {}
