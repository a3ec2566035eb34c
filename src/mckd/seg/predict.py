"""``mckd predict``: a trained segmentation run on new cases -> label maps (and probabilities) on each input's grid.

Two forms:

- a folder of cases in any format (``--input DIR --output DIR``: nnU-Net v2,
  MSD, BraTS case folders, a layout file), each case from whatever sequences
  it has of the model's (or of ``--sequences``), written as the format names
  its predictions (nnU-Net ``{case}{file_ending}``, MSD and case folders
  ``{case}.nii.gz``, BraTS's submission name), with ``predict.json`` in the
  output folder recording every option and case; under torchrun the cases
  are shared out between the processes;
- one case from its files (``MODALITY=FILE ... --out FILE``).

One rule for sequences the model does not take, in both forms: they are not
used, and a line says which. A prediction never replaces a file that an input
case reads (an image, a label file, a brain mask, the dataset's
description), even with ``--force``: the error names the file and what it is.

Each case is segmented by :mod:`mckd.seg.segment` (the run's grid, mask,
post-processing, the way back to the file's grid). Labels are written in the
input's declared convention when it has the run's classes (BraTS folders:
their release's numbering; MSD / nnU-Net: their dataset.json's; a layout:
its labels), else in the run's own; ``--labels`` chooses.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mckd import distributed
from mckd.errors import DataError, MckdError
from mckd.io import atomic_write, claim_output, remove_stale_temporaries_inside
from mckd.progress import CaseProgress, plural
from mckd.seg.cases import CaseFiles, ImageFile, read_case_files
from mckd.seg.formats import SourceFormat, detect_format
from mckd.seg.labels import CONVENTIONS, LabelScheme, class_map, resolve_declaration
from mckd.seg.segment import (
    SegmentOptions,
    file_grid_task,
    no_usable_sequence,
    prepare_case,
    run_format_record,
    run_plan,
    segment_prepared,
)

RECORD = "predict.json"
SEGMENTATION_DATASETS = ("seg", "brats")


def load_segmentation_model(checkpoint: str | Path, device: torch.device) -> Any:
    """The trained model of a segmentation run (:func:`mckd.runs.load_model`); no dataset is read."""
    from mckd.runs import load_model

    loaded = load_model(checkpoint, device)
    config = loaded.config
    if config.task.name != "segmentation" or config.data.name not in SEGMENTATION_DATASETS:
        raise MckdError(f"checkpoint {str(loaded.path)!r} is a {config.task.name} model on {config.data.name!r}; "
                        "mckd predict needs a segmentation run (a BraTS segmentation run, or any `mckd prepare seg` "
                        "dataset's)")
    return loaded


def write_nifti(array: np.ndarray, reference: str | Path, out: Path, affine: np.ndarray) -> Path:
    """``array`` ``[X, Y, Z]`` (or ``[X, Y, Z, C]``) as NIfTI with the reference file's header and ``affine``, atomically.

    Written on whichever rank calls it (each rank writes its own cases). The
    data type is the array's; the header's scaling is reset.
    """
    import nibabel as nib

    header = nib.load(str(reference)).header.copy()
    header.set_data_dtype(array.dtype)
    image = nib.Nifti1Image(array, affine, header)
    image.header.set_slope_inter(1.0, 0.0)
    suffix = ".tmp.nii.gz" if out.name.endswith(".nii.gz") else ".tmp.nii"
    atomic_write(out, lambda tmp: nib.save(image, tmp), suffix=suffix, every_rank=True)
    return out


def output_labels(run_scheme: LabelScheme, found: SourceFormat | None, spec: str) -> tuple[LabelScheme, str]:
    """The label values predictions are written in, and why (``spec``: ``auto``, ``run``, a convention or a file).

    ``auto``: the input's declared labels when they have the run's classes
    (a BraTS folder: its release's convention; MSD / nnU-Net: its dataset.json),
    else the run's own.
    """
    if spec == "run":
        return run_scheme, "in the run's own labels (--labels run)"
    if spec != "auto":
        scheme = resolve_declaration(spec)
        class_map(run_scheme, scheme, f"--labels {spec}")  # refuse a scheme the run's classes do not fit
        return scheme, f"in the {scheme.name} labels (--labels {spec})"
    candidates: list[tuple[LabelScheme, str]] = []
    if found is not None and found.declared is not None:
        candidates.append((found.declared, f"as declared in {found.declared.name}"))
    if found is not None and found.kind in ("brats2018", "brats2023"):
        candidates.append((CONVENTIONS[found.kind], f"in the {found.kind} convention of the folder's names"))
    for scheme, reason in candidates:
        try:
            class_map(run_scheme, scheme)
        except DataError:
            continue
        return scheme, reason
    return run_scheme, "in the run's own labels (the input declares none with the run's classes)"


def sequence_rule(takes: Sequence[str], given: Sequence[str]) -> str:
    """The one rule for sequences a model does not take, in words: they are not used (``""`` when there are none)."""
    ignored = [m for m in given if m not in takes]
    if not ignored:
        return ""
    return f"the model does not take {', '.join(ignored)}: not used (it takes {', '.join(takes)})"


def check_not_an_input(target: Path, used: Mapping[Path, str]) -> None:
    """Refuse to write ``target`` over a file an input case reads, even with ``--force``."""
    what = used.get(target.resolve())
    if what is not None:
        raise DataError(f"refusing to write {target}: it is {what}; a prediction never replaces a file an input case "
                        "reads, even with --force: choose another --output")


def sequence_patterns(cases: Sequence[CaseFiles], usable: Sequence[str]) -> str:
    """How many cases will be segmented from which sequences, from their files (``flair+t1ce: 3 cases, ...``)."""
    counts: dict[str, int] = {}
    for case in cases:
        key = "+".join(m for m in usable if m in case.images) or "none"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{key}: {n} case{'s' if n != 1 else ''}" for key, n in sorted(counts.items(), key=lambda kv: -kv[1]))


@dataclass
class FolderPrediction:
    """What a folder prediction did (the content of ``predict.json``)."""

    record: dict[str, Any]
    cases: list[dict[str, Any]] = field(default_factory=list)


def _say(message: str) -> None:
    print(message, flush=True)


def predict_folder(
    checkpoint: str | Path,
    input_dir: str | Path,
    output_dir: str | Path,
    data_format: str = "auto",
    channels: Sequence[str] | None = None,
    sequences: Sequence[str] | None = None,
    labels: str = "auto",
    options: SegmentOptions = SegmentOptions(),
    device: str = "auto",
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    say: Any = _say,
) -> FolderPrediction:
    """Segment every case of ``input_dir`` (any format) into ``output_dir``; write ``predict.json``.

    Args:
        data_format: ``auto``, a named format (``mckd list``) or a YAML layout file.
        channels: sequence names in channel order, for a folder of images without a dataset.json.
        sequences: use only these (each case: those it has among them); None: every one it has that the
            model takes. Sequences the model does not take are never used (a line says which).
        labels: output label values (:func:`output_labels`).
        resume: skip cases whose output exists (``--continue``); ``force``: overwrite them (never a file
            an input case reads).
        say: prints what was found and done (``print``).
    """
    context = distributed.setup(device)
    rank, size = context.rank, context.world_size
    loaded = load_segmentation_model(checkpoint, context.device)
    model, task = loaded.model, file_grid_task(loaded)
    plan_record = loaded.facts.get("plan", {})
    found = detect_format(input_dir, data_format, record=run_format_record(loaded.facts), channels=channels,
                          run_labels=task.scheme)
    cases = found.cases(labelled=False, allow_missing=True)
    if sequences:
        unknown = [m for m in sequences if m not in model.modalities]
        if unknown:
            raise DataError(f"--sequences {','.join(sequences)}: {unknown} are not among the model's "
                            f"({', '.join(model.modalities)})")
    takes = [m for m in model.modalities if not sequences or m in sequences]
    usable = [m for m in found.modalities if m in takes]
    if not usable:
        raise DataError(f"{input_dir} ({found.title}) has the sequences {', '.join(found.modalities)}; the model takes "
                        f"{', '.join(model.modalities)}" + (f" and --sequences chose {', '.join(sequences)}" if sequences else "")
                        + ": none in common")
    empty = [c for c in cases if not any(m in c.images for m in usable)]
    if empty:
        error = no_usable_sequence(empty[0].case_id, list(empty[0].images), takes)
        raise DataError(f"{error} ({len(empty)} such case{'s' if len(empty) != 1 else ''} in {input_dir}); leave "
                        "them out or choose others with --sequences")
    out_root = Path(output_dir)
    if out_root.exists() and not out_root.is_dir():
        raise DataError(f"--output {out_root} is a file; expected a folder")
    names = {c.case_id: found.output_name(c.case_id) for c in cases}
    if len(set(names.values())) != len(names):
        raise DataError(f"two cases of {input_dir} would be written to the same file; their names repeat")
    used = found.files_used(cases)
    for name in names.values():  # before anything is claimed or written
        check_not_an_input(out_root / name, used)
        if options.probabilities:
            check_not_an_input(out_root / probabilities_name(name), used)
    with claim_output(out_root, replace=True, kind="dir", what="prediction folder"):  # one writer; rank 0 holds it
        if rank == 0:
            remove_stale_temporaries_inside(out_root)  # the cases of a killed predict
        existing = [n for n in names.values() if (out_root / n).exists()]
        if existing and not (force or resume):
            raise DataError(f"{out_root / existing[0]} exists ({len(existing)} of {len(names)} outputs do); pass --force "
                            "to overwrite them or --continue to keep them and predict the rest")
        distributed.barrier()  # every rank has looked at the outputs before any writes one
        scheme, why = output_labels(task.scheme, found, labels)
        lookup = class_map(task.scheme, scheme)
        record: dict[str, Any] = {
            "run": str(Path(checkpoint).resolve()),
            "input": str(Path(input_dir).resolve()),
            "format": {"kind": found.kind, "found": found.title, "sequences": found.channels},
            "model": {"sequences": list(model.modalities), "plan": plan_record or run_plan(loaded.facts).to_json(),
                      "head": task.head, "targets": list(task.targets)},
            "options": {"sequences": list(sequences) if sequences else "every sequence each case has that the model takes",
                        "naming": f"the {found.kind} format's prediction names",
                        "mask": "the case's mask file" if any(c.mask for c in cases) else
                        "voxels where a sequence differs from its background (corner) value",
                        **options.to_json(), "device": str(context.device)},
            "postprocessing": {"et_min_voxels": task.et_min_voxels if options.et_min_voxels is None else options.et_min_voxels,
                               "et_min_voxels_from": "the run's task.et_min_voxels" if options.et_min_voxels is None
                               else "--et-min-voxels", "order": "mask, then connected components, then small ET"},
            "labels": {"written_as": scheme.name, "values": scheme.describe(), "why": why,
                       "probabilities": (list(task.targets) if task.head == "regions" else list(task.scheme.classes))
                       if options.probabilities else None},
            "processes": size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if rank == 0:
            say(f"found {found.title} in {input_dir}: {plural(len(cases), 'case')}; segmented from the sequences each has of "
                f"{', '.join(usable)} ({sequence_patterns(cases, usable)})")
            rule = sequence_rule(model.modalities, found.modalities)
            if rule:
                say(rule)
            say(f"labels written {why}: {scheme.describe()}")
        mine = list(cases)[rank::size]
        bar = CaseProgress(len(mine), "predict", enabled=progress, prefix=f"rank {rank} " if size > 1 else "")
        done: list[dict[str, Any]] = []
        failure: MckdError | None = None
        try:
            for files in mine:
                target = out_root / names[files.case_id]
                if resume and target.exists() and not force:
                    done.append({"case": files.case_id, "output": names[files.case_id], "skipped": "its output existed"})
                    bar.update(files.case_id, "kept (its output existed)")
                    continue
                started = time.perf_counter()
                entry = _predict_case(loaded, task, files, found, usable, takes, out_root, target, scheme, lookup,
                                      options, context.device)
                entry["seconds"] = round(time.perf_counter() - started, 2)
                entry["rank"] = rank
                entry["output"] = names[files.case_id]
                done.append(entry)
                bar.update(files.case_id, f"{'+'.join(entry['sequences'])} -> {target} ({entry['seconds']:.1f} s)")
        except MckdError as error:  # every rank must hear of it before gathering the records
            failure = error
        if distributed.any_rank(failure is not None):
            bar.close()
            if failure is not None:
                raise failure
            raise MckdError("another process of mckd predict failed; see its error")
        bar.close()
        everyone = [case for part in distributed.gather_json(done) for case in part]
        order = {c.case_id: i for i, c in enumerate(cases)}
        everyone.sort(key=lambda c: order[c["case"]])
        record["cases"] = everyone
        if rank == 0:
            atomic_write(out_root / RECORD, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
            seconds = sum(c.get("seconds", 0.0) for c in everyone)
            say(f"written {plural(len(everyone), 'case')} into {out_root} ({seconds:.1f} s of prediction); record: {out_root / RECORD}")
        return FolderPrediction(record, everyone)


def probabilities_name(output: str) -> str:
    """The probabilities' file beside a case's output: ``{case}_probabilities.nii.gz``."""
    stem = output[: -len(".nii.gz")] if output.endswith(".nii.gz") else output.rsplit(".", 1)[0]
    return f"{stem}_probabilities.nii.gz"


def _predict_case(loaded: Any, task: Any, files: CaseFiles, found: SourceFormat, usable: Sequence[str],
                  takes: Sequence[str], out_root: Path, target: Path, scheme: LabelScheme, lookup: np.ndarray,
                  options: SegmentOptions, device: torch.device) -> dict[str, Any]:
    """Read, segment and write one case; its entry of the record."""
    case = read_case_files(files, found.modalities, None, allow_missing=True, need_labels=False)
    step = int(loaded.facts.get("downsample", 1))
    prepared = prepare_case(case, run_plan(loaded.facts), step, device)
    chosen = [m for m in usable if m in prepared.inputs]
    if not chosen:
        raise no_usable_sequence(files.case_id, list(prepared.inputs), takes)
    segmentation = segment_prepared(loaded.model, task, prepared, chosen, step, options)
    reference = next(files.images[m].path for m in case.images)
    write_nifti(scheme.to_file_values(lookup[segmentation.labels]), reference, target, case.affine)
    entry: dict[str, Any] = {
        "case": files.case_id,
        "inputs": {m: str(replace(files.images[m], path=str(Path(files.images[m].path).resolve())))
                   for m in case.images},  # absolute: the record stays true read from elsewhere
        "sequences": list(segmentation.sequences),
        "missing": [m for m in loaded.model.modalities if m not in segmentation.sequences],
        "shape": list(case.brain.shape),
        "spacing": [round(float(z), 4) for z in case.zooms],
        "grid": prepared.grid_change,
        "resampled": prepared.resampled,
        "warnings": case.warnings,
    }
    if segmentation.probabilities is not None:
        probabilities = out_root / probabilities_name(str(target.relative_to(out_root)))
        write_nifti(np.moveaxis(segmentation.probabilities, 0, -1), reference, probabilities, case.affine)
        entry["probabilities"] = str(probabilities.relative_to(out_root))
    return entry


def predict_files(
    checkpoint: str | Path,
    inputs: Mapping[str, str | Path],
    out: str | Path,
    device: str = "auto",
    mask: str | Path | None = None,
    convention: str = "auto",
    force: bool = False,
    options: SegmentOptions = SegmentOptions(),
    say: Any = _say,
) -> Path:
    """Segment one case from its NIfTI ``inputs`` (``{modality: path}``) and write ``out`` on the first input's grid.

    Sequences the model does not take are not used (a line says which), as in :func:`predict_folder`.
    """
    out = Path(out)
    if not (out.name.endswith(".nii.gz") or out.name.endswith(".nii")):
        raise DataError(f"output {out} must end in .nii.gz or .nii")
    if not inputs:
        raise DataError("give at least one sequence, e.g. flair=case_flair.nii.gz")
    used = {Path(p).resolve(): f"the {m} image given" for m, p in inputs.items()}
    if mask:
        used[Path(mask).resolve()] = "the brain mask given"
    check_not_an_input(out, used)
    if out.exists() and not force:
        raise DataError(f"{out} exists; pass --force to overwrite it")
    torch_device = distributed.resolve_device(device)
    loaded = load_segmentation_model(checkpoint, torch_device)
    model, task = loaded.model, file_grid_task(loaded)
    taken = {m: p for m, p in inputs.items() if m in model.modalities}
    if not taken:
        raise no_usable_sequence(Path(next(iter(inputs.values()))).name, list(inputs), list(model.modalities))
    rule = sequence_rule(list(model.modalities), list(inputs))
    if rule:
        say(rule)
    if convention == "auto":  # mckd 0.1 wrote BraTS runs' predictions in the brats2018 numbering; others: their own
        convention = "brats2018" if task.scheme.name.startswith("brats") else "run"
    scheme, _ = output_labels(task.scheme, None, convention)
    files = CaseFiles(Path(next(iter(taken.values()))).name, {m: ImageFile(str(p)) for m, p in taken.items()}, "", str(mask) if mask else "")
    case = read_case_files(files, list(taken), None, allow_missing=False, need_labels=False,
                           on_empty="; leave it out to predict without that sequence")
    step = int(loaded.facts.get("downsample", 1))
    prepared = prepare_case(case, run_plan(loaded.facts), step, torch_device)
    segmentation = segment_prepared(model, task, prepared, list(taken), step, options)
    labels = scheme.to_file_values(class_map(task.scheme, scheme)[segmentation.labels])
    return write_nifti(labels, next(iter(taken.values())), out, case.affine)
