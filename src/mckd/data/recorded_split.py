"""A run's split is part of the run: evaluation and resume use the ids its ``data.json`` recorded.

A dataset draws its split (train / meta-validation / test) from its files. Drawn
again later, from files that changed (a label edited, a sample added or
removed), the draw can differ, and a "test" sample could be one the run trained
on. So a run directory records which sample (or case) went where, and with
which label, in ``data.json`` (``split_ids``, ``split_labels``), and while
:func:`recorded_split` is active every dataset builder takes the split from
that record instead of drawing it (:func:`use_recorded_split`):

- a sample added to the files since training belongs to no split;
- a recorded sample that is gone, or whose label changed, is one
  :class:`~mckd.errors.DataError` naming the ids, unless changes are accepted
  (``mckd evaluate --accept-changed-data``): then the recorded ids that remain
  are used with their current labels, nothing is re-drawn, and a warning says
  which samples changed.

Runs of older mckd versions recorded no ids; their split is drawn as before.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from mckd.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class RecordedSplit:
    """What a run's ``data.json`` recorded of its split.

    Attributes:
        ids: split name -> sample (or case) ids.
        labels: split name -> the label of each id (same order), when recorded.
        source: the ``data.json`` it came from (for messages).
        accept_changes: use the remaining recorded ids with their current labels rather than refuse.
        notices: what changed, when changes were accepted.
    """

    ids: dict[str, list[str]]
    labels: dict[str, list[str]] | None
    source: str
    accept_changes: bool = False
    notices: list[str] = field(default_factory=list)


_ACTIVE: contextvars.ContextVar[RecordedSplit | None] = contextvars.ContextVar("recorded_split", default=None)
_ACCEPT: contextvars.ContextVar[bool] = contextvars.ContextVar("accept_changed_data", default=False)


def read_recorded_split(data_json: str | Path) -> RecordedSplit | None:
    """The split a run's ``data.json`` recorded; None for a run that recorded none (older mckd) or no file."""
    path = Path(data_json)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{str(path)!r} (the run's record of its data and split) is damaged: "
                        f"{' '.join(str(error).split())[:120]}") from None
    if not isinstance(record, dict):
        raise DataError(f"{str(path)!r} (the run's record of its data and split) is not a JSON object")
    ids = record.get("split_ids", record.get("cases"))
    if ids is None:
        return None
    if not (isinstance(ids, dict) and set(ids) == set(SPLITS) and all(isinstance(v, list) for v in ids.values())):
        raise DataError(f"{str(path)!r}: its recorded split is damaged (expected lists of ids for train, val, test)")
    labels = record.get("split_labels")
    if labels is not None and not (isinstance(labels, dict) and all(
            isinstance(labels.get(s), list) and len(labels[s]) == len(ids[s]) for s in SPLITS)):
        raise DataError(f"{str(path)!r}: its recorded labels do not match its recorded ids")
    return RecordedSplit({s: [str(i) for i in ids[s]] for s in SPLITS},
                         {s: [str(v) for v in labels[s]] for s in SPLITS} if labels is not None else None, str(path))


@contextlib.contextmanager
def recorded_split(data_json: str | Path | None) -> Iterator[RecordedSplit | None]:
    """Within the block, datasets are split as the run's ``data.json`` says (see the module docstring).

    ``data_json`` None (a new run) or a record without ids (an older run): nothing changes.
    """
    recorded = read_recorded_split(data_json) if data_json is not None else None
    if recorded is not None:
        recorded.accept_changes = _ACCEPT.get()
    token = _ACTIVE.set(recorded)
    try:
        yield recorded
    finally:
        _ACTIVE.reset(token)
    if recorded is not None and recorded.notices:
        warnings.warn(" ".join(recorded.notices), stacklevel=2)


@contextlib.contextmanager
def accept_changed_data(accept: bool = True) -> Iterator[None]:
    """Within the block a run whose data changed since training is evaluated on its recorded ids that remain."""
    token = _ACCEPT.set(accept)
    try:
        yield
    finally:
        _ACCEPT.reset(token)


