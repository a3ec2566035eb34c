"""The segmentation cache: written once by ``mckd prepare seg``, read by training and evaluation.

Layout of a cache folder::

    OUT/dataset.json             modalities, cases, source format, label scheme, grid plan, format version
    OUT/<case>/<modality>.npy    float16 [X, Y, Z], z-scored inside the brain, 0 outside;
                                 only the sequences the case has
    OUT/<case>/label.npy         uint8 [X, Y, Z], internal classes of the label scheme
                                 (BraTS: 0, 1 core, 2 oedema, 3 enhancing)
    OUT/<case>/meta.json         crop box, the plan's grid (shape, affine), the file's grid, spacing,
                                 z-score statistics

Every case is preprocessed as inference preprocesses it (:mod:`mckd.seg.preprocess`:
the plan's grid, MONAI ``Orientation`` and ``Spacing``, version 1 caches kept
each file's grid; the brain's box; z-scores), so a prediction on the cached
grid goes back into the file's volume by :meth:`CachedCase.restore`. Every
``.npy`` opens with ``np.load(path, mmap_mode="r", allow_pickle=False)``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mckd.errors import DataError
from mckd.seg.cases import CaseFiles, read_case_files
from mckd.seg.grid import GridPlan, same_grid, spacing_of, to_file_grid
from mckd.seg.labels import LabelScheme, convention
from mckd.seg.preprocess import PreprocessedCase, preprocess_case, uncrop

FORMAT_VERSION = 2
FORMAT_NAME = "mckd-seg-cache"
READABLE = {("mckd-brats-cache", 1), (FORMAT_NAME, FORMAT_VERSION)}  # version 1: BraTS labels, each file's own grid


DATASET_FILE = "dataset.json"
LABEL_FILE = "label.npy"
META_FILE = "meta.json"



@dataclass(frozen=True)
class CaseJob:
    """One case to cache: its files, how they are read, and how its labels become the cache's classes.

    Attributes:
        files: the case's files.
        modalities: the sequences its format names (the cache's others are missing for it).
        scheme: what its label files' values mean (None: no labels are read).
        lookup: its scheme's internal classes -> the cache's (identity for one source).
    """

    files: CaseFiles
    modalities: tuple[str, ...]
    scheme: LabelScheme | None
    lookup: tuple[int, ...] = ()


def case_meta(pre: PreprocessedCase, modalities: Sequence[str]) -> dict[str, Any]:
    """A cached case's record (``meta.json``): what it has, its grids and crop box, its z-score statistics."""
    case = pre.case
    meta = {
        "case": case.case_id,
        "present": list(pre.images),
        "missing": [m for m in modalities if m not in pre.images],
        "original_shape": list(case.brain.shape),
        "affine": np.asarray(case.affine).tolist(),
        "grid_shape": list(pre.grid_shape),
        "grid_affine": np.asarray(pre.grid_affine).tolist(),
        "spacing": [float(z) for z in spacing_of(pre.grid_affine)],
        "crop_box": pre.box,
        "cropped_shape": list(pre.crop_shape),
        "zscore": pre.zscore,
        "files": case.files,
        "warnings": case.warnings,
    }
    if pre.labels is not None:
        meta["label_voxels"] = {str(v): int(c) for v, c in zip(*np.unique(pre.labels, return_counts=True))}
    return meta


def _prepare_one(job: CaseJob, modalities: Sequence[str], plan: GridPlan | None, out_dir: str,
                 allow_missing: bool) -> dict[str, Any]:
    case = read_case_files(job.files, job.modalities, job.scheme, allow_missing, need_labels=job.scheme is not None)
    if job.lookup and case.labels is not None:
        case.labels = np.asarray(job.lookup, dtype=np.uint8)[case.labels]
    pre = preprocess_case(case, plan)
    target = Path(out_dir) / case.case_id
    target.mkdir(parents=True, exist_ok=False)
    for modality, array in pre.images.items():
        np.save(target / f"{modality}.npy", array, allow_pickle=False)
    if pre.labels is not None:
        np.save(target / LABEL_FILE, pre.labels, allow_pickle=False)
    meta = case_meta(pre, modalities)
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
    out: str | Path,
    jobs: Sequence[CaseJob],
    modalities: Sequence[str],
    scheme: LabelScheme | None,
    plan: GridPlan | None = None,
    workers: int = 1,
    force: bool = False,
    allow_missing: bool = False,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read, check and preprocess every case of ``jobs`` and write the cache at ``out``.

    Args:
        jobs: the cases (:class:`CaseJob`), from one dataset or several.
        modalities: the cache's sequences, in order (a case lacking one has it missing).
        scheme: the cache's label classes (the cases' labels mapped onto them by each job's ``lookup``).
        plan: the grid every case is put on (None: each file's own grid).
        workers: processes reading cases in parallel (1: in this process).
        force: replace an existing cache at ``out`` (only one mckd wrote).
        allow_missing: absent or empty sequences are treated as missing instead of being an error.
        extra: more entries for the record (the source formats, how the labels were chosen).

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

    out = Path(out)
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    check_cache_output(out, force)
    if not jobs:
        raise DataError("no cases to prepare")
    if not allow_missing:
        for job in jobs:
            lacking = [m for m in modalities if m not in job.files.images]
            if lacking:
                raise DataError(f"case {job.files.case_id}: no {lacking[0]!r} sequence file; pass --allow-missing "
                                "to treat absent sequences as missing")
    with claim_output(out, replace=True, kind="dir", what="cache"):
        staging = temporary_name(out, "stage-")
        try:
            staging.mkdir(parents=False)
        except OSError as error:
            raise DataError(f"cannot write the cache {out}: {error.strerror or error}") from None
        metas: dict[str, dict[str, Any]] = {}
        pool: ProcessPoolExecutor | None = None
        try:
            bar = CaseProgress(len(jobs), "prepare seg", enabled=progress)
            if workers <= 1:
                for job in jobs:
                    metas[job.files.case_id] = _prepare_one(job, modalities, plan, str(staging), allow_missing)
                    bar.update(job.files.case_id, _summary(metas[job.files.case_id]))
            else:
                pool = ProcessPoolExecutor(max_workers=workers, initializer=worker_init)
                futures = {pool.submit(_prepare_one, job, modalities, plan, str(staging), allow_missing): job
                           for job in jobs}
                for future in as_completed(futures):
                    case_id = futures[future].files.case_id
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
                "has_labels": all(job.scheme is not None for job in jobs),
                "source_label_convention": labels_of.name,
                "labels": {str(k): name for k, name in enumerate(labels_of.classes)},
                "label_scheme": labels_of.to_json(),
                "plan": (plan or GridPlan("", ())).to_json(),
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
        raise DataError(f"{cache} is not a segmentation cache (no {DATASET_FILE}); make one with `mckd prepare seg SRC OUT`")
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
