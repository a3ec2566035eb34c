"""Robust-MSeg (Chen et al., MICCAI 2019; code: cchen-cc/Robust-Mseg), as a peer of MCKD.

Feature disentanglement and gated fusion. Each modality ``n`` has a
*content* encoder (its levels ``c_n``) and an *appearance* (style) encoder
that sums the image up in an 8-d code ``s_n``. The content of a missing
modality is zero; at every level a **gated fusion** (:class:`GatedFusion`)
convolves the N concatenated contents (3x3x3, instance norm) into one
sigmoid gate map per modality, multiplies each content by its gate,
concatenates and mixes them (1x1x1 convolution, instance norm, leaky ReLU)
into the level's fused content. A U-Net decoder segments from the fused
levels; for every modality an **image decoder** rebuilds the image from the
fused bottleneck and that modality's style code (an MLP turns ``s_n`` into
AdaIN scales and shifts for four residual blocks, then upsampling
convolutions). Loss (the authors' ``compute_losses``):

    l_task + 0.1 * sum_n mean |x_n - x_hat_n| + 0.1 * sum_n KL(N(mu_n, sigma_n^2) || N(0, 1)),

``mu_n, sigma_n`` being the AdaIN scales and shifts of modality ``n`` (the
code's ``kl_loss(mu, log(sigma^2))``, summed over channels and averaged
over the batch).

Differences from the authors' code (TensorFlow), beside those every peer
shares (:mod:`mckd.method.seg_parts`: network, loss, missing policy,
optimiser, what auxiliary losses read):

- the image decoders work at the bottleneck's width ``C_L`` (the authors'
  128 is their bottleneck width) and upsample ``L - 1`` times (their 3);
- ``log(sigma^2 + 1e-8)`` in the KL (the code takes ``log(sigma^2)``,
  infinite at 0);
- the authors' Adam: 1e-4 with weight decay 1e-4 (their L2 term); they
  train 300 x 300 iterations of batch 1 at 80^3 with poly decay and keep
  each modality with probability 1/2 (at least one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from mckd.errors import ConfigError
from mckd.method.base import Batch, StepOutput, register_training_method
from mckd.method.fusion import Fusion, register_fusion
from mckd.method.model import ModelOutput, ModelSpec, MultiModalModel
from mckd.method.seg_parts import SegmentationPeer, UNetPath3D, check_volumes, separate_encoders

STYLE_DIM = 8  # the authors' appearance code
STYLE_WIDTH = 32  # first width of the style encoder (32, 64, 128, 128, 128)


@register_fusion("gated")
class GatedFusion(Fusion):
    """Robust-MSeg's gated fusion: a sigmoid gate map per modality, the gated contents mixed by a 1x1x1 convolution.

    ``[B, N, C, *S]`` -> ``[B, C, *S]``. Missing modalities' features are
    zeroed first, so they add nothing whatever their gate.
    """

    description = ("Robust-MSeg: a learned sigmoid gate map per modality, gated features mixed (missing ones zeroed);"
                   " 3D feature maps (segmentation networks)")

    def __init__(self, num_modalities: int, channels: Sequence[int] = ()) -> None:
        super().__init__(num_modalities, channels)
        if not channels:
            raise ValueError("GatedFusion needs the channels of every encoder level")
        n = num_modalities
        self.gates = nn.ModuleList(nn.Sequential(nn.Conv3d(n * c, n, 3, padding=1), nn.InstanceNorm3d(n, affine=True))
                                   for c in channels)
        self.mix = nn.ModuleList(nn.Sequential(nn.Conv3d(n * c, c, 1), nn.InstanceNorm3d(c, affine=True),
                                               nn.LeakyReLU(0.2)) for c in channels)

    @classmethod
    def output_channels(cls, num_modalities: int, channels: int) -> int:
        return channels

    def gate_maps(self, filled: torch.Tensor, present: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(zeroed [B, N, C, *S], gates [B, N, *S])``: the features with missing ones zeroed, and their gates."""
        mask = present.to(torch.bool).reshape(present.shape + (1,) * (filled.dim() - 2))
        zeroed = torch.where(mask, filled, torch.zeros_like(filled))
        return zeroed, torch.sigmoid(self.gates[level](zeroed.flatten(1, 2)))

    def forward(self, filled: torch.Tensor, present: torch.Tensor, level: int) -> torch.Tensor:
        zeroed, gates = self.gate_maps(filled, present, level)
        return self.mix[level]((zeroed * gates.unsqueeze(2)).flatten(1, 2))  # (B, C, *S)