def _few(ids: Sequence[str], count: int = 8) -> str:
    shown = ", ".join(ids[:count])
    return f"{shown}{', ...' if len(ids) > count else ''} ({len(ids)})"


def use_recorded_split(ids: Sequence[str], labels: Sequence[str] | None, drawn: np.ndarray) -> np.ndarray:
    """The split code of each sample (0 train, 1 meta-validation, 2 test, -1 none): recorded, or ``drawn``.

    Args:
        ids: ``[S]`` the samples' ids as the files give them now.
        labels: ``[S]`` their labels as text (None: the dataset has none to compare, e.g. cases).
        drawn: ``int64 [S]`` the split drawn from the files (used when no split is recorded).

    Raises:
        DataError: recorded samples are gone or relabelled (names them), unless changes are accepted.
    """
    recorded = _ACTIVE.get()
    if recorded is None:
        return drawn
    index = {str(sample): row for row, sample in enumerate(ids)}
    codes = np.full(len(ids), -1, dtype=np.int64)
    gone: list[str] = []
    relabelled: list[str] = []
    for code, name in enumerate(SPLITS):
        wanted = recorded.labels[name] if recorded.labels is not None else [None] * len(recorded.ids[name])
        for sample, label in zip(recorded.ids[name], wanted):
            row = index.get(sample)
            if row is None:
                gone.append(sample)
                continue
            if label is not None and labels is not None and str(labels[row]) != label:
                relabelled.append(f"{sample} ({label} -> {labels[row]})")
            codes[row] = code
    problems = []
    if gone:
        problems.append(f"recorded samples are gone from the data: {_few(gone)}")
    if relabelled:
        problems.append(f"recorded samples have other labels now: {_few(relabelled)}")
    if problems and not recorded.accept_changes:
        raise DataError(f"the data changed since the run was trained ({str(recorded.source)!r} records its split): "
                        f"{'; '.join(problems)}; the run's split cannot be rebuilt as it was. Restore the files, or "
                        "evaluate the recorded ids that remain, with their current labels, with "
                        "`mckd evaluate RUN --accept-changed-data`")
    if problems:
        recorded.notices.append(f"the data changed since training: {'; '.join(problems)}; evaluated on the run's "
                                "recorded split (nothing was re-drawn), the remaining ids with their current labels")
    for code, name in enumerate(SPLITS):
        if not (codes == code).any():
            raise DataError(f"none of the {name} samples recorded in {str(recorded.source)!r} remains in the data; "
                            "the run cannot be evaluated or resumed on these files")
    return codes


def split_record(ids: Sequence[Any], labels: Sequence[Any] | None, codes: np.ndarray) -> dict[str, Any]:
    """What ``data.json`` records of a split: ``split_ids`` (and ``split_labels``), per split, in order."""
    ids = np.asarray([str(i) for i in ids])
    record: dict[str, Any] = {"split_ids": {name: ids[codes == code].tolist() for code, name in enumerate(SPLITS)}}
    if labels is not None:
        text = np.asarray([str(v) for v in labels])
        record["split_labels"] = {name: text[codes == code].tolist() for code, name in enumerate(SPLITS)}
    return record


def recorded_cases(cases: Sequence[str], drawn: Sequence[Sequence[str]]) -> tuple[list[str], ...]:
    """:func:`use_recorded_split` for datasets of cases (no label to compare): the train, val and test case ids.

    Without a recorded split: ``drawn`` as it is; with one: the recorded ids (in their recorded order) that remain.
    """
    recorded = _ACTIVE.get()
    if recorded is None:
        return tuple(list(part) for part in drawn)
    position = {case: row for row, case in enumerate(cases)}
    codes = np.full(len(cases), -1, dtype=np.int64)
    for code, part in enumerate(drawn):
        codes[[position[c] for c in part]] = code
    use_recorded_split(list(cases), None, codes)  # refuses (or notes) recorded cases that are gone
    return tuple([c for c in recorded.ids[name] if c in position] for name in SPLITS)
