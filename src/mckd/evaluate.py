"""Evaluation over every non-empty subset of present modalities (2^N - 1 rows)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader

from mckd import distributed
from mckd.build import Experiment, build_experiment, resolve_device
from mckd.checkpoint import load_checkpoint, load_state_into
from mckd.config import config_from_dict
from mckd.data.bundle import move_batch
from mckd.errors import DataError, MckdError
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


def load_run(run_dir: str | Path, device: str = "cpu") -> Experiment:
    """Rebuild a run's experiment from its checkpoint (config inside it) and load the weights."""
    run_dir = Path(run_dir)
    path = run_dir / "checkpoint.safetensors"
    if not run_dir.is_dir():
        raise MckdError(f"run directory {str(run_dir)!r} does not exist")
    tensors, metadata = load_checkpoint(path)
    if "config" not in metadata:
        raise MckdError(f"checkpoint {str(path)!r} holds no config; it was not written by mckd train")
    config = config_from_dict(metadata["config"])
    config.train.device = device
    experiment = build_experiment(config)
    load_state_into(experiment.model, tensors, "model.", str(path))
    load_state_into(experiment.weights, tensors, "weights.", str(path))
    experiment.model.to(resolve_device(device))
    experiment.weights.to(resolve_device(device))
    return experiment


def evaluate_run(run_dir: str | Path, device: str = "auto") -> list[dict[str, Any]]:
    """Evaluate a trained run on its test split over every subset; write ``eval/subsets.{csv,md}``."""
    from mckd.report import write_table

    run_dir = Path(run_dir)
    device_obj = distributed.local_device(device)  # under torchrun: this rank's GPU
    experiment = load_run(run_dir, str(device_obj))
    split = experiment.config.eval.split
    dataset = experiment.bundle.test if split == "test" else experiment.bundle.val
    rows = evaluate_subsets(experiment.model, experiment.task, dataset, experiment.config.eval.batch_size, device_obj)
    if distributed.is_main():
        write_table(rows, run_dir / "eval" / "subsets", title=f"{run_dir.name}: {split} split, every subset")
        if hasattr(experiment.task, "write_report"):  # a task's own table (segmentation: the paper's Table 1)
            experiment.task.write_report(rows, run_dir / "eval" / "table", experiment.model.modalities)
    return rows
