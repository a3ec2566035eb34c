"""Classification: cross-entropy loss and accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.nn import functional as F

from mckd.registry import register_task
from mckd.tasks.base import Facts, Forward, require_target


@dataclass
class ClassificationOptions:
    """Options of the ``classification`` task."""

    @property
    def primary_metric(self) -> str:
        """The metric summaries report and comparisons test."""
        return "accuracy"


class ClassificationTask:
    """Logits ``[B, C]`` against integer labels ``[B]``."""

    name = "classification"
    metric_names = ("accuracy",)
    primary_metric = "accuracy"
    higher_is_better = {"accuracy": True}

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.num_outputs = num_classes

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy; computed in float32 under autocast."""
        return F.cross_entropy(prediction.float(), target)

    def sample_metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``accuracy``: 1.0 where the arg-max class is the label, else 0.0, ``[B]``."""
        return {"accuracy": (prediction.argmax(dim=1) == target).float()}

    def infer(self, forward: Forward, inputs: Sequence[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        return forward(inputs, present)


@register_task("classification", ClassificationOptions, "one label per sample: cross-entropy, accuracy")
def build_classification(options: ClassificationOptions, facts: Facts) -> ClassificationTask:
    require_target("classification", facts, "class")
    return ClassificationTask(int(facts["num_classes"]))
