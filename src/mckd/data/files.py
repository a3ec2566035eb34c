"""Your own data: one source per modality, from files, matched by sample id (``data.name: files``).

Each modality is read from one source, by its ending:

- ``.npy``: an array ``[S, *shape]`` (vectors, 2D images with channels,
  3D volumes, sequences ``[channels, length]``); its sample ids are the lines
  of ``ids`` (a text file), or the row numbers ``0..S-1``;
- ``.npz``: the arrays ``id`` ``[S]`` and ``data`` (``key``) ``[S, *shape]``,
  optionally ``present`` ``[S]``;
- ``.csv``, ``.tsv``, ``.parquet``: a table with the id column; the modality
  is a group of its columns (``columns``: names or globs such as
  ``"blood_*"``); a presence column (``presence_column``, 0/1 or
  true/false) may say which rows have it;
- a folder: one file per sample named ``<id>.npy``, ``<id>.npz`` (array
  ``data``), ``<id>.nii.gz`` / ``<id>.nii`` (NIfTI, a channel axis is added to
  3D volumes), or ``<id>.png`` / ``.jpg`` / ``.tif`` (channels first).

The labelled samples are the rows of the labels table (``labels``, with the
id and label columns), or of the first table source that has the label
column. A modality is missing for a sample when its row is absent, all NaN,
or flagged off (:mod:`mckd.data.samples` states the rules and the errors).
The split is the labels table's ``split_column`` (train / val / test), or
drawn, stratified by class and seeded; the run's ``data.json`` records which
id went where.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mckd.registry import FOLDER_OR_CWD, PATH_UNDER_ROOT
from mckd.data.bundle import DataBundle
from mckd.data.values import load_array, open_image
from mckd.data.samples import ModalityRows, draw_split, encode_labels, make_bundle, parse_presence, parse_split
from mckd.errors import ConfigError, DataError
from mckd.io import file_problem
from mckd.registry import register_dataset

TABLES = (".csv", ".tsv", ".parquet")
IMAGES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
PER_SAMPLE = (".npy", ".npz", ".nii.gz", ".nii", *IMAGES)


@dataclass
class ModalitySource:
    """Where one modality's samples are (a key of ``data.modalities``)."""

    path: str = field(default="", metadata=PATH_UNDER_ROOT)  # a .npy/.npz file, a .csv/.tsv/.parquet table, or a folder of per-sample files (<id>.npy, .npz, .nii.gz, .png, ...)
    ids: str = field(default="", metadata=PATH_UNDER_ROOT)  # .npy only: a text file of sample ids, one per row; empty: the row numbers 0..S-1
    key: str = "data"  # .npz only: the array of samples (ids in 'id', an optional 'present' flag array)
    columns: list[str] = field(default_factory=list)  # tables: this modality's columns, names or globs ('lab_*'); empty: all but the id, label, split and presence columns
    presence_column: str = ""  # tables: a 0/1 or true/false column; 0/false: this modality is missing for that row

    def validate(self, path: str) -> None:
        if not self.path:
            raise ConfigError(f"{path}.path is empty: name the file or folder of this modality")


@dataclass
class FilesOptions:
    """Options of the ``files`` dataset."""

    root: str = field(default="", metadata=FOLDER_OR_CWD)  # folder the relative paths below are read from; empty: the current folder
    modalities: dict[str, ModalitySource] = field(default_factory=dict)  # name -> source, in the model's order
    labels: str = ""  # table of id and label (and split) columns; empty: the first table modality that has the label column
    id_column: str = "id"  # the sample id column of every table
    label_column: str = "label"  # the class label column
    classes: list[str | int] = field(default_factory=list)  # class names in order (numbers read as their text); empty: the sorted distinct labels
    split_column: str = ""  # in the labels table: train / val / test per sample; empty: draw the split
    split: list[float] = field(default_factory=lambda: [0.6, 0.1, 0.3])  # drawn split: train / meta-validation / test, stratified by class
    split_seed: int = 0  # seed of the drawn split, fixed across training seeds so runs are paired on one test set
    standardise: bool = True  # z-score vectors per feature and other shapes per channel, on the training split

    def validate(self, path: str) -> None:
        if not self.modalities:
            raise ConfigError(f"{path}.modalities is empty: give each modality's file, e.g. "
                              "{image: {path: images.npy}, clinical: {path: records.csv, columns: ['age', 'bmi']}}")
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6 or min(self.split) <= 0:
            raise ConfigError(f"{path}.split must be three fractions above 0 summing to 1 (train, meta-validation, "
                              f"test), got {self.split}")
        self.classes = [str(c) for c in self.classes]  # labels are read as text: YAML's 0 is the label "0"
        if len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"{path}.classes must be distinct, got {self.classes}")


def _resolve(root: str, path: str) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() or not root else Path(root).expanduser() / candidate


