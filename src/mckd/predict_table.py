"""A trained classification run on new samples: ``mckd predict RUN --data ... --output FILE.csv`` and ``mckd.api.load``.

New samples arrive as in training: one array (or file) per modality, rows
matched by sample id, a modality missing where its row is absent, all NaN or
flagged off. They are checked by the same rules (:func:`mckd.data.samples.align`:
duplicate ids, a half-NaN row, a sample with no modality), scaled as the
run's training split was (``RUN/scaling.safetensors``, written by
``mckd train``; a run trained before it existed is scaled by rebuilding its
dataset with its recorded split) and predicted from the modalities each
sample has. A modality the run does not know, or one of another shape, is
one error naming it.

The CSV has one row per sample: ``id``, ``modalities`` (the ones it had,
joined by ``+``), ``predicted`` (the class's name) and ``p_<class>`` per class.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mckd.data.samples import ModalityRows, align
from mckd.data.scaling import Scaling, read_scaling
from mckd.errors import DataError, MckdError
from mckd.rundir import RunDir

def is_classification_run(run: str | Path) -> bool:
    """Whether ``run`` (a run directory, or a checkpoint in one) was trained for classification (its ``config.yaml``)."""
    return _section_name(_run_of(run)[0], "task") == "classification"


def _run_of(run: str | Path) -> tuple[RunDir, Path]:
    """The run directory and the checkpoint of ``run``: a run directory, or one of its ``.safetensors`` checkpoints
    (``checkpoint_best.safetensors``: the model best on the validation split)."""
    path = Path(run)
    if path.suffix == ".safetensors":
        return RunDir(path.parent), path
    return RunDir(path), RunDir(path).checkpoint


def _section_name(run: RunDir, section: str) -> str | None:
    """``<section>.name`` of a run's ``config.yaml`` (None where it cannot be read: the caller's own checks say why)."""
    from mckd.config import load_raw

    if not run.config.is_file():
        return None
    try:
        return load_raw(run.config)[section]["name"]  # duplicate keys, alias bombs, non-text files: refused
    except (MckdError, KeyError, TypeError):
        return None


@dataclass
class Predictor:
    """A trained classification model with what it needs to score new samples (from :func:`load`).

    Attributes:
        modalities: the run's modalities, in the model's order.
        columns: per modality read from a table in training, its columns in order (the run's ``data.json``):
            a new table is read by these names, whatever its column order, and may hold more.
        input_shapes: per modality, one sample's shape.
        classes: the class names, in the order of the model's outputs.
        scaling: per modality ``(offset, scale)``: the model reads ``(raw - offset) / scale``.
        run: the run directory.
        config: the run's config (:class:`mckd.config.Config`).
    """

    model: torch.nn.Module
    modalities: tuple[str, ...]
    input_shapes: dict[str, tuple[int, ...]]
    classes: list[str]
    scaling: Scaling
    run: Path
    config: Any
    device: torch.device
    batch_size: int = 256
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table modalities: trained columns, in order

    def probabilities(self, arrays: Mapping[str, Any], present: Mapping[str, Any] | None = None) -> np.ndarray:
        """Class probabilities ``[S, C]`` of ``S`` samples, each from the modalities it has.

        Args:
            arrays: modality -> ``[S, *shape]`` raw values (as the training files held them); a row
                entirely NaN is a missing modality; a modality left out is missing for every sample.
            present: optional modality -> ``[S]`` flags (0/false: missing; the row is not read).
        """
        ids = [str(i) for i in range(_rows(arrays))]
        return self.probabilities_of_rows(
            [ModalityRows(name, ids, _numpy(values), None if present is None else present.get(name), f"array {name!r}")
             for name, values in arrays.items()], ids)[0]

    def predict(self, arrays: Mapping[str, Any], present: Mapping[str, Any] | None = None) -> list[str]:
        """The predicted class name of each sample (the arg-max of :meth:`probabilities`)."""
        return [self.classes[c] for c in self.probabilities(arrays, present).argmax(axis=1)]

    def probabilities_of_rows(self, rows: Sequence[ModalityRows],
                              sample_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities [S, C], present bool [S, N])`` of the samples ``sample_ids``, from rows read by id."""
        rows = [self._in_training_columns(row) for row in rows]
        self._check(rows)
        given = {r.name: r for r in rows}
        known = [given[m] for m in self.modalities if m in given]
        values, has = align(known, sample_ids, every_modality_used=False)  # training's checks: ids, half-NaN rows, ...
        inputs, present = [], np.zeros((len(sample_ids), len(self.modalities)), dtype=bool)
        for n, name in enumerate(self.modalities):
            if name in given:
                k = [r.name for r in known].index(name)
                present[:, n] = has[:, k]
                offset, scale = self.scaling.get(name, (np.float32(0.0), np.float32(1.0)))
                scaled = (values[k] - offset) / scale
                scaled[~present[:, n]] = 0.0  # missing entries are zeros, as in training
                inputs.append(torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32)))
            else:
                inputs.append(torch.zeros((len(sample_ids), *self.input_shapes[name]), dtype=torch.float32))
        return self._forward(inputs, torch.from_numpy(present)), present

    def _in_training_columns(self, row: ModalityRows) -> ModalityRows:
        """A table's values with the columns the run was trained on, by name, in training's order."""
        trained = self.columns.get(row.name)
        if not trained and row.columns:
            warnings.warn(f"{row.source} ({row.name}): the run recorded no column names for this modality (trained "
                          "by an older mckd, or not from a table), so the table's columns are read in their order "
                          "in the file: keep the order they had in training", stacklevel=2)
        if not trained or not row.columns or tuple(row.columns) == trained:
            return row
        lacking = [c for c in trained if c not in row.columns]
        if lacking:
            raise DataError(f"{row.source} ({row.name}): the run was trained on {len(trained)} columns of this "
                            f"modality, and {len(lacking)} are not in this table (e.g. {', '.join(lacking[:5])})")
        order = [row.columns.index(c) for c in trained]
        return replace(row, values=row.values[:, order], columns=trained)

    def _check(self, rows: Sequence[ModalityRows]) -> None:
        for row in rows:
            if row.name not in self.modalities:
                raise DataError(f"{row.source}: modality {row.name!r} is not one of the run's "
                                f"({', '.join(self.modalities)}); the model cannot read it")
            shape = tuple(np.shape(row.values)[1:])
            if shape != tuple(self.input_shapes[row.name]):
                raise DataError(f"{row.source} ({row.name}): one sample has shape {shape}; the run was trained "
                                f"on {tuple(self.input_shapes[row.name])}")

    @torch.no_grad()
    def _forward(self, inputs: list[torch.Tensor], present: torch.Tensor) -> np.ndarray:
        out = []
        for start in range(0, len(present), self.batch_size):
            part = slice(start, start + self.batch_size)
            batch = [t[part].to(self.device) for t in inputs]  # N x [B, *shape]
            logits = self.model(batch, present[part].to(self.device)).prediction  # [B, C]
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), dtype=np.float32)


