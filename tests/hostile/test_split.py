"""A run's split is part of the run: evaluation and resume never re-draw it from files that changed.

The run's ``data.json`` records each split's ids and labels; a recorded
sample gone or relabelled is one error naming it (the evaluation tables and
the record are left as they were), or, with ``--accept-changed-data``, an
evaluation of the recorded ids that remain which says so; a sample added
since training belongs to no split.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from hostile.kit import Case, Cases, World, run_case

CASES = Cases()


def _own_run_on_a_copy(w: World, name: str) -> tuple[Path, Path]:
    """A copy of the own-data run whose config reads a copy of the table: ``(run, table)``."""
    folder = w.copy(w.own, f"{name}_data")
    run = w.copy(w.own_run, f"{name}_run")
    _repoint(run, str(w.own), str(folder))
    return run, folder / "table.csv"


def _repoint(run: Path, old: str, new: str) -> None:
    """Make ``run`` (config.yaml and its checkpoint's stored config) read ``new`` where it read ``old``."""
    from mckd.checkpoint import load_checkpoint, save_checkpoint

    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(old, new))
    tensors, metadata = load_checkpoint(run / "checkpoint.safetensors")
    metadata["config"] = json.loads(json.dumps(metadata["config"]).replace(old, new))
    save_checkpoint(run / "checkpoint.safetensors", tensors, metadata)


def _edit_rows(table: Path, edit) -> None:
    with table.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    rows = edit(rows)
    with table.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _recorded(run: Path, split: str) -> list[str]:
    return json.loads((run / "data.json").read_text())["split_ids"][split]


def _relabel(ids: set[str]):
    def edit(rows):
        for row in rows:
            if row["id"] in ids:
                row["label"] = str((int(row["label"]) + 1) % 3)
        return rows
    return edit


@CASES
def evaluate_after_test_labels_were_edited(w: World) -> Case:
    run, table = _own_run_on_a_copy(w, "relabelled")
    edited = set(_recorded(run, "test")[:3])
    _edit_rows(table, _relabel(edited))
    return Case(["evaluate", run], ["the data changed since the run was trained", "other labels now",
                                    sorted(edited)[0], "--accept-changed-data"], [run / "eval", run / "data.json"])


@CASES
def evaluate_after_training_labels_were_edited(w: World) -> Case:
    run, table = _own_run_on_a_copy(w, "relabelled_train")
    edited = set(_recorded(run, "train")[:6])  # re-drawn, the stratified split would move samples across
    _edit_rows(table, _relabel(edited))
    return Case(["evaluate", run], ["other labels now", sorted(edited)[0]], [run / "eval"])


@CASES
def evaluate_after_samples_were_removed(w: World) -> Case:
    run, table = _own_run_on_a_copy(w, "removed")
    gone = set(_recorded(run, "test")[:2])
    _edit_rows(table, lambda rows: [r for r in rows if r["id"] not in gone])
    return Case(["evaluate", run], ["are gone from the data", sorted(gone)[0]], [run / "eval"])


@CASES
def resume_after_labels_were_edited(w: World) -> Case:
    run, table = _own_run_on_a_copy(w, "resume_relabelled")
    edited = set(_recorded(run, "test")[:2])
    _edit_rows(table, _relabel(edited))
    return Case(["train", "--resume", run, "--set", "train.iterations=8"], ["other labels now", sorted(edited)[0]],
                [run])


@CASES
def evaluate_with_accept_changed_data_uses_the_recorded_ids_and_says_so(w: World) -> Case:
    run, table = _own_run_on_a_copy(w, "accepted")
    test_ids = _recorded(run, "test")
    gone = test_ids[0]
    _edit_rows(table, lambda rows: [r for r in rows if r["id"] != gone])

    def scored_the_recorded_remainder() -> list[str]:
        rows = list(csv.DictReader((run / "eval" / "observed.csv").open()))
        samples = int(rows[0]["samples"])
        return [] if samples == len(test_ids) - 1 else [f"scored {samples} samples, not the {len(test_ids) - 1} "
                                                        "recorded test ids that remain"]
    return Case(["evaluate", run, "--accept-changed-data"], [], [run / "data.json"], code=0,
                warns=["recorded split", "nothing was re-drawn", gone], after=scored_the_recorded_remainder)


@CASES
def evaluate_after_samples_were_added_scores_only_the_recorded_test_ids(w: World) -> Case:
    run, table = _own_run_on_a_copy(w, "added")
    test_ids = _recorded(run, "test")

    def add(rows):
        extra = [{**row, "id": f"new{n}"} for n, row in enumerate(rows[:30])]
        return extra + rows  # first: a re-drawn split would change for every sample

    _edit_rows(table, add)

    def scored_the_recorded_ids() -> list[str]:
        rows = list(csv.DictReader((run / "eval" / "observed.csv").open()))
        return [] if int(rows[0]["samples"]) == len(test_ids) else [f"scored {rows[0]['samples']} samples"]
    return Case(["evaluate", run], [], [run / "data.json"], code=0, after=scored_the_recorded_ids)


@CASES
def evaluate_a_segmentation_run_whose_test_case_left_the_cache(w: World) -> Case:
    cache = w.copy(w.cache, "cache_lost_case")
    run = w.copy(w.brats_run, "seg_lost_case")
    _repoint(run, str(w.cache), str(cache))
    lost = _recorded_cases(run)["test"][0]
    record = json.loads((cache / "dataset.json").read_text())
    record["cases"] = [c for c in record["cases"] if c != lost]
    (cache / "dataset.json").write_text(json.dumps(record))
    shutil.rmtree(cache / lost)
    return Case(["evaluate", run, "--device", "cpu"], ["are gone from the data", lost], [run / "eval"])


def _recorded_cases(run: Path) -> dict[str, list[str]]:
    return json.loads((run / "data.json").read_text())["cases"]


@CASES
def evaluate_with_a_damaged_split_record(w: World) -> Case:
    run = w.copy(w.own_run, "damaged_record")
    (run / "data.json").write_text('{"split_ids": {"train": 3}}')
    return Case(["evaluate", run], ["data.json", "recorded split is damaged"], [run / "eval"])


@pytest.mark.parametrize("build", CASES.params())
def test_a_runs_split_is_never_redrawn(build, world):
    problems = run_case(build(world), world)
    assert not problems, "\n".join(problems)
