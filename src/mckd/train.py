"""The training loop: inner steps (Eq. 4 inner) and meta steps (Eq. 4 outer).

Read it top to bottom: build everything from the config, then for each
iteration draw a batch, drop modalities by the missing policy, take one
optimiser step on ``l_task + alpha * l_ckd``, and every ``meta_every``
iterations take a meta step on the importance weights with a batch of the
meta-validation split. The run directory receives the resolved config,
``metrics.jsonl`` and a tensors-only checkpoint.

The same loop runs in one process or in several started by ``torchrun``
(:mod:`mckd.distributed`): the model is wrapped in DistributedDataParallel,
each rank reads its share of both splits, the importance weights' gradient is
averaged over ranks before every meta step, logged losses are averaged over
ranks, and rank 0 alone writes files. ``train.precision`` turns on bf16
autocast. The checkpoint holds every piece of state the loop has (model,
optimisers, scheduler, weights, data order, every RNG), so ``train(...,
resume=True)`` continues a stopped run exactly; SIGTERM or Ctrl-C stops the
loop at the end of an iteration and saves one.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mckd import distributed
from mckd.build import Experiment, build_experiment
from mckd.checkpoint import (
    atomic_write_text,
    flatten_state,
    load_checkpoint,
    load_state_into,
    rng_state_tensors,
    save_checkpoint,
    set_rng_state_tensors,
    unflatten_state,
)
from mckd.config import Config, TrainConfig, save_config
from mckd.data.bundle import move_batch
from mckd.data.missing import fixed_subset, random_subset, subset_mask
from mckd.errors import CheckpointError, MckdError
from mckd.variants import MethodVariants, Observer

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"
CHECKPOINT_FORMAT = 2  # 1: model and weights only (the foundation's); 2: the whole training state


class TrainingInterrupted(MckdError):
    """SIGTERM or Ctrl-C stopped training; a checkpoint was saved at ``iteration``."""

    def __init__(self, run_dir: Path, iteration: int, signal_name: str) -> None:
        super().__init__(
            f"{signal_name or 'a signal'} stopped training at iteration {iteration}; checkpoint saved in "
            f"{str(run_dir)!r}: continue with `mckd train --resume {run_dir}`"
        )
        self.run_dir = run_dir
        self.iteration = iteration


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


@dataclass
class TrainingState:
    """Everything besides the model's code that a stopped run needs to continue exactly."""

    model: torch.nn.Module  # the bare model (not the DDP wrapper)
    weights: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    weight_optimizer: torch.optim.Optimizer
    streams: dict[str, BatchStream]
    generators: dict[str, torch.Generator]  # RNGs that are not global (the missing policy's)
    log_sums: torch.Tensor  # running task and CKD losses since the last log record
    log_count: int = 0
    variants: Any = None  # the method switches' hooks; their state_dict() (LCKD's teacher) is kept too
    weight_history: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # meta steps not yet logged


