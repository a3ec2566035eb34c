"""The autoencoder baseline of SMIL's and MCKD's Table 2: a network regresses a missing modality's feature.

Instead of the mean of the present features (Eq. 2), a missing modality
``n`` gets ``G_n``'s guess from what the sample has:

    f_n ~= G_n([mean_{i present} f_i, m])          m: the presence mask, bool [N]

with one small generator ``G_n`` per modality and encoder level (a
channel-wise MLP, ``C + N -> hidden -> C``, applied at every position of a
spatial feature map, :class:`GeneratedFill`). It is trained by regression on
the samples that have ``n`` and at least one other modality: ``n`` is hidden
from the generator's input and its guess is pulled towards the real feature,

    l_rec = mean over (b, n) of ||G_n([mean_{i present, i != n} f_bi, m_b \\ n]) - f_bn||_2^2

(the target ``f_bn`` detached, so the encoders are not pulled towards what the
generator can guess), added to the task loss with ``recon_weight``. At test
time, and in training for the modalities the missing policy dropped, the
model's fill is the generator; its guess enters the decoder detached, as in
SMIL's hook (``models/soundlenet5.py::SoundLenet5AE``:
``autoencoder(img_feature).detach()``), so the generator learns by regression
alone and the task loss does not reach it; the regression, in turn, sees
the encoders' features detached, so the encoders and the decoder learn from
the task loss alone, as beside a separately trained autoencoder
(``end_to_end: true``: the task loss trains the generators too, and the
regression the present modalities' encoders).

Differences from the published baselines (SMIL, Ma et al. 2021, which the
MCKD paper's Table 2 copies; SMIL's repository has the hook above and no
training code for it): SMIL's autoencoder is trained first on complete
samples and frozen while the classifier trains; here it is trained by the
same regression during the one run, on the samples of each batch that have
the modality and another. SMIL regresses the missing sound feature from the
image feature; here any number of modalities, the input being the mean of
the present features and the presence mask, at every encoder level (so a
U-Net's skip connections are filled too). The generator's width and depth
(two linear layers) are ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mckd.errors import ConfigError
from mckd.method.base import Batch, StepOutput, TrainingMethod, register_training_method
from mckd.method.fusion import Fill
from mckd.method.model import ModelSpec, MultiModalModel


class ChannelMLP(nn.Module):
    """``[P, C_in, *S] -> [P, C_out, *S]``: a two-layer MLP over channels at every position (1x1 convolutions)."""

    def __init__(self, channels_in: int, hidden: int, channels_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(channels_in, hidden), nn.ReLU(), nn.Linear(hidden, channels_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.movedim(1, -1)).movedim(-1, 1)


def generator_input(features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``[mean of the present features, presence mask]``: ``[B, N, C, *S]``, bool ``[B, N]`` -> ``[B, C + N, *S]``.

    A sample with no modality present gets zeros for the mean.
    """
    mask = present.to(features.dtype)  # (B, N)
    shape = mask.shape + (1,) * (features.dim() - 2)
    mean = (features * mask.reshape(shape)).sum(dim=1) / mask.sum(dim=1).clamp(min=1).reshape((-1,) + shape[2:])
    spatial = features.shape[3:]
    flags = mask.reshape(mask.shape + (1,) * len(spatial)).expand(mask.shape + spatial)  # (B, N, *S)
    return torch.cat([mean, flags], dim=1)  # (B, C + N, *S)


class GeneratedFill(Fill):
    """A missing modality's feature is its generator's guess from the present ones (one ``G_n`` per level and modality).

    Args:
        num_modalities: N.
        channels: ``C_l`` of every encoder level.
        hidden: width of each generator's hidden layer (0: the level's ``C_l``).
        detach: the guess enters the model detached (no gradient reaches the generator through it).
    """

    description = "a missing modality's feature is a learned generator's guess from the present ones"

    def __init__(self, num_modalities: int, channels: Sequence[int], hidden: int = 0, detach: bool = False) -> None:
        super().__init__(num_modalities, channels)
        if not channels:
            raise ValueError("GeneratedFill needs the channels of every encoder level")
        self.detach = detach
        self.generators = nn.ModuleList(
            nn.ModuleList(ChannelMLP(c + num_modalities, hidden or c, c) for _ in range(num_modalities))
            for c in channels)

    def generate(self, features: torch.Tensor, present: torch.Tensor, level: int, modality: int) -> torch.Tensor:
        """``G_n``'s guess of modality ``modality`` at ``level`` from ``present``: ``[B, C, *S]``."""
        return self.generators[level][modality](generator_input(features, present))

    def forward(self, features: torch.Tensor, present: torch.Tensor, level: int) -> torch.Tensor:
        present = present.to(torch.bool)
        inputs = generator_input(features, present)  # (B, C + N, *S): the same for every missing modality
        guesses = torch.stack([g(inputs) for g in self.generators[level]], dim=1)  # (B, N, C, *S)
        if self.detach:
            guesses = guesses.detach()
        keep = present.reshape(present.shape + (1,) * (features.dim() - 2))
        return torch.where(keep, features, guesses.to(features.dtype))