class StyleEncoder(nn.Module):
    """An image ``[B, 1, *X]`` -> its appearance code ``[B, 8]`` (7^3 then four strided 4^3 convolutions, ReLU, no norm)."""

    def __init__(self) -> None:
        super().__init__()
        widths = [STYLE_WIDTH, 2 * STYLE_WIDTH, 4 * STYLE_WIDTH, 4 * STYLE_WIDTH, 4 * STYLE_WIDTH]
        layers: list[nn.Module] = [nn.Conv3d(1, widths[0], 7, padding=3, padding_mode="reflect"), nn.ReLU()]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv3d(a, b, 4, stride=2, padding=1, padding_mode="reflect"), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.code = nn.Linear(widths[-1], STYLE_DIM)  # the authors' 1x1x1 convolution after global pooling

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.code(self.convs(image).flatten(start_dim=2).mean(dim=2))  # (B, 8)


def adaptive_instance_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """AdaIN: ``scale * (x - mean) / std + shift`` per sample and channel; ``x [B, C, *S]``, ``scale, shift [B, C]``."""
    dims = tuple(range(2, x.dim()))
    mean, var = x.mean(dim=dims, keepdim=True), x.var(dim=dims, keepdim=True, unbiased=False)
    shape = scale.shape + (1,) * len(dims)
    return scale.reshape(shape) * (x - mean) / torch.sqrt(var + 1e-5) + shift.reshape(shape)


class AdaptiveResBlock(nn.Module):
    """``x + AdaIN(conv(ReLU(AdaIN(conv(x)))))`` with the style's scale and shift."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, padding_mode="reflect")

    def forward(self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        y = torch.relu(adaptive_instance_norm(self.conv1(x), scale, shift))
        return x + adaptive_instance_norm(self.conv2(y), scale, shift)


class ImageDecoder(nn.Module):
    """The fused bottleneck ``[B, C, *S_L]`` and a style code ``[B, 8]`` -> the image ``[B, 1, *S_0]``.

    An MLP (8 -> C -> C, ReLU) gives the AdaIN scale ``mu`` and shift
    ``sigma`` ``[B, C]`` of four adaptive residual blocks; then ``upsamplings``
    times: nearest x2, 5^3 convolution halving the channels, layer norm, ReLU;
    a 7^3 convolution to one channel.
    """

    def __init__(self, channels: int, upsamplings: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(STYLE_DIM, channels), nn.ReLU(), nn.Linear(channels, channels), nn.ReLU())
        self.mu, self.sigma = nn.Linear(channels, channels), nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(AdaptiveResBlock(channels) for _ in range(4))
        ups: list[nn.Module] = []
        for _ in range(upsamplings):
            half = max(1, channels // 2)
            ups += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv3d(channels, half, 5, padding=2, padding_mode="reflect"),
                    nn.GroupNorm(1, half), nn.ReLU()]
            channels = half
        self.up = nn.Sequential(*ups)
        self.image = nn.Conv3d(channels, 1, 7, padding=3, padding_mode="reflect")

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image [B, 1, *S_0], mu [B, C], sigma [B, C])``."""
        hidden = self.mlp(style)
        mu, sigma = self.mu(hidden), self.sigma(hidden)
        x = content
        for block in self.blocks:
            x = block(x, mu, sigma)
        return self.image(self.up(x)), mu, sigma