def train(config: Config, run_dir: str | Path, resume: bool = False, observers: Sequence[Observer] = ()) -> Experiment:
    """Train one run into ``run_dir``; return the trained experiment.

    With ``resume``, continue from ``run_dir``'s checkpoint (same config):
    the result is the one an uninterrupted run would have reached. Under
    ``torchrun`` every process calls this; rank 0 writes the files.
    ``observers`` are called as ``observer(iteration, experiment)`` after every
    iteration (the analyses use them).

    Raises:
        TrainingInterrupted: SIGTERM or Ctrl-C stopped the run; its checkpoint is saved.
    """
    run_dir = Path(run_dir)
    settings, method = config.train, config.method
    context = distributed.setup(settings.device)
    device = context.device
    if settings.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        # warn_only: a CUDA op without a deterministic kernel warns instead of stopping the run
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not settings.deterministic
    checkpoint_path = run_dir / CHECKPOINT
    if resume and not checkpoint_path.is_file():
        raise CheckpointError(f"cannot resume: {str(checkpoint_path)!r} does not exist")
    experiment = build_experiment(config)
    bundle, model, weights, task = experiment.bundle, experiment.model, experiment.weights, experiment.task
    if context.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # --out names a file, or a folder that cannot be made
            raise MckdError(f"cannot make the run directory {str(run_dir)!r}: {error.strerror or error}") from None
        save_config(config, run_dir / "config.yaml")
        atomic_write_text(
            run_dir / "data.json",
            json.dumps({"modalities": list(bundle.modalities), "num_classes": bundle.num_classes, **bundle.info}, indent=2),
        )
    model.to(device)
    weights.to(device)

    streams = {
        "train": BatchStream(bundle.train, settings.batch_size, config.seed, context, settings.num_workers),
        "val": BatchStream(bundle.val, settings.batch_size, config.seed + 1, context, settings.num_workers),
    }
    per_epoch = streams["train"].batches_per_epoch
    total = settings.iterations if settings.iterations > 0 else settings.epochs * per_epoch

    optimizer = make_optimizer(model.parameters(), settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, total, per_epoch, settings))
    weight_optimizer = torch.optim.Adam([weights.raw], lr=method.meta_lr, weight_decay=method.meta_weight_decay)
    distributed.average_gradients_before_step(weight_optimizer)  # w stays identical on every rank
    # Each rank drops modalities with its own stream (it sees other samples anyway).
    drop_generator = torch.Generator(device=device).manual_seed(config.seed + 2 + 1000 * context.rank)
    keep = subset_mask(bundle.modalities, config.missing.subset).to(device) if config.missing.policy == "fixed" else None
    state = TrainingState(model, weights, optimizer, scheduler, weight_optimizer, streams,
                          {"missing": drop_generator}, torch.zeros(2, device=device))

    start_iteration, saved = 0, None
    if resume:
        saved = load_checkpoint(checkpoint_path)
        start_iteration = restore_training_state(saved, str(checkpoint_path), state, context)
    else:
        distributed.broadcast_(weights.raw)  # rank 0's random start (equal anyway: same seed)
    # An encoder whose modality no sample of this rank's batch has takes no part in the backward pass.
    forward_model = distributed.wrap_model(model, context, find_unused_parameters=getattr(model, "encoders", None) is not None)
    amp_dtype = autocast_dtype(settings.precision, device)

    def autocast() -> torch.autocast:
        return torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    pending = {step for step, _ in state.weight_history}  # restored meta-step weights, logged again at the next record
    metrics_file = open_metrics(run_dir / METRICS, start_iteration, pending) if context.is_main else None

    def record(entry: dict[str, Any]) -> None:
        if metrics_file is not None:
            metrics_file.write(json.dumps(entry) + "\n")

    if not resume:
        record({"iteration": 0, "kind": "weights", "weights": weights.as_dict()})
    # LCKD, ShaSpec, bi-level; on resume LCKD's first election is not recorded (its teacher comes from the checkpoint)
    variants = MethodVariants(experiment, device, record if saved is None else lambda entry: None, observers, optimizer)
    variants.record = record
    state.variants = variants
    if saved is not None:
        restore_variants_and_random_state(saved, state, context)  # last: nothing draws a random number before the loop

    weight_history = state.weight_history  # (iteration, normalised weights [N]) per meta step, until logged
    start = time.perf_counter()
    progress = tqdm(range(start_iteration, total), desc=f"train seed {config.seed}", initial=start_iteration,
                    total=total, disable=not (settings.progress and context.is_main), dynamic_ncols=True)

    def flush_weight_history() -> None:
        for step, values in weight_history:
            record({"iteration": step, "kind": "weights", "weights": dict(zip(bundle.modalities, values.tolist()))})
        weight_history.clear()

    def save(iteration: int, complete: bool) -> None:
        if metrics_file is not None:
            metrics_file.flush()
        save_training_state(checkpoint_path, experiment, state, iteration, context, complete)

    model.train()
    with distributed.StopRequest() as stop:
        for iteration in progress:
            batch = move_batch(next(streams["train"]), device)
            present = batch["present"]
            if config.missing.policy == "random_subset":
                present = random_subset(present, drop_generator)
            elif keep is not None:
                present = fixed_subset(present, keep)

            with autocast():
                output = forward_model(batch["inputs"], present)
                task_loss = task.loss(output.prediction, batch["target"])
                loss = task_loss + variants.auxiliary_loss(output, present)  # ShaSpec's terms; 0 otherwise
                ckd_loss = torch.zeros((), device=device)
                if method.alpha > 0:
                    ckd_loss = variants.distillation_loss(output, present, weights())  # float32 inside
                    loss = loss + method.alpha * ckd_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step_lr = optimizer.param_groups[0]["lr"]  # the rate this step used (the scheduler moves it next)
            scheduler.step()
            state.log_sums += torch.stack([task_loss.detach().float(), ckd_loss.detach().float()])
            state.log_count += 1

            if method.meta and (iteration + 1) % method.meta_every == 0:
                for _ in range(method.meta_batches):
                    val = move_batch(next(streams["val"]), device)
                    with autocast():  # the meta loss is float32 (task.loss); w and its gradient are float32
                        variants.meta_step(weight_optimizer, val, batch, present, optimizer.param_groups[0]["lr"])
                weight_history.append((iteration + 1, weights().detach()))  # stays on the device until logged
            variants.after_iteration(iteration + 1)

            if (iteration + 1) % settings.log_every == 0 or iteration + 1 == total:
                means = distributed.all_reduce_mean(state.log_sums / state.log_count)
                flush_weight_history()
                task_mean, ckd_mean = means.tolist()  # the one read of the device per log record
                record({
                    "iteration": iteration + 1,
                    "epoch": (iteration + 1) / per_epoch,
                    "kind": "train",
                    "task_loss": task_mean,
                    "ckd_loss": ckd_mean,
                    "lr": step_lr,
                    "seconds": time.perf_counter() - start,
                })
                if metrics_file is not None:
                    metrics_file.flush()
                progress.set_postfix(task=f"{task_mean:.4f}", ckd=f"{ckd_mean:.4f}")
                state.log_sums.zero_()
                state.log_count = 0

            stopping = stop.should_stop() and iteration + 1 < total  # SIGTERM / Ctrl-C, agreed by every rank
            periodic = settings.checkpoint_every and (iteration + 1) % settings.checkpoint_every == 0
            if (stopping or periodic) and iteration + 1 < total:
                save(iteration + 1, complete=False)
            if stopping:
                if metrics_file is not None:
                    metrics_file.close()
                distributed.barrier()
                raise TrainingInterrupted(run_dir, iteration + 1, stop.signal_name)
    progress.close()
    save(total, complete=True)
    if metrics_file is not None:
        metrics_file.close()
    distributed.barrier()  # the checkpoint is on disk before any rank reads it
    return experiment


