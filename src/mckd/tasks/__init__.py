"""What differs between tasks: the loss, the metrics, how a prediction is made, and their settings.

Each task is registered (:func:`mckd.registry.register_task`) with an options
dataclass, the ``task:`` section of a config; :func:`build_task` makes one
from that section and the facts a dataset states about its data.
"""

from __future__ import annotations

from typing import Any

from mckd.tasks.base import Facts, Task

__all__ = ["Facts", "Task", "build_task"]


def build_task(section: Any, facts: Facts) -> Task:
    """The task of ``config.task`` (a :class:`mckd.config.Section`) for data with ``facts``."""
    return section.component("task").build(section.options, facts)