def _numpy(values: Any) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def _rows(arrays: Mapping[str, Any]) -> int:
    counts = {name: len(_numpy(values)) for name, values in arrays.items()}
    if not counts:
        raise DataError("no modality given: pass one array per modality, e.g. {'pix': pix}")
    if len(set(counts.values())) > 1:
        raise DataError(f"the arrays have different numbers of rows ({counts}); row r of each is sample r")
    return next(iter(counts.values()))


def _scaling_of(run: RunDir, config: Any) -> Scaling:
    """The run's ``scaling.safetensors``; for a run trained before it was written, its dataset rebuilt (same split)."""
    if run.scaling.is_file():
        return read_scaling(run.scaling)
    if config.data.name == "python":
        raise MckdError(f"{str(run.path)!r} has no {run.scaling.name} (it was trained before mckd saved how inputs "
                        "are scaled) and its arrays lived in Python: train it again with mckd.api.fit to predict")
    from mckd.build import build_data
    from mckd.data.recorded_split import recorded_split

    with recorded_split(run.data):
        return build_data(config).scaling


def load(run: str | Path, encoders: Any = None, head: torch.nn.Module | None = None, device: str = "cpu") -> Predictor:
    """The trained classification model of run directory ``run``, ready for new samples (no dataset is read).

    Args:
        run: a run directory of ``mckd train`` or :func:`mckd.api.fit`, or one of its checkpoints
            (``RUN/checkpoint_best.safetensors``).
        encoders, head: for a run of :func:`mckd.api.fit`, modules built as they were for it (a config
            cannot build them); the run's trained tensors are loaded into them.
        device: ``cpu``, ``cuda`` or ``auto``.
    """
    from mckd.distributed import resolve_device
    from mckd.nets.base import NetworkParts
    from mckd.runs import load_model

    directory, checkpoint = _run_of(run)
    if not checkpoint.is_file():
        raise MckdError(f"{str(directory.path)!r} is not a trained run directory (it has no {checkpoint.name}); "
                        "a multi-seed directory's runs are its seed_<s>/ folders")
    torch_device = resolve_device(device)
    if (encoders is None) != (head is None):
        raise MckdError("load(): give both encoders= and head= (the modules of a mckd.api.fit run), or neither")
    from_python = _section_name(directory, "model") == "python"
    if from_python and encoders is None:
        raise MckdError(f"{str(directory.path)!r} was trained by mckd.api.fit on modules a config cannot build: "
                        "load(run, encoders=..., head=...) with modules built as they were for fit")
    parts = NetworkParts(encoders, head) if encoders is not None else None
    loaded = load_model(checkpoint, torch_device, parts)
    if loaded.config.task.name != "classification":
        raise MckdError(f"{str(directory.path)!r} is a {loaded.config.task.name} run; predicting samples from "
                        "--data needs a classification run (segmentation: mckd predict RUN --input DIR --output DIR)")
    stored = _checkpoint_metadata(loaded.path)
    facts = json.loads(directory.data.read_text(encoding="utf-8")) if directory.data.is_file() else {}
    classes = [str(c) for c in facts.get("classes") or range(loaded.task.num_outputs)]
    shapes = {m: tuple(s) for m, s in stored["input_shapes"].items()}
    columns = {m: tuple(c) for m, c in (facts.get("columns") or {}).items()}
    return Predictor(loaded.model, tuple(stored["modalities"]), shapes, classes, _scaling_of(directory, loaded.config),
                     directory.path, loaded.config, torch_device, columns=columns)


