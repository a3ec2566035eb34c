"""The ``brats`` dataset: MRI sequences as modalities, read from a cache made by ``mckd prepare brats``.

Training samples are random crops (``crop``, in the cache's voxel order
``[X, Y, Z]``), centred on a random tumour voxel with probability
``foreground_prob`` and uniform otherwise, flipped at random along each axis.
The meta-validation split gives random crops too (all sequences present, as
the meta step needs); the test split gives whole cases (cropped to the brain),
which evaluation segments with a sliding window.

Each sequence is a 1-channel volume ``[1, X, Y, Z]``; a case without a
sequence has zeros there and ``present`` false. The target is the internal
label map ``[1, X, Y, Z]`` (uint8: 0, 1 core, 2 oedema, 3 enhancing).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mckd.data.brats_cache import CachedCase, prepare_cache, read_dataset_record
from mckd.data.brats_layout import detect_layout, load_layout
from mckd.data.bundle import DataBundle
from mckd.config import PATH
from mckd.errors import ConfigError, DataError
from mckd.registry import register_dataset


@dataclass
class BratsOptions:
    """Options of the ``brats`` dataset (the segmentation head and inference settings are the task's)."""

    cache: str = field(default="", metadata=PATH)  # folder written by `mckd prepare brats SRC OUT`
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


class BratsCases:
    """Cached cases of one split, seen through ``downsample``."""

    def __init__(self, cache: str | Path, case_ids: Sequence[str], modalities: Sequence[str], downsample: int) -> None:
        self.cases = [CachedCase(cache, c, modalities) for c in case_ids]
        self.modalities = tuple(modalities)
        self.downsample = downsample
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
            sample["target"] = target
        return sample


def _to_tensors(sample: dict[str, Any]) -> dict[str, Any]:
    return {
        "inputs": tuple(torch.from_numpy(np.ascontiguousarray(x))[None] for x in sample["inputs"]),  # (1, X, Y, Z)
        "present": torch.from_numpy(sample["present"]),
        "target": torch.from_numpy(np.ascontiguousarray(sample["target"]))[None],  # (1, X, Y, Z) uint8
    }


class BratsCropDataset(Dataset):
    """Random crops for training (flips on) or for the meta step (flips off).

    Randomness comes from torch's global generator, which the training seed
    fixes and DataLoader workers each reseed, so every worker draws differently.
    """

    def __init__(self, cases: BratsCases, crop: Sequence[int], length: int, foreground_prob: float, flip: bool) -> None:
        if len(cases) == 0:
            raise DataError("a BraTS split has no cases")
        self.cases = cases
        self.crop = tuple(int(c) for c in crop)
        self.length = length
        self.foreground_prob = foreground_prob
        self.flip = flip

    def __len__(self) -> int:
        return self.length

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


class BratsCaseDataset(Dataset):
    """Whole cases (cropped to the brain) for evaluation; shapes differ, so batch size 1."""

    def __init__(self, cases: BratsCases) -> None:
        self.cases = cases

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _to_tensors(self.cases.read(index))


def split_cases(case_ids: Sequence[str], fractions: Sequence[float], seed: int) -> tuple[list[str], list[str], list[str]]:
    """Shuffle case ids with ``seed`` and cut them by ``fractions``; every split gets at least one case."""
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
    return shuffled[:n_train], shuffled[n_train:n_train + n_val], shuffled[n_train + n_val:]


def data_facts(options: BratsOptions, spacing: Sequence[float]) -> dict[str, Any]:
    """What the segmentation task needs to know (recorded in the run's data.json): window, spacing, downsampling."""
    step = options.downsample
    return {"target": "label_map", "roi": list(options.crop), "spacing": [float(s) * step for s in spacing],
            "downsample": step}


NUM_LABELS = 4  # internal labels: background, core, oedema, enhancing


@register_dataset("brats", BratsOptions, "BraTS MRI (any sequences) from a `mckd prepare brats` cache; 3D crops")
def build_brats(options: BratsOptions, seed: int) -> DataBundle:
    """Read the cache's record, split its cases and make the three datasets."""
    if not options.cache:
        raise ConfigError("data.cache is empty: set it to a folder made by `mckd prepare brats SRC OUT`")
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
        splits = split_cases(record["cases"], options.split, options.split_seed)
    train_cases, val_cases, test_cases = (BratsCases(options.cache, ids, modalities, options.downsample) for ids in splits)
    spacing = train_cases.cases[0].meta.get("spacing", [1.0, 1.0, 1.0])
    return DataBundle(
        modalities=modalities,
        train=BratsCropDataset(train_cases, options.crop, options.crops_per_epoch, options.foreground_prob, options.flip),
        val=BratsCropDataset(val_cases, options.crop, options.val_crops, options.foreground_prob, flip=False),
        test=BratsCaseDataset(test_cases),
        num_classes=NUM_LABELS,
        input_shapes={m: (1, *options.crop) for m in modalities},
        info={
            "source": str(options.cache),
            "cases": {"train": splits[0], "val": splits[1], "test": splits[2]},
        },
        facts=data_facts(options, spacing),
    )


# --- mckd prepare brats ---------------------------------------------------------------------


def add_prepare_parser(datasets: Any) -> None:
    """``mckd prepare brats SRC OUT``: the cache that training reads."""
    p = datasets.add_parser(
        "brats", help="cache BraTS NIfTI cases (crop to the brain, z-score, float16/uint8 .npy)",
        description="Read every case folder under SRC, check it, crop it to the brain's bounding box, z-score each "
                    "sequence inside the brain and write memory-mappable arrays plus what is needed to put "
                    "predictions back on the original grid. Training and evaluation read only this cache.",
    )
    p.add_argument("source", metavar="SRC", help="folder of case folders")
    p.add_argument("out", metavar="OUT", help="cache folder to write")
    p.add_argument("--layout", default="auto",
                   help="brats2018 (2017-2021 names, labels 0/1/2/4), brats2023 (-t2f/-t1n/-t1c/-t2w, ET = 3), a YAML "
                        "mapping file (e.g. configs/brats2013_layout.yaml), or auto (default: guess a built-in one)")
    p.add_argument("--workers", type=_workers, default=min(4, os.cpu_count() or 1), help="parallel processes (default: up to 4)")
    p.add_argument("--allow-missing", action="store_true",
                   help="treat absent or empty (all one value) sequences as missing instead of failing")
    p.add_argument("--force", action="store_true", help="replace an existing cache at OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)


def _workers(text: str) -> int:
    """``--workers``: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _cmd_prepare(args: argparse.Namespace) -> None:
    layout = detect_layout(Path(args.source)) if args.layout == "auto" else load_layout(args.layout)
    record = prepare_cache(args.source, args.out, layout, workers=args.workers, force=args.force,
                           allow_missing=args.allow_missing, progress=not args.no_progress)
    print(f"prepared {len(record['cases'])} cases ({layout.name} layout, {', '.join(record['modalities'])}) into {args.out}")
