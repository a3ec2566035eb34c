"""The multi-modal model: encoders (Eq. 1), filling (Eq. 2), fusion and decoder (Eq. 3).

``y_hat = D(concat_i f_i)`` with ``f_i = E_i(x_i)`` for present modalities and
``f_n`` filled by Eq. 2 for missing ones. Encoders run only on what is
present: with one shared encoder, the present (sample, modality) pairs are
gathered into one batch; with one encoder per modality, each encoder sees only
the samples where its modality is present. Missing inputs are never read.

An encoder may return one tensor or a list of tensors (one per level, as a
U-Net encoder does for its skip connections); every level is filled and
fused, and distillation uses one chosen level (the last by default: the
bottleneck, or the layer before the fully connected head).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from mckd.errors import MissingModalityError
from mckd.method.fill import fill_missing_features, zero_missing_features

FILLS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": fill_missing_features,
    "zero": zero_missing_features,
}


def concat_fusion(filled: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Concatenate modalities along channels: ``[B, N, C, *S]`` -> ``[B, N*C, *S]``."""
    return filled.flatten(start_dim=1, end_dim=2)


def hemis_fusion(filled: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """HeMIS-style fusion (Havaei et al., 2016): mean and variance over the *present* modalities.

    ``[B, N, C, *S]`` -> ``[B, 2*C, *S]``: the first C channels are the mean of
    the present modalities' features, the last C their variance (population
    variance, zero when one modality is present). Filled entries of missing
    modalities are ignored, so the result does not depend on the fill.
    """
    mask = present.reshape(present.shape + (1,) * (filled.dim() - 2)).to(filled.dtype)  # (B, N, 1, ...)
    count = mask.sum(dim=1).clamp(min=1)  # (B, 1, ...)
    mean = (filled * mask).sum(dim=1) / count  # (B, C, *S)
    variance = ((filled - mean.unsqueeze(1)).pow(2) * mask).sum(dim=1) / count  # (B, C, *S)
    return torch.cat([mean, variance], dim=1)  # (B, 2C, *S)


FUSIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "concat": concat_fusion,
    "hemis": hemis_fusion,
}

# Channels of the fused tensor for N modalities of C channels each, per fusion.
_FUSED_CHANNELS: dict[str, Callable[[int, int], int]] = {
    "concat": lambda n, c: n * c,
    "hemis": lambda n, c: 2 * c,
}


def fused_channels(fusion: str, num_modalities: int, channels: int) -> int:
    """Channels the decoder receives from ``fusion`` (networks size their decoder input with this)."""
    if fusion not in _FUSED_CHANNELS:
        raise ValueError(f"fusion must be one of {sorted(_FUSED_CHANNELS)}, got {fusion!r}")
    return _FUSED_CHANNELS[fusion](num_modalities, channels)


