"""U-HVED (Dorent et al., MICCAI 2019; code: ReubenDo/U-HVED), as a peer of MCKD.

Hetero-modal variational encoder-decoder. Each modality ``n`` has its own
encoder; at every level ``l`` its features give a Gaussian per channel and
voxel, a mean ``mu_n`` and a log-variance ``logvar_n`` (:class:`GaussianProductFusion`).
The fused latent is the product of the Gaussians of the present modalities
and the unit prior,

    precision = 1 + sum_{n present} 1 / var_n,     mean = (sum_{n present} mu_n / var_n) / precision,

sampled (``mean + sqrt(1 / precision) * eps``) in training and its mean at
test time, at every level; a U-Net decoder segments from the fused levels
and one reconstruction decoder per modality rebuilds every image from the
same sample. Loss (the authors' application):

    l_task + 0.1 * KL + 0.1 * L2 reconstruction,

with, at every level, ``KL = (1/(M-1)) sum_S KL(q_kept || q_S) + (1/M) sum_S KL(q_S || N(0, 1))``
over the ``M = 2^N - 1`` subsets ``S`` of the modalities the sample has
(``q_S`` the product over ``S`` and the prior; ``q_kept`` over what the
iteration kept), averaged over levels (:func:`hved_kl`); the reconstruction
loss is the mean squared error of every image the sample has (:func:`reconstruction_loss`).

Differences from the authors' code (TensorFlow / NiftyNet), beside those
every peer shares (:mod:`mckd.method.seg_parts`: network, loss, missing
policy, optimiser, what auxiliary losses read):

- the mean and log-variance come from a 1x1x1 convolution per modality and
  level on the level's features (``C_l`` channels -> ``C_l`` means and
  ``C_l`` log-variances), where the authors split their block's output
  channels in two halves; so the latent has ``C_l`` channels, not ``C_l / 2``;
- the authors' Adam: 1e-3, L2 weight decay 1e-5 (NiftyNet averages its L2
  terms over the variables, so its decay is weaker); they train 60,000
  iterations of batch 1 at 112^3 and draw ``k ~ U{1..4}`` modalities per batch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mckd.errors import ConfigError
from mckd.method.base import Batch, StepOutput, register_training_method
from mckd.method.fusion import Fusion, register_fusion
from mckd.method.model import ModelOutput, ModelSpec, MultiModalModel
from mckd.method.seg_parts import SegmentationPeer, UNetPath3D, check_volumes, separate_encoders

EPS = 1e-7  # the authors' epsilon in 1 / (var + eps) and log(var + eps)
LOGVAR_CLIP = 50.0  # the authors clip log-variances to [-50, 50]


def precisions(mu: torch.Tensor, logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each modality's precision ``1 / (var + eps)`` and precision-weighted mean, float32, ``[B, N, C, *S]``."""
    precision = 1.0 / (logvar.float().exp() + EPS)
    return precision, mu.float() * precision


def product_from_precisions(precision: torch.Tensor, weighted: torch.Tensor,
                            present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, logvar)`` ``[B, C, *S]`` of the product of the present modalities' Gaussians and N(0, 1)."""
    mask = present.to(torch.bool).reshape(present.shape + (1,) * (precision.dim() - 2))  # (B, N, 1, ...)
    total = torch.where(mask, precision, torch.zeros_like(precision)).sum(dim=1) + 1.0  # the prior's precision is 1
    return torch.where(mask, weighted, torch.zeros_like(weighted)).sum(dim=1) / total, torch.log(1.0 / total + EPS)