def _checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a checkpoint :func:`mckd.runs.load_model` has read already (its tensors are not read again)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return json.loads((handle.metadata() or {}).get("mckd", "{}"))


# --- reading new samples ---------------------------------------------------------------------------


def rows_from_config(path: str | Path, run_config: Any) -> tuple[list[ModalityRows], list[str]]:
    """The modalities' rows and the sample ids of the ``data`` section of config ``path`` (labels not needed).

    ``files``: each modality's source; the samples are the labels table's ids when ``data.labels`` is
    set, else every id any source has, in the order first seen. ``multiview_digits`` and ``avmnist``:
    every sample of the files they name, ids being row numbers.
    """
    data = _data_section(path, run_config)
    if data.name == "files":
        return _files_rows(data.options)
    if data.name == "multiview_digits":
        from mckd.data.multiview import default_csv_dir, read_view

        folder = Path(data.options.csv_dir) if data.options.csv_dir else default_csv_dir()
        views = [(view, read_view(folder, view)[0]) for view in data.options.views]
        ids = [str(r) for r in range(len(views[0][1]))]
        return [ModalityRows(view, ids, values, None, f"{folder} ({view})") for view, values in views], ids
    if data.name == "avmnist":
        from mckd.data.avmnist import load_prepared

        arrays = load_prepared(data.options.path)[0]
        ids = [str(r) for r in range(len(arrays["label"]))]
        return [ModalityRows(m, ids, arrays[m][:, None].astype(np.float32), None, f"{data.options.path} ({m})")
                for m in data.options.modalities], ids
    raise MckdError(f"{path}: data.name {data.name!r} cannot be read for prediction; use files, multiview_digits or "
                    "avmnist")


def _files_rows(options: Any) -> tuple[list[ModalityRows], list[str]]:
    from mckd.data.files import read_labels, read_modality

    rows = [read_modality(name, source, options) for name, source in options.modalities.items()]
    if options.labels:
        return rows, read_labels(options)[0]
    return rows, list(dict.fromkeys(i for r in rows for i in r.ids))


def _data_section(path: str | Path, run_config: Any) -> Any:
    """The ``data`` section of config ``path``, resolved with the run's other sections (a config may hold only
    ``data:``)."""
    from mckd.config import config_from_dict, load_raw

    raw = load_raw(path)
    if "data" not in raw:
        raise MckdError(f"{path}: no data section; --data needs a config whose data section names the new samples")
    return config_from_dict({**run_config.to_dict(), "imports": raw.get("imports") or [], "data": raw["data"]}).data