@dataclass
class ModelOutput:
    """What a forward pass returns.

    Attributes:
        prediction: the decoder's output (logits), ``[B, ...]``.
        features: ``[B, N, *F]`` features at the distillation level, before
            filling (entries of missing modalities are zero).
        levels: every encoder level, each ``[B, N, *F_l]``, before filling.
        extras: what a variant model adds (ShaSpec: shared and specific
            features, domain logits), by name; empty for the MCKD model.
    """

    prediction: torch.Tensor
    features: torch.Tensor
    levels: list[torch.Tensor]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class MultiModalModel(nn.Module):
    """Encoders + Eq. 2 filling + fusion + decoder, for any number of modalities.

    Args:
        modalities: names in the fixed order of ``inputs`` (length N).
        encoder: one module shared by all modalities (inputs of the same shape),
            or a mapping from each modality name to its own encoder. Each maps
            ``[P, *X]`` to ``[P, *F]`` or to a list of per-level tensors.
        decoder: maps the fused features (a tensor, or a list when the encoder
            returns levels) to the prediction.
        fill: ``"mean"`` (Eq. 2) or ``"zero"``.
        fusion: ``"concat"`` (Eq. 3), ``"hemis"`` (mean and variance over the
            present modalities), or a key added to :data:`FUSIONS`.
        distill_level: which encoder level the distillation uses (default -1, the last).
    """

    def __init__(
        self,
        modalities: Sequence[str],
        encoder: nn.Module | Mapping[str, nn.Module],
        decoder: nn.Module,
        fill: str = "mean",
        fusion: str = "concat",
        distill_level: int = -1,
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {sorted(FILLS)}, got {fill!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {sorted(FUSIONS)}, got {fusion!r}")
        if isinstance(encoder, Mapping):
            missing = set(self.modalities) - set(encoder)
            extra = set(encoder) - set(self.modalities)
            if missing or extra:
                raise ValueError(
                    f"encoders are named {sorted(encoder)}; expected exactly {list(self.modalities)}"
                )
            self.encoders = nn.ModuleDict({m: encoder[m] for m in self.modalities})
            self.shared_encoder = None
        else:
            self.encoders = None
            self.shared_encoder = encoder
        self.decoder = decoder
        self.fill = fill
        self.fusion = fusion
        self.distill_level = distill_level

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def _check(self, inputs: Sequence[torch.Tensor], present: torch.Tensor) -> None:
        n = self.num_modalities
        if len(inputs) != n:
            raise ValueError(f"expected {n} inputs ({', '.join(self.modalities)}), got {len(inputs)}")
        if present.dim() != 2 or present.shape[1] != n:
            raise ValueError(f"present must be bool [B, {n}], got shape {tuple(present.shape)}")
        empty = ~present.to(torch.bool).any(dim=1)  # (B,)
        if bool(empty.any()):  # with zero filling or HeMIS fusion such a sample would pass silently
            raise MissingModalityError(
                f"sample(s) {empty.nonzero().flatten().tolist()[:5]} of the batch have no modality present; "
                f"every sample needs at least one of {list(self.modalities)}"
            )

    def encode(self, inputs: Sequence[torch.Tensor], present: torch.Tensor) -> list[torch.Tensor]:
        """Encode the present modalities only.

        Args:
            inputs: N tensors, each ``[B, *X_n]``; rows of missing modalities are not read.
            present: bool ``[B, N]``.

        Returns:
            One tensor per encoder level, each ``[B, N, *F_l]``, zero where missing.
        """
        self._check(inputs, present)
        present = present.to(torch.bool)
        batch = present.shape[0]
        if self.shared_encoder is not None:
            stacked = torch.stack(list(inputs), dim=1)  # (B, N, *X)
            gathered = stacked[present]  # (P, *X): only the present pairs
            levels = _as_levels(self.shared_encoder(gathered))
            out = []
            for level in levels:  # level: (P, *F)
                full = level.new_zeros((batch, self.num_modalities) + tuple(level.shape[1:]))
                full[present] = level  # (B, N, *F)
                out.append(full)
            return out
        per_modality: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        for n, name in enumerate(self.modalities):
            rows = present[:, n].nonzero(as_tuple=True)[0]  # (P_n,)
            if rows.numel() > 0:
                per_modality[n] = (rows, _as_levels(self.encoders[name](inputs[n][rows])))
        if not per_modality:
            raise MissingModalityError("encode: no modality is present in any sample")
        template = next(iter(per_modality.values()))[1]
        out = [t.new_zeros((batch, self.num_modalities) + tuple(t.shape[1:])) for t in template]
        for n, (rows, levels) in per_modality.items():
            for full, level in zip(out, levels):
                if level.shape[1:] != full.shape[2:]:
                    raise ValueError(
                        f"encoder of {self.modalities[n]!r} gives features {tuple(level.shape[1:])}; "
                        f"another gives {tuple(full.shape[2:])}: all must project to one shape"
                    )
                full[rows, n] = level  # (P_n, *F) into (B, N, *F)
        return out

    def fuse(
        self,
        levels: list[torch.Tensor],
        present: torch.Tensor,
        feature_scale: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Fill missing features (Eq. 2), optionally scale by ``w``, and fuse.

        Args:
            levels: each ``[B, N, *F_l]``.
            present: bool ``[B, N]``.
            feature_scale: optional ``[N]``; the meta step passes the normalised
                importance weights here, giving ``D(concat_i w_i * f_i)``.

        Returns:
            One fused tensor per level, ``[B, fused_channels(fusion, N, C_l), *S_l]``.
        """
        fill = FILLS[self.fill]
        fuse = FUSIONS[self.fusion]
        fused = []
        for level in levels:
            filled = fill(level, present)  # (B, N, *F)
            if feature_scale is not None:
                shape = (1, self.num_modalities) + (1,) * (filled.dim() - 2)
                filled = filled * feature_scale.reshape(shape).to(filled.dtype)
            fused.append(fuse(filled, present))
        return fused

    def decode(self, fused: list[torch.Tensor]) -> torch.Tensor:
        """Run the decoder on one fused tensor, or on the list of levels."""
        return self.decoder(fused[0] if len(fused) == 1 else fused)

    def forward(
        self,
        inputs: Sequence[torch.Tensor],
        present: torch.Tensor,
        feature_scale: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Full forward pass; see :class:`ModelOutput` for the shapes."""
        levels = self.encode(inputs, present)
        prediction = self.decode(self.fuse(levels, present, feature_scale))
        return ModelOutput(prediction=prediction, features=levels[self.distill_level], levels=levels)


def _as_levels(encoded: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [encoded] if isinstance(encoded, torch.Tensor) else list(encoded)
