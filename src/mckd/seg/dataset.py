"""The ``seg`` dataset (alias ``brats``): image sequences as modalities, read from a cache made by ``mckd prepare seg``.

Training samples are random crops (``crop``, in the cache's voxel order
``[X, Y, Z]``), centred on a random tumour voxel with probability
``foreground_prob`` and uniform otherwise, flipped at random along each axis.
The meta-validation split gives random crops too (all sequences present, as
the meta step needs); the test split gives whole cases (cropped to the brain),
which evaluation segments with a sliding window.

Each sequence is a 1-channel volume ``[1, X, Y, Z]``; a case without a
sequence has zeros there and ``present`` false (it trains with its real
presence mask; the meta-validation split is drawn from the cases that have
every sequence, as the meta step needs). The target is the internal label map
``[1, X, Y, Z]`` (uint8 classes of the cache's label scheme; BraTS: 0, 1 core,
2 oedema, 3 enhancing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mckd.data.bundle import DataBundle
from mckd.data.recorded_split import recorded_cases
from mckd.registry import PATH
from mckd.errors import ConfigError, DataError
from mckd.registry import register_dataset
from mckd.seg.cache import CachedCase, cache_plan, cache_scheme, read_dataset_record
from mckd.seg.labels import LabelScheme


@dataclass
class SegOptions:
    """Options of the ``seg`` (``brats``) dataset (the segmentation head and inference settings are the task's)."""

    cache: str = field(default="", metadata=PATH)  # folder written by `mckd prepare seg SRC OUT`
    modalities: list[str] = field(default_factory=list)  # sequences used, in order; empty: all in the cache
    split: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])  # train / meta-validation / test cases
    split_seed: int = 0  # fixed across training seeds: runs are paired on one test set
    train_cases: list[str] = field(default_factory=list)  # explicit case ids; all three lists override split
    val_cases: list[str] = field(default_factory=list)
    test_cases: list[str] = field(default_factory=list)
    crop: list[int] = field(default_factory=lambda: [160, 160, 80])  # training crop [X, Y, Z]; also the sliding window
    foreground_prob: float = 0.33  # share of crops centred on a tumour voxel (oversampling)
    flip: bool = True  # random flips along each axis in training
    crops_per_epoch: int = 250  # training samples per "epoch" (only train.epochs uses it)
    val_crops: int = 20  # meta-validation crops per pass (the authors' code: 20 crops of 5 held-out cases)
    downsample: int = 1  # read every n-th voxel per axis (2: 8x fewer voxels) for quick CPU runs; 1 for real runs

    def validate(self, path: str) -> None:
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6 or min(self.split) < 0:
            raise ConfigError(f"{path}.split must be three non-negative fractions summing to 1, got {self.split}")
        if len(self.crop) != 3 or min(self.crop) < 8:
            raise ConfigError(f"{path}.crop must be three sizes >= 8 ([X, Y, Z] voxels), got {self.crop}")
        if not 0 <= self.foreground_prob <= 1:
            raise ConfigError(f"{path}.foreground_prob must be in [0, 1], got {self.foreground_prob}")
        if self.downsample < 1 or self.crops_per_epoch < 1 or self.val_crops < 1:
            raise ConfigError(f"{path}: downsample, crops_per_epoch and val_crops must be >= 1")
        lists = [self.train_cases, self.val_cases, self.test_cases]
        if any(lists) and not all(lists):
            raise ConfigError(f"{path}: give all of train_cases, val_cases and test_cases, or none")


def _view(array: np.ndarray, step: int) -> np.ndarray:
    return array if step == 1 else array[::step, ::step, ::step]


