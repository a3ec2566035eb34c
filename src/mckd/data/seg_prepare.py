"""``mckd prepare seg``: a dataset in any format -> the segmentation cache, saying what it found.

The steps, each stated on the terminal and kept in the cache's record:

1. the format (:func:`mckd.data.formats.detect_format`) and its sequences;
2. the labels: as the dataset describes them (MSD, nnU-Net, a layout file),
   as ``--labels`` declares them (a contradiction with the description is an
   error), or, for BraTS layouts, the one convention the label values found
   make certain (:func:`mckd.data.labels.choose_brats_convention`);
3. the grid: ``--orientation`` (default RAS) and ``--spacing`` (default the
   median voxel size of the cases, nnU-Net's choice);
4. the cache itself (:func:`mckd.data.brats_cache.prepare_cache`: the checks,
   the resampling, cropping and z-scoring, in parallel, atomically).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mckd.data.brats_cache import prepare_cache
from mckd.data.brats_layout import CaseFiles, check_affine
from mckd.data.formats import SourceFormat, detect_format
from mckd.data.grid import GridPlan, check_orientation, median_spacing, reoriented_spacing
from mckd.data.labels import (
    CONVENTIONS,
    LabelScheme,
    check_declared_names,
    choose_brats_convention,
    resolve_declaration,
)
from mckd.errors import DataError


def label_values(path: str) -> set[int]:
    """The distinct values of a label file (read in full; a damaged file is a :class:`DataError`)."""
    from mckd.data.brats_layout import read_nifti

    array = read_nifti(Path(path), "label map").array
    return {int(v) for v in np.unique(array)}


def scan_label_values(paths: Sequence[str], workers: int = 1) -> dict[str, set[int]]:
    """The values found in each label file, read by ``workers`` processes."""
    if workers <= 1 or len(paths) < 2:
        return {path: label_values(path) for path in paths}
    from mckd.data.brats_cache import stop_pool, worker_init

    pool = ProcessPoolExecutor(max_workers=workers, initializer=worker_init)  # workers die with mckd
    try:
        values = dict(zip(paths, pool.map(label_values, paths)))
    except BaseException:
        stop_pool(pool)  # SIGTERM, Ctrl-C or an error: no worker is left reading
        raise
    pool.shutdown(wait=True)
    return values


def resolve_scheme(source: SourceFormat, spec: str, cases: Sequence[CaseFiles], workers: int = 1) -> tuple[LabelScheme, str]:
    """The labels of a dataset and why: ``spec`` is ``auto``, ``dataset``, a convention or a label file."""
    where = f"{source.root}'s description"
    if spec in ("auto", "dataset"):
        if source.declared is not None:
            if source.kind == "layout" and source.declared.name in CONVENTIONS:
                return source.declared, f"the {source.declared.name} convention the layout file names"
            return source.declared, f"as declared in {source.declared.name}"
        if spec == "dataset":
            raise DataError(f"{source.root} ({source.title}) declares no labels; use --labels auto or a convention")
        values = scan_label_values([c.label for c in cases if c.label], workers)
        scheme, reason = choose_brats_convention(values, source.kind, [c.case_id for c in cases])
        return scheme, reason
    scheme = resolve_declaration(spec)
    check_declared_names(scheme, source.label_names, where)
    return scheme, f"--labels {spec}"


def _first_image_affine(case: CaseFiles) -> np.ndarray:
    import nibabel as nib

    image = next(iter(case.images.values()))
    try:
        affine = np.asarray(nib.load(image.path).affine, dtype=np.float64)  # the header only
    except Exception as error:  # nibabel's many error types
        raise DataError(f"{image.path} is not a readable NIfTI file ({type(error).__name__}: {error})") from None
    return check_affine(affine, image.path, f"a sequence of case {case.case_id}")


def resolve_plan(cases: Sequence[CaseFiles], orientation: str, spacing: Sequence[str]) -> tuple[GridPlan, str]:
    """The grid: ``spacing`` is ``["auto"]`` (the median over the cases) or three sizes in mm."""
    codes = check_orientation(orientation)
    spacings = [reoriented_spacing(_first_image_affine(c), codes) for c in cases if c.images]
    distinct = sorted({tuple(round(v, 3) for v in s) for s in spacings})
    if list(spacing) == ["auto"]:
        target = median_spacing(spacings)
        reason = "the median over the cases"
    else:
        try:
            target = tuple(float(v) for v in spacing)
        except ValueError:
            raise DataError(f"--spacing {' '.join(spacing)}: expected auto or three sizes in mm, e.g. 1 1 1") from None
        if len(target) != 3:
            raise DataError(f"--spacing {' '.join(spacing)}: expected three sizes > 0 in mm, e.g. 1 1 1")
        from mckd.bounds import check_bound

        target = tuple(check_bound("spacing", v, "--spacing") for v in target)  # finite, 0.001-1000 mm
        reason = "--spacing"
    found = "; ".join("x".join(f"{v:g}" for v in s) for s in distinct[:4]) + (" ..." if len(distinct) > 4 else "")
    moved = sum(1 for s in spacings if not np.allclose(s, target, atol=1e-3))
    return GridPlan(codes, tuple(target)), (f"{reason}; the cases have {found} mm, {moved} of {len(spacings)} "
                                            "resampled")


def prepare_segmentation(source: str | Path, out: str | Path, format_hint: str = "auto", labels: str = "auto",
                         spacing: Sequence[str] = ("auto",), orientation: str = "RAS", workers: int = 1,
                         force: bool = False, allow_missing: bool = False, progress: bool = True,
                         channels: Sequence[str] | None = None, say: Any = print) -> dict[str, Any]:
    """Detect the format of ``source``, decide labels and grid, write the cache at ``out``; return its record.

    ``out`` is claimed first (:func:`mckd.io.claim_output`): a busy, existing (without ``force``) or
    unwritable output is refused before any case is read.
    """
    from mckd.bounds import check_bound
    from mckd.data.brats_cache import check_cache_output
    from mckd.io import claim_output

    workers = int(check_bound("workers", workers, "--workers"))  # more processes than CPUs: capped, with a warning
    check_cache_output(Path(out), force)
    with claim_output(out, replace=True, kind="dir", what="cache", replaces=True, inputs=[source]):
        return _prepare_segmentation(source, out, format_hint, labels, spacing, orientation, workers, force,
                                     allow_missing, progress, channels, say)


def _prepare_segmentation(source: str | Path, out: str | Path, format_hint: str, labels: str,
                          spacing: Sequence[str], orientation: str, workers: int, force: bool, allow_missing: bool,
                          progress: bool, channels: Sequence[str] | None, say: Any) -> dict[str, Any]:
    found = detect_format(source, format_hint, channels=channels)
    say(f"found {found.title} in {source}")
    say("sequences: " + ", ".join(f"{m} <- {found.channels.get(m, m)}" for m in found.modalities))
    cases = found.cases(labelled=True, allow_missing=allow_missing)
    scheme, reason = resolve_scheme(found, labels, cases, workers)
    say(f"labels ({reason}): {scheme.describe()}; evaluated: {', '.join(scheme.target_names())}")
    plan, why = resolve_plan(cases, orientation, spacing)
    say(f"grid: {plan.describe()} ({why})")
    absent = [c for c in cases if c.absent]
    if absent:
        say(f"{len(absent)} of {len(cases)} cases lack a sequence (e.g. {absent[0].case_id}: "
            f"{', '.join(absent[0].absent)})" + ("; treated as missing" if allow_missing else ""))
    extra = {"source_format": found.record(), "label_reason": reason}
    return prepare_cache(source, out, found, workers=workers, force=force, allow_missing=allow_missing,
                         progress=progress, scheme=scheme, plan=plan, cases=cases, extra=extra)
