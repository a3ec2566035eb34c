"""The importance weight vector (IWV), Eq. 6 of the paper.

A raw, learnable vector ``w`` in R^N, one entry per modality, initialised at
random, and a normalisation that turns it into non-negative importances:

- ``softmax`` (the paper's choice): ``w_i = exp(v_i) / sum_j exp(v_j)``;
- ``sigmoid``: ``w_i = 1 / (1 + exp(-v_i))``;
- ``relu``: ``w_i = max(v_i, 0) + eps`` (``eps`` keeps the ratio w_i / w_j finite).

Only the meta step (:func:`mckd.method.meta.meta_step`) changes ``w``; the
inner training step reads it, detached, to weight the distillation pairs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Normalisation = Literal["softmax", "sigmoid", "relu"]
NORMALISATIONS: tuple[str, ...] = ("softmax", "sigmoid", "relu")

# Added to ReLU-normalised weights so that w_i / w_j never divides by zero.
RELU_EPS = 1e-6


class ImportanceWeights(nn.Module):
    """Learnable importance of each modality.

    Args:
        modalities: modality names, in the model's fixed order (length N).
        normalisation: ``"softmax"`` (default), ``"sigmoid"`` or ``"relu"``.
        generator: optional RNG for the random initialisation, for reproducibility.

    The raw parameter ``raw`` has shape ``[N]`` and starts as uniform random
    values in [0, 1) (the authors' code), so no modality is favoured at start.
    Calling the module returns the normalised weights, shape ``[N]``.
    """

    def __init__(
        self,
        modalities: list[str] | tuple[str, ...],
        normalisation: str = "softmax",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
        if len(modalities) < 1:
            raise ValueError("ImportanceWeights needs at least one modality")
        self.modalities = tuple(modalities)
        self.normalisation = normalisation
        self.raw = nn.Parameter(torch.rand(len(modalities), generator=generator))  # (N,)

    def forward(self) -> torch.Tensor:
        """Return the normalised weights, shape ``[N]``."""
        if self.normalisation == "softmax":
            return torch.softmax(self.raw, dim=0)
        if self.normalisation == "sigmoid":
            return torch.sigmoid(self.raw)
        return torch.relu(self.raw) + RELU_EPS

    def as_dict(self) -> dict[str, float]:
        """Normalised weights by modality name (synchronises with the device)."""
        values = self().detach().cpu().tolist()
        return dict(zip(self.modalities, values))
