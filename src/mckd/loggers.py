"""Where training records go: ``metrics.jsonl`` always, CSV files and TensorBoard when ``train.loggers`` asks.

A record is one flat-ish mapping with an ``iteration`` and a ``kind``:

- ``train``: the mean of each loss since the last record (``task_loss``, the
  method's terms such as ``ckd_loss``), the learning rate, seconds and
  iterations per second;
- ``weights``: the normalised importance weights after a meta step
  (``{"weights": {modality: value}}``);
- ``val``: the task's primary metric on the meta-validation split with every
  modality present and with each single modality, and their mean (``score``);
- what a method records (LCKD's ``teacher``).

:class:`JsonlLogger` writes every record as one JSON line (NaN and infinities
as ``null``, so every line is valid JSON); :class:`CsvLogger` writes one CSV
per kind, ``metrics_<kind>.csv``, one row per record; :class:`TensorBoardLogger`
writes scalars ``<kind>/<name>`` at step ``iteration`` through
``torch.utils.tensorboard`` (``pip install 'mckd[tensorboard]'``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from mckd.io import AppendLog, atomic_write_text, finite_json
from mckd.rundir import RunDir

Record = Mapping[str, Any]


def flatten(record: Record) -> dict[str, Any]:
    """``{"weights": {"fou": 0.2}}`` -> ``{"weights_fou": 0.2}`` (one level of nesting, as records have)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            for sub, item in value.items():
                flat[f"{key}_{sub}"] = item
        else:
            flat[key] = value
    return flat


class Logger:
    """A destination of training records."""

    def write(self, record: Record) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and close (called once, also when training fails)."""


class JsonlLogger(Logger):
    """``metrics.jsonl``: one JSON object per line, appended and flushed record by record."""

    def __init__(self, path: Path, keep: Sequence[str] | None = None) -> None:
        """``keep``: on resume, the lines to keep (what the checkpoint had seen); the file is rewritten with them."""
        if keep is not None:
            atomic_write_text(path, "".join(line + "\n" for line in keep))
        self._log = AppendLog(path, "a" if keep is not None else "w")

    def write(self, record: Record) -> None:
        self._log.write_line(json.dumps(finite_json(dict(record)), allow_nan=False))

    def close(self) -> None:
        self._log.close()


class CsvLogger(Logger):
    """``metrics_<kind>.csv`` beside ``metrics.jsonl``: one file per record kind, one row per record."""

    def __init__(self, folder: Path | Callable[[], Path], earlier: Iterable[Record] = ()) -> None:
        """``folder``: the run directory, or a function giving where it is now (a staged run moves at its first
        checkpoint); ``earlier``: records already in ``metrics.jsonl`` (a resumed run), rebuilt into the CSVs."""
        self._folder = folder if callable(folder) else (lambda: Path(folder))
        self._columns: dict[str, list[str]] = {}
        self._logs: dict[str, AppendLog] = {}
        rows: dict[str, list[dict[str, Any]]] = {}
        for record in earlier:
            rows.setdefault(str(record.get("kind", "train")), []).append(self._row(record))
        for kind, kind_rows in rows.items():
            self._rewrite(kind, kind_rows)

    @staticmethod
    def _row(record: Record) -> dict[str, Any]:
        row = flatten({key: value for key, value in record.items() if key != "kind"})
        return {key: ("" if isinstance(value, float) and not math.isfinite(value) else value)
                for key, value in row.items()}

    @property
    def folder(self) -> Path:
        return Path(self._folder())

    def path(self, kind: str) -> Path:
        return self.folder / f"metrics_{kind}.csv"

    def _rewrite(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Write ``metrics_<kind>.csv`` afresh with ``rows`` (its columns: every key of every row, in order)."""
        columns = list(dict.fromkeys(key for row in rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        if kind in self._logs:
            self._logs.pop(kind).close()
        atomic_write_text(self.path(kind), buffer.getvalue())
        self._columns[kind] = columns
        self._logs[kind] = AppendLog(self.path(kind), "a")

    def write(self, record: Record) -> None:
        kind = str(record.get("kind", "train"))
        row = self._row(record)
        if kind in self._columns and set(row) <= set(self._columns[kind]):
            buffer = io.StringIO()
            csv.DictWriter(buffer, fieldnames=self._columns[kind], lineterminator="\n").writerow(row)
            self._logs[kind].write_line(buffer.getvalue())
            return
        # A first record of this kind, or one with new columns: rewrite the file with the wider header.
        earlier = []
        if kind in self._columns:
            with self.path(kind).open(encoding="utf-8", newline="") as stream:
                earlier = list(csv.DictReader(stream))
        self._rewrite(kind, [*earlier, row])

    def close(self) -> None:
        for log in self._logs.values():
            log.close()
        self._logs.clear()


class TensorBoardLogger(Logger):
    """TensorBoard event files under ``folder``: scalar ``<kind>/<name>`` at step ``iteration``, text for names."""

    def __init__(self, folder: Path, purge_step: int | None = None) -> None:
        """``purge_step``: a resumed run's checkpoint iteration; TensorBoard hides what a stopped run logged after it."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def write(self, record: Record) -> None:
        kind = str(record.get("kind", "train"))
        step = int(record.get("iteration", 0))
        for key, value in flatten(record).items():
            if key in ("iteration", "kind", "epoch"):
                continue
            tag = f"{kind}/{key}"
            if isinstance(value, bool):
                self.writer.add_scalar(tag, float(value), step)
            elif isinstance(value, (int, float)):
                self.writer.add_scalar(tag, float(value), step)
            elif isinstance(value, str):
                self.writer.add_text(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_loggers(run_path: Path | RunDir, names: Sequence[str], earlier_lines: Sequence[str] | None,
                 start_iteration: int) -> list[Logger]:
    """The loggers of ``train.loggers`` for a run directory (``earlier_lines``: a resumed run's kept lines).

    ``run_path`` may be a :class:`~mckd.rundir.RunDir` whose ``path`` is the run directory's current place: a
    staged run moves when it writes its first checkpoint, and a logger that opens files later must follow it
    (files already open do).
    """
    run = run_path if isinstance(run_path, RunDir) else RunDir(run_path)
    where = lambda: run.path  # noqa: E731 - read at each use: the run may have moved
    run_path = Path(where())
    records = [json.loads(line) for line in earlier_lines] if earlier_lines is not None else []
    loggers: list[Logger] = [JsonlLogger(run_path / "metrics.jsonl", keep=earlier_lines)]
    for name in names:
        if name == "csv":
            loggers.append(CsvLogger(where, records))
        elif name == "tensorboard":
            loggers.append(TensorBoardLogger(run_path / "tensorboard",
                                             purge_step=start_iteration if earlier_lines is not None else None))
    return loggers