def open_metrics(path: Path, start_iteration: int, pending_weights: set[int] = frozenset()) -> Any:
    """``metrics.jsonl`` for writing; on resume, keep what the run had written up to ``start_iteration`` and append.

    Records of later iterations go (the resumed run writes them again), and so
    do the weights records of ``pending_weights``: meta steps the checkpoint
    holds as not yet logged, which a crash after the checkpoint may have logged.
    """
    if start_iteration == 0 or not path.is_file():
        return path.open("w")
    rows = [(line, json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line, row in rows if row.get("iteration", 0) <= start_iteration
            and not (row.get("kind") == "weights" and row.get("iteration") in pending_weights)]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
    return path.open("a")


def save_training_state(path: Path, experiment: Experiment, state: TrainingState, iteration: int,
                        context: distributed.Context, complete: bool) -> None:
    """Write the whole training state at ``iteration`` (every rank calls this; rank 0 writes).

    Tensors: ``model.*``, ``weights.raw`` (what evaluation reads), the
    optimisers' tensors (``optimizer.*``, ``meta_optimizer.*``), the data
    positions (``data.train``, ``data.val``), and every rank's running log
    sums (``log.<rank>.sums``) and RNG states (``rng.<rank>.<name>``). Metadata (JSON): the
    iteration, the config, the number of processes, and the non-tensor
    parts of the optimiser and scheduler state dicts.
    """
    per_rank = {f"rng.{{rank}}.{name}": tensor for name, tensor in rng_state_tensors(context.device, state.generators).items()}
    per_rank["log.{rank}.sums"] = state.log_sums.detach().float()
    gathered = {key: distributed.gather_tensors(tensor) for key, tensor in per_rank.items()}  # every rank takes part
    if not context.is_main:
        return
    tensors = {f"model.{k}": v for k, v in state.model.state_dict().items()}
    tensors["weights.raw"] = state.weights.raw.detach()
    metadata: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "iteration": iteration,
        "complete": complete,
        "world_size": context.world_size,
        "config": experiment.config.to_dict(),
        "modalities": list(experiment.bundle.modalities),
        "log_count": state.log_count,
    }
    for name, part in (("optimizer", state.optimizer), ("meta_optimizer", state.weight_optimizer),
                       ("scheduler", state.scheduler)):
        part_tensors, metadata[name] = flatten_state(part.state_dict(), name)
        tensors.update(part_tensors)
    if state.weight_history:  # weights of meta steps since the last log record, written at the next one
        metadata["weight_history"] = [step for step, _ in state.weight_history]
        tensors["log.weight_history"] = torch.stack([values for _, values in state.weight_history])  # (K, N)
    if hasattr(state.variants, "state_dict"):
        part_tensors, metadata["variants"] = flatten_state(state.variants.state_dict(), "variants")
        tensors.update(part_tensors)
    for name, stream in state.streams.items():
        tensors[f"data.{name}"] = stream.state()
    for key, values in gathered.items():
        for rank, tensor in enumerate(values):
            tensors[key.format(rank=rank)] = tensor
    save_checkpoint(path, tensors, metadata)


