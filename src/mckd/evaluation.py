"""Evaluation over every non-empty subset of present modalities (2^N - 1 rows).

Pure: a model, a task and a dataset in, rows of metrics out. Reading a run
directory and writing its tables is :mod:`mckd.runs`'s.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from mckd import distributed
from mckd.data.bundle import move_batch
from mckd.errors import DataError
from mckd.method.model import MultiModalModel
from mckd.tasks.base import Task

SUBSET_SEPARATOR = "+"


def all_subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, smallest first, in the modalities' order within a size."""
    return [
        combo
        for size in range(1, len(modalities) + 1)
        for combo in itertools.combinations(modalities, size)
    ]


def subset_name(subset: Sequence[str]) -> str:
    return SUBSET_SEPARATOR.join(subset)


@torch.no_grad()
def evaluate_subsets(
    model: MultiModalModel,
    task: Task,
    dataset: Any,
    batch_size: int,
    device: torch.device,
    subsets: Sequence[Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """The task's metrics, averaged over samples, for each subset of modalities.

    Each sample is evaluated with ``present = subset & what the sample has``;
    a sample left with nothing is an error (the subset is meaningless for it).

    Returns:
        One row per subset: ``subset`` (names joined by ``+``), ``size``, and
        each metric's mean over the samples.
    """
    if len(dataset) == 0:
        raise DataError("evaluation: the split to evaluate has no samples")  # a mean over nothing is not 0
    modalities = model.modalities
    subsets = list(subsets) if subsets is not None else all_subsets(modalities)
    masks = torch.tensor([[m in s for m in modalities] for s in subsets], dtype=torch.bool, device=device)  # (K, N)
    sums = torch.zeros(len(subsets), len(task.metric_names), dtype=torch.float64, device=device)
    counts = torch.zeros(len(subsets), dtype=torch.float64, device=device)
    model.eval()
    dataset = distributed.shard(dataset)  # under torchrun: this rank's samples; sums are added over ranks below
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        batch = move_batch(batch, device)
        for k in range(len(subsets)):
            present = batch["present"] & masks[k].unsqueeze(0)  # (B, N)
            if bool((present.sum(dim=1) == 0).any()):
                raise DataError(
                    f"evaluation: a sample has none of the modalities of subset {subset_name(subsets[k])!r}; "
                    "evaluate on complete data or choose subsets it has"
                )
            prediction = task.infer(lambda xs, pr: model(xs, pr).prediction, batch["inputs"], present)
            values = task.sample_metrics(prediction, batch["target"])
            sums[k] += torch.stack([values[name].double().sum() for name in task.metric_names])
            counts[k] += batch["target"].shape[0]
    sums, counts = distributed.all_reduce_sum(sums), distributed.all_reduce_sum(counts)
    means = (sums / counts.clamp(min=1).unsqueeze(1)).cpu().tolist()
    return [
        {"subset": subset_name(s), "size": len(s), **dict(zip(task.metric_names, row))}
        for s, row in zip(subsets, means)
    ]
