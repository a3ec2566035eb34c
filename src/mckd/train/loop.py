"""The training loop: inner steps (Eq. 4 inner) and meta steps (Eq. 4 outer), as Algorithm 1 of the paper.

:func:`train` sets a run up from its config (:func:`prepare_loop`), then
:func:`run_loop` iterates: draw a training batch, drop modalities by the
missing policy, step each of the method's optimisers on its own loss
(:func:`mckd.train.step.take_steps`; by default one step on ``l_task`` plus
the method's terms, MCKD's ``alpha * sum (w_i / w_j) l_ckd``), and when the
method asks for it take its meta step on a batch of the meta-validation
split. Everything carried from one iteration to the next lives in a
:class:`~mckd.train.state.TrainingState`, whose ``state_dict`` is the
checkpoint: a stopped run continues exactly (``train(..., resume=True)``),
and SIGTERM, SIGHUP or Ctrl-C stops the loop at the end of an iteration and
saves one. Records, validation and progress are callbacks
(:mod:`mckd.train.callbacks`).

The same loop runs in one process or in several started by ``torchrun``
(:mod:`mckd.distributed`): the model and the method's parts are wrapped in
DistributedDataParallel, each rank reads its share of both splits, the meta
step's gradients are averaged over ranks, logged losses are averaged over
ranks, and rank 0 alone writes files. ``train.precision`` turns on bf16
autocast.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mckd import distributed
from mckd.build import Experiment, build_experiment
from mckd.config import Config, TrainConfig, save_config
from mckd.checkpoint import check_resume_point
from mckd.data.bundle import complete_samples, move_batch
from mckd.data.recorded_split import recorded_split
from mckd.data.missing import TrainingDrops, subset_mask
from mckd.errors import CheckpointError, ConfigError, DataError, MckdError, Stopped, TrainingDiverged
from mckd.io import atomic_write_text
from mckd.method.base import Optimization, TrainingMethod
from mckd.rundir import RunDir
from mckd.train.callbacks import Callback, DivergenceGuard, LossRecords, ProgressCallback, Validation
from mckd.train.metrics import MetricsLog
from mckd.train.optim import autocast_context, default_optimization
from mckd.train.staging import RunRecord, RunStaging
from mckd.train.state import TrainingState, checkpoint_metadata, read_training_state, save_training_state
from mckd.train.step import Trainee, take_steps
from mckd.train.streams import BatchStream
from mckd.train.validation import method_services


class TrainingInterrupted(Stopped):
    """SIGTERM, SIGHUP or Ctrl-C stopped training; a checkpoint was saved at ``iteration``.

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
        TrainingInterrupted: SIGTERM, SIGHUP or Ctrl-C stopped the run; its checkpoint is saved.
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


@dataclass
class Loop:
    """What the iterations of one run use, made once by :func:`prepare_loop`."""

    experiment: Experiment
    state: TrainingState
    staging: RunStaging
    stop: distributed.StopRequest
    trainee: Callable[..., Any]  # the model and the method's parts (DDP-wrapped under torchrun)
    optimizations: list[Optimization]
    schedulers: list[Any]
    streams: dict[str, BatchStream]
    drops: TrainingDrops
    total: int
    autocast: Callable[[], Any]
    guard: DivergenceGuard
    progress: ProgressCallback
    callbacks: list[Callback]  # yours, then the built-in ones (progress, loss records, validation)
    lr: float = 0.0  # the rate the first optimiser's last step used (logged)

    def checkpoint(self, complete: bool) -> None:
        """A checkpoint of the whole state (never one that holds NaN); the first moves a staged run into place."""
        self.guard.check("checkpoint", self.state.iteration)
        save_training_state(self.staging.run.checkpoint, self.state, checkpoint_metadata(self.experiment, complete))
        if self.state.context.is_main:
            self.staging.promote()  # the first checkpoint is on disk: the run takes its place (an older one goes)
        distributed.barrier()


