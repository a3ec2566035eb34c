"""The interface every task implements."""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch

Forward = Callable[[Sequence[torch.Tensor], torch.Tensor], torch.Tensor]


class Task(Protocol):
    """A task: its loss, its per-sample metrics and its inference.

    Attributes:
        metric_names: names of the values :meth:`sample_metrics` returns.
        primary_metric: the one reported in summaries and compared between runs.
        higher_is_better: per metric name.
    """

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
