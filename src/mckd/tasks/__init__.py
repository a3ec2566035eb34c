"""What differs between tasks: the loss, the metrics, and how a prediction is made."""

from __future__ import annotations

from mckd.tasks.base import Task
from mckd.tasks.classification import ClassificationTask

__all__ = ["Task", "ClassificationTask", "build_task"]


def build_task(name: str, num_classes: int) -> Task:
    """The task object for ``config.task`` (``num_classes``: classes or output channels)."""
    if name == "classification":
        return ClassificationTask(num_classes)
    raise ValueError(f"unknown task {name!r}")
