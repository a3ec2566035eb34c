"""Features of missing modalities, Eq. 2 of the paper.

For a sample whose modality ``n`` is missing, ``f_n`` is the mean of the
features of the modalities present in that same sample. Present features are
kept as they are.
"""

from __future__ import annotations

import torch

from mckd.errors import MissingModalityError


def _expand_mask(present: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Reshape ``present`` [B, N] to broadcast against ``features`` [B, N, ...]."""
    if present.shape != features.shape[:2]:
        raise ValueError(
            f"present has shape {tuple(present.shape)} but features start with "
            f"{tuple(features.shape[:2])}; expected present [B, N] for features [B, N, ...]"
        )
    return present.reshape(present.shape + (1,) * (features.dim() - 2)).to(features.dtype)


def fill_missing_features(features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Replace each missing modality's features by the mean of the present ones (Eq. 2).

    Args:
        features: ``[B, N, *F]``, one feature tensor per sample and modality.
            Entries of missing modalities are ignored (they may hold anything finite).
        present: bool ``[B, N]``; every sample must have at least one ``True``.

    Returns:
        ``[B, N, *F]``: ``features`` where present, and for a missing modality of
        sample ``b`` the mean over the present modalities of sample ``b``.
    """
    mask = _expand_mask(present, features)  # (B, N, 1, ...)
    counts = mask.sum(dim=1, keepdim=True)  # (B, 1, 1, ...)
    if bool((counts == 0).any()):
        empty = (counts.flatten(start_dim=1)[:, 0] == 0).nonzero().flatten().tolist()
        raise MissingModalityError(
            f"fill_missing_features: sample(s) {empty[:5]} of the batch have no modality present; "
            "each sample needs at least one modality to fill the missing ones from"
        )
    kept = features * mask  # zeros where missing, so they drop out of the sum
    mean = kept.sum(dim=1, keepdim=True) / counts  # (B, 1, *F)
    return kept + (1 - mask) * mean


def zero_missing_features(features: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Replace each missing modality's features by zeros (the simplest baseline).

    Shapes as :func:`fill_missing_features`.
    """
    return features * _expand_mask(present, features)
