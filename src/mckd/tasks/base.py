"""The interface every task implements, and what a dataset tells a task."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, Sequence

import torch

from mckd import distributed
from mckd.errors import ConfigError

Forward = Callable[[Sequence[torch.Tensor], torch.Tensor], torch.Tensor]

# Facts a dataset states about its data for the task (``DataBundle.facts``): ``num_classes`` always,
# ``target`` (``class``, the default: one label per sample; ``label_map``: a label per voxel);
# segmentation data add ``roi`` (the training crop, [X, Y, Z] voxels), ``spacing`` (mm per voxel of
# the grid the model sees) and ``downsample`` (voxels of the original grid per voxel of that grid).
Facts = Mapping[str, Any]


def require_target(task: str, facts: Facts, expected: str) -> None:
    """A :class:`ConfigError` when the dataset's targets are not what ``task`` predicts."""
    found = facts.get("target", "class")
    if found != expected:
        words = {"class": "one class label per sample", "label_map": "a label map per sample"}
        raise ConfigError(f"task.name {task!r} predicts {words.get(expected, expected)}, but the dataset has "
                          f"{words.get(found, found)}; choose the task that fits the data")


class Task(Protocol):
    """A task: its loss, its per-sample metrics, its inference, and what it declares once.

    Attributes:
        name: the registered name (``task.name``).
        num_outputs: channels of the model's output (classes, or segmentation channels).
        metric_names: names of the values :meth:`sample_metrics` returns.
        primary_metric: the one reported in summaries and compared between runs.
        higher_is_better: per metric name.
    """

    name: str
    num_outputs: int
    metric_names: tuple[str, ...]
    primary_metric: str
    higher_is_better: dict[str, bool]

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of a batch."""
        ...

    def sample_metrics(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample metric values, each ``[B]`` (averaged over samples by the evaluation)."""
        ...

    def infer(self, forward: Forward, inputs: Sequence[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """The prediction for evaluation (a sliding window for large volumes)."""
        ...

    def accumulator(self) -> "Accumulator":
        """A fresh accumulator of the task's metrics over a set of samples (one per evaluation row)."""
        ...


class Accumulator(Protocol):
    """The metrics of one evaluation row, fed batch by batch.

    ``compute`` gives every metric of the task; a metric that is undefined for
    the samples seen (AUROC over one class, anything over no sample) is
    ``None``, never NaN. Under torchrun every rank calls ``compute`` of the
    same accumulators in the same order (it reduces over ranks).
    """

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add the samples of a batch: the task's prediction and their targets."""
        ...

    def compute(self) -> dict[str, float | None]:
        ...


class MeanOfSampleMetrics:
    """The mean over samples of a task's per-sample metrics (``sample_metrics``); ``None`` when there is no sample."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.sums = torch.zeros(len(task.metric_names), dtype=torch.float64)
        self.count = 0

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        values = self.task.sample_metrics(prediction, target)
        self.sums += torch.stack([values[name].double().sum().cpu() for name in self.task.metric_names])
        self.count += int(target.shape[0])

    def compute(self) -> dict[str, float | None]:
        totals = distributed.all_reduce_sum(torch.cat([self.sums, torch.tensor([float(self.count)],
                                                                               dtype=torch.float64)]))
        count = float(totals[-1])
        if count == 0:
            return {name: None for name in self.task.metric_names}
        return {name: float(value) / count for name, value in zip(self.task.metric_names, totals[:-1].tolist())}
