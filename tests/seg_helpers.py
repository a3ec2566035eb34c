"""Datasets in the field's formats (MSD, nnU-Net v2, BraTS folders), made from the real shared cases, once per session.

Each case is a real BraTS case read with nibabel and sampled at every 3rd
voxel (3 mm; every 2nd for the cases "at another spacing", 2 mm), which is
exact: the sampled voxels keep their values and the affine is scaled
(``affine @ diag(s, s, s, 1)``), so nothing here depends on mckd's resampling.
Labels are converted with this file's own tables (never mckd's conventions):

- BraTS 2017-2021 values: 0, 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing;
- MSD Task01 and nnU-Net's BraTS values: 0, 1 oedema, 2 non-enhancing core, 3 enhancing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from conftest import shared_path

SEQUENCES = ("flair", "t1", "t1ce", "t2")
MSD_CHANNELS = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}  # MSD Task01's own names
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
BRATS_TO_MSD = {0: 0, 1: 2, 2: 1, 4: 3}  # BraTS 2018 value -> MSD value
OLD_TO_BRATS = {0: 0, 1: 1, 2: 2, 3: 1, 4: 4}  # BraTS 2013 value (3 = non-enhancing) -> BraTS 2018 value

# File values of each region (BraTS ET / TC / WT), per numbering.
REGIONS_BRATS = {"et": (4,), "tc": (1, 4), "wt": (1, 2, 4)}
REGIONS_MSD = {"et": (3,), "tc": (2, 3), "wt": (1, 2, 3)}


@dataclass
class MadeCase:
    """A case: images per sequence ``[X, Y, Z]`` (float32; absent sequences left out), labels in BraTS 2018 values."""

    name: str
    images: dict[str, np.ndarray]
    labels: np.ndarray
    affine: np.ndarray
    absent: tuple[str, ...] = field(default=())

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)


@lru_cache(maxsize=None)
def _full(kind: str, name: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A real case at full resolution: images, labels (BraTS 2018 values), affine."""
    if kind == "brats4":
        folder = shared_path("brats4", name)
        images = {s: _load(folder / f"{name}_{s}.nii.gz")[0].astype(np.float32) for s in SEQUENCES}
        labels, affine = _load(folder / f"{name}_seg.nii.gz")
        return images, labels.astype(np.uint8), affine
    folder = shared_path("brats2013", name)
    images = {"flair": _load(folder / "Flair_subtrMeanDivStd.nii.gz")[0].astype(np.float32),
              "t1ce": _load(folder / "T1c_subtrMeanDivStd.nii.gz")[0].astype(np.float32)}
    old, affine = _load(folder / "OTMultiClass.nii.gz")
    lookup = np.zeros(5, np.uint8)
    for value, new in OLD_TO_BRATS.items():
        lookup[value] = new
    return images, lookup[old.astype(np.int64)], affine


def make_case(name: str, kind: str, source: str, stride: int = 3, offset: int = 0, drop: tuple[str, ...] = ()) -> MadeCase:
    """``source`` sampled at every ``stride``-th voxel from ``offset``, without the sequences in ``drop``."""
    images, labels, affine = _full(kind, source)
    view = (slice(offset, None, stride),) * 3
    shift = np.eye(4)
    shift[:3, 3] = offset
    scale = np.diag([stride, stride, stride, 1.0])
    new_affine = affine @ shift @ scale
    kept = {s: np.ascontiguousarray(a[view]) for s, a in images.items() if s not in drop}
    absent = tuple(s for s in SEQUENCES if s not in kept)
    return MadeCase(name, kept, np.ascontiguousarray(labels[view]), new_affine, absent)


def to_values(labels: np.ndarray, table: dict[int, int]) -> np.ndarray:
    lookup = np.zeros(max(table) + 1, np.uint8)
    for value, new in table.items():
        lookup[value] = new
    return lookup[labels]


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def write_msd(root: Path, cases: list[MadeCase], labelled: bool = True) -> Path:
    """``root`` as MSD Task01: 4D images (a sequence a case lacks: a channel of zeros), dataset.json."""
    folder = "imagesTr" if labelled else "imagesTs"
    for case in cases:
        shape = case.labels.shape
        stack = np.stack([case.images.get(s, np.zeros(shape, np.float32)) for s in SEQUENCES], axis=-1)
        _save(stack.astype(np.float32), case.affine, root / folder / f"{case.name}.nii.gz")
        if labelled:
            _save(to_values(case.labels, BRATS_TO_MSD), case.affine, root / "labelsTr" / f"{case.name}.nii.gz")
    description = {"name": "BRATS", "modality": MSD_CHANNELS, "labels": MSD_LABELS, "tensorImageSize": "4D",
                   "numTraining": len(cases) if labelled else 0,
                   "training": [{"image": f"./imagesTr/{c.name}.nii.gz", "label": f"./labelsTr/{c.name}.nii.gz"}
                                for c in cases] if labelled else [],
                   "test": [] if labelled else [f"./imagesTs/{c.name}.nii.gz" for c in cases]}
    (root / "dataset.json").write_text(json.dumps(description, indent=1))
    return root


