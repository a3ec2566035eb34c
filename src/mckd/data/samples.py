"""Samples of any number of modalities of any shape, matched by id, with real missingness.

The common ground of the ``files`` dataset (:mod:`mckd.data.files`) and of
arrays given from Python (:mod:`mckd.api`): each modality comes as rows
``(sample id, values [*shape], present)``; :func:`align` puts them in the
order of the labelled samples, with the presence mask that says which
modalities each sample truly has:

- a sample whose row is absent from a modality's source lacks it;
- so does a sample whose row is entirely NaN, or whose presence flag is off;
- a present row with some NaN or infinite values is a :class:`DataError`
  naming the source, the sample id and the modality (a half-missing record
  is not a missing modality, and silently zeroing it would be wrong);
- values of missing entries are never read: they are stored as zeros.

Labels are mapped to classes ``0..C-1`` (sorted distinct values, or the
order given); splits are given per sample or drawn, stratified by class and
seeded; vector modalities are standardised per feature and other shapes per
channel, on the training split's present samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mckd.data.bundle import DataBundle, MultiModalTensorDataset
from mckd.data.values import check_real
from mckd.data.recorded_split import split_record, use_recorded_split
from mckd.data.splits import split_codes, stratified_split
from mckd.errors import DataError

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": 0, "training": 0, "val": 1, "valid": 1, "validation": 1, "meta": 1, "meta-validation": 1,
               "test": 2, "testing": 2}


def _few(values: Sequence[Any], count: int = 5) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:count])
    return f"[{shown}{', ...' if len(values) > count else ''}] ({len(values)})"


@dataclass
class ModalityRows:
    """One modality as read from its source.

    Attributes:
        name: the modality.
        ids: ``[R]`` sample ids (strings), one per row.
        values: ``[R, *shape]`` float32.
        present: optional ``[R]`` flags as the source gives them (read by :func:`parse_presence`): false
            where the source marks the modality missing for that row.
        source: where the rows came from (for messages).
        columns: a table's column names, one per value of a row (empty for other sources): a trained run
            records them, and new samples' tables are read by name in that order.
    """

    name: str
    ids: list[str]
    values: np.ndarray
    present: np.ndarray | None
    source: str
    columns: tuple[str, ...] = ()


_PRESENT = {"1", "1.0", "true", "t", "yes", "y", "present"}
_ABSENT = {"0", "0.0", "false", "f", "no", "n", "absent", "missing"}


def parse_presence(flags: Any, rows: int, where: str) -> np.ndarray:
    """Presence flags as given (booleans, 0/1 numbers, or text such as "1"/"0", "true"/"false") -> bool ``[rows]``.

    The one reader of presence flags, whatever their source: a text ``"0"`` is
    absent (``astype(bool)`` would make every non-empty string present), and
    anything that is not clearly present or absent (2, NaN, "maybe") is a
    :class:`DataError` naming ``where`` and the values found.
    """
    values = np.asarray(flags)
    if values.ndim != 1 or len(values) != rows:
        raise DataError(f"{where} have shape {tuple(values.shape)}; expected one flag per row ({rows})")
    if values.dtype == bool:
        return values.copy()
    if values.dtype.kind in "iuf":
        odd = sorted({str(v) for v in values[~np.isin(values, (0, 1))].tolist()})
        if odd:
            raise DataError(f"{where} holds {odd[:5]}; expected 0 or 1 (or true/false)")
        return values == 1
    if values.dtype.kind in "USO":
        text = np.array([str(v).strip().lower() for v in values.tolist()], dtype=object)
        odd = sorted(set(text.tolist()) - _PRESENT - _ABSENT)
        if odd:
            raise DataError(f"{where} holds {[_clip(v) for v in odd[:5]]}; expected 0/1 or true/false")
        return np.isin(text, list(_PRESENT))
    raise DataError(f"{where} are of type {values.dtype}; expected booleans, 0/1 or true/false")


def presence_by_name(present: Mapping[str, Any] | None, modalities: Sequence[str], where: str) -> dict[str, Any]:
    """``present`` (modality name -> flags) checked to name only ``modalities``; the flags are read by :func:`align`."""
    present = dict(present or {})
    unknown = sorted(str(k) for k in present if k not in modalities)
    if unknown:
        raise DataError(f"{where} names {unknown}, which are not modalities ({', '.join(modalities)}); a typo would "
                        "silently leave every sample present")
    return present


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def _duplicates(ids: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({i for i in ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]


def align(modalities: Sequence[ModalityRows], sample_ids: Sequence[str],
          every_modality_used: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
    """Every modality in the order of ``sample_ids``, and which samples have which modality.

    ``every_modality_used=False`` (new samples to predict): a modality no sample has is allowed.

    Returns:
        (arrays, present): per modality ``[S, *shape]`` float32 (zeros where
        missing), and bool ``[S, N]``.

    Raises:
        DataError: duplicate ids, ids without a label, a present row with
            non-finite values, a modality no sample has, or a sample with none.
    """
    if not len(sample_ids):
        sources = ", ".join(f"{m.source} ({m.name})" for m in modalities)
        raise DataError(f"no samples: {sources or 'the sources'} have no rows; expected at least one sample")
    index = {sample: row for row, sample in enumerate(sample_ids)}
    present = np.zeros((len(sample_ids), len(modalities)), dtype=bool)
    arrays = []
    for n, modality in enumerate(modalities):
        ids = [str(i) for i in modality.ids]
        duplicated = _duplicates(ids)
        if duplicated:
            raise DataError(f"{modality.source} ({modality.name}): sample ids occur twice: {_few(duplicated)}")
        unknown = [i for i in ids if i not in index]
        if unknown:
            raise DataError(f"{modality.source} ({modality.name}): sample ids {_few(unknown)} have no label; "
                            "every id must be in the labels (check for typos or a wrong id column)")
        raw = np.asarray(modality.values)
        check_real(raw, f"{modality.source} ({modality.name})")  # no text, complex numbers or float32 overflow
        if raw.ndim < 2 or 0 in raw.shape[1:]:
            raise DataError(f"{modality.source} ({modality.name}) has shape {raw.shape}: a sample of it holds no "
                            "values; expected [samples, values...] with at least one value per sample")
        values = raw.astype(np.float32)
        if len(values) != len(ids):
            raise DataError(f"{modality.source} ({modality.name}): {len(values)} rows of values but {len(ids)} ids")
        flat = values.reshape(len(values), -1)
        finite = np.isfinite(flat)
        marked = np.ones(len(ids), dtype=bool) if modality.present is None else \
            parse_presence(modality.present, len(ids), f"{modality.source} ({modality.name}): the presence flags")
        has = marked & finite.any(axis=1) if flat.shape[1] else marked  # an all-NaN row is a missing modality
        half = has & ~finite.all(axis=1)
        if half.any():
            bad = [ids[r] for r in np.flatnonzero(half)]
            raise DataError(f"{modality.source} ({modality.name}): present rows hold NaN or infinite values, sample "
                            f"ids {_few(bad)}; a row is missing only when all of it is NaN (or its presence flag is 0)")
        if not has.any() and every_modality_used:
            raise DataError(f"{modality.source} ({modality.name}): no sample has this modality (every row is "
                            "absent, all-NaN or flagged missing); leave it out of data.modalities")
        out = np.zeros((len(sample_ids), *values.shape[1:]), dtype=np.float32)
        rows = np.array([index[i] for i in ids], dtype=np.int64)
        out[rows[has]] = values[has]
        present[rows[has], n] = True
        arrays.append(out)
    empty = ~present.any(axis=1)
    if empty.any():
        names = [sample_ids[r] for r in np.flatnonzero(empty)]
        raise DataError(f"samples {_few(names)} have none of the modalities {[m.name for m in modalities]}; "
                        "a sample needs at least one: leave them out of the labels and of every source that lists "
                        "them (an all-NaN row or a flag saying missing still lists a sample), or, when predicting, "
                        "out of the samples given")
    return arrays, present


def encode_labels(labels: Sequence[Any], classes: Sequence[str], source: str) -> tuple[np.ndarray, list[str]]:
    """Labels -> ``int64 [S]`` class indices and the class names (``classes``, or the sorted distinct labels)."""
    text = []
    for label in labels:
        if label is None or (isinstance(label, float) and not np.isfinite(label)) or str(label).strip() == "":
            raise DataError(f"{source}: a sample has no label (empty or NaN); every labelled sample needs one")
        text.append(str(int(label)) if isinstance(label, (float, np.floating)) and float(label).is_integer()
                    else str(label))
    if classes:
        unknown = sorted(set(text) - set(classes))
        if unknown:
            raise DataError(f"{source}: labels {unknown} are not among data.classes {list(classes)}")
        names = [str(c) for c in classes]
    else:
        distinct = sorted(set(text))
        numeric = all(t.lstrip("-").isdigit() for t in distinct)
        names = sorted(distinct, key=int) if numeric else distinct
    if len(names) < 2:
        raise DataError(f"{source}: the labels hold {len(names)} class ({names}); classification needs at least two")
    code = {name: c for c, name in enumerate(names)}
    return np.array([code[t] for t in text], dtype=np.int64), names


def parse_split(values: Sequence[Any], source: str) -> np.ndarray:
    """Per-sample split names (train / val / test, and common synonyms) -> codes 0 / 1 / 2."""
    codes = []
    for value in values:
        key = str(value).strip().lower()
        if key not in SPLIT_NAMES:
            raise DataError(f"{source}: split value {value!r} is not train, val or test")
        codes.append(SPLIT_NAMES[key])
    return np.array(codes, dtype=np.int64)


def draw_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """Stratified, seeded split codes (0 train, 1 meta-validation, 2 test) per sample."""
    return split_codes(len(labels), stratified_split(labels, tuple(fractions), seed))  # type: ignore[arg-type]


def standardise(arrays: list[np.ndarray], present: np.ndarray,
                train: np.ndarray) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """Z-score each modality on the training split's samples that have it: per feature for vectors, per channel else.

    Returns:
        (arrays, scaling): the scaled arrays, and per modality ``(mean, std)`` shaped to broadcast over one
        sample (``[F]`` for vectors, ``[C, 1, ...]`` else), a constant feature's std given as 1.
    """
    out, scaling = [], []
    for n, values in enumerate(arrays):
        rows = train & present[:, n]
        reference = values[rows] if rows.any() else values[present[:, n]]
        axes = (0,) if values.ndim == 2 else (0, *range(2, values.ndim))
        shape = (1, -1) + (1,) * (values.ndim - 2)
        mean = reference.mean(axis=axes).reshape(shape)
        std = reference.std(axis=axes).reshape(shape)
        std = np.where(std > 1e-8, std, 1.0)  # a constant feature stays 0
        scaled = (values - mean) / std
        scaled[~present[:, n]] = 0.0  # missing entries stay zeros
        out.append(scaled.astype(np.float32))
        scaling.append((mean[0].astype(np.float32), std[0].astype(np.float32)))
    return out, scaling


def make_bundle(
    modalities: Sequence[ModalityRows],
    sample_ids: Sequence[str],
    labels: np.ndarray,
    classes: Sequence[str],
    split: np.ndarray,
    standardise_inputs: bool = True,
    info: Mapping[str, Any] | None = None,
) -> DataBundle:
    """Align, standardise on the training split, and cut into the three splits.

    Args:
        modalities: the modalities' rows as read.
        sample_ids: the labelled samples, in order.
        labels: ``int64 [S]`` class indices.
        classes: the class names.
        split: ``int64 [S]``: 0 train, 1 meta-validation, 2 test (a run's recorded split replaces it
            under :func:`mckd.data.recorded_split.recorded_split`; -1: in no split).
        standardise_inputs: z-score (see :func:`standardise`).
        info: recorded in the run's ``data.json`` besides the splits' ids.
    """
    arrays, present = align(modalities, sample_ids)
    label_names = [str(classes[c]) for c in labels]
    split = use_recorded_split([str(i) for i in sample_ids], label_names, split)  # a run's own split, when it has one
    for code, name in enumerate(SPLITS):
        if not (split == code).any():
            raise DataError(f"the {name} split has no samples; give some (data.split, or the split column)")
    names = [m.name for m in modalities]
    scaling: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if standardise_inputs:
        arrays, fitted = standardise(arrays, present, split == 0)
        scaling = dict(zip(names, fitted))
    target = torch.from_numpy(labels)
    tensors = [torch.from_numpy(a) for a in arrays]
    mask = torch.from_numpy(present)

    def part(code: int) -> MultiModalTensorDataset:
        rows = torch.from_numpy(np.flatnonzero(split == code))
        return MultiModalTensorDataset([t[rows] for t in tensors], target[rows], mask[rows])

    return DataBundle(
        modalities=tuple(names),
        train=part(0), val=part(1), test=part(2),
        num_classes=len(classes),
        input_shapes={m.name: tuple(int(d) for d in a.shape[1:]) for m, a in zip(modalities, arrays)},
        info={**dict(info or {}), "classes": list(classes),
              "sizes": {name: int((split == code).sum()) for code, name in enumerate(SPLITS)},
              **split_record(sample_ids, label_names, split)},
        scaling=scaling,
    )
