"""RFNet (Ding et al., ICCV 2021; code: dyh127/RFNet), as a peer of MCKD.

Region-aware fusion. Each modality has its own encoder; the decoder fuses
the modalities at every level, from the bottleneck up
(:class:`RegionAwareDecoder`):

1. a **probability-region-map generator** predicts the segmentation at the
   level's size from the N modalities' features (missing ones zeroed,
   embedded by 1x1x1 -> 3x3x3 -> 1x1x1 convolutions) and, below the
   bottleneck, the decoder's upsampled features; its maps, detached, split
   the features into regions (:func:`region_maps`);
2. a **region-aware fusion** (:class:`RegionAwareFusion`): in each region
   ``k``, every modality's features are weighted by the map; a small network
   reads their region averages and the region's size and gives one sigmoid
   weight per modality; the weighted sum over modalities is the region's
   feature (a missing modality's features are zero, so it adds nothing);
   the regions are then concatenated and fused (1x1x1, 3x3x3, 1x1x1
   convolutions) into ``C/2`` channels, beside a ``C/2``-channel shortcut
   from the concatenated modalities;
3. the fused level is the decoder's skip (or, at the bottleneck, its input).

A **shared decoder** segments from each modality's own encoder levels.
Loss (the authors' ``train.py``): the fused prediction's task loss (weight 0
for the first ``fusion_start`` of training: ``--region_fusion_start_epoch``
20 of 300 epochs in their ``job.sh``), plus every modality's shared-decoder
prediction's, plus every region map's (upsampled to full size), weight 1.

The region maps are the task's outputs at each level: with ``region_maps:
sigmoid`` (mckd's BraTS head: ET, TC and WT, each a sigmoid) one map per
output channel plus the rest (``1 - max``); with ``softmax`` (a ``labels``
head) the softmax over the classes, background included, as RFNet's four
classes.

Differences from the authors' code (PyTorch), beside those every peer shares
(:mod:`mckd.method.seg_parts`: network, loss, missing policy, optimiser,
what auxiliary losses read):

- the region maps are the task's regions (above) instead of BraTS's four
  classes, unless ``region_maps: softmax``;
- the modality weights' region averages are computed without the
  ``[B, K, N, C, *S]`` product (the same numbers, less memory);
- the authors' Adam: AMSGrad, 2e-4, weight decay 1e-4; they train 300
  epochs x 150 iterations of batch 2 at 80^3 with poly decay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from mckd.errors import ConfigError
from mckd.method.base import Batch, StepOutput, register_training_method
from mckd.method.model import ModelOutput, ModelSpec, MultiModalModel
from mckd.method.seg_parts import (
    SegmentationPeer,
    UNetPath3D,
    check_volumes,
    conv_block,
    modality_levels,
    per_modality_loss,
    separate_encoders,
    upsample,
)

WEIGHT_HIDDEN = 128  # hidden width of the modality-weight network (the authors')
MAP_HIDDEN = 16  # hidden width of the region-map head (the authors')


def region_maps(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Region probability maps from map logits ``[B, K, *S]``: ``softmax`` -> ``[B, K, *S]``;
    ``sigmoid`` -> ``[B, K + 1, *S]`` (each channel's sigmoid, then ``1 - max``: outside every region)."""
    if kind == "softmax":
        return torch.softmax(logits.float(), dim=1)
    probabilities = torch.sigmoid(logits.float())
    return torch.cat([probabilities, 1.0 - probabilities.max(dim=1, keepdim=True).values], dim=1)


