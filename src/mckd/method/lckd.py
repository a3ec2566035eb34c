"""LCKD, the authors' earlier method (Wang et al., MICCAI 2023), as a peer of MCKD.

"Learnable cross-modal knowledge distillation": every so many iterations the
modality that scores best *alone* on the validation split is elected teacher,
and an unweighted distillation pulls every other present modality's features
towards the teacher's (the teacher side detached):

    l_lckd = (1 / B) * sum_b sum_{j != t, t and j present in b} l_ckd(f_bt, f_bj)

It replaces MCKD's weighted all-pairs term; there are no importance weights
and no meta step. The election needs the task's metric on the validation
data, which the training loop lends the method
(:attr:`mckd.method.base.MethodServices.score_each_modality`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import torch

from mckd.errors import ConfigError
from mckd.method.base import Batch, Term, TrainingMethod, register_training_method
from mckd.method.distill import pairwise_feature_distance
from mckd.method.model import ModelOutput


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


@dataclass
class LCKDOptions:
    """Options of the ``lckd`` method."""

    alpha: float = 0.1  # weight of the teacher-to-others distillation term
    p: int = 1  # distance: 1 (L1, LCKD's) or 2
    ckd_reduction: Literal["mean", "norm"] = "mean"  # per-element mean or the vector norm, as for MCKD
    teacher_every: int = 100  # iterations between elections of the best single modality on validation

    def validate(self, path: str) -> None:
        if self.alpha < 0:
            raise ConfigError(f"{path}.alpha must be >= 0, got {self.alpha}")
        if self.p not in (1, 2):
            raise ConfigError(f"{path}.p must be 1 or 2, got {self.p}")
        if self.teacher_every < 1:
            raise ConfigError(f"{path}.teacher_every must be >= 1, got {self.teacher_every}")


@register_training_method(LCKDOptions)
class LCKD(TrainingMethod):
    """The elected teacher's features pull every other present modality's (Wang et al., MICCAI 2023)."""

    name = "lckd"
    description = ("LCKD (Wang et al., 2023): every teacher_every iterations the best single modality on "
                   "validation becomes the teacher; unweighted distillation teacher -> others")

    def __init__(self, options: LCKDOptions, modalities: Sequence[str], seed: int) -> None:
        super().__init__(options, modalities, seed)
        self.teacher: int | None = None

    def setup(self, services: Any) -> None:
        super().setup(services)
        if self.options.alpha > 0 and self.teacher is None:  # a resumed run has its teacher already
            self.elect(0)

    def loss_term_names(self) -> tuple[str, ...]:
        return ("ckd",) if self.options.alpha > 0 else ()

    def loss_terms(self, output: ModelOutput, present: torch.Tensor,
                   weights: torch.Tensor | None = None, batch: Batch | None = None) -> dict[str, Term]:
        if self.options.alpha <= 0:
            return {}
        assert self.teacher is not None, "setup() elects the first teacher"
        ckd = teacher_distillation_loss(output.features, present, self.teacher, self.options.p,
                                        self.options.ckd_reduction)
        return {"ckd": Term(self.options.alpha, ckd)}

    def after_iteration(self, iteration: int) -> None:
        if self.teacher is not None and iteration % self.options.teacher_every == 0:
            self.elect(iteration)

    def elect(self, iteration: int) -> int:
        """Score each modality alone on the validation split; the best becomes the teacher (and is logged)."""
        assert self.services is not None, "setup() first"
        scores = self.services.score_each_modality()
        self.teacher = elect_teacher(scores, self.services.higher_is_better)
        self.services.record({"iteration": iteration, "kind": "teacher", "teacher": self.modalities[self.teacher],
                              "scores": dict(zip(self.modalities, scores))})
        return self.teacher

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.teacher = None if state["teacher"] is None else int(state["teacher"])
