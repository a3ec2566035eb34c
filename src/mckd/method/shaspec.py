"""ShaSpec's shared-specific modelling (Wang et al., CVPR 2023), as a peer of MCKD.

Each present modality ``i`` is encoded twice: by a *shared* encoder, the same
network for every modality, giving ``s_i``, and by a *specific* encoder of its
own, giving ``p_i``. A residual fusion combines them,

    f_i = s_i + R([s_i, p_i])          (R: a linear map over channels, 2C -> C)

and a missing modality ``n`` gets the mean of the present modalities' *shared*
features (specific knowledge of an absent modality cannot be recovered). The
fused ``f`` then goes through the same fusion and decoder as MCKD. Two
auxiliary losses shape the two feature kinds:

- alignment: L1 distance between the shared features of every pair of present
  modalities (:func:`shared_alignment_loss`), so ``s`` carries what the
  modalities have in common;
- domain classification: a linear classifier must tell from ``p_i`` which
  modality it came from (:func:`domain_classification_loss`), so ``p``
  carries what is specific.

Inputs of different shapes (AV-MNIST, multi-view digits) cannot go through one
network as they are: there the shared encoder is a per-modality stem followed
by shared layers (``shared_heads``, one per encoder level). Inputs of one shape
(BraTS) use one truly shared encoder. Alignment and domain losses use the
distillation level (the last by default).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mckd.errors import ConfigError
from mckd.method.base import Batch, Term, TrainingMethod, register_training_method
from mckd.method.fill import fill_missing_features
from mckd.method.model import ModelOutput, ModelSpec, MultiModalModel, _as_levels


class ChannelLinear(nn.Module):
    """A linear map over the channel axis (dim 1) of ``[P, C, *S]``: a 1x1 convolution in any dimension."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels_in, channels_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.movedim(1, -1)).movedim(-1, 1)


