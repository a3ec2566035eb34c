"""``mckd prepare seg``: one dataset or several, in any format -> one segmentation cache, saying what it found.

The steps, each stated on the terminal and kept in the cache's record:

1. each source's format (:func:`mckd.seg.formats.detect_format`) and sequences;
   with several sources, the cache's sequences are all of theirs, and a case
   lacks those its source does not have (real missingness, ``--allow-missing``);
2. each source's labels: as the dataset describes them (MSD, nnU-Net, a
   layout file), as ``--labels`` declares them (a contradiction with the
   description is an error), or, for BraTS layouts, the one convention the
   label values found make certain (:func:`mckd.seg.labels.choose_brats_convention`);
   several sources must share their classes (every BraTS convention does);
3. the grid: ``--orientation`` (default RAS) and ``--spacing`` (default the
   median voxel size of the cases, nnU-Net's choice);
4. the cache itself (:func:`mckd.seg.cache.prepare_cache`: the checks, the
   preprocessing, in parallel, atomically).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mckd.errors import DataError
from mckd.progress import plural
from mckd.seg.cache import CaseJob, prepare_cache
from mckd.seg.cases import CaseFiles, check_affine
from mckd.seg.formats import SEQUENCE_SYNONYMS, SourceFormat, detect_format
from mckd.seg.grid import GridPlan, check_orientation, median_spacing, reoriented_spacing
from mckd.seg.labels import (
    CONVENTIONS,
    LabelScheme,
    check_declared_names,
    choose_brats_convention,
    class_map,
    resolve_declaration,
)


def label_values(path: str) -> set[int]:
    """The distinct values of a label file (read in full; a damaged file is a :class:`DataError`)."""
    from mckd.seg.cases import read_nifti

    array = read_nifti(Path(path), "label map").array
    return {int(v) for v in np.unique(array)}


def scan_label_values(paths: Sequence[str], workers: int = 1) -> dict[str, set[int]]:
    """The values found in each label file, read by ``workers`` processes."""
    if workers <= 1 or len(paths) < 2:
        return {path: label_values(path) for path in paths}
    from mckd.seg.cache import stop_pool, worker_init

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


@dataclass
class Source:
    """One dataset given to ``prepare seg``: its format, cases and labels."""

    found: SourceFormat
    cases: list[CaseFiles]
    scheme: LabelScheme
    reason: str


def union_of_sequences(sources: Sequence[SourceFormat]) -> tuple[str, ...]:
    """Every source's sequences: BraTS's four in their usual order first, then others as they come."""
    seen: list[str] = []
    for source in sources:
        seen += [m for m in source.modalities if m not in seen]
    usual = [m for m in SEQUENCE_SYNONYMS if m in seen]
    return tuple(usual + [m for m in seen if m not in usual])


def prepare_segmentation(sources: str | Path | Sequence[str | Path], out: str | Path,
                         format_hint: str | Sequence[str] = "auto", labels: str = "auto",
                         spacing: Sequence[str] = ("auto",), orientation: str = "RAS", workers: int = 1,
                         force: bool = False, allow_missing: bool = False, progress: bool = True,
                         channels: Sequence[str] | None = None, say: Any = print) -> dict[str, Any]:
    """Detect the format of each source, decide labels and grid, write one cache at ``out``; return its record.

    Args:
        sources: one dataset folder, or several (their cases go into one cache; case names must differ).
        format_hint: ``auto`` or a format for every source, or one per source.

    ``out`` is claimed first (:func:`mckd.io.claim_output`): a busy, existing (without ``force``) or
    unwritable output is refused before any case is read.
    """
    from mckd.bounds import check_bound
    from mckd.io import claim_output
    from mckd.seg.cache import check_cache_output

    workers = int(check_bound("workers", workers, "--workers"))  # more processes than CPUs: capped, with a warning
    folders = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    hints = [format_hint] * len(folders) if isinstance(format_hint, str) else list(format_hint)
    if len(hints) == 1 and len(folders) > 1:
        hints = hints * len(folders)
    if len(hints) != len(folders):
        raise DataError(f"--format names {len(hints)} formats for {len(folders)} sources; give one for all of them "
                        "or one per source, in order")
    check_cache_output(Path(out), force)
    with claim_output(out, replace=True, kind="dir", what="cache", replaces=True, inputs=folders):
        return _prepare_segmentation(folders, out, hints, labels, spacing, orientation, workers, force,
                                     allow_missing, progress, channels, say)


def _read_source(folder: Path, hint: str, labels: str, workers: int, allow_missing: bool,
                 channels: Sequence[str] | None, say: Any) -> Source:
    found = detect_format(folder, hint, channels=channels)
    say(f"found {found.title} in {folder}")
    say("sequences: " + ", ".join(f"{m} <- {found.channels.get(m, m)}" for m in found.modalities))
    cases = found.cases(labelled=True, allow_missing=allow_missing)
    if not cases:
        raise DataError(f"no cases found in {folder}")
    scheme, reason = resolve_scheme(found, labels, cases, workers)
    say(f"labels ({reason}): {scheme.describe()}; evaluated: {', '.join(scheme.target_names())}")
    return Source(found, cases, scheme, reason)


def _prepare_segmentation(folders: Sequence[Path], out: str | Path, hints: Sequence[str], labels: str,
                          spacing: Sequence[str], orientation: str, workers: int, force: bool, allow_missing: bool,
                          progress: bool, channels: Sequence[str] | None, say: Any) -> dict[str, Any]:
    sources = [_read_source(folder, hint, labels, workers, allow_missing, channels, say)
               for folder, hint in zip(folders, hints)]
    modalities = union_of_sequences([s.found for s in sources])
    scheme = sources[0].scheme
    jobs, names = [], {}
    for source in sources:
        lookup = tuple(int(v) for v in class_map(source.scheme, scheme, f"{source.found.root}"))
        for case in source.cases:
            if case.case_id in names:
                raise DataError(f"case {case.case_id} is in {names[case.case_id]} and in {source.found.root}; "
                                "case names must differ across sources")
            names[case.case_id] = source.found.root
            jobs.append(CaseJob(case, source.found.modalities, source.scheme if case.label else None, lookup))
    if len(sources) > 1:
        say(f"{plural(len(jobs), 'case')} from {plural(len(sources), 'source')}; sequences: {', '.join(modalities)}; labels as "
            f"{scheme.name}'s classes")
    plan, why = resolve_plan([job.files for job in jobs], orientation, spacing)
    say(f"grid: {plan.describe()} ({why})")
    lacking = [job for job in jobs if any(m not in job.files.images for m in modalities)]
    if lacking:
        first = lacking[0]
        absent = [m for m in modalities if m not in first.files.images]
        say(f"{len(lacking)} of {plural(len(jobs), 'case')} lack{'s' if len(lacking) == 1 else ''} a sequence (e.g. {first.files.case_id}: {', '.join(absent)})"
            + ("; treated as missing" if allow_missing else ""))
    extra = {"source_format": sources[0].found.record(), "label_reason": sources[0].reason,
             "source": str(sources[0].found.root.resolve())}
    if len(sources) > 1:
        extra["sources"] = [{"source": str(s.found.root.resolve()), "format": s.found.record(),
                             "labels": s.scheme.name, "label_reason": s.reason, "cases": len(s.cases)}
                            for s in sources]
    return prepare_cache(out, jobs, modalities, scheme, plan, workers=workers, force=force,
                         allow_missing=allow_missing, progress=progress, extra=extra)
