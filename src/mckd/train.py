"""The training loop: inner steps (Eq. 4 inner) and meta steps (Eq. 4 outer), as Algorithm 1 of the paper.

:func:`train` sets a run up from its config, then loops: draw a training
batch, drop modalities by the missing policy, take one inner step
(:func:`train_step`: ``l_task`` plus the training method's terms, MCKD's
``alpha * sum (w_i / w_j) l_ckd``), and when the method asks for it take its
meta step on a batch of the meta-validation split. Everything the loop
carries from one iteration to the next lives in a :class:`TrainingState`,
whose ``state_dict`` is the checkpoint: a stopped run continues exactly
(``train(..., resume=True)``), and SIGTERM or Ctrl-C stops the loop at the
end of an iteration and saves one. :class:`MetricsLog` writes
``metrics.jsonl``; :class:`Callback` objects run after every iteration and
keep their state in the checkpoint too.

The same loop runs in one process or in several started by ``torchrun``
(:mod:`mckd.distributed`): the model is wrapped in DistributedDataParallel,
each rank reads its share of both splits, the meta step's gradients are
averaged over ranks, logged losses are averaged over ranks, and rank 0 alone
writes files. ``train.precision`` turns on bf16 autocast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader

from mckd import distributed
from mckd.bounds import check_bound
from mckd.build import Experiment, build_experiment, seed_everything
from mckd.data.recorded_split import recorded_split
from mckd.checkpoint import (
    check_resume_point,
    flatten_state,
    load_checkpoint,
    load_state_into,
    referenced_tensors,
    rng_state_tensors,
    save_checkpoint,
    set_rng_state_tensors,
    unflatten_state,
)
from mckd.config import Config, TrainConfig, save_config
from mckd.data.bundle import complete_samples, move_batch
from mckd.data.missing import TrainingDrops, subset_mask
from mckd.errors import CheckpointError, MckdError, Stopped, TrainingDiverged
from mckd.evaluation import evaluate_subsets
from mckd.io import atomic_write_json, atomic_write_text, claim_output, temporary_name
from mckd.loggers import Logger, open_loggers
from mckd.progress import Progress
from mckd.method.base import MethodServices, TrainingMethod, combine
from mckd.runs import CHECKPOINT_FORMAT, RunDir
from mckd.tasks import Task


class TrainingInterrupted(Stopped):
    """SIGTERM or Ctrl-C stopped training; a checkpoint was saved at ``iteration``.

    ``when``: ``"training"`` (mid-run), ``"setup"`` (before the first
    iteration) or ``"end"`` (after the last one: the final checkpoint is
    saved, the evaluation was not run).
    """

    def __init__(self, run_dir: Path, iteration: int, signal_name: str, when: str = "training") -> None:
        signal_name = signal_name or "a signal"
        if when == "end":
            message = (f"{signal_name} arrived as training finished (iteration {iteration}); the final checkpoint is "
                       f"saved in {str(run_dir)!r}: write its tables with `mckd evaluate {run_dir}`")
        else:
            moment = "before the first iteration" if when == "setup" else f"at iteration {iteration}"
            message = (f"{signal_name} stopped training {moment}; checkpoint saved in {str(run_dir)!r}: "
                       f"continue with `mckd train --resume {run_dir}`")
        super().__init__(message)
        self.run_dir = run_dir
        self.iteration = iteration
        self.when = when


def make_optimizer(params: Any, train: TrainConfig) -> torch.optim.Optimizer:
    """The model's optimiser from ``train.*``."""
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(
        params, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov, weight_decay=train.weight_decay
    )


def lr_factor(iteration: int, total: int, per_epoch: int, train: TrainConfig) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based) of ``total``."""
    if train.schedule == "step":
        return train.gamma ** math.floor(iteration / max(1, round(train.step_epochs * per_epoch)))
    if train.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * iteration / total))
    if train.schedule == "poly":
        return (1.0 - iteration / total) ** train.poly_power
    return 1.0


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` on ``device``; ``None`` is full float32.

    ``auto`` is bf16 on a CUDA device that supports it and float32 elsewhere;
    ``bf16`` is honoured on the CPU too (slow there, but it tests the path).
    """
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


def autocast_context(precision: str, device: torch.device) -> Callable[[], Any]:
    """A factory of the autocast context of ``train.precision`` (a no-op context in float32)."""
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