def restore_training_state(saved: tuple[dict[str, torch.Tensor], dict[str, Any]], source: str,
                           state: TrainingState, context: distributed.Context) -> int:
    """Load what :func:`save_training_state` wrote into ``state``, RNGs aside; return the iteration to continue from.

    The RNGs and the method switches' state are restored by
    :func:`restore_variants_and_random_state`, once everything is built.
    """
    tensors, metadata = saved
    if metadata.get("format", 1) < CHECKPOINT_FORMAT or "optimizer" not in metadata:
        raise CheckpointError(f"checkpoint {source!r} holds no training state (written by an older mckd); "
                              "it can be evaluated but not resumed")
    lacking = [k for k in ("meta_optimizer", "scheduler", "world_size", "log_count", "iteration") if k not in metadata]
    lacking += [f"data.{name}" for name in state.streams if f"data.{name}" not in tensors]
    if lacking:  # a damaged or hand-edited checkpoint: say so rather than fail with a KeyError
        raise CheckpointError(f"checkpoint {source!r} lacks {lacking}; it cannot be resumed")
    load_state_into(state.model, tensors, "model.", source)
    load_state_into(state.weights, tensors, "weights.", source)
    state.optimizer.load_state_dict(unflatten_state(metadata["optimizer"], tensors))
    state.weight_optimizer.load_state_dict(unflatten_state(metadata["meta_optimizer"], tensors))
    state.scheduler.load_state_dict(unflatten_state(metadata["scheduler"], tensors))
    saved_world = int(metadata["world_size"])
    for name, stream in state.streams.items():
        stream.load_state(tensors[f"data.{name}"], saved_world, context.world_size)
    state.log_count = int(metadata["log_count"])
    rank = context.rank if saved_world == context.world_size else 0  # another count: rank 0's sums stand in
    state.log_sums.copy_(tensors[f"log.{rank}.sums"])
    state.weight_history[:] = list(zip(metadata.get("weight_history", []), tensors.get("log.weight_history", [])))
    return int(metadata["iteration"])


def restore_variants_and_random_state(saved: tuple[dict[str, torch.Tensor], dict[str, Any]], state: TrainingState,
                                      context: distributed.Context) -> None:
    """The method switches' state, then every RNG of this rank.

    With the number of processes the checkpoint was saved with, the
    continuation is exact. With another number, the model, optimisers and
    weights are exact, the data position is carried over by samples seen, and
    the RNGs are reseeded from the seed, the iteration and the rank.
    """
    tensors, metadata = saved
    if "variants" in metadata and hasattr(state.variants, "load_state_dict"):
        state.variants.load_state_dict(unflatten_state(metadata["variants"], tensors))
    saved_world, iteration = int(metadata["world_size"]), int(metadata["iteration"])
    if saved_world == context.world_size:
        prefix = f"rng.{context.rank}."
        rng = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        set_rng_state_tensors(rng, context.device, state.generators)
        return
    if context.is_main:
        print(f"mckd: resuming {saved_world}-process training with {context.world_size} processes: "
              "model and optimiser state are exact, data order and random streams are not")
    from mckd.build import seed_everything

    seed = int(metadata["config"].get("seed", 0)) * 100_003 + iteration * 101 + context.rank
    seed_everything(seed)
    for offset, generator in enumerate(state.generators.values(), start=1):
        generator.manual_seed(seed + offset)
