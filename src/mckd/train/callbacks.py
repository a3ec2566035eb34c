"""What runs after every iteration: your callbacks and the loop's own behaviours, each with its own state.

A :class:`Callback` is called after each inner iteration (and its meta
step) with the 1-based iteration and the run's experiment; its
``state_dict`` is kept in the checkpoint under its ``name``, so a resumed run
continues it. The loop's built-in behaviours are callbacks too, called after
yours, in this order:

- :class:`ProgressCallback`: the progress bar (or plain lines) and the
  latest losses and validation score beside it;
- :class:`LossRecords`: a ``train`` record of the mean losses every
  ``train.log_every`` iterations;
- :class:`Validation`: the primary metric on the meta-validation split every
  ``train.eval_every`` iterations, and ``checkpoint_best.safetensors``
  (``train.save_best``); its state is the best score so far.

:class:`DivergenceGuard` notes non-finite losses without waiting for the
device and is consulted before a record, a validation or a checkpoint.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from mckd import distributed
from mckd.build import Experiment
from mckd.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from mckd.config import Config
from mckd.errors import TrainingDiverged
from mckd.progress import Progress
from mckd.rundir import RunDir
from mckd.train.metrics import MetricsLog
from mckd.train.state import checkpoint_metadata
from mckd.train.validation import validation_scores


class Callback:
    """Something that runs after every inner iteration, with state kept in the checkpoint.

    Subclass it and override :meth:`on_iteration_end`; a callback with state
    returns it from :meth:`state_dict` (tensors and plain values), so a resumed
    run continues it. ``name`` keys its state in the checkpoint.
    """

    name: str = "callback"

    def on_iteration_end(self, iteration: int, experiment: Experiment) -> None:
        """Called with the 1-based iteration just finished and the run's experiment."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class DivergenceGuard(Callback):
    """Notes, on the device and without waiting for it, the first iteration whose losses or weights are not finite.

    :meth:`check` reads it (one synchronisation) where the loop would act on a
    diverged state: before a loss record, a validation, a checkpoint.
    Parameters are checked before every checkpoint too, so a checkpoint never
    holds a NaN. ``kept``: says what was kept (the staging knows whether a
    finite checkpoint is on disk).
    """

    name = "divergence_guard"

    def __init__(self, device: torch.device, model: torch.nn.Module, log: MetricsLog, config: Config,
                 total: int, kept: Callable[[], str], optimizers: Sequence[torch.optim.Optimizer] = ()) -> None:
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)
        self.model, self.log, self.config, self.total, self.kept = model, log, config, total, kept
        self.optimizers = list(optimizers)

    def note(self, iteration: int, values: Sequence[torch.Tensor]) -> None:
        finite = torch.stack([v.detach().float().isfinite().all() for v in values]).all()
        first = torch.full_like(self.first_bad, iteration)
        self.first_bad = torch.where(finite | (self.first_bad > 0), self.first_bad, first)

    def first_nonfinite(self) -> int:
        """The first iteration (1-based) with a non-finite loss or weight on any rank; 0 when none."""
        return int(distributed.all_reduce_max(self.first_bad).item())

    def check(self, where: str, iteration: int) -> None:
        """Raise :class:`TrainingDiverged` if anything became non-finite (``where``: record, validation, checkpoint)."""
        first = self.first_nonfinite()
        if first == 0 and where == "checkpoint" and not finite_parameters(self.model, self.optimizers):
            first = iteration
        if not first:
            return
        losses = self.log.mean_losses()
        logged = dict(zip(self.log.loss_names, self.log.counts))  # a loss not logged since the last record is NaN
        bad = [name for name, value in losses.items() if logged.get(name) and not math.isfinite(value)]
        what = (f"the {' and '.join(bad)} loss{'es' if len(bad) > 1 else ''}" if bad
                else "the importance weights, the model's parameters or the optimiser's state")
        settings = self.config.train
        raise TrainingDiverged(
            f"training diverged: {what} became NaN or infinite by iteration {first} of {self.total} (train.lr "
            f"{settings.lr:g}, method options {short_options(self.config)}); {self.kept()}; lower train.lr (or "
            "method.meta_lr) and train again")


def finite_parameters(model: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer] = ()) -> bool:
    """Whether every parameter of ``model`` and every floating state of ``optimizers`` is finite on every rank."""
    params = [p.detach() for p in model.parameters()]
    for optimizer in optimizers:  # its moments go into the checkpoint too (a huge weight decay overflows them)
        params += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.is_floating_point()]
    finite = bool(torch.stack([p.isfinite().all() for p in params]).all()) if params else True
    return not distributed.any_rank(not finite)


def short_options(config: Config) -> str:
    """The method's numeric options, for a divergence message (``meta_lr 0.01, alpha 0.1``)."""
    import dataclasses

    options = getattr(config.method, "options", None)
    if options is None or not dataclasses.is_dataclass(options):
        return "none"
    numbers = [f"{f.name} {getattr(options, f.name):g}" for f in dataclasses.fields(options)
               if isinstance(getattr(options, f.name), float)]
    return ", ".join(numbers) or "none"