def input_paths(data: Sequence[str], run_config: Any) -> list[str]:
    """Every file ``--data`` may read: the ``MODALITY=FILE`` items' files, or the config and every path-like value
    of its data section (also under its ``root``), so that no prediction is written over one of them."""
    import dataclasses

    configs = [d for d in data if d.lower().endswith((".yaml", ".yml"))]
    if not configs:
        return [item.partition("=")[2] for item in data]
    options = _data_section(configs[0], run_config).options

    def strings(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value] if value else []
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, (list, tuple)):
            return [s for v in value for s in strings(v)]
        return []

    values = strings(dataclasses.asdict(options)) if dataclasses.is_dataclass(options) else []
    root = str(getattr(options, "root", "") or "")
    return [configs[0], *values, *(str(Path(root) / v) for v in values if root)]


def rows_from_files(items: Sequence[str], run_config: Any) -> tuple[list[ModalityRows], list[str]]:
    """``NAME=PATH`` items read like the run's own source of NAME (its columns, array key, presence column)."""
    from mckd.data.files import FilesOptions, ModalitySource

    options = run_config.data.options if run_config.data.name == "files" else FilesOptions()
    sources: dict[str, ModalitySource] = {}
    for item in items:
        name, _, path = item.partition("=")
        if not name or not path:
            raise MckdError(f"--data {item!r}: expected a config file (.yaml) or MODALITY=FILE items, e.g. "
                            "pix=new_pix.npy fou=new_records.csv")
        if name in sources:
            raise MckdError(f"--data: modality {name!r} is given twice")
        own = options.modalities.get(name) if run_config.data.name == "files" else None
        sources[name] = replace(own, path=path, ids="") if own is not None else ModalitySource(path=path)
    return _files_rows(replace(options, root="", modalities=sources, labels=""))


PREDICTION_COLUMNS = ("id", "modalities", "predicted")  # then p_<class> per class


def _is_prediction_table(path: Path) -> bool:
    """Whether ``path`` is a CSV this module wrote: its header is :data:`PREDICTION_COLUMNS` and ``p_<class>``s."""
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            header = next(csv.reader([stream.readline()]), [])
    except (OSError, UnicodeDecodeError):
        return False
    return (tuple(header[:3]) == PREDICTION_COLUMNS and len(header) > 3
            and all(name.startswith("p_") for name in header[3:]))


def prediction_csv(ids: Sequence[str], present: np.ndarray, probabilities: np.ndarray, predictor: Predictor) -> str:
    """The CSV text: ``id, modalities, predicted, p_<class>...``, one row per sample."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*PREDICTION_COLUMNS, *(f"p_{c}" for c in predictor.classes)])
    for sample, has, probs in zip(ids, present, probabilities):
        had = "+".join(m for m, h in zip(predictor.modalities, has) if h)
        writer.writerow([sample, had, predictor.classes[int(probs.argmax())], *(f"{p:.6f}" for p in probs)])
    return buffer.getvalue()


def predict_samples(run: str | Path, data: Sequence[str], output: str | Path, device: str = "auto",
                    force: bool = False) -> tuple[Path, int]:
    """``mckd predict RUN --data CONFIG|MODALITY=FILE... --output FILE.csv``; returns the file and its sample count."""
    from mckd.io import atomic_write_text, claim_output

    if not str(output).lower().endswith(".csv"):
        raise MckdError(f"--output {str(output)!r}: predictions of a classification run are a CSV file; name it .csv")
    configs = [d for d in data if d.lower().endswith((".yaml", ".yml"))]
    if configs and len(data) > 1:
        raise MckdError("--data takes one config file, or MODALITY=FILE items, not both")
    predictor = load(run, device=device)
    if configs:
        rows, ids = rows_from_config(configs[0], predictor.config)
    else:
        rows, ids = rows_from_files(data, predictor.config)
    if len(rows) > 1 and not any(set(a.ids) & set(b.ids) for i, a in enumerate(rows) for b in rows[i + 1:]):
        warnings.warn(f"no sample id appears in more than one of the sources ({', '.join(r.name for r in rows)}): "
                      "every sample is predicted from one modality; check that the files' ids match (an .npy is "
                      "numbered 0..S-1)", stacklevel=2)
    probabilities, present = predictor.probabilities_of_rows(rows, ids)
    with claim_output(output, replace=force, kind="file", what="output", inputs=input_paths(data, predictor.config)):
        if Path(output).is_file() and not _is_prediction_table(Path(output)):  # only with --force: else refused above
            raise MckdError(f"--output {str(output)!r} exists and is not a table of predictions mckd wrote (its header "
                            f"is not {', '.join(PREDICTION_COLUMNS)}, p_<class>...); mckd replaces only its own outputs, "
                            "even with --force: choose another file")
        atomic_write_text(output, prediction_csv(ids, present, probabilities, predictor))
    return Path(output), len(ids)