def shared_alignment_loss(shared: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """L1 alignment of shared features: ``(1/B) sum_b sum_{i<j both present} mean|s_bi - s_bj|``.

    Args:
        shared: ``[B, N, *F]`` shared features (anything where missing).
        present: bool ``[B, N]``.
    """
    batch, n = present.shape
    flat = shared.flatten(start_dim=2)  # (B, N, D)
    distance = (flat.unsqueeze(2) - flat.unsqueeze(1)).abs().mean(dim=-1)  # (B, N, N)
    pair = present.unsqueeze(2) & present.unsqueeze(1)  # (B, N, N)
    pair = pair & torch.ones(n, n, dtype=torch.bool, device=present.device).triu(diagonal=1)  # i < j
    return (distance * pair.to(distance.dtype)).sum() / max(batch, 1)


def domain_classification_loss(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the domain classifier: the label of ``p_bn`` is ``n``; mean over present pairs.

    Args:
        logits: ``[B, N, N]``, entry ``[b, n]`` the classifier's logits for modality ``n``'s specific features.
        present: bool ``[B, N]``.
    """
    batch, n = present.shape
    labels = torch.arange(n, device=logits.device).expand(batch, n)  # (B, N)
    return F.cross_entropy(logits[present].float(), labels[present])


class ShaSpecModel(MultiModalModel):
    """Shared + specific encoders, residual fusion, the MCKD model's fusion and decoder.

    Args:
        modalities: names in the fixed order of ``inputs``.
        specific: one encoder per modality (mapping name -> module).
        shared: one module for all modalities (inputs of one shape), or a
            mapping name -> stem for inputs of different shapes, followed by
            ``shared_heads``.
        decoder: as in :class:`MultiModalModel`.
        channels: the channels ``C_l`` of each encoder level's features ``[C_l, *S_l]``.
        shared_heads: with stems, the shared layers, one per level (``[P, C_l, *S] -> [P, C_l, *S]``).
        fusion, distill_level: as in :class:`MultiModalModel` (a name or a fusion module).

    ``forward`` returns :class:`ModelOutput` with ``features`` the fused ``f``
    (zero where missing) and ``extras``: ``shared`` and ``specific`` ``[B, N, *F]``
    and ``domain_logits`` ``[B, N, N]`` at the distillation level.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        specific: Mapping[str, nn.Module],
        shared: nn.Module | Mapping[str, nn.Module],
        decoder: nn.Module,
        channels: Sequence[int],
        shared_heads: Sequence[nn.Module] | None = None,
        fusion: Any = "concat",
        distill_level: int = -1,
    ) -> None:
        super().__init__(modalities, specific, decoder, fill="mean", fusion=fusion, distill_level=distill_level,
                         feature_channels=channels)
        if isinstance(shared, Mapping):
            if shared_heads is None or len(shared_heads) != len(channels):
                raise ValueError("shared stems per modality need shared_heads, one per encoder level")
            self.shared_stems = nn.ModuleDict({m: shared[m] for m in self.modalities})
            self.shared_heads = nn.ModuleList(shared_heads)
            self.shared_trunk = None
        else:
            self.shared_stems, self.shared_heads, self.shared_trunk = None, None, shared
        self.residual = nn.ModuleList(ChannelLinear(2 * c, c) for c in channels)
        self.domain_classifier = nn.Linear(channels[distill_level], self.num_modalities)

    def encode_shared(self, inputs: Sequence[torch.Tensor], present: torch.Tensor) -> list[torch.Tensor]:
        """Shared features of the present modalities, one ``[B, N, *F_l]`` per level, zero where missing."""
        present = present.to(torch.bool)
        batch, n = present.shape
        if self.shared_trunk is not None:
            gathered = torch.stack(list(inputs), dim=1)[present]  # (P, *X)
            rows_levels = [(present, _as_levels(self.shared_trunk(gathered)))]
        else:
            rows_levels = []
            for m, name in enumerate(self.modalities):
                rows = present[:, m].nonzero(as_tuple=True)[0]
                if rows.numel() > 0:
                    levels = _as_levels(self.shared_stems[name](inputs[m][rows]))
                    index = torch.zeros_like(present)
                    index[rows, m] = True
                    rows_levels.append((index, [head(x) for head, x in zip(self.shared_heads, levels)]))
        template = rows_levels[0][1]
        out = [t.new_zeros((batch, n) + tuple(t.shape[1:])) for t in template]
        for index, levels in rows_levels:
            for full, level in zip(out, levels):
                full[index] = level  # (P, *F) into (B, N, *F), row-major order as the gather
        return out

    def forward(
        self,
        inputs: Sequence[torch.Tensor],
        present: torch.Tensor,
        feature_scale: torch.Tensor | None = None,
    ) -> ModelOutput:
        present = present.to(torch.bool)
        specific = self.encode(inputs, present)  # levels of (B, N, *F), zero where missing
        shared = self.encode_shared(inputs, present)
        fused_levels, decoder_inputs = [], []
        for index, (residual, s, p) in enumerate(zip(self.residual, shared, specific)):
            mask = present.reshape(present.shape + (1,) * (s.dim() - 2)).to(s.dtype)  # (B, N, 1, ...)
            both = torch.cat([s, p], dim=2).flatten(0, 1)  # (B*N, 2C, *S)
            f = (s + residual(both).reshape(s.shape)) * mask  # (B, N, *F), zero where missing
            filled = f + (1 - mask) * fill_missing_features(s, present)  # missing: mean of present shared
            if feature_scale is not None:
                filled = filled * feature_scale.reshape((1, -1) + (1,) * (filled.dim() - 2)).to(filled.dtype)
            fused_levels.append(f)
            decoder_inputs.append(self.fusion_module(filled, present, index))
        prediction = self.decode(decoder_inputs)
        level = self.distill_level
        pooled = specific[level].flatten(start_dim=3).mean(dim=-1) if specific[level].dim() > 3 else specific[level]
        extras = {"shared": shared[level], "specific": specific[level], "domain_logits": self.domain_classifier(pooled)}
        return ModelOutput(prediction=prediction, features=fused_levels[level], levels=fused_levels, extras=extras)


def _reinitialised(module: nn.Module) -> nn.Module:
    """A deep copy with fresh parameters (every submodule that has ``reset_parameters``)."""
    clone = copy.deepcopy(module)
    for sub in clone.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
    return clone


@torch.no_grad()
def shared_specific_model(model: MultiModalModel, spec: ModelSpec) -> ShaSpecModel:
    """ShaSpec over the network a builder made: its encoders, its fusion, its decoder.

    - one shared encoder (inputs of one shape): it stays the shared encoder;
      each modality gets a freshly initialised copy as its specific encoder;
    - one encoder per modality: those become the specific encoders; the shared
      encoder is a fresh copy of each (a stem, since the inputs differ) followed
      by shared layers (a channel-wise linear map and ReLU per level).

    The channels of each level come from ``spec`` (the network's feature shapes).
    """
    if isinstance(model, ShaSpecModel):
        return model
    channels = list(spec.feature_channels)
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
                        fusion=model.fusion_module, distill_level=model.distill_level)


@dataclass
class ShaSpecOptions:
    """Options of the ``shaspec`` method."""

    align_weight: float = 0.1  # weight of the L1 alignment of shared features across modalities
    domain_weight: float = 0.1  # weight of the domain (which modality) classifier on specific features

    def validate(self, path: str) -> None:
        if min(self.align_weight, self.domain_weight) < 0:
            raise ConfigError(f"{path}.align_weight and {path}.domain_weight must be >= 0, "
                              f"got {self.align_weight} and {self.domain_weight}")


@register_training_method(ShaSpecOptions)
class ShaSpec(TrainingMethod):
    """Shared + specific encoders, residual fusion, alignment and domain losses (Wang et al., CVPR 2023)."""

    name = "shaspec"
    description = ("ShaSpec (Wang et al., 2023): shared + specific encoders, residual fusion, L1 alignment of "
                   "shared features, domain classifier on specific features")

    def wrap_model(self, model: MultiModalModel, spec: ModelSpec) -> MultiModalModel:
        return shared_specific_model(model, spec)

    def loss_term_names(self) -> tuple[str, ...]:
        return ("align", "domain")

    def loss_terms(self, output: ModelOutput, present: torch.Tensor,
                   weights: torch.Tensor | None = None, batch: Batch | None = None) -> dict[str, Term]:
        return {
            "align": Term(self.options.align_weight, shared_alignment_loss(output.extras["shared"], present)),
            "domain": Term(self.options.domain_weight,
                           domain_classification_loss(output.extras["domain_logits"], present)),
        }
