"""What differs between tasks: the loss, the metrics, and how a prediction is made."""

from __future__ import annotations

from mckd.tasks.base import Task
from mckd.tasks.classification import ClassificationTask

__all__ = ["Task", "ClassificationTask", "build_task"]


def build_task(name: str, num_classes: int, **options: object) -> Task:
    """The task object for ``config.task`` (``num_classes``: classes or output channels).

    ``options`` come from the dataset (``bundle.info["task_options"]``), e.g. the
    segmentation head and sliding-window size of ``data.name: brats``.
    """
    if name == "classification":
        return ClassificationTask(num_classes)
    if name == "segmentation":
        from mckd.tasks.segmentation import SegmentationTask

        return SegmentationTask(num_classes, **options)  # type: ignore[arg-type]
    raise ValueError(f"unknown task {name!r}")
