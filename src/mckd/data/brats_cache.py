"""The segmentation cache: made once by ``mckd prepare seg``, read by training and evaluation.

Layout of a cache folder::

    OUT/dataset.json             modalities, cases, source format, label scheme, grid plan, format version
    OUT/<case>/<modality>.npy    float16 [X, Y, Z], z-scored inside the brain, 0 outside;
                                 only the sequences the case has
    OUT/<case>/label.npy         uint8 [X, Y, Z], internal classes of the label scheme
                                 (BraTS: 0, 1 core, 2 oedema, 3 enhancing)
    OUT/<case>/meta.json         crop box, the plan's grid (shape, affine), the file's grid, spacing,
                                 z-score statistics

Every case is first put on the plan's grid (:mod:`mckd.data.grid`: MONAI
``Orientation`` and ``Spacing``; version 1 caches kept each file's grid), then
cropped to the brain's bounding box, so a prediction on the cached grid goes
back into the file's volume by :meth:`CachedCase.restore`. Every ``.npy``
opens with ``np.load(path, mmap_mode="r", allow_pickle=False)``.

The cache is written into a temporary sibling folder and renamed into place
when every case is done, so an interrupted prepare leaves no half cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mckd.data.brats_layout import Case, CaseFiles, Layout, case_folders, layout_case_files, read_case_files
from mckd.data.grid import GridPlan, same_grid, spacing_of, to_file_grid, to_plan_grid
from mckd.data.labels import LabelScheme, convention
from mckd.errors import DataError

FORMAT_VERSION = 2
FORMAT_NAME = "mckd-seg-cache"
READABLE = {("mckd-brats-cache", 1), (FORMAT_NAME, FORMAT_VERSION)}  # version 1: BraTS labels, each file's own grid


DATASET_FILE = "dataset.json"
LABEL_FILE = "label.npy"
META_FILE = "meta.json"


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """``[[start, stop], ...]`` per axis of the ``True`` voxels (stop exclusive)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def crop(array: np.ndarray, box: Sequence[Sequence[int]]) -> np.ndarray:
    return array[tuple(slice(a, b) for a, b in box)]


def uncrop(cropped: np.ndarray, box: Sequence[Sequence[int]], shape: Sequence[int], fill: Any = 0) -> np.ndarray:
    """Put an array on the cropped grid back into a volume of the original ``shape``."""
    expected = tuple(b - a for a, b in box)
    if tuple(cropped.shape) != expected:
        raise DataError(f"uncrop: array has shape {tuple(cropped.shape)}, the crop box {list(box)} has {expected}")
    out = np.full(tuple(shape), fill, dtype=cropped.dtype)
    out[tuple(slice(a, b) for a, b in box)] = cropped
    return out


def zscore_in_brain(image: np.ndarray, brain: np.ndarray, name: str) -> tuple[np.ndarray, float, float]:
    """``(image - mean) / std`` over the brain voxels, 0 outside; returns (float32 array, mean, std)."""
    values = image[brain].astype(np.float64)
    mean, std = float(values.mean()), float(values.std())
    if std < 1e-8:
        raise DataError(f"{name}: constant inside the brain (value {mean}); cannot z-score it")
    out = ((image - mean) / std).astype(np.float32)
    out[~brain] = 0.0
    return out, mean, std


def to_plan(case: Case, plan: GridPlan) -> tuple[Case, np.ndarray]:
    """The case on the plan's grid (images trilinear, labels and brain nearest), and that grid's affine."""
    images = {}
    grid_affine = case.affine
    for modality, image in case.images.items():
        images[modality], grid_affine = to_plan_grid(image, case.affine, plan, "bilinear")
    brain, grid_affine = to_plan_grid(case.brain.astype(np.uint8), case.affine, plan, "nearest")
    labels = None
    if case.labels is not None:
        labels, _ = to_plan_grid(case.labels, case.affine, plan, "nearest")
    moved = replace(case, images=images, labels=labels, brain=brain.astype(bool), affine=grid_affine,
                    zooms=spacing_of(grid_affine), shape=tuple(brain.shape))
    if not moved.brain.any():
        raise DataError(f"case {case.case_id}: the brain mask is empty on the {plan.describe()} grid")
    return moved, grid_affine