class ProgressCallback(Callback):
    """The progress bar (a terminal) or plain lines (a pipe, a log), with the latest losses and score beside it."""

    name = "progress"

    def __init__(self, total: int, seed: int, initial: int, enabled: bool) -> None:
        self.bar = Progress(total, f"train seed {seed}", initial=initial, enabled=enabled)
        self.shown: dict[str, Any] = {}

    def on_iteration_end(self, iteration: int, experiment: Experiment) -> None:
        self.bar.update()

    def show(self, values: Mapping[str, Any], replace_losses: bool = False) -> None:
        """Show ``values`` beside the bar; ``replace_losses``: the losses shown are exactly these (a loss of an
        optimiser that did not step since the last record is not shown as if it had)."""
        if replace_losses:
            self.shown = {k: v for k, v in self.shown.items() if not k.endswith("_loss")}
        self.shown.update(values)
        self.bar.set_postfix(self.shown)

    def close(self) -> None:
        self.bar.close()


class LossRecords(Callback):
    """A ``train`` record of the mean losses every ``train.log_every`` iterations and at the last one.

    ``lr``: the learning rate the last step used (the first optimiser's).
    """

    name = "loss_records"

    def __init__(self, log: MetricsLog, guard: DivergenceGuard, progress: ProgressCallback, log_every: int,
                 total: int, per_epoch: int, start_iteration: int, lr: Callable[[], float]) -> None:
        self.log, self.guard, self.progress, self.lr = log, guard, progress, lr
        self.log_every, self.total, self.per_epoch = log_every, total, per_epoch
        self.start = self.last_time = time.perf_counter()
        self.last_iteration = start_iteration

    def on_iteration_end(self, iteration: int, experiment: Experiment) -> None:
        if iteration % self.log_every and iteration != self.total:
            return
        self.guard.check("record", iteration)
        now = time.perf_counter()
        rate = (iteration - self.last_iteration) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_iteration = now, iteration
        means = self.log.write_train_record(iteration, iteration / self.per_epoch, self.lr(), now - self.start,
                                            experiment.bundle.modalities, rate)
        self.progress.show({f"{name}_loss": value for name, value in means.items()}, replace_losses=True)


class Validation(Callback):
    """The primary metric on the meta-validation split every ``train.eval_every`` iterations; the best model.

    Writes a ``val`` record (with ``best``: whether it improved) and, with
    ``train.save_best``, ``checkpoint_best.safetensors`` (rank 0). State: the
    best score and its iteration.
    """

    name = "validation"

    def __init__(self, experiment: Experiment, device: torch.device, log: MetricsLog, guard: DivergenceGuard,
                 progress: ProgressCallback, total: int, run: RunDir, is_main: bool) -> None:
        self.experiment, self.device, self.log, self.guard, self.progress = experiment, device, log, guard, progress
        self.run, self.is_main = run, is_main  # run: where the run is now (staged until its first checkpoint)
        settings = experiment.config.train
        self.every, self.save_best, self.total = settings.eval_every, settings.save_best, total
        self.best_score: float | None = None
        self.best_iteration = 0

    def on_iteration_end(self, iteration: int, experiment: Experiment) -> None:
        if not self.every or (iteration % self.every and iteration != self.total):
            return
        self.guard.check("validation", iteration)
        task = experiment.task
        scores = validation_scores(experiment, self.device, experiment.config.eval.batch_size)
        higher = task.higher_is_better[task.primary_metric]
        improved = math.isfinite(scores["score"]) and (
            self.best_score is None or (scores["score"] > self.best_score if higher else scores["score"] < self.best_score))
        if improved:
            self.best_score, self.best_iteration = scores["score"], iteration
            if self.save_best and self.is_main:
                save_best_model(self.run.best_checkpoint, experiment, iteration, scores)
        self.log.record({"iteration": iteration, "kind": "val", **scores, "best": bool(improved)})
        if f"{task.primary_metric}_all" in scores:
            self.progress.show({f"val_{task.primary_metric}": scores[f"{task.primary_metric}_all"]})

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_iteration": self.best_iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_score = state.get("best_score")
        self.best_iteration = int(state.get("best_iteration", 0))


def save_best_model(path: Path, experiment: Experiment, iteration: int, scores: Mapping[str, float]) -> None:
    """``checkpoint_best.safetensors``: the model only, with its config, selected on the validation split."""
    metadata = {**checkpoint_metadata(experiment, complete=True), "format": CHECKPOINT_FORMAT,
                "iteration": iteration, "selected_on": "validation", "validation": dict(scores)}
    save_checkpoint(path, {f"model.{key}": value for key, value in experiment.model.state_dict().items()}, metadata)
