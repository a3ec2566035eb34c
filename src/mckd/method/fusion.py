"""Filling missing features (Eq. 2) and fusing modalities (Eq. 3), as modules a config names.

Two steps sit between the encoders and the decoder of
:class:`mckd.method.model.MultiModalModel`, at every encoder level ``l``:

- a **fill** gives each missing modality a feature: ``[B, N, C_l, *S_l]`` ->
  ``[B, N, C_l, *S_l]`` (``mean``: Eq. 2; ``zero``);
- a **fusion** turns the N filled features into what the decoder reads:
  ``[B, N, C_l, *S_l]`` -> ``[B, C_out, *S_l]`` (``concat``: Eq. 3; ``hemis``).

Both see ``present`` (bool ``[B, N]``), so a learned step (a network that
generates a missing feature from the present ones, gates or attention across
modalities) is a module with parameters like any other part of the network:
it is saved with the model, moved to the device and trained. Each is
registered by name (:func:`register_fill`, :func:`register_fusion`) and
built with the number of modalities and the channels of every encoder level.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import torch
from torch import nn

from mckd.method.fill import fill_missing_features, zero_missing_features


class Fill(nn.Module):
    """Features for missing modalities at each encoder level.

    Args:
        num_modalities: N.
        channels: ``C_l`` of every encoder level (empty when the builder did not
            measure them; a fill with parameters then cannot be built).
    """

    description: ClassVar[str] = ""

    def __init__(self, num_modalities: int, channels: Sequence[int] = ()) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.channels = tuple(channels)

    def forward(self, features: torch.Tensor, present: torch.Tensor, level: int) -> torch.Tensor:
        """``features`` ``[B, N, *F]`` (missing entries zero) -> ``[B, N, *F]`` with missing entries filled."""
        raise NotImplementedError


class Fusion(nn.Module):
    """The decoder's input at each encoder level, from the filled features of the N modalities.

    Args: as :class:`Fill`.
    """

    description: ClassVar[str] = ""

    def __init__(self, num_modalities: int, channels: Sequence[int] = ()) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.channels = tuple(channels)

    @classmethod
    def output_channels(cls, num_modalities: int, channels: int) -> int:
        """Channels of the fused tensor for N modalities of ``channels`` each (networks size their decoder by it)."""
        raise NotImplementedError

    def forward(self, filled: torch.Tensor, present: torch.Tensor, level: int) -> torch.Tensor:
        """``filled`` ``[B, N, C, *S]`` -> ``[B, output_channels(N, C), *S]``."""
        raise NotImplementedError


FILLS: dict[str, type[Fill]] = {}
FUSIONS: dict[str, type[Fusion]] = {}


def _registrar(table: dict[str, type], kind: str) -> Callable[[str], Callable[[type], type]]:
    def register(name: str) -> Callable[[type], type]:
        def decorate(cls: type) -> type:
            if name in table:
                raise ValueError(f"{kind} {name!r} is registered twice")
            table[name] = cls
            return cls

        return decorate

    return register


register_fill = _registrar(FILLS, "fill")
register_fill.__doc__ = "Class decorator: a :class:`Fill` under ``model.fill: name``."
register_fusion = _registrar(FUSIONS, "fusion")
register_fusion.__doc__ = "Class decorator: a :class:`Fusion` under ``model.fusion: name``."


@register_fill("mean")
class MeanFill(Fill):
    description = "a missing modality's feature is the mean of the present ones of the sample (Eq. 2)"

    def forward(self, features: torch.Tensor, present: torch.Tensor, level: int) -> torch.Tensor:
        return fill_missing_features(features, present)


@register_fill("zero")
class ZeroFill(Fill):
    description = "a missing modality's feature is zero"

    def forward(self, features: torch.Tensor, present: torch.Tensor, level: int) -> torch.Tensor:
        return zero_missing_features(features, present)


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


@register_fusion("concat")
class ConcatFusion(Fusion):
    description = "concatenation of the N modalities' features along channels (Eq. 3)"

    @classmethod
    def output_channels(cls, num_modalities: int, channels: int) -> int:
        return num_modalities * channels

    def forward(self, filled: torch.Tensor, present: torch.Tensor, level: int) -> torch.Tensor:
        return concat_fusion(filled, present)


@register_fusion("hemis")
class HemisFusion(Fusion):
    description = "HeMIS: mean and variance over the present modalities (Havaei et al., 2016)"

    @classmethod
    def output_channels(cls, num_modalities: int, channels: int) -> int:
        return 2 * channels

    def forward(self, filled: torch.Tensor, present: torch.Tensor, level: int) -> torch.Tensor:
        return hemis_fusion(filled, present)


def fused_channels(fusion: str, num_modalities: int, channels: int) -> int:
    """Channels the decoder receives from fusion ``fusion`` (networks size their decoder input with this)."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {sorted(FUSIONS)}, got {fusion!r}")
    return FUSIONS[fusion].output_channels(num_modalities, channels)