def regression_pairs(present: torch.Tensor) -> torch.Tensor:
    """bool ``[B, N]``: modality ``n`` of sample ``b`` can be regressed (present, with another modality present)."""
    present = present.to(torch.bool)
    return present & (present.sum(dim=1, keepdim=True) >= 2)


def generated_features(fill: GeneratedFill, features: torch.Tensor, present: torch.Tensor,
                       level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each regressable modality guessed with itself hidden: ``(guesses [B, N, *F], pairs bool [B, N])``.

    ``guesses[b, n]`` is ``G_n``'s guess from the other present modalities of sample ``b`` (zero where
    ``pairs[b, n]`` is False).
    """
    pairs = regression_pairs(present)
    guesses = torch.zeros_like(features)
    for n in range(present.shape[1]):
        rows = pairs[:, n].nonzero(as_tuple=True)[0]
        if rows.numel():
            hidden = present[rows].clone()
            hidden[:, n] = False
            guesses[rows, n] = fill.generate(features[rows], hidden, level, n).to(features.dtype)
    return guesses, pairs


def regression_loss(fill: GeneratedFill, levels: Sequence[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
    """Mean over levels of the mean squared error of every regressable (sample, modality) pair; 0 without pairs."""
    total = levels[0].new_zeros(())
    for level, features in enumerate(levels):
        guesses, pairs = generated_features(fill, features, present, level)
        if bool(pairs.any()):
            total = total + F.mse_loss(guesses[pairs].float(), features[pairs].detach().float())
    return total / len(levels)


@dataclass
class AutoencoderOptions:
    """Options of the ``autoencoder`` method."""

    recon_weight: float = 1.0  # weight of the feature regression loss
    hidden: int = 0  # hidden width of each generator; 0: the level's channels
    end_to_end: bool = False  # true: the task loss trains the generators and the regression the encoders; false: neither (SMIL's hook)

    def validate(self, path: str) -> None:
        if self.recon_weight < 0 or self.hidden < 0:
            raise ConfigError(f"{path}.recon_weight and {path}.hidden must be >= 0, got {self.recon_weight}, {self.hidden}")


def install_generated_fill(model: MultiModalModel, spec: ModelSpec, hidden: int, detach: bool = False) -> MultiModalModel:
    """Replace ``model``'s fill by a :class:`GeneratedFill` sized by ``spec``; the model's ``fill`` names it."""
    model.fill_module = GeneratedFill(len(spec.modalities), spec.feature_channels, hidden, detach)
    model.fill = "generated"
    return model


@register_training_method(AutoencoderOptions)
class Autoencoder(TrainingMethod):
    """Missing features regressed from the present ones by learned generators (SMIL's autoencoder baseline)."""

    name = "autoencoder"
    description = ("autoencoder baseline (SMIL, Table 2): a generator per modality regresses a missing feature from "
                   "the present ones (by regression alone, on detached features); its guess is the fill")

    def wrap_model(self, model: MultiModalModel, spec: ModelSpec) -> MultiModalModel:
        return install_generated_fill(model, spec, self.options.hidden, detach=not self.options.end_to_end)

    def loss_names(self) -> tuple[str, ...]:
        return ("task", "recon")

    def training_step(self, model: MultiModalModel, batch: Batch, present: torch.Tensor) -> StepOutput:
        """``l_task + recon_weight * l_rec`` (the regression of every regressable pair, at every level)."""
        step = super().training_step(model, batch, present)
        assert step.output is not None
        recon = regression_loss(model.fill_module, self.generator_view(step.output.levels), present)  # type: ignore[arg-type]
        return StepOutput(step.loss + self.options.recon_weight * recon, {**step.logged, "recon": recon}, step.output)

    def generator_view(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The features the generators learn from: detached unless ``end_to_end`` (the encoders learn from the task alone)."""
        return list(levels) if self.options.end_to_end else [level.detach() for level in levels]