def write_nnunet(root: Path, cases: list[MadeCase], region_based: bool = True) -> Path:
    """``root`` as nnU-Net v2 raw: ``imagesTr/{case}_{XXXX}.nii.gz`` (a sequence a case lacks: no file), labelsTr."""
    for case in cases:
        for index, sequence in enumerate(SEQUENCES):
            if sequence in case.images:
                _save(case.images[sequence], case.affine, root / "imagesTr" / f"{case.name}_{index:04d}.nii.gz")
        _save(to_values(case.labels, BRATS_TO_MSD), case.affine, root / "labelsTr" / f"{case.name}.nii.gz")
    labels: dict[str, object]
    if region_based:
        labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}
    else:
        labels = {"background": 0, "edema": 1, "non-enhancing tumor": 2, "enhancing tumor": 3}
    description = {"channel_names": MSD_CHANNELS, "labels": labels, "numTraining": len(cases), "file_ending": ".nii.gz"}
    if region_based:
        description["regions_class_order"] = [1, 2, 3]
    (root / "dataset.json").write_text(json.dumps(description, indent=1))
    return root


def write_brats(root: Path, cases: list[MadeCase]) -> Path:
    """``root`` as BraTS 2018-2021 case folders ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``."""
    for case in cases:
        for sequence, image in case.images.items():
            _save(image, case.affine, root / case.name / f"{case.name}_{sequence}.nii.gz")
        _save(case.labels, case.affine, root / case.name / f"{case.name}_seg.nii.gz")
    return root


def training_cases() -> list[MadeCase]:
    """Four cases: two with every sequence, two with FLAIR and T1c only, one of them at 2 mm."""
    return [
        make_case("BRATS_001", "brats4", "Brats18_2013_21_1"),
        make_case("BRATS_002", "brats4", "BraTS2021_00006"),
        make_case("BRATS_003", "brats2013", "brats_2013_pat0003_1"),
        make_case("BRATS_004", "brats2013", "brats_2013_pat0004_1", stride=2),
    ]


def heldout_cases() -> list[MadeCase]:
    """Cases no training case holds: other voxels of the 4-sequence patients (one without T2), and two unseen patients
    with FLAIR and T1c only, one at 2 mm."""
    return [
        make_case("HELD_001", "brats4", "Brats18_2013_21_1", offset=1),
        make_case("HELD_002", "brats4", "BraTS2021_00006", offset=2, drop=("t2",)),
        make_case("HELD_003", "brats2013", "brats_2013_pat0005_1"),
        make_case("HELD_004", "brats2013", "brats_2013_pat0006_1", stride=2),
    ]


# --- session fixtures: the folders, the cache, a tiny trained run -----------------------------------

import pytest  # noqa: E402

TINY_SEG = [
    "data.downsample=2", "data.crop=[16,16,16]", "data.val_crops=2", "data.crops_per_epoch=4",
    "task.overlap=0.0", "task.sw_batch_size=4", "model.widths=[4,8,16]", "train.iterations=6",
    "method.meta_every=2", "train.progress=false", "train.device=cpu", "train.log_every=2",
]


@pytest.fixture(scope="session")
def seg_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The training set in MSD's format, the held-out cases in MSD, nnU-Net and BraTS formats, and unlabelled MSD."""
    root = tmp_path_factory.mktemp("seg_formats")
    train, held = training_cases(), heldout_cases()
    return {
        "train_msd": write_msd(root / "Task01_BrainTumour", train),
        "held_msd": write_msd(root / "Task01_held", held),
        "held_nnunet": write_nnunet(root / "Dataset001_held", held),
        "held_brats": write_brats(root / "brats_held", held),
        "test_msd": write_msd(root / "Task01_test", held, labelled=False),
    }


@pytest.fixture(scope="session")
def seg_cache(seg_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MSD training set prepared with BraTS regions declared (msd_brats), every case on a 3 mm RAS grid."""
    from mckd.cli import main

    out = tmp_path_factory.mktemp("seg_cache") / "msd"
    assert main(["prepare", "seg", str(seg_folders["train_msd"]), str(out), "--labels", "msd_brats",
                 "--allow-missing", "--workers", "1", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def seg_run(seg_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few iterations of the small config on the MSD cache (cases with real missing sequences among them)."""
    from mckd.config import apply_overrides, config_from_dict, load_raw
    from mckd.runs import evaluate_run
    from mckd.train import train

    root = Path(__file__).resolve().parents[1]
    raw = load_raw(root / "configs" / "brats_small_cpu.yaml")
    run = tmp_path_factory.mktemp("seg_run") / "msd_tiny"
    train(config_from_dict(apply_overrides(raw, [f"data.cache={seg_cache}", *TINY_SEG])), run)
    evaluate_run(run, "cpu")
    return run
