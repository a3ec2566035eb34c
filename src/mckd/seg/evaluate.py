"""Scoring a trained segmentation model on other labelled data (``mckd evaluate RUN --data CACHE_OR_DIR``).

``--data`` is a cache (``mckd prepare seg``, made on the run's grid: scored
there, as the run's own test split) or a dataset folder in any format. Every
case of a folder is segmented as ``mckd predict`` would segment it
(:mod:`mckd.seg.segment`: the same resampling, mask, post-processing and output
grid) and compared with its own label file on the file's grid, with HD95 in
the file's millimetres. So each case's Dice here is the Dice of the file
``mckd predict`` writes against the label file.

Rows, as :mod:`mckd.evaluation` gives them for a cache:

- ``cases``: one row per case and subset of sequences it was predicted from
  (``as_observed`` ``yes``: from every sequence the case has, as ``mckd predict`` does by default);
- every subset of the model's sequences: the mean over the cases that have
  all of it (``samples`` of them; none: the metrics are undefined);
- as observed (``all``): each case from every sequence it has, then one row
  per pattern of present sequences (cases with real missing sequences).

Under torchrun the cases are shared out between the processes and the rows
gathered (as JSON; nothing is pickled).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mckd import distributed
from mckd.errors import DataError, MckdError
from mckd.progress import plural
from mckd.evaluation import OBSERVED, Evaluation, all_subsets, evaluate, subset_name
from mckd.report import write_table, write_task_tables
from mckd.seg.cases import CaseFiles, read_case_files
from mckd.seg.grid import spacing_of
from mckd.seg.labels import LabelScheme, class_map
from mckd.seg.segment import (
    SegmentOptions,
    file_grid_task,
    no_usable_sequence,
    prepare_case,
    run_format_record,
    run_plan,
    segment_prepared,
)

Row = dict[str, Any]


@dataclass
class CaseEvaluation:
    """The rows of an evaluation on new cases (see the module docstring)."""

    cases: list[Row]
    subsets: list[Row]
    observed: list[Row]


def score_case(loaded: Any, task: Any, files: CaseFiles, modalities: Sequence[str], data_scheme: LabelScheme,
               subsets: str | Sequence[Sequence[str]], options: SegmentOptions, device: torch.device) -> list[Row]:
    """One row per subset of the case's sequences it is predicted from, with Dice and HD95 on its own grid."""
    model = loaded.model
    case = read_case_files(files, modalities, data_scheme, allow_missing=True, need_labels=True)
    if case.labels is None:
        raise DataError(f"case {files.case_id} has no label file; evaluation needs labelled cases")
    truth = class_map(data_scheme, task.scheme, f"case {files.case_id}")[case.labels]
    prepared = prepare_case(case, run_plan(loaded.facts), int(loaded.facts.get("downsample", 1)), device)
    has = tuple(m for m in model.modalities if m in prepared.inputs)
    if not has:
        raise no_usable_sequence(files.case_id, list(prepared.inputs), model.modalities)
    if subsets == "observed":
        chosen = [has]
    elif subsets == "all":
        chosen = [s for s in all_subsets(model.modalities) if set(s) <= set(has)]
    else:
        chosen = [tuple(m for m in model.modalities if m in s) for s in subsets if set(s) <= set(has)]
    rows = []
    spacing = spacing_of(case.affine)
    for subset in chosen:
        segmentation = segment_prepared(model, task, prepared, subset, int(loaded.facts.get("downsample", 1)), options)
        metrics = task.label_metrics(torch.from_numpy(segmentation.labels)[None], torch.from_numpy(truth)[None], spacing)
        rows.append({"case": files.case_id, "subset": subset_name(subset), "pattern": subset_name(has),
                     "size": len(subset), "as_observed": "yes" if subset == has else "no",
                     **{name: float(metrics[name][0]) for name in task.metric_names}})
    return rows


