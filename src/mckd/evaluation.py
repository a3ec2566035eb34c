"""Evaluation over subsets of modalities and as the data are observed (pure: a model, a task, a dataset in; rows out).

For data that truly lack modalities (clinical records, cases without a
sequence) four views matter, all computed in one pass:

- **every subset** ``s`` of the modalities (``2^N - 1`` rows): over the test
  samples that have *all* of ``s``, each predicted from exactly ``s``; each
  row says how many samples it covers (``samples``). A subset no sample has
  gets a row with ``samples`` 0 and no metrics (``None``);
- **as observed** (``pattern`` ``all, as observed``): every sample predicted from the
  modalities it has;
- **per missingness pattern**: the same, split by which modalities a sample has;
- **single modalities on complete samples**: each modality alone over the
  test samples that have every modality, so single modalities are ranked on
  the same samples (the subset rows of single modalities each cover the samples
  that have that one, which differ when modalities are missing).

A sample with pattern ``P`` is predicted from ``P`` in the row of subset
``P``, which is exactly "as observed", so the observed rows cost no extra
forward pass. Reading a run directory and writing its tables is
:mod:`mckd.runs`'s.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from mckd import distributed
from mckd.data.bundle import move_batch, presence
from mckd.errors import DataError
from mckd.method.model import MultiModalModel
from mckd.tasks.base import Task

SUBSET_SEPARATOR = "+"
# The pattern key of the row of every sample as observed. Summary rows hold a comma, which no modality name can
# (mckd.data.bundle.check_modality_names), so a modality called `all` or `mean` never meets them.
OBSERVED = "all, as observed"

Row = dict[str, Any]


def all_subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, smallest first, in the modalities' order within a size."""
    return [
        combo
        for size in range(1, len(modalities) + 1)
        for combo in itertools.combinations(modalities, size)
    ]


def subset_name(subset: Sequence[str]) -> str:
    return SUBSET_SEPARATOR.join(subset)


@dataclass
class Evaluation:
    """The rows of one evaluation.

    Attributes:
        subsets: one row per subset: ``subset``, ``size``, ``samples``, then each metric.
        observed: ``pattern`` ``all, as observed`` (every sample with its own modalities), then one row per
            missingness pattern found: ``pattern``, ``size``, ``samples``, then each metric.
        singles_on_complete: one row per modality (``subset``, ``size`` 1, ``samples``, each metric), each
            predicted from that modality alone over the samples that have every modality (``samples`` the same
            in every row; 0 and no metrics where no sample has them all).
    """

    subsets: list[Row]
    observed: list[Row]
    singles_on_complete: list[Row] = field(default_factory=list)