def style_kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, 1))`` summed over channels: ``[B, C]`` -> ``[B]``."""
    logvar = torch.log(sigma.float() ** 2 + 1e-8)
    return 0.5 * (mu.float() ** 2 + logvar.exp() - 1.0 - logvar).sum(dim=1)


@dataclass
class RobustMSegOptions:
    """Options of the ``robust_mseg`` method (the authors' settings)."""

    recon_weight: float = 0.1  # weight of the L1 reconstruction of every image
    kl_weight: float = 0.1  # weight of the KL of the style's AdaIN parameters
    auxiliary: Literal["available", "kept"] = "available"  # available: styles and reconstructions of every modality the sample has (the authors'); kept: of the kept ones
    optimizer: Literal["published", "config"] = "published"  # published: Adam 1e-4, weight decay 1e-4 (the authors'), under the config's schedule; config: the train: section's optimiser

    def validate(self, path: str) -> None:
        if min(self.recon_weight, self.kl_weight) < 0:
            raise ConfigError(f"{path}.recon_weight and {path}.kl_weight must be >= 0, "
                              f"got {self.recon_weight}, {self.kl_weight}")


@register_training_method(RobustMSegOptions)
class RobustMSeg(SegmentationPeer):
    """Robust-MSeg: content and style encoders, gated fusion, image decoders (Chen et al. 2019)."""

    name = "robust_mseg"
    description = ("Robust-MSeg (Chen et al., 2019): content + 8-d style encoder per modality, missing content zeroed, "
                   "gated fusion per level, image decoders from fused content + style; CE+Dice + 0.1 L1 + 0.1 KL")
    published_adam = (1e-4, 1e-4, False)

    def wrap_model(self, model: MultiModalModel, spec: ModelSpec) -> MultiModalModel:
        check_volumes(spec, self.name)
        channels = list(spec.feature_channels)
        self.parts["style"] = nn.ModuleList(StyleEncoder() for _ in spec.modalities)
        self.parts["image"] = nn.ModuleList(ImageDecoder(channels[-1], len(channels) - 1) for _ in spec.modalities)
        return MultiModalModel(spec.modalities, separate_encoders(model), UNetPath3D(channels, spec.num_outputs),
                               fill="zero", fusion=GatedFusion(len(spec.modalities), channels),
                               distill_level=spec.distill_level, feature_channels=channels)

    def loss_names(self) -> tuple[str, ...]:
        return ("task", "recon", "kl")

    def training_step(self, model: MultiModalModel, batch: Batch, present: torch.Tensor) -> StepOutput:
        """Segment from the gated fusion of the kept contents; rebuild each available image from it and its style."""
        assert self.services is not None, "setup() first"
        inputs, kept = batch["inputs"], present.to(torch.bool)
        available = self.auxiliary(batch, kept)
        levels = model.encode(inputs, kept)  # contents of the kept modalities only (others zero)
        fused = model.fuse(levels, kept)
        prediction = model.decode(fused)
        task = self.services.task_loss(prediction, batch["target"])
        recon = prediction.new_zeros((), dtype=torch.float32)
        kl = prediction.new_zeros((), dtype=torch.float32)
        for n, (style_encoder, decoder) in enumerate(zip(self.parts["style"], self.parts["image"])):
            rows = available[:, n].nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            image = inputs[n][rows]
            rebuilt, mu, sigma = decoder(fused[-1][rows], style_encoder(image))
            recon = recon + (rebuilt.float() - image.float()).abs().mean()
            kl = kl + style_kl(mu, sigma).mean()
        loss = task + self.options.recon_weight * recon + self.options.kl_weight * kl
        return StepOutput(loss, {"task": task, "recon": recon, "kl": kl},
                          ModelOutput(prediction, levels[model.distill_level], levels))
