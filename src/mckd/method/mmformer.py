"""mmFormer (Zhang et al., MICCAI 2022; code: YaoZhang93/mmFormer), as a peer of MCKD.

A multimodal medical transformer. Each modality has its own convolutional
encoder. At the bottleneck, each present modality's features become tokens
(a 1x1x1 convolution to ``embed_dim``, one token per voxel) that an
**intra-modal transformer** of its own refines, with a learned positional
embedding per modality; an **inter-modal transformer** then attends over the
tokens of all modalities together, the missing modalities' tokens masked
(:class:`MmFormerFusion`); a 1x1x1 convolution brings the N tokens of every
position back to ``N * C`` channels. At every level the N modalities'
features (missing ones zeroed) are concatenated and fused by three pre-norm
convolutions (1x1x1, 3x3x3, 1x1x1) to ``C`` channels. A U-Net decoder with
**deep supervision** (a 1x1x1 head on the fused bottleneck and on every
decoder level but the last, upsampled) segments; a **shared auxiliary
decoder** segments from each modality's own encoder levels. Loss (the
authors' ``train.py``): the sum, weight 1 each, of the fused prediction's,
every deep-supervision output's and every modality's auxiliary prediction's
task loss.

Differences from the authors' code (PyTorch), beside those every peer shares
(:mod:`mckd.method.seg_parts`: network, loss, missing policy, optimiser,
what auxiliary losses read):

- the transformer settings are theirs (512-d tokens, 8 heads, MLP 4096,
  depth 1, dropout 0.1, positional embeddings starting at zero); the number
  of tokens is the bottleneck's voxels at the training crop (theirs: 8^3 at
  128^3), so a run predicts with windows of its crop;
- the inter-modal attention never reads a missing modality's tokens (a key
  mask, ``missing_tokens: masked``); the authors zero those tokens and let
  every token attend to them (their positional embedding), which
  ``missing_tokens: zeroed`` reproduces;
- after the inter-modal transformer the tokens are regrouped per position
  and modality (``[B, N, T, D]`` -> ``[B, N * D, *S]``); the authors' code
  reshapes the modality-major token sequence straight to ``[B, p, p, p, N * D]``,
  which mixes tokens of different positions and modalities;
- the authors' Adam: AMSGrad, 2e-4, weight decay 1e-4; they train 1,000
  epochs of batch 8 at 128^3 with poly decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mckd.errors import ConfigError
from mckd.method.base import Batch, StepOutput, register_training_method
from mckd.method.fusion import Fusion
from mckd.method.model import ModelOutput, ModelSpec, MultiModalModel
from mckd.method.seg_parts import (
    DeepSupervision,
    SegmentationPeer,
    UNetPath3D,
    check_volumes,
    conv_block,
    modality_levels,
    per_modality_loss,
    separate_encoders,
)


class SelfAttention(nn.Module):
    """Multi-head attention over ``[B, T, D]`` tokens; ``keep`` (bool ``[B, T]``) masks the keys that may be read."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"method.embed_dim ({dim}) must be divisible by method.heads ({heads})")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # each (B, h, T, d/h)
        mask = None if keep is None else keep[:, None, None, :]  # (B, 1, 1, T): True = may be read
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class TransformerLayer(nn.Module):
    """mmFormer's layer: ``x += pos``; ``x += Dropout(Attention(LayerNorm(x)))``; ``x += MLP(LayerNorm(x))``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads, dropout)
        self.drop = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = x + pos
        x = x + self.drop(self.attention(self.norm1(x), keep))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, mlp_dim, dropout) for _ in range(depth))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, pos, keep)
        return x


def level_fusion(num_modalities: int, channels: int) -> nn.Sequential:
    """The N concatenated features ``[B, N * C, *S]`` -> ``[B, C, *S]`` (pre-norm 1x1x1, 3x3x3, 1x1x1)."""
    return nn.Sequential(conv_block(num_modalities * channels, channels, 1, prenorm=True),
                         conv_block(channels, channels, 3, prenorm=True), conv_block(channels, channels, 1, prenorm=True))


class MmFormerFusion(Fusion):
    """mmFormer's fusion at every level; transformers at the bottleneck (the last level).

    Args:
        num_modalities: N.
        channels: ``C_l`` of every level.
        tokens: the bottleneck's voxels (its token count per modality).
        embed_dim, heads, mlp_dim, depth, dropout: the transformers' settings.
        masked: True: the inter-modal attention reads no missing modality's token; False: the authors' zeroed tokens.
    """

    description = "mmFormer: intra-modal then inter-modal transformers at the bottleneck, convolutional fusion per level"

    def __init__(self, num_modalities: int, channels: Sequence[int], tokens: int, embed_dim: int = 512,
                 heads: int = 8, mlp_dim: int = 4096, depth: int = 1, dropout: float = 0.1, masked: bool = True) -> None:
        super().__init__(num_modalities, channels)
        n, c, d = num_modalities, channels[-1], embed_dim
        self.embed_dim, self.masked = d, masked
        self.fusions = nn.ModuleList(level_fusion(n, width) for width in channels)
        self.encode_tokens = nn.ModuleList(nn.Conv3d(c, d, 1) for _ in range(n))
        self.positions = nn.Parameter(torch.zeros(n, tokens, d))  # one learned embedding per modality and position
        self.intra = nn.ModuleList(Transformer(d, depth, heads, mlp_dim, dropout) for _ in range(n))
        self.inter = Transformer(d, depth, heads, mlp_dim, dropout)
        self.decode_tokens = nn.Conv3d(n * d, n * c, 1)

    @classmethod
    def output_channels(cls, num_modalities: int, channels: int) -> int:
        return channels

    def tokens(self, features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Bottleneck features ``[B, N, C, *S]`` -> intra-modal tokens ``[B, N, T, D]`` (zero for missing modalities)."""
        b, n = present.shape
        out = features.new_zeros((b, n, self.positions.shape[1], self.embed_dim))
        for m in range(n):
            rows = present[:, m].nonzero(as_tuple=True)[0]
            if rows.numel():
                tokens = self.encode_tokens[m](features[rows, m]).flatten(start_dim=2).transpose(1, 2)  # (R, T, D)
                out[rows, m] = self.intra[m](tokens, self.positions[m : m + 1]).to(out.dtype)
        return out

    def bottleneck(self, features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Intra- then inter-modal transformers: ``[B, N, C, *S]`` -> ``[B, N * C, *S]``."""
        b, n, c = features.shape[:3]
        spatial = features.shape[3:]
        tokens = self.tokens(features, present)  # (B, N, T, D)
        t = tokens.shape[2]
        keep = present.to(torch.bool).repeat_interleave(t, dim=1) if self.masked else None  # (B, N*T)
        mixed = self.inter(tokens.reshape(b, n * t, self.embed_dim), self.positions.reshape(1, n * t, self.embed_dim),
                           keep)  # (B, N*T, D)
        grid = mixed.reshape(b, n, t, self.embed_dim).permute(0, 1, 3, 2).reshape(b, n * self.embed_dim, *spatial)
        return self.decode_tokens(grid)  # (B, N*C, *S)

    def forward(self, filled: torch.Tensor, present: torch.Tensor, level: int) -> torch.Tensor:
        mask = present.to(torch.bool).reshape(present.shape + (1,) * (filled.dim() - 2))
        zeroed = torch.where(mask, filled, torch.zeros_like(filled))
        last = level == len(self.fusions) - 1 or level == -1
        stacked = self.bottleneck(zeroed, present) if last else zeroed.flatten(1, 2)  # (B, N*C, *S)
        return self.fusions[level](stacked)


@dataclass
class MmFormerOptions:
    """Options of the ``mmformer`` method (the authors' settings)."""

    embed_dim: int = 512  # token width of the transformers
    heads: int = 8
    mlp_dim: int = 4096
    depth: int = 1  # layers of each transformer
    dropout: float = 0.1
    missing_tokens: Literal["masked", "zeroed"] = "masked"  # masked: inter-modal attention never reads a missing modality's token; zeroed: the authors' code (zero tokens, read)
    deep_supervision_weight: float = 1.0  # weight of each deep-supervision output's loss
    auxiliary_weight: float = 1.0  # weight of each modality's auxiliary-decoder loss
    auxiliary: Literal["available", "kept"] = "available"  # the modalities the auxiliary decoder reads: every one the sample has (the authors'), or the kept ones
    optimizer: Literal["published", "config"] = "published"  # published: Adam (AMSGrad) 2e-4, weight decay 1e-4 (the authors'), under the config's schedule; config: the train: section's

    def validate(self, path: str) -> None:
        if min(self.embed_dim, self.heads, self.mlp_dim, self.depth) < 1 or self.embed_dim % self.heads:
            raise ConfigError(f"{path}: embed_dim, heads, mlp_dim and depth must be >= 1 and embed_dim divisible by "
                              f"heads, got {self.embed_dim}, {self.heads}, {self.mlp_dim}, {self.depth}")
        if not 0 <= self.dropout < 1 or min(self.deep_supervision_weight, self.auxiliary_weight) < 0:
            raise ConfigError(f"{path}: dropout must be in [0, 1) and the weights >= 0")


@register_training_method(MmFormerOptions)
class MmFormer(SegmentationPeer):
    """mmFormer: intra- and inter-modal transformers, deep supervision, a shared auxiliary decoder (Zhang et al. 2022)."""

    name = "mmformer"
    description = ("mmFormer (Zhang et al., 2022): encoder per modality, intra-modal then inter-modal transformers at the "
                   "bottleneck (missing tokens masked), deep supervision, a shared auxiliary per-modality decoder")
    published_adam = (2e-4, 1e-4, True)

    def wrap_model(self, model: MultiModalModel, spec: ModelSpec) -> MultiModalModel:
        check_volumes(spec, self.name)
        channels = list(spec.feature_channels)
        o = self.options
        fusion = MmFormerFusion(len(spec.modalities), channels, math.prod(spec.feature_shapes[-1][1:]), o.embed_dim,
                                o.heads, o.mlp_dim, o.depth, o.dropout, masked=o.missing_tokens == "masked")
        self.parts["deep_supervision"] = DeepSupervision(list(reversed(channels))[:-1], spec.num_outputs)
        self.parts["auxiliary_decoder"] = UNetPath3D(channels, spec.num_outputs)
        return MultiModalModel(spec.modalities, separate_encoders(model), UNetPath3D(channels, spec.num_outputs),
                               fill="zero", fusion=fusion, distill_level=spec.distill_level, feature_channels=channels)

    def loss_names(self) -> tuple[str, ...]:
        return ("task", "deep_supervision", "auxiliary")

    def training_step(self, model: MultiModalModel, batch: Batch, present: torch.Tensor) -> StepOutput:
        """The fused prediction, its deep supervision and every available modality's auxiliary prediction."""
        assert self.services is not None, "setup() first"
        loss_fn, target, kept = self.services.task_loss, batch["target"], present.to(torch.bool)
        available = self.auxiliary(batch, kept)
        levels = model.encode(batch["inputs"], available)  # (B, N, C_l, *S_l), zero where not available
        decoder: UNetPath3D = model.decoder  # type: ignore[assignment]
        features = decoder.features(model.fuse(levels, kept))  # the fusion zeroes what was not kept
        prediction = decoder.out(features[-1])
        task = loss_fn(prediction, target)
        size = prediction.shape[2:]
        deep = sum((loss_fn(logits, target) for logits in self.parts["deep_supervision"](features[:-1], size)),
                   start=prediction.new_zeros((), dtype=torch.float32))
        auxiliary_decoder = self.parts["auxiliary_decoder"]
        auxiliary = per_modality_loss(loss_fn, lambda n, rows: auxiliary_decoder(modality_levels(levels, n, rows)),
                                      target, available)
        loss = task + self.options.deep_supervision_weight * deep + self.options.auxiliary_weight * auxiliary
        return StepOutput(loss, {"task": task, "deep_supervision": deep, "auxiliary": auxiliary},
                          ModelOutput(prediction, levels[model.distill_level], levels))
