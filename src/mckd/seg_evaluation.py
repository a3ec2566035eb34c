"""Scoring a trained segmentation model on new labelled cases, each on its own grid (``mckd evaluate RUN --data DIR``).

Every case is segmented as ``mckd predict`` would segment it
(:mod:`mckd.segment`: the same resampling, mask, post-processing and output
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

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mckd import distributed
from mckd.data.brats_layout import CaseFiles, read_case_files
from mckd.data.labels import LabelScheme, class_map
from mckd.errors import DataError
from mckd.evaluation import OBSERVED, all_subsets, subset_name
from mckd.segment import SegmentOptions, case_spacing, prepare_case, run_plan, segment_prepared

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
        raise DataError(f"case {files.case_id} has none of the model's sequences ({', '.join(model.modalities)})")
    if subsets == "observed":
        chosen = [has]
    elif subsets == "all":
        chosen = [s for s in all_subsets(model.modalities) if set(s) <= set(has)]
    else:
        chosen = [tuple(m for m in model.modalities if m in s) for s in subsets if set(s) <= set(has)]
    rows = []
    spacing = case_spacing(case)
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
        task: its task on the file's grid (:func:`mckd.segment.file_grid_task`).
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
