"""LCKD, the authors' earlier method (Wang et al., MICCAI 2023), as a peer of MCKD.

"Learnable cross-modal knowledge distillation": every so many iterations the
modality that scores best *alone* on the validation split is elected teacher,
and an unweighted distillation pulls every other present modality's features
towards the teacher's (the teacher side detached):

    l_lckd = (1 / B) * sum_b sum_{j != t, t and j present in b} l_ckd(f_bt, f_bj)

It replaces MCKD's weighted all-pairs term (``method.distill: teacher``); the
importance weights play no part. The election itself needs the task's metric
and the validation data, so :mod:`mckd.variants` runs it in the training loop
and hands the scores to :func:`elect_teacher`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mckd.method.distill import pairwise_feature_distance


def elect_teacher(scores: Sequence[float], higher_is_better: bool = True) -> int:
    """The index of the best single-modality score (the first one on ties)."""
    if not scores:
        raise ValueError("elect_teacher: no scores")
    values = [float(s) if higher_is_better else -float(s) for s in scores]
    return max(range(len(values)), key=lambda n: (values[n], -n))


def teacher_distillation_loss(
    features: torch.Tensor,
    present: torch.Tensor,
    teacher: int,
    p: int = 1,
    reduction: str = "mean",
) -> torch.Tensor:
    """Unweighted distillation from modality ``teacher`` to every other present modality.

    Args:
        features: ``[B, N, *F]`` at the distillation level, before filling.
        present: bool ``[B, N]``.
        teacher: index of the teacher modality.
        p, reduction: the distance (see :func:`mckd.method.distill.pairwise_feature_distance`).

    Returns:
        A scalar, summed over students and averaged over the batch; zero for
        samples without the teacher. Only the students receive a gradient.
    """
    batch, n = present.shape
    if not 0 <= teacher < n:
        raise ValueError(f"teacher must be a modality index in [0, {n}), got {teacher}")
    dtype = torch.promote_types(features.dtype, torch.float32)
    with torch.autocast(device_type=features.device.type, enabled=False):
        distance = pairwise_feature_distance(features.to(dtype), p=p, reduction=reduction)[:, teacher]  # (B, N)
        pair = present & present[:, teacher : teacher + 1]  # (B, N): teacher and student both present
        pair[:, teacher] = False
        return (distance * pair.to(dtype)).sum() / max(batch, 1)