def run_loop(loop: Loop) -> None:
    """Algorithm 1: inner steps, meta steps and callbacks, from ``state.iteration`` to ``total``; checkpoints."""
    state, method, log = loop.state, loop.experiment.method, loop.state.log
    device, settings = state.context.device, loop.experiment.config.train
    if loop.stop.requested and not state.context.distributed and state.iteration < loop.total:  # during set-up
        loop.checkpoint(complete=False)
        raise TrainingInterrupted(loop.staging.target, state.iteration, loop.stop.signal_name, when="setup")
    for iteration in range(state.iteration + 1, loop.total + 1):  # 1-based
        batch = move_batch(next(loop.streams["train"]), device)
        present = loop.drops(batch["present"])  # the modalities each sample keeps this iteration
        losses, step, loop.lr = take_steps(loop.trainee, method, loop.optimizations, loop.schedulers, batch,
                                           present, iteration, loop.autocast)  # inner step(s), Eq. 4
        log.add(losses)
        method.on_batch_end(iteration, batch, present, step)
        watched = list(losses.values())
        if method.meta_due(iteration):  # outer step (Eq. 4) on the meta-validation split
            for _ in range(method.meta_batches):
                val = move_batch(next(loop.streams["val"]), device)
                with loop.autocast():  # the meta loss is float32 (task.loss); w and its gradient are float32
                    method.meta_step(loop.experiment.model, val, batch, present,
                                     loop.optimizations[0].optimizer.param_groups[0]["lr"])
            importance = method.importance()
            log.note_weights(iteration, importance)
            watched += [importance] if importance is not None else []
        loop.guard.note(iteration, watched)
        method.after_iteration(iteration)
        state.iteration = iteration
        for callback in loop.callbacks:  # yours, then progress, loss records, validation
            callback.on_iteration_end(iteration, loop.experiment)
        stopping = loop.stop.should_stop() and iteration < loop.total  # a signal, agreed by every rank
        periodic = settings.checkpoint_every and iteration % settings.checkpoint_every == 0
        if (stopping or periodic) and iteration < loop.total:
            loop.checkpoint(complete=False)
        if stopping:
            loop.progress.close()
            raise TrainingInterrupted(loop.staging.target, iteration, loop.stop.signal_name)
    loop.progress.close()
    loop.checkpoint(complete=True)
    if distributed.any_rank(loop.stop.requested):  # a signal during the last iteration or the final checkpoint
        raise TrainingInterrupted(loop.staging.target, state.iteration, loop.stop.signal_name, when="end")


def _train(config: Config, staging: RunStaging, resume: bool, callbacks: Sequence[Callback],
           context: distributed.Context, stop: distributed.StopRequest,
           experiment: Experiment | None = None) -> Experiment:
    saved = read_training_state(staging.run.checkpoint) if resume else None
    if saved is not None and config.train.iterations > 0:  # before anything is written (epochs: once counted)
        check_resume_point(saved["iteration"], config.train.iterations, str(staging.run.checkpoint))
    with recorded_split(staging.run.data if resume else None):  # a resumed run keeps its split
        experiment = experiment or build_experiment(config)
    record = None
    if context.is_main:
        if not resume:  # a resumed run's config.yaml and data.json are rewritten once its state has loaded
            _prepare_run_dir(staging.run, config, experiment)
        record = RunRecord(staging, context.device, resume)
    loop = prepare_loop(experiment, staging, stop, callbacks, context, saved)
    try:
        run_loop(loop)
    except BaseException as error:
        if record is not None:
            status = {TrainingInterrupted: "stopped", TrainingDiverged: "diverged"}.get(type(error), "failed")
            record.end(status, loop.state.iteration)
        raise
    finally:
        loop.state.log.close()
        for stream in loop.streams.values():
            stream.close()
    if record is not None:
        record.end("trained", loop.state.iteration)
    return experiment