class BatchStream:
    """Endless batches of one split for this rank, in an order a checkpoint can restore.

    Epoch ``e`` visits this rank's share of a permutation seeded by
    ``seed + e`` (:class:`mckd.distributed.ResumableDistributedSampler`); the
    position is ``(epoch, batches taken this epoch)``. The DataLoader has its
    own generator, so starting a pass never draws from the global torch RNG.

    Args:
        dataset: the split.
        batch_size: samples per batch on this rank (the global batch is
            ``batch_size x world_size``).
        seed: seed of the data order.
        context: this process's rank and device.
        num_workers: DataLoader worker processes (pinned memory on CUDA).
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int, context: distributed.Context, num_workers: int) -> None:
        num_workers = int(check_bound("num_workers", num_workers, "train.num_workers"))  # at most one per CPU
        self.sampler = distributed.ResumableDistributedSampler(dataset, context.world_size, context.rank, seed)
        per_rank = self.sampler.num_samples
        self.batch_size = min(batch_size, per_rank)
        drop_last = per_rank > batch_size
        self.batches_per_epoch = per_rank // self.batch_size if drop_last else math.ceil(per_rank / self.batch_size)
        self.loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=context.device.type == "cuda",
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
            worker_init_fn=distributed.ignore_stop_signals_in_worker if num_workers > 0 else None,
        )
        self.epoch = 0
        self.step = 0
        self._iterator: Iterator[Any] | None = None

    def _start_pass(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = self.step * self.batch_size
        self._iterator = iter(self.loader)

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._start_pass()
        try:
            batch = next(self._iterator)  # type: ignore[arg-type]
        except StopIteration:
            self.epoch, self.step = self.epoch + 1, 0
            self._start_pass()
            batch = next(self._iterator)  # type: ignore[arg-type]
        self.step += 1
        return batch

    def state(self) -> torch.Tensor:
        """``[epoch, batches taken this epoch]`` (int64)."""
        return torch.tensor([self.epoch, self.step], dtype=torch.int64)

    def load_state(self, state: torch.Tensor, saved_world_size: int, world_size: int) -> None:
        """Continue from :meth:`state`; with another number of processes, from the same sample count."""
        epoch, step = (int(v) for v in state.tolist())
        if saved_world_size != world_size:
            step = step * saved_world_size // world_size
        self.epoch, self.step, self._iterator = epoch, step, None


# --- one inner iteration -------------------------------------------------------------------------------


def train_step(
    model: torch.nn.Module,
    method: TrainingMethod,
    task: Task,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, Any],
    present: torch.Tensor,
    autocast: Callable[[], Any] = contextlib.nullcontext,
) -> dict[str, torch.Tensor]:
    """One inner iteration (Eq. 4 inner): forward, ``l_task + sum_k weight_k * term_k``, backward, one step.

    Args:
        model: the multi-modal model (or its DistributedDataParallel wrapper).
        method: the training method, whose :meth:`~mckd.method.base.TrainingMethod.loss_terms` are added.
        task: gives the task loss.
        optimizer: the model's optimiser.
        batch: ``inputs`` (N tensors ``[B, *X_n]``) and ``target`` on the model's device.
        present: bool ``[B, N]``, what each sample keeps in this iteration.
        autocast: a factory of the mixed-precision context (:func:`autocast_context`).

    Returns:
        The detached losses by name: ``task`` and each of the method's terms (unweighted).
    """
    with autocast():
        output = model(batch["inputs"], present)
        task_loss = task.loss(output.prediction, batch["target"])
        terms = method.loss_terms(output, present)  # float32 inside, even under autocast
        loss = combine(task_loss, terms)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"task": task_loss.detach(), **{name: term.value.detach() for name, term in terms.items()}}


# --- the metrics log ----------------------------------------------------------------------------------


class MetricsLog:
    """The run's training records (:mod:`mckd.loggers`), and the running sums of the losses between two of them.

    Records are one mapping each with a ``kind``: ``train`` (the mean of each
    loss since the last record, ``<name>_loss``, the learning rate, seconds,
    iterations per second), ``weights`` (the normalised importance weights
    after a meta step), ``val`` (validation scores) and whatever a method
    records (LCKD's ``teacher``). ``metrics.jsonl`` gets every record; the
    loggers of ``train.loggers`` (CSV, TensorBoard) too. The sums stay on the
    device; the log reads it once per record.

    Args:
        run_path: the run directory, or a function giving where it is now (it moves from its staging
            folder at the first checkpoint); None on ranks other than 0: nothing is written there.
        loss_names: the losses :func:`train_step` returns, in order.
        device: where the sums live.
        start_iteration: on resume, the checkpoint's iteration: later records
            (written after it by the stopped run) are dropped.
        pending_weights: iterations of weights records that the checkpoint
            still holds as pending (a stopped run may have written them).
        loggers: ``train.loggers``.
        resume: whether the run continues from a checkpoint.
    """

    def __init__(self, run_path: Path | Callable[[], Path] | None, loss_names: Sequence[str], device: torch.device,
                 start_iteration: int = 0, pending_weights: Sequence[int] = (), loggers: Sequence[str] = (),
                 resume: bool = False) -> None:
        self.loss_names = tuple(loss_names)
        self.sums = torch.zeros(len(self.loss_names), device=device)
        self.count = 0
        self.weight_history: list[tuple[int, torch.Tensor]] = []  # meta steps not yet written
        self.best_score: float | None = None  # the best validation score so far, and its iteration
        self.best_iteration = 0
        self.loggers: list[Logger] = []
        if run_path is not None:
            now = run_path() if callable(run_path) else run_path
            kept = kept_records(RunDir(now).metrics, start_iteration, set(pending_weights)) if resume else None
            self.loggers = open_loggers(run_path, loggers, kept, start_iteration)

    def record(self, entry: dict[str, Any]) -> None:
        """Write one record (rank 0)."""
        for logger in self.loggers:
            logger.write(entry)

    def add(self, losses: Mapping[str, torch.Tensor]) -> None:
        """Add one iteration's losses to the running sums (no device synchronisation)."""
        if len(losses) != len(self.loss_names) or any(name not in losses for name in self.loss_names):
            raise MckdError(f"the training step returned the losses {sorted(losses)}, but the method declares "
                            f"{list(self.loss_names)} (TrainingMethod.loss_term_names must list every term)")
        self.sums += torch.stack([losses[name].float() for name in self.loss_names])
        self.count += 1

    def note_weights(self, iteration: int, weights: torch.Tensor | None) -> None:
        """Keep the weights after a meta step, written with the next record (they stay on the device until then)."""
        if weights is not None:
            self.weight_history.append((iteration, weights.detach()))

    def mean_losses(self) -> dict[str, float]:
        """The mean of each loss since the last record, over ranks (reads the device)."""
        means = distributed.all_reduce_mean(self.sums / max(self.count, 1))
        return dict(zip(self.loss_names, means.tolist()))

    def write_train_record(self, iteration: int, epoch: float, lr: float, seconds: float,
                           modalities: Sequence[str], rate: float | None = None) -> dict[str, float]:
        """Write the pending weights and a ``train`` record of the means since the last one; reset the sums."""
        values = self.mean_losses()  # the one read of the device per record
        for step, weights in self.weight_history:
            self.record({"iteration": step, "kind": "weights", "weights": dict(zip(modalities, weights.tolist()))})
        self.weight_history.clear()
        entry = {"iteration": iteration, "epoch": epoch, "kind": "train",
                 **{f"{name}_loss": value for name, value in values.items()}, "lr": lr, "seconds": seconds}
        if rate is not None:
            entry["iterations_per_s"] = rate
        self.record(entry)
        self.sums.zero_()
        self.count = 0
        return values

    def flush(self) -> None:
        """Records are flushed as they are written (kept for callers of earlier versions)."""

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (this rank's sums are gathered separately, per rank)."""
        return {"names": list(self.loss_names), "count": self.count,
                "pending": [step for step, _ in self.weight_history],
                "pending_weights": [values for _, values in self.weight_history],
                "best_score": self.best_score, "best_iteration": self.best_iteration}

    def load_state_dict(self, state: Mapping[str, Any], sums: torch.Tensor) -> None:
        if list(state["names"]) != list(self.loss_names):
            raise CheckpointError(f"the checkpoint logged the losses {state['names']}, this run {list(self.loss_names)}")
        self.count = int(state["count"])
        self.sums.copy_(sums)
        self.weight_history[:] = [(int(step), values.to(self.sums.device))
                                  for step, values in zip(state["pending"], state["pending_weights"])]
        self.best_score = state.get("best_score")
        self.best_iteration = int(state.get("best_iteration", 0))


def kept_records(path: Path, start_iteration: int, pending: set[int]) -> list[str]:
    """The lines of a stopped run's ``metrics.jsonl`` that its checkpoint (at ``start_iteration``) had seen.

    A last line cut short (the process was killed while writing it) is dropped;
    any other line that is not a JSON record means the log was damaged, which
    is a :class:`~mckd.errors.CheckpointError` naming the line.
    """
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{str(path)!r} is not a text log (byte {error.start} is not UTF-8); it is damaged: "
                              "restore it, or train the run again with --force") from None
    except OSError as error:
        raise CheckpointError(f"cannot read {str(path)!r}: {error.strerror or error}") from None
    lines = text.split("\n")[:-1]  # the last piece: "" after a final newline, or a record a kill cut short
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("iteration", 0), int):
            shown = line if len(line) <= 60 else line[:60] + "..."
            raise CheckpointError(f"{str(path)!r} line {number} is not a JSON record with an integer iteration "
                                  f"({shown!r}); the log is damaged: restore it, or train the run again with --force")
        if row.get("iteration", 0) <= start_iteration and not (row.get("kind") == "weights"
                                                                and row.get("iteration") in pending):
            kept.append(line)
    return kept