def read_table(path: Path, id_column: str) -> Any:
    """A table as a pandas DataFrame (``.csv``, ``.tsv``, ``.parquet``); ids read as text; unreadable: :class:`DataError`."""
    import pandas as pd

    problem = file_problem(path)
    if problem:
        raise DataError(f"table {str(path)!r} {problem}")
    try:
        if path.suffix == ".parquet":
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise DataError(f"{path}: reading parquet needs pyarrow: pip install 'mckd[parquet]'") from None
            table = pd.read_parquet(path)
            repeated = sorted({str(c) for c in table.columns[table.columns.duplicated()]})
            if repeated:
                raise DataError(f"{path}: columns {repeated[:5]} appear more than once; every column needs its own name")
            return table
        table = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype={id_column: str}, low_memory=False)
        _check_header(path)
        return table
    except DataError:
        raise
    except Exception as error:  # pandas and pyarrow raise many kinds for a damaged file
        reason = " ".join(str(error).split())[:200]
        raise DataError(f"{path} is not a readable table ({type(error).__name__}: {reason})") from None


def _check_header(path: Path) -> None:
    """A column name given twice is an error (pandas would rename the second ``name.1`` and read on)."""
    import csv

    with path.open(encoding="utf-8", errors="replace", newline="") as stream:
        header = next(csv.reader(stream, delimiter="\t" if path.suffix == ".tsv" else ","), [])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: columns {repeated[:5]} appear more than once in its header; every column needs "
                        "its own name")


def _ids_of(table: Any, column: str, path: Path) -> list[str]:
    if column not in table.columns:
        raise DataError(f"{path} has no id column {column!r} (data.id_column); its columns: {list(table.columns)[:12]}")
    ids = table[column]
    if ids.isna().any():
        raise DataError(f"{path}: {int(ids.isna().sum())} rows have no sample id in column {column!r}")
    return [str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in ids]


def _presence(table: Any, column: str, path: Path) -> np.ndarray:
    if column not in table.columns:
        raise DataError(f"{path} has no presence column {column!r}; its columns: {list(table.columns)[:12]}")
    return parse_presence(table[column].astype(str).to_numpy(), len(table), f"{path}: presence column {column!r}")


def _table_columns(table: Any, source: ModalitySource, reserved: set[str], path: Path, name: str) -> list[str]:
    if not source.columns:
        chosen = [c for c in table.columns if c not in reserved]
    else:
        chosen = []
        for pattern in source.columns:  # the id, label, split and presence columns never join a modality
            hits = [c for c in table.columns if fnmatch.fnmatchcase(str(c), pattern) and c not in reserved]
            if not hits:
                raise DataError(f"{path} ({name}): no column matches {pattern!r}; its columns: {list(table.columns)[:12]}")
            chosen += [c for c in hits if c not in chosen]
    if not chosen:
        raise DataError(f"{path} ({name}): no columns for this modality")
    return chosen


def _numeric(table: Any, columns: list[str], path: Path, name: str) -> np.ndarray:
    import pandas as pd

    values = table[columns].apply(pd.to_numeric, errors="coerce")
    text = table[columns].notna() & values.isna()  # a cell that held something that is not a number
    if text.to_numpy().any():
        row, col = np.argwhere(text.to_numpy())[0]
        raise DataError(f"{path} ({name}): column {columns[col]!r} holds {table[columns[col]].iloc[row]!r}, not a number")
    return values.to_numpy(dtype=np.float32)


def _read_sample(path: Path, name: str) -> np.ndarray:
    """One sample's array from a per-sample file."""
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix.lower()
    if suffix == ".npy":
        return load_array(path, name)
    if suffix == ".npz":
        arrays = load_array(path, name)
        if "data" not in arrays:
            raise DataError(f"{path} ({name}) has no array 'data'; it has {list(arrays.keys())}")
        return arrays["data"]
    if suffix in (".nii.gz", ".nii"):
        from mckd.seg.cases import read_nifti

        return read_nifti(path, f"{name} sample").array.astype(np.float32)[None]  # (1, X, Y, Z)
    array = open_image(path, name)  # its pixel count checked before it is decoded
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)  # channels first


def _read_folder(folder: Path, name: str) -> ModalityRows:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(PER_SAMPLE))
    if not files:
        raise DataError(f"{folder} ({name}) holds no per-sample files ({', '.join(PER_SAMPLE)}); expected <id>.npy ...")
    ids, arrays = [], []
    for path in files:
        sample = np.asarray(_read_sample(path, name), dtype=np.float32)
        if arrays and sample.shape != arrays[0].shape:
            raise DataError(f"{path} ({name}) has shape {sample.shape} but {files[0].name} has {arrays[0].shape}; "
                            "every sample of a modality must have one shape")
        ids.append(path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem)
        arrays.append(sample)
    return ModalityRows(name, ids, np.stack(arrays), None, str(folder))