def gaussian_product(mu: torch.Tensor, logvar: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The product of the present modalities' Gaussians and N(0, 1): ``(mean, logvar)``, each ``[B, C, *S]``.

    Args:
        mu, logvar: ``[B, N, C, *S]`` (anything finite where missing: masked out).
        present: bool ``[B, N]``.
    """
    return product_from_precisions(*precisions(mu, logvar), present)


def gaussian_kl(mu_1: torch.Tensor, logvar_1: torch.Tensor, mu_2: torch.Tensor, logvar_2: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu_1, var_1) || N(mu_2, var_2))`` per sample, averaged over channels and voxels: ``[B, C, *S]`` -> ``[B]``."""
    var_1, var_2 = logvar_1.exp(), logvar_2.exp()
    kl = 0.5 * (-1.0 + logvar_2 - logvar_1 + (var_1 + (mu_1 - mu_2) ** 2) / (var_2 + EPS))
    return kl.flatten(start_dim=1).mean(dim=1)


@register_fusion("gaussian_product")
class GaussianProductFusion(Fusion):
    """U-HVED's fusion: the product of the present modalities' Gaussians and N(0, 1), sampled in training.

    A 1x1x1 convolution per modality and level maps its features ``[C_l]`` to
    a mean and a log-variance (clipped to [-50, 50]) per channel; the fused
    level ``[B, C_l, *S]`` is a sample of the product in training and its
    mean in evaluation.
    """

    description = ("U-HVED: product of the present modalities' Gaussians and N(0, 1); sampled in training, the mean at test;"
                   " 3D feature maps (segmentation networks)")

    def __init__(self, num_modalities: int, channels: Sequence[int] = ()) -> None:
        super().__init__(num_modalities, channels)
        if not channels:
            raise ValueError("GaussianProductFusion needs the channels of every encoder level")
        # one 1x1x1 convolution per modality: a grouped convolution over the N stacked modalities
        self.heads = nn.ModuleList(nn.Conv3d(num_modalities * c, num_modalities * 2 * c, kernel_size=1,
                                             groups=num_modalities) for c in channels)

    @classmethod
    def output_channels(cls, num_modalities: int, channels: int) -> int:
        return channels

    def moments(self, features: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, N, C, *S]`` -> ``(mu, logvar)``, each ``[B, N, C, *S]`` (every modality; mask them yourself)."""
        b, n, c = features.shape[:3]
        out = self.heads[level](features.flatten(1, 2)).reshape(b, n, 2, c, *features.shape[3:])
        return out[:, :, 0], out[:, :, 1].clamp(-LOGVAR_CLIP, LOGVAR_CLIP)

    def forward(self, filled: torch.Tensor, present: torch.Tensor, level: int) -> torch.Tensor:
        mean, logvar = gaussian_product(*self.moments(filled, level), present)
        if not self.training:
            return mean.to(filled.dtype)
        return (mean + (0.5 * logvar).exp() * torch.randn_like(mean)).to(filled.dtype)  # (B, C, *S)


def subsets_of(num_modalities: int, device: torch.device) -> torch.Tensor:
    """bool ``[2^N - 1, N]``: every non-empty subset of N modalities."""
    rows = [[n in chosen for n in range(num_modalities)]
            for size in range(1, num_modalities + 1) for chosen in itertools.combinations(range(num_modalities), size)]
    return torch.tensor(rows, dtype=torch.bool, device=device)


def hved_kl(fusion: GaussianProductFusion, levels: Sequence[torch.Tensor], kept: torch.Tensor,
            available: torch.Tensor) -> torch.Tensor:
    """U-HVED's KL term, averaged over levels and samples.

    Per sample and level, over the subsets ``S`` of the modalities it has
    (``available``; ``M`` of them): ``sum_S KL(q_kept || q_S) / (M - 1) +
    sum_S KL(q_S || N(0, 1)) / M`` (the authors' 1/14 and 1/15 for four).

    Args:
        levels: the encoder levels ``[B, N, C_l, *S_l]`` of the available modalities.
        kept: bool ``[B, N]``, what this iteration kept (``q_kept``).
        available: bool ``[B, N]``, a superset of ``kept``.
    """
    subsets = subsets_of(kept.shape[1], kept.device)  # (M_all, N)
    valid = (subsets.unsqueeze(0) & ~available.unsqueeze(1)).sum(dim=2) == 0  # (B, M_all): S within what b has
    count = valid.sum(dim=1).to(torch.float32)  # (B,)
    total = levels[0].new_zeros((), dtype=torch.float32)
    for index, level in enumerate(levels):
        precision, weighted = precisions(*fusion.moments(level, index))  # (B, N, C, *S)
        mu_kept, logvar_kept = product_from_precisions(precision, weighted, kept)
        inter = torch.zeros_like(count)
        prior = torch.zeros_like(count)
        for s, subset in enumerate(subsets):
            # one subset at a time, its products recomputed in the backward pass: 2^N - 1 of them at full
            # resolution would not fit in memory at the paper's crop
            kl_inter, kl_prior = checkpoint(subset_kl, precision, weighted, subset.expand_as(kept), mu_kept,
                                            logvar_kept, use_reentrant=False)
            weight = valid[:, s].to(torch.float32)
            inter = inter + weight * kl_inter
            prior = prior + weight * kl_prior
        total = total + (inter / (count - 1).clamp(min=1) + prior / count).mean()
    return total / len(levels)


def subset_kl(precision: torch.Tensor, weighted: torch.Tensor, subset: torch.Tensor, mu_kept: torch.Tensor,
              logvar_kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(KL(q_kept || q_S), KL(q_S || N(0, 1)))`` per sample ``[B]`` for the subset ``S`` (bool ``[B, N]``)."""
    mu_s, logvar_s = product_from_precisions(precision, weighted, subset)
    zeros = torch.zeros_like(mu_s)
    return gaussian_kl(mu_kept, logvar_kept, mu_s, logvar_s), gaussian_kl(mu_s, logvar_s, zeros, zeros)


def reconstruction_loss(images: Sequence[torch.Tensor], rebuilt: Sequence[torch.Tensor],
                        available: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the voxels of every (sample, modality) the data have: ``N x [B, 1, *X]`` each."""
    total = rebuilt[0].new_zeros((), dtype=torch.float32)
    count = 0
    for n, (image, guess) in enumerate(zip(images, rebuilt)):
        rows = available[:, n].nonzero(as_tuple=True)[0]  # an image the data lack is never read
        if rows.numel():
            total = total + ((guess[rows].float() - image[rows].float()) ** 2).sum()
            count += image[rows].numel()
    return total / max(count, 1)


@dataclass
class UHVEDOptions:
    """Options of the ``uhved`` method (the authors' settings)."""

    kl_weight: float = 0.1  # weight of the KL term
    recon_weight: float = 0.1  # weight of the L2 reconstruction of every image
    auxiliary: Literal["available", "kept"] = "available"  # available: KL subsets and reconstruction targets over every modality the sample has (the authors'); kept: only the kept ones
    optimizer: Literal["published", "config"] = "published"  # published: Adam 1e-3, weight decay 1e-5 (the authors'), under the config's schedule; config: the train: section's optimiser

    def validate(self, path: str) -> None:
        if min(self.kl_weight, self.recon_weight) < 0:
            raise ConfigError(f"{path}.kl_weight and {path}.recon_weight must be >= 0, "
                              f"got {self.kl_weight}, {self.recon_weight}")


@register_training_method(UHVEDOptions)
class UHVED(SegmentationPeer):
    """U-HVED: product-of-Gaussians fusion at every level, reconstruction decoders, KL over subsets (Dorent et al. 2019)."""

    name = "uhved"
    description = ("U-HVED (Dorent et al., 2019): encoder per modality, mean + log-variance per level, product of "
                   "Gaussians over the present ones and N(0,1), a reconstruction decoder per modality; CE+Dice + 0.1 KL "
                   "+ 0.1 L2")
    published_adam = (1e-3, 1e-5, False)

    def wrap_model(self, model: MultiModalModel, spec: ModelSpec) -> MultiModalModel:
        check_volumes(spec, self.name)
        channels = list(spec.feature_channels)
        self.parts["reconstruction"] = nn.ModuleList(UNetPath3D(channels, 1) for _ in spec.modalities)
        return MultiModalModel(spec.modalities, separate_encoders(model), UNetPath3D(channels, spec.num_outputs),
                               fill="zero", fusion=GaussianProductFusion(len(spec.modalities), channels),
                               distill_level=spec.distill_level, feature_channels=channels)

    def loss_names(self) -> tuple[str, ...]:
        return ("task", "kl", "recon")

    def training_step(self, model: MultiModalModel, batch: Batch, present: torch.Tensor) -> StepOutput:
        """Segment from a sample of the kept modalities' product; KL over subsets; rebuild every available image."""
        assert self.services is not None, "setup() first"
        inputs, kept = batch["inputs"], present.to(torch.bool)
        available = self.auxiliary(batch, kept)
        levels = model.encode(inputs, available)  # each (B, N, C_l, *S_l), zero where not available
        latents = model.fuse(levels, kept)  # each (B, C_l, *S_l): one sample of q_kept
        prediction = model.decode(latents)
        task = self.services.task_loss(prediction, batch["target"])
        kl = hved_kl(model.fusion_module, levels, kept, available)  # type: ignore[arg-type]
        rebuilt = [decoder(latents) for decoder in self.parts["reconstruction"]]  # N x (B, 1, *X)
        recon = reconstruction_loss(inputs, rebuilt, available)
        loss = task + self.options.kl_weight * kl + self.options.recon_weight * recon
        output = ModelOutput(prediction, levels[model.distill_level], levels)
        return StepOutput(loss, {"task": task, "kl": kl, "recon": recon}, output)
