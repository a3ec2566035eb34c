"""Scores on the meta-validation split while training: what validation records and what a method may ask for."""

from __future__ import annotations

from typing import Any, Callable

import torch

from mckd.build import Experiment
from mckd.checkpoint import rng_state_tensors, set_rng_state_tensors
from mckd.evaluation import evaluate_subsets
from mckd.method.base import MethodServices


def validation_scores(experiment: Experiment, device: torch.device, batch_size: int) -> dict[str, float]:
    """The task's primary metric on the meta-validation split: every modality present (``all``) and each alone.

    The training's random streams are saved and restored around it, so a run
    with validation follows the same path as one without. Keys:
    ``<metric>_all``, ``<metric>_<modality>`` and ``score`` (their mean, what
    ``train.save_best`` selects on); a subset that no validation sample has
    (real missingness) has no key and is left out of ``score``.
    """
    model, task, bundle = experiment.model, experiment.task, experiment.bundle
    modalities = tuple(bundle.modalities)
    subsets = [modalities, *((m,) for m in modalities)] if len(modalities) > 1 else [modalities]
    rng = rng_state_tensors(device)
    was_training = model.training
    try:
        rows = evaluate_subsets(model, task, bundle.val, batch_size, device, subsets=subsets)
    finally:
        model.train(was_training)
        set_rng_state_tensors(rng, device)
    metric = task.primary_metric
    scores = {f"{metric}_{'all' if len(s) == len(modalities) else s[0]}": float(row[metric])
              for s, row in zip(subsets, rows) if row.get(metric) is not None}  # None: no sample has the subset
    values = list(scores.values())
    scores["score"] = sum(values) / len(values) if values else float("nan")
    return scores


def method_services(experiment: Experiment, device: torch.device, record: Callable[[dict[str, Any]], None],
                    optimizer: torch.optim.Optimizer, total_iterations: int = 0) -> MethodServices:
    """What the loop lends the training method: the task loss, single-modality scores on validation, the log,
    the model's optimiser and the run's number of iterations."""
    model, task, bundle = experiment.model, experiment.task, experiment.bundle

    def score_each_modality() -> list[float]:
        was_training = model.training
        rows = evaluate_subsets(model, task, bundle.val, experiment.config.eval.batch_size, device,
                                subsets=[(m,) for m in bundle.modalities])
        model.train(was_training)
        worst = float("-inf") if task.higher_is_better[task.primary_metric] else float("inf")
        # None: no validation sample has the modality (or the metric is undefined there): it cannot be elected
        return [worst if row.get(task.primary_metric) is None else float(row[task.primary_metric]) for row in rows]

    return MethodServices(task_loss=task.loss, score_each_modality=score_each_modality,
                          higher_is_better=task.higher_is_better[task.primary_metric], record=record,
                          model_optimizer=optimizer, total_iterations=total_iterations)