# --- callbacks ----------------------------------------------------------------------------------------


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


# --- the training state ---------------------------------------------------------------------------------


class TrainingState:
    """Everything a stopped run needs to continue exactly, with ``state_dict`` / ``load_state_dict``.

    The model, the training method's state (MCKD's importance weights and
    their optimiser, LCKD's teacher), the model's optimiser and scheduler,
    the data positions, the metrics log's running sums, the callbacks' state
    and every random generator of every rank.
    """

    def __init__(self, model: torch.nn.Module, method: TrainingMethod, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, streams: dict[str, BatchStream],
                 generators: dict[str, torch.Generator], log: MetricsLog, callbacks: Sequence[Callback],
                 context: distributed.Context, seed: int) -> None:
        self.model, self.method, self.optimizer, self.scheduler = model, method, optimizer, scheduler
        self.streams, self.generators, self.log, self.callbacks = streams, generators, log, list(callbacks)
        self.context, self.seed = context, seed
        self.iteration = 0

    def state_dict(self) -> dict[str, Any]:
        """The state of every part; per-rank parts (RNGs, log sums) gathered from every rank (all must call)."""
        own = {**{f"rng.{name}": t for name, t in rng_state_tensors(self.context.device, self.generators).items()},
               "log_sums": self.log.sums.detach().float()}
        gathered = {key: distributed.gather_tensors(tensor) for key, tensor in own.items()}
        ranks = [{key: values[rank] for key, values in gathered.items()} for rank in range(self.context.world_size)]
        return {
            "iteration": self.iteration,
            "world_size": self.context.world_size,
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data": {name: stream.state() for name, stream in self.streams.items()},
            "log": self.log.state_dict(),
            "callbacks": {callback.name: callback.state_dict() for callback in self.callbacks},
            "ranks": ranks,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the random generators last, so nothing draws after them."""
        saved_world, world, rank = int(state["world_size"]), self.context.world_size, self.context.rank
        load_state_into(self.model, state["model"], "", state.get("source", "the checkpoint"))
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for name, stream in self.streams.items():
            stream.load_state(state["data"][name], saved_world, world)
        mine = state["ranks"][rank if saved_world == world else 0]  # another count: rank 0's sums stand in
        self.log.load_state_dict(state["log"], mine["log_sums"])
        for callback in self.callbacks:
            if callback.name in state["callbacks"]:
                callback.load_state_dict(state["callbacks"][callback.name])
        self.iteration = int(state["iteration"])
        if saved_world == world:
            rng = {key[len("rng."):]: value for key, value in mine.items() if key.startswith("rng.")}
            set_rng_state_tensors(rng, self.context.device, self.generators)
            return
        if self.context.is_main:
            print(f"mckd: resuming {saved_world}-process training with {world} processes: "
                  "model and optimiser state are exact, data order and random streams are not")
        seed = self.seed * 100_003 + self.iteration * 101 + rank
        seed_everything(seed)
        for offset, generator in enumerate(self.generators.values(), start=1):
            generator.manual_seed(seed + offset)


STATE_PARTS = ("method", "optimizer", "scheduler", "data", "log", "callbacks", "ranks")


def save_training_state(path: Path, state: TrainingState, metadata: dict[str, Any]) -> None:
    """Write ``state`` as a tensors-only checkpoint (every rank calls this; rank 0 writes).

    Tensors: ``model.<key>`` (what evaluation reads) and ``<part>.<path>`` for
    every other part of :meth:`TrainingState.state_dict`; metadata (JSON): the
    iteration, the number of processes and, per part, the tree of plain values
    that says where each tensor goes back.
    """
    full = state.state_dict()
    if not state.context.is_main:
        return
    tensors = {f"model.{key}": value for key, value in full["model"].items()}
    trees: dict[str, Any] = {}
    for part in STATE_PARTS:
        part_tensors, trees[part] = flatten_state(full[part], part)
        tensors.update(part_tensors)
    save_checkpoint(path, tensors, {**metadata, "format": CHECKPOINT_FORMAT, "iteration": full["iteration"],
                                    "world_size": full["world_size"], "state": trees})


def read_training_state(path: Path) -> dict[str, Any]:
    """The :meth:`TrainingState.state_dict` that :func:`save_training_state` wrote at ``path``."""
    tensors, metadata = load_checkpoint(path)
    source = str(path)
    if int(metadata.get("format", 1)) < CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {source!r} was written by an older mckd (format {metadata.get('format', 1)}) "
                              "and cannot be resumed; evaluate it with `mckd evaluate`, or train the run again")
    trees = metadata.get("state") if isinstance(metadata.get("state"), dict) else {}
    lacking = [key for key in ("iteration", "world_size", "complete") if key not in metadata]
    lacking += [part for part in STATE_PARTS if part not in trees]
    lacking += [name for part in STATE_PARTS if part in trees
                for name in referenced_tensors(trees[part]) if name not in tensors]
    if lacking:  # a damaged or hand-edited checkpoint: say so rather than fail with a KeyError
        raise CheckpointError(f"checkpoint {source!r} lacks {lacking}; it cannot be resumed")
    try:
        state = {part: unflatten_state(trees[part], tensors) for part in STATE_PARTS}
        state["iteration"], state["world_size"] = int(metadata["iteration"]), int(metadata["world_size"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {source!r} has unreadable training state ({error})") from None
    state["model"] = {key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")}
    state["source"] = source  # messages name the file
    return state


def _checkpoint_metadata(experiment: Experiment, complete: bool) -> dict[str, Any]:
    bundle = experiment.bundle
    return {
        "complete": complete,
        "config": experiment.config.to_dict(),
        "modalities": list(bundle.modalities),
        "input_shapes": {m: list(bundle.input_shapes[m]) for m in bundle.modalities},
        "facts": bundle.task_facts(),
    }


# --- the loop -----------------------------------------------------------------------------------------------


def _method_services(experiment: Experiment, device: torch.device, log: MetricsLog,
                     optimizer: torch.optim.Optimizer) -> MethodServices:
    """What the loop lends the training method: the task loss, single-modality scores on validation, the log."""
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
                          higher_is_better=task.higher_is_better[task.primary_metric], record=log.record,
                          model_optimizer=optimizer)


def _prepare_run_dir(run: RunDir, config: Config, experiment: Experiment) -> None:
    save_config(config, run.config)
    bundle = experiment.bundle
    atomic_write_text(run.data, json.dumps({"modalities": list(bundle.modalities), "num_classes": bundle.num_classes,
                                            **bundle.info, "facts": bundle.facts}, indent=2))


def _set_determinism(settings: TrainConfig, device: torch.device) -> None:
    if settings.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        # warn_only: a CUDA op without a deterministic kernel warns instead of stopping the run
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not settings.deterministic


# --- the run directory: claimed, staged until its first checkpoint, recorded ---------------------------------


def claim_run_directory(target: str | Path, resume: bool = False, force: bool = False, inputs: Any = ()) -> Any:
    """The claim (:func:`mckd.io.claim_output`) of a run directory: an existing run only with ``force`` or ``resume``."""
    return claim_output(target, replace=force or resume, kind="dir", what="run directory", replaces=not resume,
                        inputs=inputs,
                        hint=f"pass --force to replace it (the old run stays until the new one has written its "
                             f"first checkpoint), or continue it with `mckd train --resume {target}`")


class RunStaging:
    """Where a run is being written, held for the whole run (``with``): the one writer of its directory.

    The run directory is claimed (:func:`mckd.io.claim_output`): a second
    process on it is refused with this one's process id, and an existing run
    is refused unless ``force`` (replace it) or ``resume`` (continue it). A new
    run is written into a hidden staging folder beside the target,
    ``.<name>.<pid>.new-<random>.tmp``, and moved into place when it has written
    its first checkpoint (:meth:`promote`): only then does it replace an older
    run, and a run that fails or is killed before that leaves nothing at the
    target (a killed one's staging folder is removed by the next command on it).

    On ranks other than 0 nothing is written and :attr:`path` is the target.
    """

    def __init__(self, target: Path, resume: bool, force: bool, is_main: bool) -> None:
        self.target, self.resume, self.force, self.is_main = Path(target), resume, force, is_main
        self.path = self.target
        self.promoted = True
        self._claim: Any = None

    @property
    def run(self) -> RunDir:
        """The run's files where they are now (the staging folder until :meth:`promote`)."""
        return RunDir(self.path)

    def __enter__(self) -> "RunStaging":
        self._claim = claim_run_directory(self.target, self.resume, self.force)
        self._claim.__enter__()
        if self.is_main and not self.resume:
            self.path, self.promoted = temporary_name(self.target, "new-"), False
            try:
                self.path.mkdir()
            except OSError as error:
                self._claim.__exit__(None, None, None)
                raise MckdError(f"cannot make the run directory {str(self.target)!r}: {error.strerror or error}") from None
        return self

    def promote(self) -> None:
        """Move the staged run into place (replacing an older run there); a no-op once done."""
        if self.promoted:
            return
        old = temporary_name(self.target, "old-") if self.target.exists() else None
        try:
            if old is not None:
                os.rename(self.target, old)
            try:
                os.rename(self.path, self.target)
            except OSError:
                if old is not None:
                    os.rename(old, self.target)  # put the old run back
                raise
        except OSError as error:
            raise MckdError(f"cannot move the new run into {str(self.target)!r}: {error.strerror or error}; "
                            "the previous run, if any, is intact") from None
        self.path, self.promoted = self.target, True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if not self.promoted:  # failed or stopped before its first checkpoint: nothing worth keeping
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self._claim.__exit__(exc_type, exc, tb)


class RunRecord:
    """``run.json``: what made the run (versions, commit, command, device) and when, session by session.

    A resumed run adds a session. Each session has ``started``, ``ended``,
    ``status`` (``running``, ``trained``, ``stopped``, ``diverged``,
    ``failed``) and the iteration it reached.
    """

    def __init__(self, staging: RunStaging, device: torch.device, resume: bool) -> None:
        self.staging = staging
        self.sessions: list[dict[str, Any]] = []
        if resume:
            with contextlib.suppress(OSError, ValueError):
                earlier = json.loads(staging.run.record.read_text(encoding="utf-8"))
                if isinstance(earlier, dict) and isinstance(earlier.get("sessions"), list):
                    self.sessions = earlier["sessions"]
        from mckd.provenance import environment, now

        self.sessions.append({"started": now(), "ended": None, "status": "running", "iteration": 0,
                              **environment(device)})
        self.write()

    def write(self) -> None:
        current = self.sessions[-1]
        atomic_write_json(self.staging.run.record, {
            "status": current["status"], "iteration": current["iteration"],
            "started": self.sessions[0]["started"], "ended": current["ended"], "sessions": self.sessions})

    def end(self, status: str, iteration: int) -> None:
        from mckd.provenance import now

        self.sessions[-1].update(ended=now(), status=status, iteration=iteration)
        if self.staging.promoted:  # a staged run that never checkpointed is removed anyway
            with contextlib.suppress(MckdError):  # a full disk must not hide the error that ended the run
                self.write()


# --- divergence --------------------------------------------------------------------------------------------


class DivergenceGuard:
    """Notes, on the device and without waiting for it, the first iteration whose losses or weights are not finite.

    The loop reads it (one synchronisation) where it would act on a diverged
    state: before a loss record, a validation, a checkpoint. Parameters are
    checked before every checkpoint too, so a checkpoint never holds a NaN.
    """

    def __init__(self, device: torch.device) -> None:
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)

    def note(self, iteration: int, values: Sequence[torch.Tensor]) -> None:
        finite = torch.stack([v.detach().float().isfinite().all() for v in values]).all()
        first = torch.full_like(self.first_bad, iteration)
        self.first_bad = torch.where(finite | (self.first_bad > 0), self.first_bad, first)

    def first_nonfinite(self) -> int:
        """The first iteration (1-based) with a non-finite loss or weight on any rank; 0 when none."""
        return int(distributed.all_reduce_max(self.first_bad).item())


def _finite_parameters(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> bool:
    params = [p.detach() for p in model.parameters()]
    if optimizer is not None:  # its moments go into the checkpoint too (a huge weight decay overflows them)
        params += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.is_floating_point()]
    finite = bool(torch.stack([p.isfinite().all() for p in params]).all()) if params else True
    return not distributed.any_rank(not finite)


# --- validation while training -------------------------------------------------------------------------


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


def _save_best(path: Path, experiment: Experiment, iteration: int, scores: Mapping[str, float]) -> None:
    """``checkpoint_best.safetensors``: the model only, with its config, selected on the validation split."""
    metadata = {**_checkpoint_metadata(experiment, complete=True), "format": CHECKPOINT_FORMAT,
                "iteration": iteration, "selected_on": "validation", "validation": dict(scores)}
    save_checkpoint(path, {f"model.{key}": value for key, value in experiment.model.state_dict().items()}, metadata)


# --- the loop -----------------------------------------------------------------------------------------------


def train(config: Config, run_dir: str | Path, resume: bool = False, callbacks: Sequence[Callback] = (),
          force: bool = False, experiment: Experiment | None = None) -> Experiment:
    """Train one run into ``run_dir``; return the trained experiment.

    With ``resume``, continue from ``run_dir``'s checkpoint (same config):
    the result is the one an uninterrupted run would have reached. An existing
    run in ``run_dir`` is refused unless ``force`` (it is replaced once the new
    run has written its first checkpoint) or ``resume``. Under ``torchrun``
    every process calls this; rank 0 writes the files. ``callbacks`` run after
    every iteration (:class:`Callback`). ``experiment``: data and model built
    by the caller (:mod:`mckd.api`) instead of from ``config``'s registered
    components.

    Raises:
        TrainingInterrupted: SIGTERM or Ctrl-C stopped the run; its checkpoint is saved.
        TrainingDiverged: a loss, weight or parameter became NaN or infinite;
            the last finite checkpoint (if one was written) is kept.
        OutputInUse: another process is writing ``run_dir``.
    """
    from mckd.threads import apply_threads

    settings = config.train
    apply_threads(settings.threads)
    context = distributed.setup(settings.device)
    _set_determinism(settings, context.device)
    target = Path(run_dir)
    if resume and not RunDir(target).checkpoint.is_file():
        raise CheckpointError(f"cannot resume: {str(RunDir(target).checkpoint)!r} does not exist")
    # Signals from here on stop the run cleanly: during set-up, after it (an iteration-0 checkpoint), mid-run.
    with distributed.StopRequest() as stop:
        staging = RunStaging(target, resume, force, context.is_main)
        failure: BaseException | None = None
        try:
            staging.__enter__()
        except BaseException as error:  # noqa: BLE001 - every rank must hear that rank 0 could not start
            failure = error
        if distributed.any_rank(failure is not None):
            if failure is not None:
                raise failure
            raise MckdError(f"rank 0 could not claim the run directory {str(target)!r}; see its error")
        try:
            return _train(config, staging, resume, callbacks, context, stop, experiment)
        finally:
            staging.__exit__(*sys.exc_info())


def _train(config: Config, staging: RunStaging, resume: bool, callbacks: Sequence[Callback],
           context: distributed.Context, stop: distributed.StopRequest,
           experiment: Experiment | None = None) -> Experiment:
    settings, device = config.train, context.device
    saved = read_training_state(staging.run.checkpoint) if resume else None
    if saved is not None and settings.iterations > 0:  # before anything is written (with epochs: once they are counted)
        check_resume_point(saved["iteration"], settings.iterations, str(staging.run.checkpoint))
    with recorded_split(staging.run.data if resume else None):  # a resumed run keeps its split
        experiment = experiment or build_experiment(config)
    bundle, model, method, task = experiment.bundle, experiment.model, experiment.method, experiment.task
    record = None
    if context.is_main:
        if not resume:  # a resumed run's config.yaml and data.json are rewritten once its state has loaded
            _prepare_run_dir(staging.run, config, experiment)
        record = RunRecord(staging, device, resume)
    model.to(device)
    method.to(device)

    streams = {
        "train": BatchStream(bundle.train, settings.batch_size, config.seed, context, settings.num_workers),
        # the meta step scores every modality at once: it reads only complete samples (an error if there are none)
        "val": BatchStream(complete_samples(bundle.val, bundle.modalities) if method.takes_meta_steps else bundle.val,
                           settings.batch_size, config.seed + 1, context, settings.num_workers),
    }
    per_epoch = streams["train"].batches_per_epoch
    total = settings.iterations if settings.iterations > 0 else settings.epochs * per_epoch
    if saved is not None:
        check_resume_point(saved["iteration"], total, str(staging.run.checkpoint))
    optimizer = make_optimizer(model.parameters(), settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, total, per_epoch, settings))
    for meta_optimizer in method.meta_optimizers():
        distributed.average_gradients_before_step(meta_optimizer)  # w stays identical on every rank
    # Each rank drops modalities with its own stream (it sees other samples anyway).
    drop_generator = torch.Generator(device=device).manual_seed(config.seed + 2 + 1000 * context.rank)
    keep = subset_mask(bundle.modalities, config.missing.subset).to(device) if config.missing.policy == "fixed" else None
    drops = TrainingDrops(config.missing.policy, keep, drop_generator)
    pending = [int(step) for step in saved["log"]["pending"]] if saved else []  # logged again at the next record
    log = MetricsLog((lambda: staging.path) if context.is_main else None, ("task", *method.loss_term_names()), device,
                     saved["iteration"] if saved else 0, pending, settings.loggers, resume=saved is not None)
    state = TrainingState(model, method, optimizer, scheduler, streams, {"missing": drop_generator}, log, callbacks,
                          context, config.seed)
    guard = DivergenceGuard(device)
    try:
        if saved is not None:
            try:
                state.load_state_dict(saved)  # last: nothing draws a random number before the loop
            except (KeyError, RuntimeError, ValueError, TypeError) as error:
                raise CheckpointError(f"checkpoint {str(staging.run.checkpoint)!r} does not match this run: "
                                      f"{error}") from None
            if context.is_main:
                _prepare_run_dir(staging.run, config, experiment)
        else:
            for meta_optimizer in method.meta_optimizers():  # rank 0's random start (equal anyway: same seed)
                for group in meta_optimizer.param_groups:
                    for param in group["params"]:
                        distributed.broadcast_(param)
            if method.importance() is not None:
                log.record({"iteration": 0, "kind": "weights",
                            "weights": dict(zip(bundle.modalities, method.importance().detach().cpu().tolist()))})
        _loop(experiment, state, staging, stop, guard, streams, optimizer, scheduler, drops, total, per_epoch)
    except BaseException as error:
        if record is not None:
            status = {TrainingInterrupted: "stopped", TrainingDiverged: "diverged"}.get(type(error), "failed")
            record.end(status, state.iteration)
        raise
    finally:
        log.close()
    if record is not None:
        record.end("trained", state.iteration)
    return experiment


