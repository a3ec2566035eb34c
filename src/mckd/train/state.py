"""Everything a stopped run needs to continue exactly, and its tensors-only checkpoint.

A training checkpoint (``checkpoint.safetensors``, :data:`mckd.checkpoint.CHECKPOINT_FORMAT`)
holds tensors only:

- ``model.<key>``: the model (what evaluation and prediction read);
- ``parts.<key>``: the training method's own modules (:attr:`TrainingMethod.parts`);
- ``<part>.<path>`` for the method's state, every optimiser and schedule by
  name, the data positions, the metrics log, the callbacks and each rank's
  random generators;

and, as JSON metadata, the iteration, the number of processes, the config and,
per part, the tree of plain values that says where each tensor goes back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from mckd import distributed
from mckd.build import Experiment, seed_everything
from mckd.checkpoint import (
    CHECKPOINT_FORMAT,
    flatten_state,
    load_checkpoint,
    load_state_into,
    referenced_tensors,
    rng_state_tensors,
    save_checkpoint,
    set_rng_state_tensors,
    unflatten_state,
)
from mckd.errors import CheckpointError
from mckd.method.base import Optimization, TrainingMethod
from mckd.train.metrics import MetricsLog
from mckd.train.streams import BatchStream

STATE_PARTS = ("method", "optimizers", "schedulers", "data", "log", "callbacks", "ranks")


class TrainingState:
    """Everything a stopped run needs to continue exactly, with ``state_dict`` / ``load_state_dict``.

    The model, the training method's own modules and state (MCKD's importance
    weights and their optimiser, LCKD's teacher, a discriminator), every
    optimiser and its schedule, the data positions, the metrics log's running
    sums, the callbacks' state and every random generator of every rank.
    """

    def __init__(self, model: torch.nn.Module, method: TrainingMethod, optimizations: Sequence[Optimization],
                 schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler], streams: dict[str, BatchStream],
                 generators: dict[str, torch.Generator], log: MetricsLog, callbacks: Sequence[Any],
                 context: distributed.Context, seed: int) -> None:
        self.model, self.method, self.optimizations, self.schedulers = model, method, list(optimizations), list(schedulers)
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
            "parts": self.method.parts.state_dict(),
            "method": self.method.state_dict(),
            "optimizers": {o.name: o.optimizer.state_dict() for o in self.optimizations},
            "schedulers": {o.name: s.state_dict() for o, s in zip(self.optimizations, self.schedulers)},
            "data": {name: stream.state() for name, stream in self.streams.items()},
            "log": self.log.state_dict(),
            "callbacks": {callback.name: callback.state_dict() for callback in self.callbacks},
            "ranks": ranks,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; the random generators last, so nothing draws after them."""
        saved_world, world, rank = int(state["world_size"]), self.context.world_size, self.context.rank
        load_state_into(self.model, state["model"], "", state.get("source", "the checkpoint"))
        load_state_into(self.method.parts, state["parts"], "", "the checkpoint's method parts")
        self.method.load_state_dict(state["method"])
        names = [o.name for o in self.optimizations]
        if sorted(state["optimizers"]) != sorted(names):
            raise KeyError(f"the checkpoint has the optimisers {sorted(state['optimizers'])}, this run {names}")
        for optimization, scheduler in zip(self.optimizations, self.schedulers):
            optimization.optimizer.load_state_dict(state["optimizers"][optimization.name])
            scheduler.load_state_dict(state["schedulers"][optimization.name])
        for name, stream in self.streams.items():
            stream.load_state(state["data"][name], saved_world, world)
        mine = state["ranks"][rank if saved_world == world else 0]  # another count: rank 0's sums stand in
        self.log.load_state_dict(state["log"], mine["log_sums"])
        saved = dict(state["callbacks"])
        if "validation" not in saved and "best_score" in state["log"]:  # format 3 kept the best score in the log
            saved["validation"] = {"best_score": state["log"]["best_score"],
                                   "best_iteration": state["log"].get("best_iteration", 0)}
        for callback in self.callbacks:
            if callback.name in saved:
                callback.load_state_dict(saved[callback.name])
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


def save_training_state(path: Path, state: TrainingState, metadata: dict[str, Any]) -> None:
    """Write ``state`` as a tensors-only checkpoint (every rank calls this; rank 0 writes)."""
    full = state.state_dict()
    if not state.context.is_main:
        return
    tensors = {f"model.{key}": value for key, value in full["model"].items()}
    tensors.update({f"parts.{key}": value for key, value in full["parts"].items()})
    trees: dict[str, Any] = {}
    for part in STATE_PARTS:
        part_tensors, trees[part] = flatten_state(full[part], part)
        tensors.update(part_tensors)
    save_checkpoint(path, tensors, {**metadata, "format": CHECKPOINT_FORMAT, "iteration": full["iteration"],
                                    "world_size": full["world_size"], "state": trees})


def read_training_state(path: Path) -> dict[str, Any]:
    """The :meth:`TrainingState.state_dict` that :func:`save_training_state` wrote at ``path`` (format 3 or later)."""
    tensors, metadata = load_checkpoint(path)
    source = str(path)
    version = int(metadata.get("format", 1))
    if version < 3:
        raise CheckpointError(f"checkpoint {source!r} was written by an older mckd (format {version}) "
                              "and cannot be resumed; evaluate it with `mckd evaluate`, or train the run again")
    trees = metadata.get("state") if isinstance(metadata.get("state"), dict) else {}
    if version == 3 and "optimizer" in trees and "scheduler" in trees:  # one optimiser, the model's
        trees = {**trees, "optimizers": {"model": trees["optimizer"]}, "schedulers": {"model": trees["scheduler"]}}
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
    for prefix in ("model", "parts"):
        state[prefix] = {key[len(prefix) + 1:]: value for key, value in tensors.items() if key.startswith(prefix + ".")}
    state["source"] = source  # messages name the file
    return state


def checkpoint_metadata(experiment: Experiment, complete: bool) -> dict[str, Any]:
    """What a checkpoint says besides its tensors: the config, the modalities, input shapes and task facts."""
    bundle = experiment.bundle
    return {
        "complete": complete,
        "config": experiment.config.to_dict(),
        "modalities": list(bundle.modalities),
        "input_shapes": {m: list(bundle.input_shapes[m]) for m in bundle.modalities},
        "facts": bundle.task_facts(),
    }