def preprocess_case(case: Case, plan: GridPlan | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None, dict[str, Any]]:
    """Put the case on the plan's grid, crop to the brain's box and z-score each sequence inside the brain.

    Args:
        case: as read, on its file's grid.
        plan: the grid (None: the file's own, as version 1 caches did).

    Returns:
        (images float16 per present modality, labels uint8 or None, meta).
    """
    file_shape = list(case.brain.shape)
    file_affine = case.affine
    if plan is not None:
        case, _ = to_plan(case, plan)
    box = bounding_box(case.brain)
    brain = crop(case.brain, box)
    images, stats = {}, {}
    for modality, image in case.images.items():
        normalised, mean, std = zscore_in_brain(crop(image, box), brain, f"case {case.case_id} {modality}")
        if np.abs(normalised).max() > 60000:
            raise DataError(f"case {case.case_id} {modality}: z-scores beyond float16 range; check the image")
        images[modality] = normalised.astype(np.float16)
        stats[modality] = {"mean": mean, "std": std}
    labels = crop(case.labels, box).astype(np.uint8) if case.labels is not None else None
    meta = {
        "case": case.case_id,
        "present": list(case.images),
        "missing": list(case.missing),
        "original_shape": file_shape,
        "affine": np.asarray(file_affine).tolist(),
        "grid_shape": list(case.brain.shape),
        "grid_affine": np.asarray(case.affine).tolist(),
        "spacing": [float(z) for z in case.zooms],
        "crop_box": box,
        "cropped_shape": [b - a for a, b in box],
        "zscore": stats,
        "files": case.files,
        "warnings": case.warnings,
    }
    if labels is not None:
        meta["label_voxels"] = {str(v): int(c) for v, c in zip(*np.unique(labels, return_counts=True))}
    return images, labels, meta


@dataclass(frozen=True)
class CaseReader:
    """How every case of a dataset is read: its sequences, what its labels mean, the grid it goes on."""

    modalities: tuple[str, ...]
    scheme: LabelScheme | None
    plan: GridPlan | None = None

    def read(self, files: CaseFiles, allow_missing: bool, need_labels: bool = True) -> Case:
        return read_case_files(files, self.modalities, self.scheme, allow_missing, need_labels)


def _prepare_one(files: CaseFiles, reader: CaseReader, out_dir: str, allow_missing: bool) -> dict[str, Any]:
    case = reader.read(files, allow_missing=allow_missing)
    images, labels, meta = preprocess_case(case, reader.plan)
    target = Path(out_dir) / case.case_id
    target.mkdir(parents=True, exist_ok=False)
    for modality, array in images.items():
        np.save(target / f"{modality}.npy", array, allow_pickle=False)
    if labels is not None:
        np.save(target / LABEL_FILE, labels, allow_pickle=False)
    (target / META_FILE).write_text(json.dumps(meta, indent=1))
    return meta


def _summary(meta: dict[str, Any]) -> str:
    """One line about a prepared case: its sequences and the grid it was put on."""
    shape = "x".join(str(v) for v in meta["cropped_shape"])
    missing = f", missing {', '.join(meta['missing'])}" if meta["missing"] else ""
    file_spacing = sorted(spacing_of(np.asarray(meta["affine"])))
    if not np.allclose(file_spacing, sorted(meta["spacing"]), atol=1e-3):
        grid = f", resampled from {'x'.join(f'{v:g}' for v in spacing_of(np.asarray(meta['affine'])))} mm"
    elif meta.get("grid_affine") is not None and not np.allclose(meta["grid_affine"], meta["affine"], atol=1e-4):
        grid = ", reoriented"
    else:
        grid = ""
    return f"{'+'.join(meta['present'])}{missing}; {shape} voxels in the brain's box{grid}"


def worker_init() -> None:
    """A prepare worker: dies with its parent (even a SIGKILLed one), leaves Ctrl-C, SIGHUP and SIGTERM to it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool and removes the staging folder
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal: likewise
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)


def stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what has not started, end the workers, wait for them."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # the executor's own (shutdown clears it)
    for process in processes:
        with contextlib.suppress(OSError, AttributeError):
            process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(OSError, AttributeError, AssertionError):
            process.join(timeout=10)


def check_cache_output(out: Path, force: bool) -> None:
    """Refuse ``out`` as a cache's place: a file, a non-empty folder without ``force``, a folder mckd did not write."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file, not a cache folder; choose another OUT")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise DataError(f"{out} exists and is not empty; pass --force to replace it")
        if not (out / DATASET_FILE).is_file():
            raise DataError(f"{out} is not an mckd cache (no {DATASET_FILE}); refusing to replace it even with --force")