class SegCases:
    """Cached cases of one split, seen through ``downsample``."""

    def __init__(self, cache: str | Path, case_ids: Sequence[str], modalities: Sequence[str], downsample: int,
                 label_lookup: np.ndarray | None = None) -> None:
        self.cases = [CachedCase(cache, c, modalities) for c in case_ids]
        self.modalities = tuple(modalities)
        self.downsample = downsample
        self.label_lookup = label_lookup  # cached classes -> another scheme's (evaluating a run on other data)
        self._foreground: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def shape(self, index: int) -> tuple[int, ...]:
        return tuple(-(-s // self.downsample) for s in self.cases[index].shape)  # as array[::step] gives

    def foreground(self, index: int) -> np.ndarray:
        """``[K, 3]`` tumour voxel coordinates of case ``index`` (computed once)."""
        if index not in self._foreground:
            self._foreground[index] = np.argwhere(_view(self.cases[index].labels(), self.downsample) > 0)
        return self._foreground[index]

    def read(self, index: int, box: Sequence[tuple[int, int]] | None = None, labels: bool = True) -> dict[str, Any]:
        """One sample; ``box`` = ``[(start, stop)] * 3`` on the viewed grid, may reach outside (zero padding)."""
        case = self.cases[index]
        full = self.shape(index)
        if box is None:
            box = [(0, s) for s in full]
        size = tuple(b - a for a, b in box)
        src = tuple(slice(max(a, 0), min(b, s)) for (a, b), s in zip(box, full))
        dst = tuple(slice(sl.start - a, sl.stop - a) for sl, (a, _) in zip(src, box))
        inputs = []
        for modality in self.modalities:
            out = np.zeros(size, dtype=np.float32)
            image = case.image(modality)
            if image is not None:
                out[dst] = _view(image, self.downsample)[src]
            inputs.append(out)
        sample: dict[str, Any] = {"inputs": inputs, "present": case.present.copy()}
        if labels:
            target = np.zeros(size, dtype=np.uint8)
            target[dst] = _view(case.labels(), self.downsample)[src]
            sample["target"] = target if self.label_lookup is None else self.label_lookup[target]
        return sample


def _to_tensors(sample: dict[str, Any]) -> dict[str, Any]:
    return {
        "inputs": tuple(torch.from_numpy(np.ascontiguousarray(x))[None] for x in sample["inputs"]),  # (1, X, Y, Z)
        "present": torch.from_numpy(sample["present"]),
        "target": torch.from_numpy(np.ascontiguousarray(sample["target"]))[None],  # (1, X, Y, Z) uint8
    }


class CropDataset(Dataset):
    """Random crops for training (flips on) or for the meta step (flips off).

    Randomness comes from torch's global generator, which the training seed
    fixes and DataLoader workers each reseed, so every worker draws differently.
    """

    def __init__(self, cases: SegCases, crop: Sequence[int], length: int, foreground_prob: float, flip: bool) -> None:
        if len(cases) == 0:
            raise DataError("a segmentation split has no cases")
        self.cases = cases
        self.crop = tuple(int(c) for c in crop)
        self.length = length
        self.foreground_prob = foreground_prob
        self.flip = flip

    def __len__(self) -> int:
        return self.length

    def presence(self) -> torch.Tensor:
        """bool ``[len, N]``: the sequences each sample's case has (read from the cache's records, no crop drawn)."""
        return torch.from_numpy(np.stack([self.cases.cases[i % len(self.cases)].present for i in range(self.length)]))

    def _start(self, index: int) -> list[int]:
        shape = self.cases.shape(index)
        low = [min(0, s - c) for s, c in zip(shape, self.crop)]  # negative when the case is smaller: centred padding
        high = [max(0, s - c) for s, c in zip(shape, self.crop)]
        foreground = self.cases.foreground(index) if self.foreground_prob > 0 else np.empty((0, 3))
        if len(foreground) and float(torch.rand(())) < self.foreground_prob:
            centre = foreground[int(torch.randint(len(foreground), ()))]
            return [int(np.clip(c - k // 2, lo, hi)) for c, k, lo, hi in zip(centre, self.crop, low, high)]
        return [int(torch.randint(lo, hi + 1, ())) if hi > lo else lo for lo, hi in zip(low, high)]

    def __getitem__(self, item: int) -> dict[str, Any]:
        index = item % len(self.cases)
        start = self._start(index)
        sample = self.cases.read(index, [(a, a + c) for a, c in zip(start, self.crop)])
        if self.flip:
            for axis in range(3):
                if float(torch.rand(())) < 0.5:
                    sample["inputs"] = [np.flip(x, axis) for x in sample["inputs"]]
                    sample["target"] = np.flip(sample["target"], axis)
        return _to_tensors(sample)


class CaseDataset(Dataset):
    """Whole cases (cropped to the brain) for evaluation; shapes differ, so batch size 1."""

    def __init__(self, cases: SegCases) -> None:
        self.cases = cases

    def __len__(self) -> int:
        return len(self.cases)

    def presence(self) -> torch.Tensor:
        """bool ``[cases, N]``: the sequences each case has."""
        return torch.from_numpy(np.stack([case.present for case in self.cases.cases]))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _to_tensors(self.cases.read(index))


def split_cases(case_ids: Sequence[str], fractions: Sequence[float], seed: int,
                complete: Sequence[str] | None = None) -> tuple[list[str], list[str], list[str]]:
    """Shuffle case ids with ``seed`` and cut them by ``fractions``; every split gets at least one case.

    ``complete``: the cases that have every sequence. The meta step uses every
    sequence of its samples, so the meta-validation split is drawn from these
    when the plain cut would put an incomplete case there (the other cases
    keep their shuffled order for training and test).
    """
    ids = sorted(case_ids)
    if len(ids) < 3:
        raise DataError(f"{len(ids)} cases are too few for disjoint train / meta-validation / test splits (need 3)")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = max(1, int(round(fractions[1] * len(ids))))
    n_test = max(1, int(round(fractions[2] * len(ids))))
    n_train = len(ids) - n_val - n_test
    if n_train < 1:
        raise DataError(f"split {list(fractions)} leaves no training case among {len(ids)}")
    shuffled = [ids[i] for i in order]
    train, val, test = shuffled[:n_train], shuffled[n_train:n_train + n_val], shuffled[n_train + n_val:]
    if complete is not None and not set(val) <= set(complete):
        whole = [c for c in shuffled if c in set(complete)]
        val = (whole + [c for c in shuffled if c not in set(whole)])[:n_val]
        rest = [c for c in shuffled if c not in set(val)]
        train, test = rest[:n_train], rest[n_train:]
    return train, val, test


def class_shares(cases: "SegCases", num_classes: int) -> list[float]:
    """Each internal class's share of the voxels of ``cases`` (their brain boxes), summing to 1.

    Read from each case's record (``label_voxels``, written by ``prepare``), or
    counted from its label map when the record lacks them.
    """
    counts = np.zeros(num_classes, dtype=np.float64)
    for case in cases.cases:
        recorded = case.meta.get("label_voxels")
        if isinstance(recorded, dict):
            for value, count in recorded.items():
                if 0 <= int(value) < num_classes:
                    counts[int(value)] += float(count)
        else:
            counts += np.bincount(np.asarray(case.labels()).ravel(), minlength=num_classes)[:num_classes]
    total = counts.sum()
    return [float(c / total) for c in counts] if total > 0 else []


def data_facts(options: SegOptions, spacing: Sequence[float], scheme: LabelScheme | None = None,
               plan: dict[str, Any] | None = None, shares: Sequence[float] | None = None) -> dict[str, Any]:
    """What the segmentation task needs to know (recorded in the run's data.json and checkpoint).

    ``roi`` the window, ``spacing`` the model's voxel size (mm), ``downsample``,
    ``labels`` the label scheme, ``plan`` how new data are put on the cache's
    grid (source format, sequences, orientation, the cache's spacing),
    ``class_shares`` each class's share of the training voxels (where the head starts).
    """
    step = options.downsample
    facts: dict[str, Any] = {"target": "label_map", "roi": list(options.crop),
                             "spacing": [float(s) * step for s in spacing], "downsample": step}
    if scheme is not None:
        facts["labels"] = scheme.to_json()
    if plan is not None:
        facts["plan"] = plan
    if shares:
        facts["class_shares"] = [round(float(v), 6) for v in shares]
    return facts


@register_dataset("seg", SegOptions,
                  "3D segmentation from a `mckd prepare seg` cache (BraTS, MSD, nnU-Net, layouts); any sequences, crops")
def build_seg(options: SegOptions, seed: int) -> DataBundle:
    """Read the cache's record, split its cases and make the three datasets."""
    if not options.cache:
        raise ConfigError("data.cache is empty: set it to a folder made by `mckd prepare seg SRC OUT`")
    record = read_dataset_record(options.cache)
    modalities = tuple(options.modalities or record["modalities"])
    unknown = [m for m in modalities if m not in record["modalities"]]
    if unknown or len(set(modalities)) != len(modalities):
        raise ConfigError(f"data.modalities {list(modalities)}: must be distinct names from the cache's {record['modalities']}")
    if not record.get("has_labels", True):
        raise DataError(f"cache {options.cache} has no label maps; training and evaluation need them")
    if options.train_cases:
        splits = (list(options.train_cases), list(options.val_cases), list(options.test_cases))
        for name, ids in zip(("train", "val", "test"), splits):
            missing = [c for c in ids if c not in record["cases"]]
            if missing:
                raise ConfigError(f"data.{name}_cases names {missing}, which are not in the cache ({len(record['cases'])} cases)")
        if set(splits[0]) & (set(splits[1]) | set(splits[2])) or set(splits[1]) & set(splits[2]):
            raise ConfigError("data.train_cases, val_cases and test_cases must be disjoint")
    else:
        everything = [CachedCase(options.cache, c, modalities) for c in record["cases"]]
        complete = [c.case_id for c in everything if bool(c.present.all())]
        splits = split_cases(record["cases"], options.split, options.split_seed, complete)
        lacking = [c for c in splits[1] if c not in set(complete)]
        if lacking:
            print(f"mckd: warning: meta-validation cases {lacking} lack a sequence ({len(complete)} of "
                  f"{len(record['cases'])} cases have every one); the meta step uses every sequence")
    splits = recorded_cases(record["cases"], splits)  # a run's own split, when it recorded one
    train_cases, val_cases, test_cases = (SegCases(options.cache, ids, modalities, options.downsample) for ids in splits)
    spacing = train_cases.cases[0].meta.get("spacing", [1.0, 1.0, 1.0])
    scheme = cache_scheme(record)
    plan = {**cache_plan(record).to_json(), "spacing": [float(s) for s in spacing],
            "source_format": record.get("source_format", {"kind": record.get("layout", "brats2018"),
                                                          "modalities": record["modalities"]})}
    if record.get("sources"):  # a cache of several datasets: the run reads more folders of each kind
        plan["other_source_formats"] = [s.get("format", {}) for s in record["sources"][1:]]
    return DataBundle(
        modalities=modalities,
        train=CropDataset(train_cases, options.crop, options.crops_per_epoch, options.foreground_prob, options.flip),
        val=CropDataset(val_cases, options.crop, options.val_crops, options.foreground_prob, flip=False),
        test=CaseDataset(test_cases),
        num_classes=scheme.num_classes,
        input_shapes={m: (1, *options.crop) for m in modalities},
        info={
            "source": str(options.cache),
            "cases": {"train": splits[0], "val": splits[1], "test": splits[2]},
        },
        facts=data_facts(options, spacing, scheme, plan, class_shares(train_cases, scheme.num_classes)),
    )


register_dataset("brats", SegOptions, "alias of seg (the name of mckd 0.1's BraTS dataset)")(build_seg)