def evaluate_cases(loaded: Any, task: Any, cases: Sequence[CaseFiles], modalities: Sequence[str],
                   data_scheme: LabelScheme, subsets: str | Sequence[Sequence[str]] = "all",
                   options: SegmentOptions = SegmentOptions(), device: torch.device = torch.device("cpu"),
                   progress: Callable[[str, list[Row]], None] | None = None) -> CaseEvaluation:
    """Score every case (this rank's share under torchrun) and summarise them; every rank returns the same rows.

    Args:
        loaded: the trained run (:func:`mckd.runs.load_model`).
        task: its task on the file's grid (:func:`mckd.seg.segment.file_grid_task`).
        cases: the labelled cases, as a format lists them.
        modalities: the sequences the format names (the cases' files).
        data_scheme: what the cases' label values mean (mapped onto the run's classes).
        subsets: ``all`` (every subset of the model's sequences each case has), ``observed``
            (each case from what it has), or a list of subsets.
    """
    if not cases:
        raise DataError("evaluation: no labelled case to evaluate")
    unknown = sorted({m for s in subsets for m in s} - set(loaded.model.modalities)) if not isinstance(subsets, str) else []
    if unknown:  # a subset the model cannot take would make a table of 0 cases
        raise DataError(f"--subsets names {unknown}, which the run does not take; its sequences: "
                        f"{', '.join(loaded.model.modalities)}")
    rank, size = distributed.rank_and_size()
    mine: list[Row] = []
    for files in list(cases)[rank::size]:
        rows = score_case(loaded, task, files, modalities, data_scheme, subsets, options, device)
        mine += rows
        if progress is not None:
            progress(files.case_id, rows)
    rows = [row for part in distributed.gather_json(mine) for row in part]
    order = {c.case_id: i for i, c in enumerate(cases)}
    rows.sort(key=lambda r: (order[r["case"]], r["size"]))
    return CaseEvaluation(rows, *summarise(rows, loaded.model.modalities, task.metric_names))


def _mean(rows: Sequence[Row], metrics: Sequence[str]) -> dict[str, float | None]:
    if not rows:
        return {m: None for m in metrics}
    return {m: float(np.mean([r[m] for r in rows])) for m in metrics}


def summarise(rows: Sequence[Row], modalities: Sequence[str], metrics: Sequence[str]) -> tuple[list[Row], list[Row]]:
    """Per-case rows -> (every-subset rows, as-observed rows), as :func:`mckd.evaluation.evaluate` lays them out."""
    subset_rows = []
    for subset in all_subsets(modalities):
        name = subset_name(subset)
        chosen = [r for r in rows if r["subset"] == name]
        subset_rows.append({"subset": name, "size": len(subset), "samples": len(chosen), **_mean(chosen, metrics)})
    observed = [r for r in rows if r["subset"] == r["pattern"]]
    observed_rows = [{"pattern": OBSERVED, "size": "", "samples": len(observed), **_mean(observed, metrics)}]
    for subset in all_subsets(modalities):
        name = subset_name(subset)
        chosen = [r for r in observed if r["pattern"] == name]
        if chosen:
            observed_rows.append({"pattern": name, "size": len(subset), "samples": len(chosen),
                                  **_mean(chosen, metrics)})
    return subset_rows, observed_rows


# --- mckd evaluate RUN --data ------------------------------------------------------------------------

SUBSETS_NOTE = ("Each row: the cases that have every sequence of the subset (`samples`), each predicted from exactly "
                "that subset. `–`: no case has the subset, so its metrics are undefined.")
OBSERVED_NOTE = ("`all`: every case predicted from the sequences it has; then one row per pattern of present "
                 "sequences. `–`: undefined for those cases.")


def evaluate_on_data(loaded: Any, run_name: str, data: str | Path, target: Path, device: torch.device,
                     data_format: str = "auto", labels: str = "auto", subsets: str | list[list[str]] = "all",
                     options: SegmentOptions | None = None, channels: list[str] | None = None,
                     progress: bool = True) -> Evaluation:
    """Score a trained segmentation model (:func:`mckd.runs.load_model`) on the labelled cases of ``data``.

    Writes ``subsets``, ``observed``, ``cases`` (folders), ``table`` and ``evaluation.json`` into ``target``.
    """
    from mckd.seg.cache import DATASET_FILE

    if loaded.config.task.name != "segmentation":
        raise MckdError(f"--data evaluates segmentation runs; {run_name!r} is a {loaded.config.task.name} run")
    options = options or SegmentOptions()
    description = Path(data) / DATASET_FILE
    if description.is_file() and str(_json_field(description, "format")).startswith("mckd-"):
        result, cases, about = _evaluate_cache(loaded, Path(data), device)
    else:
        result, cases, about = _evaluate_folder(loaded, Path(data), device, data_format, labels, subsets,
                                                options, channels, progress)
    if distributed.is_main():
        from mckd.io import atomic_write_text

        name = Path(data).name
        write_table(result.subsets, target / "subsets", title=f"{run_name} on {name}: every subset", notes=SUBSETS_NOTE)
        write_table(result.observed, target / "observed", title=f"{run_name} on {name} as observed", notes=OBSERVED_NOTE)
        if cases:
            write_table(cases, target / "cases", title=f"{run_name} on {name}: each case",
                        notes="Each case predicted from each subset of the sequences it has, scored on its own grid.")
        write_task_tables(loaded.task, result.subsets, target / "table", loaded.model.modalities)
        atomic_write_text(target / "evaluation.json", json.dumps({
            "run": run_name, "data": str(Path(data).resolve()), **about, "options": options.to_json()}, indent=2) + "\n")
    return result