def _loop(experiment: Experiment, state: TrainingState, staging: RunStaging, stop: distributed.StopRequest,
          guard: DivergenceGuard, streams: dict[str, BatchStream], optimizer: torch.optim.Optimizer,
          scheduler: Any, drops: TrainingDrops, total: int, per_epoch: int) -> None:
    """Algorithm 1: inner steps, meta steps, records, validation, checkpoints; from ``state.iteration`` to ``total``."""
    config, bundle, model, method, task = (experiment.config, experiment.bundle, experiment.model,
                                           experiment.method, experiment.task)
    settings, context, device, log = config.train, state.context, state.context.device, state.log
    # An encoder whose modality no sample of this rank's batch has takes no part in the backward pass.
    forward_model = distributed.wrap_model(model, context, find_unused_parameters=getattr(model, "encoders", None) is not None)
    autocast = autocast_context(settings.precision, device)
    model.train()
    method.setup(_method_services(experiment, device, log, optimizer))
    higher_is_better = task.higher_is_better[task.primary_metric]

    def check_finite(where: str) -> None:
        first = guard.first_nonfinite()
        if first == 0 and where == "checkpoint" and not _finite_parameters(model, optimizer):
            first = state.iteration
        if first:
            _diverged(first, where)

    def _diverged(first: int, where: str) -> None:
        losses = log.mean_losses()
        bad = [name for name, value in losses.items() if not math.isfinite(value)]
        what = (f"the {' and '.join(bad)} loss{'es' if len(bad) > 1 else ''}" if bad
                else "the importance weights, the model's parameters or the optimiser's state")
        kept = (f"{str(staging.target / RunDir(staging.target).checkpoint.name)!r} holds the last finite state: "
                f"continue from it with `mckd train --resume {staging.target} --set train.lr=...`"
                if staging.promoted and RunDir(staging.target).checkpoint.is_file()
                else "no checkpoint had been written, so nothing was kept")
        raise TrainingDiverged(
            f"training diverged: {what} became NaN or infinite by iteration {first} of {total} (train.lr "
            f"{settings.lr:g}, method options {_short_options(config)}); {kept}; lower train.lr (or "
            "method.meta_lr) and train again")

    def save(complete: bool) -> None:
        check_finite("checkpoint")  # never write a checkpoint that holds NaN
        save_training_state(staging.run.checkpoint, state, _checkpoint_metadata(experiment, complete))
        if context.is_main:
            staging.promote()  # the first checkpoint is on disk: the run takes its place (an older one goes)
        distributed.barrier()

    def validate() -> dict[str, float]:
        check_finite("validation")
        scores = validation_scores(experiment, device, config.eval.batch_size)
        improved = math.isfinite(scores["score"]) and (
            log.best_score is None or (scores["score"] > log.best_score if higher_is_better
                                       else scores["score"] < log.best_score))
        if improved:
            log.best_score, log.best_iteration = scores["score"], state.iteration
            if settings.save_best and context.is_main:
                _save_best(staging.run.best_checkpoint, experiment, state.iteration, scores)
        log.record({"iteration": state.iteration, "kind": "val", **scores, "best": bool(improved)})
        return scores

    start = time.perf_counter()
    progress = Progress(total, f"train seed {config.seed}", initial=state.iteration,
                        enabled=settings.progress and context.is_main)
    if stop.requested and not context.distributed and state.iteration < total:  # a signal during set-up
        save(complete=False)
        raise TrainingInterrupted(staging.target, state.iteration, stop.signal_name, when="setup")
    last_record_time, last_record_iteration = start, state.iteration
    shown: dict[str, Any] = {}
    for iteration in range(state.iteration, total):
        batch = move_batch(next(streams["train"]), device)
        present = drops(batch["present"])  # the modalities each sample keeps this iteration
        losses = train_step(forward_model, method, task, optimizer, batch, present, autocast)  # inner step
        step_lr = optimizer.param_groups[0]["lr"]  # the rate this step used (the scheduler moves it next)
        scheduler.step()
        log.add(losses)
        watched = list(losses.values())
        if method.meta_due(iteration + 1):  # outer step (Eq. 4) on the meta-validation split
            for _ in range(method.meta_batches):
                val = move_batch(next(streams["val"]), device)
                with autocast():  # the meta loss is float32 (task.loss); w and its gradient are float32
                    method.meta_step(model, val, batch, present, optimizer.param_groups[0]["lr"])
            importance = method.importance()
            log.note_weights(iteration + 1, importance)
            if importance is not None:
                watched.append(importance)
        guard.note(iteration + 1, watched)
        method.after_iteration(iteration + 1)
        for callback in state.callbacks:
            callback.on_iteration_end(iteration + 1, experiment)
        state.iteration = iteration + 1
        progress.update()

        if state.iteration % settings.log_every == 0 or state.iteration == total:
            check_finite("record")
            now = time.perf_counter()
            rate = (state.iteration - last_record_iteration) / max(now - last_record_time, 1e-9)
            last_record_time, last_record_iteration = now, state.iteration
            means = log.write_train_record(state.iteration, state.iteration / per_epoch, step_lr, now - start,
                                           bundle.modalities, rate)
            shown.update({f"{name}_loss": value for name, value in means.items()})
            progress.set_postfix(shown)
        if settings.eval_every and (state.iteration % settings.eval_every == 0 or state.iteration == total):
            scores = validate()
            if f"{task.primary_metric}_all" in scores:
                shown[f"val_{task.primary_metric}"] = scores[f"{task.primary_metric}_all"]
            progress.set_postfix(shown)

        stopping = stop.should_stop() and state.iteration < total  # SIGTERM / Ctrl-C, agreed by every rank
        periodic = settings.checkpoint_every and state.iteration % settings.checkpoint_every == 0
        if (stopping or periodic) and state.iteration < total:
            save(complete=False)
        if stopping:
            progress.close()
            raise TrainingInterrupted(staging.target, state.iteration, stop.signal_name)
    progress.close()
    save(complete=True)
    if distributed.any_rank(stop.requested):  # a signal during the last iteration or the final checkpoint
        raise TrainingInterrupted(staging.target, state.iteration, stop.signal_name, when="end")


def _short_options(config: Config) -> str:
    """The method's numeric options, for a divergence message (``meta_lr 0.01, alpha 0.1``)."""
    options = getattr(config.method, "options", None)
    if options is None or not dataclasses.is_dataclass(options):
        return "none"
    numbers = [f"{f.name} {getattr(options, f.name):g}" for f in dataclasses.fields(options)
               if isinstance(getattr(options, f.name), float)]
    return ", ".join(numbers) or "none"


__all__ = ["Callback", "MetricsLog", "RunStaging", "TrainingDiverged", "TrainingInterrupted", "TrainingState",
           "train", "train_step", "validation_scores"]
