"""Classification: cross-entropy loss; accuracy, balanced accuracy, macro-F1 and AUROC.

Metrics are computed over the samples of an evaluation row by scikit-learn:

- ``accuracy``: the share of samples whose arg-max class is the label;
- ``balanced_accuracy``: the mean recall over the classes present among the
  labels (:func:`sklearn.metrics.balanced_accuracy_score`);
- ``macro_f1``: the unweighted mean F1 over the classes among labels and
  predictions (:func:`sklearn.metrics.f1_score`, ``average="macro"``);
- ``auroc``: binary, the area under the ROC curve of the positive class's
  probability; multi-class, the mean one-vs-rest AUROC over the classes
  present among the labels (:func:`sklearn.metrics.roc_auc_score`).
  Undefined (``None``, an empty cell in tables) when the row's labels hold
  fewer than two classes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from mckd import distributed
from mckd.registry import register_task
from mckd.tasks.base import Facts, Forward, require_target

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


@dataclass
class ClassificationOptions:
    """Options of the ``classification`` task."""

    primary_metric: Literal["accuracy", "balanced_accuracy", "macro_f1", "auroc"] = "accuracy"  # what summaries report and comparisons test


def auroc(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """AUROC of ``probabilities`` ``[S, C]`` against integer ``labels`` ``[S]``; None with fewer than two classes."""
    from sklearn.metrics import roc_auc_score

    present = np.unique(labels)
    if len(present) < 2:
        return None
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    scores = [roc_auc_score(labels == c, probabilities[:, c]) for c in present]  # one vs rest, classes seen
    return float(np.mean(scores))


class ClassificationMetrics:
    """The accumulator of one evaluation row: predicted probabilities and labels, then the four metrics."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.probabilities: list[torch.Tensor] = []
        self.predicted: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        self.probabilities.append(torch.softmax(prediction.float(), dim=1).cpu())  # (B, C)
        self.predicted.append(prediction.argmax(dim=1).cpu())  # (B,): from the logits, as sample_metrics
        self.labels.append(target.cpu())

    def compute(self) -> dict[str, float | None]:
        from sklearn.metrics import balanced_accuracy_score, f1_score

        def joined(parts: list[torch.Tensor], empty: torch.Tensor) -> "np.ndarray":
            return distributed.gather_rows(torch.cat(parts) if parts else empty).numpy()

        probabilities = joined(self.probabilities, torch.zeros(0, self.num_classes))
        predicted = joined(self.predicted, torch.zeros(0, dtype=torch.int64))
        labels = joined(self.labels, torch.zeros(0, dtype=torch.int64))
        if len(labels) == 0:
            return {name: None for name in METRICS}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "a single label was found": a row of one class is valid
            return {
                "accuracy": float((predicted == labels).mean()),
                "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
                "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
                "auroc": auroc(labels, probabilities),
            }


class ClassificationTask:
    """Logits ``[B, C]`` against integer labels ``[B]``."""

    name = "classification"
    metric_names = METRICS
    higher_is_better = {name: True for name in METRICS}

    def __init__(self, num_classes: int, primary_metric: str = "accuracy") -> None:
        self.num_classes = num_classes
        self.num_outputs = num_classes
        self.primary_metric = primary_metric

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy; computed in float32 under autocast."""
        return F.cross_entropy(prediction.float(), target)

    def sample_metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """``accuracy``: 1.0 where the arg-max class is the label, else 0.0, ``[B]``."""
        return {"accuracy": (prediction.argmax(dim=1) == target).float()}

    def accumulator(self) -> ClassificationMetrics:
        return ClassificationMetrics(self.num_classes)

    def infer(self, forward: Forward, inputs: Sequence[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        return forward(inputs, present)


@register_task("classification", ClassificationOptions,
               "one label per sample: cross-entropy; accuracy, balanced accuracy, macro-F1, AUROC")
def build_classification(options: ClassificationOptions, facts: Facts) -> ClassificationTask:
    require_target("classification", facts, "class")
    return ClassificationTask(int(facts["num_classes"]), options.primary_metric)