def prepare_loop(experiment: Experiment, staging: RunStaging, stop: distributed.StopRequest,
                 callbacks: Sequence[Callback], context: distributed.Context, saved: dict[str, Any] | None) -> Loop:
    """Everything the iterations need, in a fixed order (the random streams depend on it); a checkpoint restored."""
    config, bundle, model, method = experiment.config, experiment.bundle, experiment.model, experiment.method
    settings, device = config.train, context.device
    model.to(device)
    method.parts.to(device)
    method.to(device)
    streams = {
        "train": BatchStream(bundle.train, settings.batch_size, config.seed, context, settings.num_workers),
        # the meta step scores every modality at once: it reads only complete samples (an error if there are none)
        "val": BatchStream(complete_samples(bundle.val, bundle.modalities) if method.takes_meta_steps else bundle.val,
                           settings.batch_size, config.seed + 1, context, settings.num_workers),
    }
    if method.uses_complete_batches:  # a stream of its own over the training split's complete samples
        streams["complete"] = BatchStream(complete_training_samples(bundle, method.name), settings.batch_size,
                                          config.seed + 3, context, settings.num_workers)
    per_epoch = streams["train"].batches_per_epoch
    total = settings.iterations if settings.iterations > 0 else settings.epochs * per_epoch
    if saved is not None:
        check_resume_point(saved["iteration"], total, str(staging.run.checkpoint))
    optimizations = method.configure_optimizers(model, default_optimization(settings, total, per_epoch))
    _check_optimizations(method, optimizations)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o.optimizer, o.schedule or (lambda step: 1.0))
                  for o in optimizations]
    for meta_optimizer in method.meta_optimizers():
        distributed.average_gradients_before_step(meta_optimizer)  # w stays identical on every rank
    # Each rank drops modalities with its own stream (it sees other samples anyway).
    drop_generator = torch.Generator(device=device).manual_seed(config.seed + 2 + 1000 * context.rank)
    keep = subset_mask(bundle.modalities, config.missing.subset).to(device) if config.missing.policy == "fixed" else None
    drops = TrainingDrops(config.missing.policy, keep, drop_generator)
    start = saved["iteration"] if saved else 0
    pending = [int(step) for step in saved["log"]["pending"]] if saved else []  # logged again at the next record
    log = MetricsLog(staging.run if context.is_main else None, method.loss_names(), device,
                     start, pending, settings.loggers, resume=saved is not None)
    guard = DivergenceGuard(device, model, log, config, total, lambda: _what_was_kept(staging),
                            [o.optimizer for o in optimizations])
    progress = ProgressCallback(total, config.seed, start, settings.progress and context.is_main)
    built_in = [progress,
                LossRecords(log, guard, progress, settings.log_every, total, per_epoch, start, lambda: loop.lr),
                Validation(experiment, device, log, guard, progress, total, staging.run,
                           context.is_main)]
    state = TrainingState(model, method, optimizations, schedulers, streams, {"missing": drop_generator}, log,
                          [*callbacks, *built_in], context, config.seed)
    if saved is not None:
        try:
            state.load_state_dict(saved)  # last: nothing draws a random number before the loop
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            log.close()  # the run's files stay as they were
            raise CheckpointError(f"checkpoint {str(staging.run.checkpoint)!r} does not match this run: "
                                  f"{error}") from None
        except BaseException:
            log.close()
            raise
        if context.is_main:
            _prepare_run_dir(staging.run, experiment.config, experiment)
    else:
        for meta_optimizer in method.meta_optimizers():  # rank 0's random start (equal anyway: same seed)
            for group in meta_optimizer.param_groups:
                for param in group["params"]:
                    distributed.broadcast_(param)
        if method.importance() is not None:
            log.record({"iteration": 0, "kind": "weights",
                        "weights": dict(zip(bundle.modalities, method.importance().detach().cpu().tolist()))})
    # An encoder whose modality no sample of this rank's batch has, or a part a step does not use, takes no part
    # in that backward pass.
    unused = getattr(model, "encoders", None) is not None or len(method.parts) > 0 or len(optimizations) > 1
    trainee = distributed.wrap_model(Trainee(model, method), context, find_unused_parameters=unused)
    model.train()
    method.parts.train()
    services = method_services(experiment, device, log.record, optimizations[0].optimizer, total)
    if "complete" in streams:
        services.complete_batch = lambda: move_batch(next(streams["complete"]), device)
    method.setup(services)
    loop = Loop(experiment, state, staging, stop, trainee, list(optimizations), schedulers, streams, drops, total,
                autocast_context(settings.precision, device), guard, progress, [*callbacks, *built_in])
    return loop