def _json_field(path: Path, key: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None


def _evaluate_cache(loaded: Any, cache: Path, device: torch.device) -> tuple[Evaluation, list, dict]:
    """A cache on the run's grid, scored there (the run's downsampling), as the run's own test split."""
    from mckd.seg.cache import cache_plan, cache_scheme, read_dataset_record
    from mckd.seg.dataset import CaseDataset, SegCases

    record = read_dataset_record(cache)
    plan, mine = cache_plan(record), run_plan(loaded.facts)
    if plan.orientation != mine.orientation or (plan.spacing and mine.spacing and not np.allclose(plan.spacing, mine.spacing)):
        raise MckdError(f"cache {str(cache)!r} is on a {plan.describe()} grid, the run's on {mine.describe()}: "
                        "evaluate the dataset's folder instead (--data SRC), or prepare it with the run's "
                        f"--spacing {' '.join(f'{s:g}' for s in mine.spacing)} --orientation {mine.orientation or 'none'}")
    lookup = class_map(cache_scheme(record), loaded.task.scheme, f"cache {cache}")
    step = int(loaded.facts.get("downsample", 1))
    cases = SegCases(cache, record["cases"], loaded.model.modalities, step, label_lookup=lookup)
    result = evaluate(loaded.model, loaded.task, CaseDataset(cases), 1, device)
    return result, [], {"kind": "cache", "cases": len(record["cases"]), "grid": "the cache's, downsampled as in training"}


def _evaluate_folder(loaded: Any, folder: Path, device: torch.device, data_format: str, labels: str,
                     subsets: Any, options: SegmentOptions, channels: list[str] | None,
                     progress: bool) -> tuple[Evaluation, list, dict]:
    """A dataset folder in any format: each case segmented as mckd predict would, scored on its own grid."""
    from mckd.progress import CaseProgress
    from mckd.seg.formats import detect_format
    from mckd.seg.prepare import resolve_scheme

    task = file_grid_task(loaded)
    found = detect_format(folder, data_format, record=run_format_record(loaded.facts), channels=channels,
                          run_labels=task.scheme)
    cases = found.cases(labelled=True, allow_missing=True)
    scheme, reason = resolve_scheme(found, labels, cases)
    if distributed.is_main():
        print(f"evaluating {plural(len(cases), 'case')} of {found.title}; labels: {reason}")
    rank, size = distributed.rank_and_size()
    bar = CaseProgress(len(cases[rank::size]), "evaluate", enabled=progress, prefix=f"rank {rank} " if size > 1 else "")

    def done(case_id: str, rows: list) -> None:
        observed = [r for r in rows if r["as_observed"] == "yes"]
        count = f"{len(rows)} subset{'s' if len(rows) != 1 else ''}"
        note = (f"{count}; from {observed[0]['subset']}: dice_mean {observed[0]['dice_mean']:.4f}"
                if observed else count)
        bar.update(case_id, note)

    result = evaluate_cases(loaded, task, cases, found.modalities, scheme, subsets, options, device, progress=done)
    bar.close()
    about = {"kind": found.kind, "format": found.title, "labels": reason, "cases": len(cases),
             "grid": "each case's own (the files' voxels, HD95 in their mm)",
             "subsets": subsets if isinstance(subsets, str) else ["+".join(s) for s in subsets]}
    return Evaluation(result.subsets, result.observed), result.cases, about