def _take(batch: Mapping[str, Any], rows: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    return [x[rows] for x in batch["inputs"]], batch["target"][rows]


@torch.no_grad()
def evaluate(
    model: MultiModalModel,
    task: Task,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    subsets: Sequence[Sequence[str]] | None = None,
) -> Evaluation:
    """The task's metrics for each subset of modalities and as observed (see the module docstring).

    Args:
        model: the trained model (put in eval mode).
        task: gives the inference and the metrics (:meth:`~mckd.tasks.base.Task.accumulator`).
        dataset: samples with ``inputs``, ``present`` (what each sample truly has) and ``target``.
        batch_size: samples per forward pass.
        device: where the model is.
        subsets: the subsets to evaluate (default: every non-empty one). With
            other subsets than all of them, the observed rows cover the samples
            whose pattern is among them.

    Under torchrun each rank evaluates its share of the samples and the
    metrics are reduced over ranks (every rank calls this).
    """
    if len(dataset) == 0:
        raise DataError("evaluation: the split to evaluate has no samples")  # a mean over nothing is not 0
    modalities = model.modalities
    subsets = [tuple(s) for s in subsets] if subsets is not None else all_subsets(modalities)
    masks = torch.tensor([[m in s for m in modalities] for s in subsets], dtype=torch.bool, device=device)  # (K, N)
    per_subset = [task.accumulator() for _ in subsets]
    counts = torch.zeros(len(subsets), dtype=torch.int64)
    observed = task.accumulator()
    single = {k: task.accumulator() for k, s in enumerate(subsets) if len(s) == 1}  # on the complete samples
    complete_count = torch.zeros(1, dtype=torch.int64)
    by_pattern: dict[tuple[str, ...], Any] = {}
    pattern_counts: dict[tuple[str, ...], int] = {}
    model.eval()
    # its own generator: starting the loader draws a seed from it, so evaluating mid-training (LCKD's elections,
    # validation) leaves the global RNG, and with it the rest of training, as it was
    loader = DataLoader(distributed.shard(dataset), batch_size=batch_size, shuffle=False, generator=torch.Generator())
    for batch in loader:
        batch = move_batch(batch, device)
        present = batch["present"].to(torch.bool)  # (B, N): what each sample has
        if bool((~present.any(dim=1)).any()):
            raise DataError("evaluation: a test sample has no modality at all; it cannot be predicted from anything")
        complete_count += int(present.all(dim=1).sum())
        for k, subset in enumerate(subsets):
            has_all = (present & masks[k]).sum(dim=1) == masks[k].sum()  # (B,)
            rows = has_all.nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            inputs, target = _take(batch, rows)
            subset_present = masks[k].unsqueeze(0).expand(rows.numel(), -1)
            prediction = task.infer(lambda xs, pr: model(xs, pr).prediction, inputs, subset_present)
            per_subset[k].update(prediction, target)
            counts[k] += rows.numel()
            if k in single:
                complete = present[rows].all(dim=1).nonzero(as_tuple=True)[0]  # these samples have every modality
                if complete.numel():
                    single[k].update(prediction[complete], target[complete])
            exact = (present[rows] == masks[k]).all(dim=1)  # these samples have exactly this subset
            if bool(exact.any()):
                chosen = exact.nonzero(as_tuple=True)[0]
                observed.update(prediction[chosen], target[chosen])
                if subset not in by_pattern:
                    by_pattern[subset] = task.accumulator()
                    pattern_counts[subset] = 0
                by_pattern[subset].update(prediction[chosen], target[chosen])
                pattern_counts[subset] += int(chosen.numel())
    counts = distributed.all_reduce_sum(counts)
    complete_total = int(distributed.all_reduce_sum(complete_count)[0])
    subset_rows = [{"subset": subset_name(s), "size": len(s), "samples": int(counts[k]), **per_subset[k].compute()}
                   for k, s in enumerate(subsets)]
    patterns = sorted(_all_ranks_patterns(by_pattern, subsets), key=lambda s: (len(s), subsets.index(s)))
    total = int(distributed.all_reduce_sum(torch.tensor([sum(pattern_counts.values())]))[0])
    observed_rows = [{"pattern": OBSERVED, "size": "", "samples": total, **observed.compute()}]
    for pattern in patterns:
        accumulator = by_pattern.get(pattern) or task.accumulator()
        samples = int(distributed.all_reduce_sum(torch.tensor([pattern_counts.get(pattern, 0)]))[0])
        observed_rows.append({"pattern": subset_name(pattern), "size": len(pattern), "samples": samples,
                              **accumulator.compute()})
    single_rows = [{"subset": subset_name(subsets[k]), "size": 1, "samples": complete_total, **accumulator.compute()}
                   for k, accumulator in single.items()]
    return Evaluation(subset_rows, observed_rows, single_rows)


def _all_ranks_patterns(by_pattern: Mapping[tuple[str, ...], Any], subsets: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The patterns seen on any rank (every rank must compute the same accumulators in the same order)."""
    seen = torch.tensor([s in by_pattern for s in subsets], dtype=torch.int64)
    seen = distributed.all_reduce_sum(seen)
    return [s for s, flag in zip(subsets, seen.tolist()) if flag > 0]


def evaluate_subsets(
    model: MultiModalModel,
    task: Task,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    subsets: Sequence[Sequence[str]] | None = None,
) -> list[Row]:
    """The subset rows of :func:`evaluate`."""
    return evaluate(model, task, dataset, batch_size, device, subsets).subsets


def missingness_patterns(splits: Mapping[str, Dataset], modalities: Sequence[str]) -> list[Row]:
    """How many samples of each split have each pattern of present modalities (one row per pattern seen)."""
    counts: dict[tuple[str, ...], dict[str, int]] = {}
    for split, dataset in splits.items():
        for row in presence(dataset).tolist():
            pattern = tuple(m for m, has in zip(modalities, row) if has)
            counts.setdefault(pattern, {name: 0 for name in splits})[split] += 1
    order = all_subsets(modalities)
    rows = []
    for pattern in sorted(counts, key=lambda p: (len(p), order.index(p) if p in order else len(order))):
        name = subset_name(pattern) if pattern else "(none)"
        rows.append({"pattern": name, "size": len(pattern), **counts[pattern],
                     "total": sum(counts[pattern].values())})
    return rows