def _check_optimizations(method: TrainingMethod, optimizations: Sequence[Optimization]) -> None:
    """What ``configure_optimizers`` returned: optimisers with distinct names and parameters, existing step
    functions, the first (the model's) stepping every iteration; anything else is one ConfigError."""
    where = f"method {method.name!r}: configure_optimizers"
    if not isinstance(optimizations, (list, tuple)) or not optimizations or \
            not all(isinstance(o, Optimization) for o in optimizations):
        raise ConfigError(f"{where} must return a non-empty list of Optimization, got {optimizations!r:.80}")
    names = [o.name for o in optimizations]
    if len(set(names)) != len(names) or optimizations[0].every != 1 or any(o.every < 1 for o in optimizations):
        raise ConfigError(f"{where}: its optimisers {names} need distinct names, every >= 1, and the first (the "
                          "model's) stepping every iteration")
    missing = [o.step for o in optimizations if not callable(getattr(method, o.step, None))]
    if missing:
        raise ConfigError(f"{where}: the step functions {missing} are not methods of {type(method).__name__}")
    owner: dict[int, str] = {}
    for optimization in optimizations:
        for group in optimization.optimizer.param_groups:
            for param in group["params"]:
                if id(param) in owner and owner[id(param)] != optimization.name:
                    raise ConfigError(f"{where}: a parameter of shape {tuple(param.shape)} is in the optimisers "
                                      f"{owner[id(param)]!r} and {optimization.name!r}; each may be stepped by one")
                owner[id(param)] = optimization.name


def complete_training_samples(bundle: Any, method: str) -> Any:
    """The training split's samples that have every modality (what ``services.complete_batch`` draws from)."""
    try:
        return complete_samples(bundle.train, bundle.modalities)
    except DataError:
        raise DataError(f"method {method!r} trains on batches of complete samples, but none of the "
                        f"{len(bundle.train)} training samples has every modality ({', '.join(bundle.modalities)}); "
                        "give the training split some, or choose a method that needs none") from None


def _what_was_kept(staging: RunStaging) -> str:
    """For a divergence message: whether a finite checkpoint of this run is on disk."""
    checkpoint = staging.target / RunDir(staging.target).checkpoint.name
    if staging.promoted and checkpoint.is_file():
        return (f"{str(checkpoint)!r} holds the last finite state: continue from it with "
                f"`mckd train --resume {staging.target} --set train.lr=...`")
    return "no checkpoint had been written, so nothing was kept"


def _prepare_run_dir(run: RunDir, config: Config, experiment: Experiment) -> None:
    save_config(config, run.config)
    bundle = experiment.bundle
    atomic_write_text(run.data, json.dumps({"modalities": list(bundle.modalities), "num_classes": bundle.num_classes,
                                            **bundle.info, "facts": bundle.facts}, indent=2))
    from mckd.data.scaling import write_scaling

    write_scaling(run.scaling, bundle.scaling)  # new samples are scaled as the training split was


def _set_determinism(settings: TrainConfig, device: torch.device) -> None:
    if settings.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        # warn_only: a CUDA op without a deterministic kernel warns instead of stopping the run
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not settings.deterministic