def zero_missing(features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``[B, N, C, *S]`` with the missing modalities' features set to zero."""
    mask = present.to(torch.bool).reshape(present.shape + (1,) * (features.dim() - 2))
    return torch.where(mask, features, torch.zeros_like(features))


class MapGenerator(nn.Module):
    """The region-map logits ``[B, K, *S]`` of one level, from the modalities (and the decoder's upsampled features)."""

    def __init__(self, num_modalities: int, channels: int, outputs: int, with_decoder: bool) -> None:
        super().__init__()
        quarter = max(1, channels // 4)
        self.embed = nn.Sequential(conv_block(num_modalities * channels, quarter, 1), conv_block(quarter, quarter, 3),
                                   conv_block(quarter, channels, 1))
        self.head = nn.Sequential(conv_block((2 if with_decoder else 1) * channels, MAP_HIDDEN, 1),
                                  nn.Conv3d(MAP_HIDDEN, outputs, 1))

    def forward(self, zeroed: torch.Tensor, decoded: torch.Tensor | None = None) -> torch.Tensor:
        embedded = self.embed(zeroed.flatten(1, 2))  # (B, C, *S)
        return self.head(embedded if decoded is None else torch.cat([decoded, embedded], dim=1))


class RegionAwareFusion(nn.Module):
    """RFNet's fusion of one level: ``[B, N, C, *S]`` and region maps ``[B, K, *S]`` -> ``[B, C, *S]``."""

    def __init__(self, num_modalities: int, channels: int, regions: int) -> None:
        super().__init__()
        n, half = num_modalities, channels // 2
        self.weights = nn.ModuleList(nn.Sequential(nn.Linear(n * channels + 1, WEIGHT_HIDDEN), nn.LeakyReLU(0.2),
                                                   nn.Linear(WEIGHT_HIDDEN, n)) for _ in range(regions))
        self.regions = nn.Sequential(conv_block(regions * channels, channels, 1), conv_block(channels, channels, 3),
                                     conv_block(channels, half, 1))
        self.shortcut = nn.Sequential(conv_block(n * channels, channels, 1), conv_block(channels, channels, 3),
                                      conv_block(channels, channels - half, 1))

    def modality_weights(self, zeroed: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """Sigmoid weights ``[B, K, N]`` of each modality in each region, from region averages and region sizes."""
        b, n, c = zeroed.shape[:3]
        voxels = maps[0, 0].numel()
        sizes = maps.flatten(start_dim=2).mean(dim=2) + 1e-7  # (B, K): each map's mean
        # the region averages mean_s(f * map) / mean_s(map), without a (B, K, N, C, *S) tensor
        averages = torch.einsum("bnci,bki->bknc", zeroed.flatten(start_dim=3), maps.flatten(start_dim=2)) / voxels
        averages = averages.reshape(b, -1, n * c) / sizes.unsqueeze(2)  # (B, K, N*C)
        return torch.stack([torch.sigmoid(network(torch.cat([averages[:, k], sizes[:, k : k + 1]], dim=1)))
                            for k, network in enumerate(self.weights)], dim=1)  # (B, K, N)

    def forward(self, zeroed: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        maps = maps.to(zeroed.dtype)
        weights = self.modality_weights(zeroed, maps)  # (B, K, N)
        shape = (zeroed.shape[0], zeroed.shape[1]) + (1,) * (zeroed.dim() - 2)  # (B, N, 1, ...)
        # region k: sum_n w_kn * f_n * map_k (a missing modality's f_n is zero)
        regional = [(zeroed * weights[:, k].reshape(shape)).sum(dim=1) * maps[:, k : k + 1]
                    for k in range(weights.shape[1])]  # K x (B, C, *S)
        return torch.cat([self.regions(torch.cat(regional, dim=1)), self.shortcut(zeroed.flatten(1, 2))], dim=1)


class RegionAwareDecoder(nn.Module):
    """The modalities' levels ``[B, N, C_l, *S_l]`` -> logits ``[B, K, *S_0]`` and the map logits of every level.

    From the bottleneck up: map generator, region-aware fusion, then the
    unet3d decoder step (transposed convolution; map generator on it and the
    next level; fusion; convolutions over the concatenation).
    """

    def __init__(self, num_modalities: int, channels: Sequence[int], outputs: int, maps: str) -> None:
        super().__init__()
        self.maps = maps
        regions = outputs if maps == "softmax" else outputs + 1
        levels = len(channels)
        self.path = UNetPath3D(channels, outputs)
        self.generators = nn.ModuleList(MapGenerator(num_modalities, c, outputs, with_decoder=l < levels - 1)
                                        for l, c in enumerate(channels))
        self.fusions = nn.ModuleList(RegionAwareFusion(num_modalities, c, regions) for c in channels)

    def fuse_level(self, level: int, zeroed: torch.Tensor, decoded: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fused [B, C, *S], map logits [B, K, *S])`` of one level."""
        logits = self.generators[level](zeroed, decoded)
        return self.fusions[level](zeroed, region_maps(logits, self.maps).detach()), logits

    def forward(self, levels: Sequence[torch.Tensor], present: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        last = len(levels) - 1
        x, logits = self.fuse_level(last, zero_missing(levels[last], present), None)
        map_logits = [logits]
        for up, level in zip(self.path.up, reversed(range(last))):
            decoded = up.transp_conv(x)  # (B, C_l, *S_l)
            skip, logits = self.fuse_level(level, zero_missing(levels[level], present), decoded)
            map_logits.append(logits)
            x = up.conv_block(torch.cat([decoded, skip], dim=1))
        return self.path.out(x), map_logits


class RFNetModel(MultiModalModel):
    """Encoders per modality and the region-aware decoder; ``extras["map_logits"]``: each level's map logits."""

    def __init__(self, modalities: Sequence[str], encoders: dict[str, nn.Module], channels: Sequence[int],
                 outputs: int, maps: str, distill_level: int = -1) -> None:
        decoder = RegionAwareDecoder(len(modalities), channels, outputs, maps)
        super().__init__(modalities, encoders, decoder, fill="zero", fusion="concat", distill_level=distill_level,
                         feature_channels=channels)

    def forward(self, inputs: Sequence[torch.Tensor], present: torch.Tensor,
                feature_scale: torch.Tensor | None = None, encode: torch.Tensor | None = None) -> ModelOutput:
        """``encode`` (bool ``[B, N]``, default ``present``): the modalities to encode; the fusion reads ``present``."""
        if feature_scale is not None:
            raise ValueError("RFNet's model takes no feature scale (no meta step)")
        levels = self.encode(inputs, present if encode is None else encode)
        prediction, map_logits = self.decoder(levels, present)
        return ModelOutput(prediction, levels[self.distill_level], levels, extras={"map_logits": map_logits})  # type: ignore[dict-item]


def rfnet_model(model: MultiModalModel, spec: ModelSpec, maps: str, method: str) -> RFNetModel:
    check_volumes(spec, method)
    if min(spec.feature_channels) < 2:
        raise ConfigError(f"method {method!r} splits each level's channels in two: model.widths must be >= 2")
    return RFNetModel(spec.modalities, separate_encoders(model), spec.feature_channels, spec.num_outputs, maps,
                      spec.distill_level)


@dataclass
class RFNetOptions:
    """Options of the ``rfnet`` method (the authors' settings)."""

    region_maps: Literal["sigmoid", "softmax"] = "sigmoid"  # sigmoid: one map per output channel + the rest (a regions head, mckd's BraTS default); softmax: the classes (a labels head, RFNet's own)
    fusion_start: float = 0.0667  # fraction of training before the fused prediction's loss counts (RFNet's job.sh: epoch 20 of 300)
    auxiliary: Literal["available", "kept"] = "available"  # the modalities the shared decoder reads: every one the sample has (the authors'), or the kept ones
    optimizer: Literal["published", "config"] = "published"  # published: Adam (AMSGrad) 2e-4, weight decay 1e-4 (the authors'), under the config's schedule; config: the train: section's

    def validate(self, path: str) -> None:
        if not 0 <= self.fusion_start <= 1:
            raise ConfigError(f"{path}.fusion_start must be a fraction in [0, 1], got {self.fusion_start}")


@register_training_method(RFNetOptions)
class RFNet(SegmentationPeer):
    """RFNet: region-aware fusion at every level, a shared per-modality decoder, region-map supervision (Ding et al. 2021)."""

    name = "rfnet"
    description = ("RFNet (Ding et al., 2021): encoder per modality, region maps gate each modality's features at every "
                   "level (region-aware fusion), a shared per-modality decoder")
    published_adam = (2e-4, 1e-4, True)

    def wrap_model(self, model: MultiModalModel, spec: ModelSpec) -> MultiModalModel:
        fused = rfnet_model(model, spec, self.options.region_maps, self.name)
        self.parts["shared_decoder"] = UNetPath3D(spec.feature_channels, spec.num_outputs)
        return fused

    def loss_names(self) -> tuple[str, ...]:
        return ("task", "separate", "maps")

    def rfnet_losses(self, model: RFNetModel, batch: Batch, present: torch.Tensor
                     ) -> tuple[ModelOutput, dict[str, torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """The forward pass and RFNet's three losses; also every available modality's shared-decoder logits
        (``N x [B, K, *X]``, zero for the samples without it) and the available mask."""
        assert self.services is not None, "setup() first"
        loss_fn, target, kept = self.services.task_loss, batch["target"], present.to(torch.bool)
        available = self.auxiliary(batch, kept)
        output = model(batch["inputs"], kept, encode=available)
        size = output.prediction.shape[2:]
        maps = sum((loss_fn(upsample(logits, size), target) for logits in output.extras["map_logits"]),
                   start=output.prediction.new_zeros((), dtype=torch.float32))
        decoder = self.parts["shared_decoder"]
        separate_logits = [torch.zeros_like(output.prediction) for _ in self.modalities]

        def predict(n: int, rows: torch.Tensor) -> torch.Tensor:
            logits = decoder(modality_levels(output.levels, n, rows))
            separate_logits[n] = separate_logits[n].index_put((rows,), logits.to(separate_logits[n].dtype))
            return logits

        separate = per_modality_loss(loss_fn, predict, target, available)
        losses = {"task": loss_fn(output.prediction, target), "separate": separate, "maps": maps}
        return output, losses, separate_logits, available

    def training_step(self, model: MultiModalModel, batch: Batch, present: torch.Tensor) -> StepOutput:
        output, losses, _, _ = self.rfnet_losses(model, batch, present)  # type: ignore[arg-type]
        fused_weight = 0.0 if self.progress() < self.options.fusion_start else 1.0
        loss = fused_weight * losses["task"] + losses["separate"] + losses["maps"]
        return StepOutput(loss, losses, output)
