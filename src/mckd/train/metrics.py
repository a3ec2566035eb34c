"""The run's training records, and the running sums of the losses between two of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from mckd import distributed
from mckd.errors import CheckpointError
from mckd.loggers import Logger, open_loggers
from mckd.rundir import RunDir


class MetricsLog:
    """The run's training records (:mod:`mckd.loggers`), and the running sums of the losses between two of them.

    Records are one mapping each with a ``kind``: ``train`` (the mean of each
    loss since the last record, ``<name>_loss``, the learning rate, seconds,
    iterations per second), ``weights`` (the normalised importance weights
    after a meta step), ``val`` (validation scores) and whatever a method
    records (LCKD's ``teacher``). ``metrics.jsonl`` gets every record; the
    loggers of ``train.loggers`` (CSV, TensorBoard) too. The sums stay on the
    device; the log reads it once per record. Each loss has its own count: a
    loss of an optimiser stepped every ``k`` iterations is averaged over its
    own steps (and left out of a record when it had none).

    Args:
        run_path: the run directory, or a :class:`~mckd.rundir.RunDir` whose ``path`` is where it is now (it
            moves from its staging folder at the first checkpoint); None on ranks other than 0: nothing is
            written there.
        loss_names: the losses the method's steps log, in order (:meth:`TrainingMethod.loss_names`).
        device: where the sums live.
        start_iteration: on resume, the checkpoint's iteration: later records
            (written after it by the stopped run) are dropped.
        pending_weights: iterations of weights records that the checkpoint
            still holds as pending (a stopped run may have written them).
        loggers: ``train.loggers``.
        resume: whether the run continues from a checkpoint.
    """

    def __init__(self, run_path: Path | RunDir | None, loss_names: Sequence[str], device: torch.device,
                 start_iteration: int = 0, pending_weights: Sequence[int] = (), loggers: Sequence[str] = (),
                 resume: bool = False) -> None:
        self.loss_names = tuple(loss_names)
        self.sums = torch.zeros(len(self.loss_names), device=device)
        self.counts = [0] * len(self.loss_names)
        self.weight_history: list[tuple[int, torch.Tensor]] = []  # meta steps not yet written
        self.loggers: list[Logger] = []
        if run_path is not None:
            now = run_path if isinstance(run_path, RunDir) else RunDir(run_path)
            kept = kept_records(now.metrics, start_iteration, set(pending_weights)) if resume else None
            self.loggers = open_loggers(run_path, loggers, kept, start_iteration)

    def record(self, entry: dict[str, Any]) -> None:
        """Write one record (rank 0)."""
        for logger in self.loggers:
            logger.write(entry)

    def add(self, losses: Mapping[str, torch.Tensor]) -> None:
        """Add one iteration's losses to the running sums (no device synchronisation)."""
        if len(losses) == len(self.loss_names):  # every loss: one vector addition
            self.sums += torch.stack([losses[name].float() for name in self.loss_names])
            self.counts = [count + 1 for count in self.counts]
            return
        for name, value in losses.items():  # names checked by the step (mckd.train.step.check_step)
            index = self.loss_names.index(name)
            self.sums[index] += value.float()
            self.counts[index] += 1

    def note_weights(self, iteration: int, weights: torch.Tensor | None) -> None:
        """Keep the weights after a meta step, written with the next record (they stay on the device until then)."""
        if weights is not None:
            self.weight_history.append((iteration, weights.detach()))

    def mean_losses(self) -> dict[str, float]:
        """The mean of each loss since the last record, over ranks (reads the device); NaN for one never logged."""
        if len(set(self.counts)) <= 1:  # the usual case: every loss logged at every iteration
            divided = self.sums / max(self.counts[0] if self.counts else 0, 1)
        else:
            divided = self.sums / torch.tensor([max(c, 1) for c in self.counts], dtype=self.sums.dtype,
                                               device=self.sums.device)
        means = distributed.all_reduce_mean(divided)
        return {name: (value if count else float("nan"))
                for name, value, count in zip(self.loss_names, means.tolist(), self.counts)}

    def write_train_record(self, iteration: int, epoch: float, lr: float, seconds: float,
                           modalities: Sequence[str], rate: float | None = None) -> dict[str, float]:
        """Write the pending weights and a ``train`` record of the means since the last one; reset the sums."""
        values = self.mean_losses()  # the one read of the device per record
        logged = {name: value for name, value, count in zip(self.loss_names, values.values(), self.counts) if count}
        for step, weights in self.weight_history:
            self.record({"iteration": step, "kind": "weights", "weights": dict(zip(modalities, weights.tolist()))})
        self.weight_history.clear()
        entry = {"iteration": iteration, "epoch": epoch, "kind": "train",
                 **{f"{name}_loss": value for name, value in logged.items()}, "lr": lr, "seconds": seconds}
        if rate is not None:
            entry["iterations_per_s"] = rate
        self.record(entry)
        self.sums.zero_()
        self.counts = [0] * len(self.loss_names)
        return logged

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (this rank's sums are gathered separately, per rank)."""
        return {"names": list(self.loss_names), "counts": list(self.counts),
                "pending": [step for step, _ in self.weight_history],
                "pending_weights": [values for _, values in self.weight_history]}

    def load_state_dict(self, state: Mapping[str, Any], sums: torch.Tensor) -> None:
        if list(state["names"]) != list(self.loss_names):
            raise CheckpointError(f"the checkpoint logged the losses {state['names']}, this run {list(self.loss_names)}")
        # format 3 kept one count for every loss
        self.counts = [int(c) for c in state["counts"]] if "counts" in state else [int(state["count"])] * len(self.loss_names)
        self.sums.copy_(sums)
        self.weight_history[:] = [(int(step), values.to(self.sums.device))
                                  for step, values in zip(state["pending"], state["pending_weights"])]


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
