"""The one batch shape used everywhere, and the splits a dataset provides.

A sample is a mapping with ``inputs`` (a tuple of one tensor per modality, in
the bundle's fixed modality order), ``present`` (bool ``[N]``: which
modalities the sample has) and ``target``. PyTorch's default collation turns
a list of samples into a batch of the same shape: ``inputs`` N tensors
``[B, ...]``, ``present`` ``[B, N]``, ``target`` ``[B, ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from mckd.errors import DataError


class MultiModalTensorDataset(Dataset):
    """Samples held in memory as one tensor per modality.

    Args:
        inputs: N tensors, each ``[S, *X_n]`` (S samples).
        target: ``[S, ...]``.
        present: optional bool ``[S, N]`` (default: every modality present).
    """

    def __init__(
        self,
        inputs: Sequence[torch.Tensor],
        target: torch.Tensor,
        present: torch.Tensor | None = None,
    ) -> None:
        size = len(target)
        for n, tensor in enumerate(inputs):
            if len(tensor) != size:
                raise DataError(f"modality {n} has {len(tensor)} samples but there are {size} targets")
        if present is None:
            present = torch.ones(size, len(inputs), dtype=torch.bool)
        if tuple(present.shape) != (size, len(inputs)):
            raise DataError(f"present must be [{size}, {len(inputs)}], got {tuple(present.shape)}")
        self.inputs = tuple(inputs)
        self.target = target
        self.present = present.to(torch.bool)

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "inputs": tuple(t[index] for t in self.inputs),
            "present": self.present[index],
            "target": self.target[index],
        }

    def with_present(self, present: torch.Tensor) -> "MultiModalTensorDataset":
        """The same samples with another availability mask ``[S, N]``."""
        return MultiModalTensorDataset(self.inputs, self.target, present)


@dataclass
class DataBundle:
    """What a dataset entry gives the training loop.

    Attributes:
        modalities: names, in the fixed order of every batch's ``inputs``.
        train, val, test: the training split, the meta-validation split (used
            only by the meta step) and the test split; disjoint.
        num_classes: number of classes (classification) or labels, background included (segmentation).
        input_shapes: per modality, the shape of one sample's input.
        info: anything worth recording in the run directory (split sizes, sources).
        facts: what the task needs to know about the data (:data:`mckd.tasks.base.Facts`:
            segmentation's ``roi``, ``spacing``, ``downsample``); ``num_classes`` is added to it.
        scaling: per modality ``(offset, scale)``, each broadcastable to one sample's shape: the model's input
            is ``(raw - offset) / scale`` (a standardisation fitted on the training split, a pixel range); a
            modality not named is given as read. Saved with the run so new samples are scaled the same way
            (:mod:`mckd.predict_table`).
    """

    modalities: tuple[str, ...]
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shapes: dict[str, tuple[int, ...]]
    info: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    scaling: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_modality_names(self.modalities, "the data's modalities")

    def task_facts(self) -> dict[str, Any]:
        """:attr:`facts` with ``num_classes``: what :func:`mckd.tasks.build_task` is given."""
        return {"num_classes": self.num_classes, **self.facts}


def check_modality_names(names: Sequence[str], where: str) -> None:
    """Modality names are plain and distinct: they join subsets (``flair+t1``), lists (``a,b``) and file names."""
    from mckd.io import name_problem

    for name in names:
        problem = name_problem(name, forbidden="+,")
        if problem:
            raise DataError(f"{where}: modality name {name!r} {problem} (subsets are written like a+b, lists a,b); "
                            "rename it")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise DataError(f"{where}: modality names {repeated} occur twice; each modality needs its own name")


def presence(dataset: Dataset) -> torch.Tensor:
    """bool ``[S, N]``: which modalities each sample of ``dataset`` has, read without loading inputs when it can."""
    if hasattr(dataset, "presence"):
        return dataset.presence()
    if hasattr(dataset, "present"):
        return dataset.present.to(torch.bool)
    if isinstance(dataset, Subset):
        return presence(dataset.dataset)[torch.as_tensor(list(dataset.indices), dtype=torch.int64)]
    return torch.stack([torch.as_tensor(dataset[i]["present"], dtype=torch.bool) for i in range(len(dataset))])


def complete_samples(dataset: Dataset, modalities: Sequence[str], what: str = "the meta-validation split") -> Dataset:
    """The samples of ``dataset`` that have every modality (``dataset`` itself when all do).

    The meta step (Eq. 4 outer) scores ``D(concat_i w_i f_i)`` with every
    modality present, so it can only use complete samples.

    Raises:
        DataError: when no sample is complete.
    """
    complete = presence(dataset).all(dim=1)  # (S,)
    if bool(complete.all()):
        return dataset
    if not bool(complete.any()):
        raise DataError(f"{what} has no sample with every modality ({', '.join(modalities)}) among its "
                        f"{len(dataset)}; the meta step needs complete samples: give it some (data.split, or a "
                        "split column that puts complete samples there), or train without meta steps")
    return Subset(dataset, complete.nonzero(as_tuple=True)[0].tolist())


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move a collated batch to ``device`` (non-blocking from pinned memory)."""
    return {
        "inputs": [t.to(device, non_blocking=True) for t in batch["inputs"]],
        "present": batch["present"].to(device, non_blocking=True),
        "target": batch["target"].to(device, non_blocking=True),
    }