def prepare_cache(
    source: str | Path,
    out: str | Path,
    layout: Layout | Any,
    workers: int = 1,
    force: bool = False,
    allow_missing: bool = False,
    progress: bool = True,
    scheme: LabelScheme | None = None,
    plan: GridPlan | None = None,
    cases: Sequence[CaseFiles] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read every case of ``source`` and write the cache at ``out``.

    Args:
        layout: a :class:`~mckd.data.brats_layout.Layout` (case folders) or a
            :class:`~mckd.data.formats.SourceFormat` (any format).
        workers: processes reading cases in parallel (1: in this process).
        force: replace an existing cache at ``out`` (only one mckd wrote).
        allow_missing: absent or empty sequences are treated as missing
            instead of being an error.
        scheme: what the label files' values mean (default: the layout's convention).
        plan: the grid every case is put on (default: each file's own grid).
        cases: the cases to read (default: every case the layout finds).
        extra: more entries for the record (the source format, how the labels were chosen).

    The cache is built in a hidden staging folder beside ``out``
    (``.<name>.<pid>.stage-<random>.tmp``) and renamed into place when
    complete; an error, a full disk, SIGTERM or Ctrl-C stops the workers and
    removes it, and a staging folder left by a killed process is removed by
    the next prepare of the same ``out``.

    Returns:
        The dataset record written to ``out/dataset.json``.
    """
    from mckd.io import claim_output, environment_errno, temporary_name, write_failure
    from mckd.progress import CaseProgress

    source, out = Path(source), Path(out)
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    check_cache_output(out, force)
    if isinstance(layout, Layout):
        modalities = layout.modalities
        scheme = scheme or layout.label_scheme
        if cases is None:
            cases = [layout_case_files(c, layout, allow_missing, need_labels=bool(layout.label))
                     for c in case_folders(source, layout)]
        has_labels = bool(layout.label)
        layout_name = layout.name
    else:
        modalities = layout.modalities
        if cases is None:
            cases = layout.cases(labelled=True, allow_missing=allow_missing)
        has_labels = all(c.label for c in cases)
        layout_name = layout.kind
    if not cases:
        raise DataError(f"no cases found in {source}")
    if not allow_missing:
        lacking = [c for c in cases if c.absent]
        if lacking:
            raise DataError(f"case {lacking[0].case_id}: no {lacking[0].absent[0]!r} sequence file; pass "
                            "--allow-missing to treat absent sequences as missing")
    reader = CaseReader(tuple(modalities), scheme if has_labels else None, plan)
    with claim_output(out, replace=True, kind="dir", what="cache"):
        staging = temporary_name(out, "stage-")
        try:
            staging.mkdir(parents=False)
        except OSError as error:
            raise DataError(f"cannot write the cache {out}: {error.strerror or error}") from None
        metas: dict[str, dict[str, Any]] = {}
        pool: ProcessPoolExecutor | None = None
        try:
            bar = CaseProgress(len(cases), "prepare seg", enabled=progress)
            if workers <= 1:
                for case in cases:
                    metas[case.case_id] = _prepare_one(case, reader, str(staging), allow_missing)
                    bar.update(case.case_id, _summary(metas[case.case_id]))
            else:
                pool = ProcessPoolExecutor(max_workers=workers, initializer=worker_init)
                futures = {pool.submit(_prepare_one, c, reader, str(staging), allow_missing): c for c in cases}
                for future in as_completed(futures):
                    case_id = futures[future].case_id
                    metas[case_id] = future.result()
                    bar.update(case_id, _summary(metas[case_id]))
                pool.shutdown(wait=True)
                pool = None
            bar.close()
            for meta in metas.values():
                for warning in meta["warnings"]:
                    print(f"mckd: warning: {warning}")
            labels_of = scheme or convention("brats2018")
            record = {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "modalities": list(modalities),
                "cases": sorted(metas),
                "has_labels": has_labels,
                "layout": layout_name,
                "source_label_convention": labels_of.name,
                "labels": {str(k): name for k, name in enumerate(labels_of.classes)},
                "label_scheme": labels_of.to_json(),
                "plan": (plan or GridPlan("", ())).to_json(),
                "source": str(source.resolve()),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **(extra or {}),
            }
            (staging / DATASET_FILE).write_text(json.dumps(record, indent=2))
            old = None
            if out.exists():
                old = temporary_name(out, "old-")
                os.replace(out, old)
            os.replace(staging, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException as error:
            if pool is not None:
                stop_pool(pool)  # SIGTERM, Ctrl-C or an error: no worker is left behind
            shutil.rmtree(staging, ignore_errors=True)
            code = environment_errno(error)
            if code is not None:
                raise write_failure(out, code, keeps_previous=True) from None
            if type(error).__name__ == "BrokenProcessPool":
                raise DataError(f"a worker process of mckd prepare died ({error}); nothing was written to {out}: "
                                "try again with --workers 1") from None
            raise
    return record


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON mapping from the cache; a damaged file is a :class:`DataError` naming it."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path} ({what}) is damaged ({error}); prepare the cache again") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} ({what}) holds a {type(value).__name__}, expected a JSON mapping; prepare the cache again")
    return value


def load_array(path: Path, shape: Sequence[int]) -> np.ndarray:
    """A cached ``.npy`` array of ``shape``, memory-mapped, never unpickled; a damaged file is a :class:`DataError`."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:  # missing, truncated, not .npy, or an object (pickle) array
        reason = "it holds pickled objects, which mckd never loads" if "pickle" in str(error) else str(error)
        raise DataError(f"{path} is not a readable cached array ({reason}); prepare the cache again") from None
    if tuple(array.shape) != tuple(shape):
        raise DataError(f"{path} has shape {tuple(array.shape)} but its meta.json says {tuple(shape)}; prepare the cache again")
    return array


def check_array_file(path: Path, shape: Sequence[int]) -> None:
    """Read only the ``.npy`` header: a plain array of ``shape`` whose data fill the rest of the file."""
    try:
        with path.open("rb") as stream:
            version = np.lib.format.read_magic(stream)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            found, _, dtype = read_header(stream)
            expected_size = stream.tell() + int(np.prod(found, dtype=np.int64)) * dtype.itemsize
    except (OSError, ValueError, EOFError) as error:
        with contextlib.suppress(OSError):
            with path.open("rb") as stream:
                first = stream.read(1)
            if first == b"\x80":  # a pickle's PROTO opcode
                error = ValueError("it holds pickled objects, which mckd never loads")
        raise DataError(f"{path} is not a readable cached array ({error}); prepare the cache again") from None
    if dtype.hasobject:
        raise DataError(f"{path} is not a readable cached array (it holds pickled objects, which mckd never loads); "
                        "prepare the cache again")
    if tuple(found) != tuple(shape):
        raise DataError(f"{path} has shape {tuple(found)} but its meta.json says {tuple(shape)}; prepare the cache again")
    if path.stat().st_size != expected_size:
        raise DataError(f"{path} is not a readable cached array ({path.stat().st_size} bytes, its header announces "
                        f"{expected_size}: truncated?); prepare the cache again")


def read_dataset_record(cache: str | Path) -> dict[str, Any]:
    """``dataset.json`` of a cache, checked."""
    path = Path(cache) / DATASET_FILE
    if not path.is_file():
        raise DataError(f"{cache} is not a BraTS cache (no {DATASET_FILE}); make one with `mckd prepare brats SRC OUT`")
    record = read_json(path, "the cache's record")
    if (record.get("format"), record.get("version")) not in READABLE:
        raise DataError(f"{path}: format {record.get('format')!r} version {record.get('version')!r}; expected "
                        f"{FORMAT_NAME} version {FORMAT_VERSION} (or mckd-brats-cache version 1): prepare the cache again")
    if not isinstance(record.get("modalities"), list) or not isinstance(record.get("cases"), list):
        raise DataError(f"{path} lacks the lists 'modalities' and 'cases'; prepare the cache again")
    return record


class CachedCase:
    """One cached case, memory-mapped: arrays are read only where indexed."""

    def __init__(self, cache: str | Path, case_id: str, modalities: Sequence[str]) -> None:
        self.folder = Path(cache) / case_id
        meta_path = self.folder / META_FILE
        if not meta_path.is_file():
            raise DataError(f"cache case {self.folder} has no {META_FILE}; prepare the cache again")
        self.meta = read_json(meta_path, "a cached case's record")
        lacking = [k for k in ("present", "cropped_shape", "crop_box", "original_shape") if k not in self.meta]
        if lacking:
            raise DataError(f"{meta_path} lacks {lacking}; prepare the cache again")
        self.case_id = case_id
        self.modalities = tuple(modalities)
        self.present = np.array([m in self.meta["present"] for m in self.modalities], dtype=bool)
        self.shape = tuple(self.meta["cropped_shape"])
        self._images: dict[str, np.ndarray] = {}
        self._labels: np.ndarray | None = None
        # Check each array's header and size now (a few bytes per file): a damaged cache fails before
        # training starts and writes a run directory, not at the first crop that reaches the bad case.
        for modality in self.modalities:
            if modality in self.meta["present"]:
                check_array_file(self.folder / f"{modality}.npy", self.shape)
        if (self.folder / LABEL_FILE).exists():
            check_array_file(self.folder / LABEL_FILE, self.shape)

    def image(self, modality: str) -> np.ndarray | None:
        """float16 ``[X, Y, Z]`` memory map, or None when the case lacks the sequence."""
        if modality not in self.meta["present"]:
            return None
        if modality not in self._images:
            self._images[modality] = load_array(self.folder / f"{modality}.npy", self.shape)
        return self._images[modality]

    def labels(self) -> np.ndarray:
        if self._labels is None:
            path = self.folder / LABEL_FILE
            if not path.is_file():
                raise DataError(f"cache case {self.folder} has no labels; it was prepared from a layout without labels")
            self._labels = load_array(path, self.shape)
        return self._labels

    def restore(self, cropped: np.ndarray, fill: Any = 0) -> np.ndarray:
        """An array on this case's cached grid -> the file's grid (the crop undone, then the plan's grid).

        Integer arrays (label maps) come back by nearest neighbour, others trilinearly (MONAI).
        """
        grid_shape = self.meta.get("grid_shape", self.meta["original_shape"])
        full = uncrop(cropped, self.meta["crop_box"], grid_shape, fill)
        grid_affine = np.asarray(self.meta.get("grid_affine", self.meta.get("affine", np.eye(4))))
        file_affine = np.asarray(self.meta.get("affine", grid_affine))
        if same_grid(grid_affine, grid_shape, file_affine, self.meta["original_shape"]):
            return full
        nearest = full.dtype.kind in "biu"
        back = to_file_grid(full[None].astype(np.float32), grid_affine, file_affine, self.meta["original_shape"],
                            mode="nearest" if nearest else "bilinear")[0]
        return np.rint(back).astype(full.dtype) if nearest else back.astype(full.dtype)


def cache_scheme(record: dict[str, Any]) -> LabelScheme:
    """What a cache's labels mean (version 1 caches: the BraTS classes)."""
    if "label_scheme" in record:
        return LabelScheme.from_json(record["label_scheme"], "the cache's label_scheme")
    return convention(str(record.get("source_label_convention", "brats2018")))


def cache_plan(record: dict[str, Any]) -> GridPlan:
    """The grid a cache's cases were put on (version 1 caches: each file's own)."""
    return GridPlan.from_json(record.get("plan"))


def write_nifti_like(array: np.ndarray, reference_path: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write ``array`` (on the reference's grid) as NIfTI with the reference's affine and header, atomically.

    The data type is the array's (uint8 for label maps); the header's scaling
    is reset. Written through :func:`mckd.io.atomic_write` (a full disk or a
    read-only folder is one error naming ``out``; an earlier ``out`` stays).
    """
    import nibabel as nib

    from mckd.io import atomic_write

    out = Path(out)
    if out.exists() and not force:
        raise DataError(f"{out} exists; pass --force to overwrite it")
    reference = nib.load(str(reference_path))
    if tuple(array.shape) != tuple(reference.shape[:3]):
        raise DataError(f"cannot write {out}: array shape {tuple(array.shape)} is not the reference's "
                        f"{tuple(reference.shape[:3])} ({reference_path})")
    header = reference.header.copy()
    header.set_data_dtype(array.dtype)
    image = nib.Nifti1Image(array, reference.affine, header)
    image.header.set_slope_inter(1.0, 0.0)
    suffix = ".tmp.nii.gz" if out.name.endswith(".nii.gz") else f".tmp{out.suffix}"  # nibabel reads the name
    atomic_write(out, lambda tmp: nib.save(image, tmp), suffix=suffix)
    return out