def read_modality(name: str, source: ModalitySource, options: FilesOptions) -> ModalityRows:
    """One modality's rows from its source (see the module docstring)."""
    path = _resolve(options.root, source.path)
    if path.is_dir():
        return _read_folder(path, name)
    if not path.exists():
        raise DataError(f"{name}: {str(path)!r} (data.modalities.{name}.path) does not exist")
    lower = path.name.lower()
    if lower.endswith(TABLES):
        table = read_table(path, options.id_column)
        ids = _ids_of(table, options.id_column, path)
        reserved = {options.id_column, options.label_column, options.split_column, source.presence_column} - {""}
        columns = _table_columns(table, source, reserved, path, name)
        present = _presence(table, source.presence_column, path) if source.presence_column else None
        return ModalityRows(name, ids, _numeric(table, columns, path, name), present, str(path),
                            tuple(str(c) for c in columns))
    if lower.endswith(".npz"):
        arrays = load_array(path, name)
        for key in ("id", source.key):
            if key not in arrays:
                raise DataError(f"{path} ({name}) has no array {key!r}; it has {list(arrays.keys())}")
        present = arrays["present"] if "present" in arrays else None  # read by samples.parse_presence
        if arrays["id"].ndim != 1:
            raise DataError(f"{path} ({name}): its array 'id' has shape {arrays['id'].shape}; expected one id per "
                            "sample, [S]")
        return ModalityRows(name, [str(i) for i in arrays["id"].tolist()], arrays[source.key], present, str(path))
    if lower.endswith(".npy"):
        values = load_array(path, name)
        if values.ndim < 2:
            raise DataError(f"{path} ({name}) has shape {values.shape}; expected samples first, [S, *shape]")
        if source.ids:
            ids_path = _resolve(options.root, source.ids)
            problem = file_problem(ids_path)
            if problem:
                raise DataError(f"{name}: the ids file {str(ids_path)!r} {problem}")
            try:
                ids = [line.strip() for line in ids_path.read_text(encoding="utf-8").splitlines() if line.strip()]
            except UnicodeDecodeError as error:
                raise DataError(f"the ids file {str(ids_path)!r} is not text (UTF-8): {error.reason} at byte "
                                f"{error.start}; expected one sample id per line") from None
            except OSError as error:
                raise DataError(f"the ids file {str(ids_path)!r} cannot be read ({error.strerror or error})") from None
            if len(ids) != len(values):
                raise DataError(f"{ids_path} lists {len(ids)} ids but {path} has {len(values)} rows")
        else:
            ids = [str(i) for i in range(len(values))]
        return ModalityRows(name, ids, values, None, str(path))
    raise DataError(f"{path} ({name}): unknown file kind; use .npy, .npz, .csv, .tsv, .parquet or a folder")


def read_labels(options: FilesOptions) -> tuple[list[str], list[Any], list[Any] | None, str]:
    """``(sample ids, labels, split values or None, source)`` from the labels table or the first table that has them."""
    candidates = [_resolve(options.root, options.labels)] if options.labels else [
        _resolve(options.root, s.path) for s in options.modalities.values() if s.path.lower().endswith(TABLES)]
    for path in candidates:
        table = read_table(path, options.id_column)
        if options.label_column not in table.columns:
            if options.labels:
                raise DataError(f"{path} (data.labels) has no label column {options.label_column!r}; "
                                f"its columns: {list(table.columns)[:12]}")
            continue
        ids = _ids_of(table, options.id_column, path)
        duplicated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
        if duplicated:
            raise DataError(f"{path}: sample ids occur twice among the labels: {duplicated[:5]}")
        split = None
        if options.split_column:
            if options.split_column not in table.columns:
                raise DataError(f"{path} has no split column {options.split_column!r} (data.split_column)")
            split = table[options.split_column].tolist()
        return ids, table[options.label_column].tolist(), split, str(path)
    raise DataError("no labels: set data.labels to a table with the id and label columns "
                    f"({options.id_column!r}, {options.label_column!r}), or put the label column in a table modality")


@register_dataset("files", FilesOptions, "your own data: a file or folder per modality (npy, npz, csv, parquet, "
                                         "images, NIfTI), matched by sample id, with real missingness")
def build_files(options: FilesOptions, seed: int) -> DataBundle:
    """Read every modality and the labels, align by id, split, standardise."""
    ids, raw_labels, split_values, labels_source = read_labels(options)
    labels, classes = encode_labels(raw_labels, options.classes, labels_source)
    rows = [read_modality(name, source, options) for name, source in options.modalities.items()]
    if split_values is not None:
        split = parse_split(split_values, labels_source)
    else:
        split = draw_split(labels, options.split, options.split_seed)
    return make_bundle(rows, ids, labels, classes, split, options.standardise,
                       info={"source": labels_source, "files": {m.name: m.source for m in rows},
                             "columns": {m.name: list(m.columns) for m in rows if m.columns}})
