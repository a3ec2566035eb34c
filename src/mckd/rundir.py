"""A run directory's file names: the one place that knows them (training writes them, everything else reads them).

A run directory (``mckd train --out RUN``) holds::

    RUN/config.yaml              the resolved config, every default written down
    RUN/data.json                the dataset's modalities, classes, splits and facts
    RUN/scaling.safetensors      per modality, the offset and scale of its inputs fitted on the training
                                 split (what mckd predict --data and mckd.api.load apply to new samples)
    RUN/metrics.jsonl            one JSON record per line (losses, weights, teachers)
    RUN/checkpoint.safetensors   tensors only: the model, the method's and the loop's state
    RUN/checkpoint_best.safetensors  the model best on validation (train.save_best), model only
    RUN/run.json                 mckd version, git commit, command, libraries, device; start and end times
    RUN/metrics_<kind>.csv       train, weights, val records as CSV (train.loggers: csv)
    RUN/tensorboard/             TensorBoard event files (train.loggers: tensorboard)
    RUN/eval/subsets.{csv,md}    the metrics of every subset of modalities (mckd evaluate), with the
                                 number of test samples that have each subset
    RUN/eval/observed.{csv,md}   the test split as observed: every sample with its own modalities,
                                 then one row per missingness pattern
    RUN/eval/patterns.{csv,md}   how many samples of each split have each pattern of modalities
    RUN/eval/table.md            segmentation only: the paper's Table 1 layout
    RUN/eval_<data>/             segmentation, ``mckd evaluate RUN --data DATA``: the same tables for
                                 other labelled cases, plus cases.{csv,md} (each case's scores) and
                                 evaluation.json (what was evaluated, and how)

and a multi-seed directory (``mckd train --seeds``, ``mckd benchmark``) holds
``seed_<s>/`` runs beside ``subsets.{csv,md}`` (mean and std over seeds),
``seeds.json`` and ``weights.png``.
"""

from __future__ import annotations

from pathlib import Path

from mckd.errors import MckdError


class RunDir:
    """The files of one run directory (or of a multi-seed directory), by what they hold."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def data(self) -> Path:
        return self.path / "data.json"

    @property
    def scaling(self) -> Path:
        return self.path / "scaling.safetensors"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.safetensors"

    @property
    def best_checkpoint(self) -> Path:
        """The model best on the validation split (``train.save_best``); the tables use :attr:`checkpoint`."""
        return self.path / "checkpoint_best.safetensors"

    @property
    def record(self) -> Path:
        """``run.json``: versions, commit, command line, device, and the start and end of each session."""
        return self.path / "run.json"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files (``train.loggers: [tensorboard]``)."""
        return self.path / "tensorboard"

    def csv_log(self, kind: str) -> Path:
        """``metrics_<kind>.csv`` (``train.loggers: [csv]``): one row per record of that kind."""
        return self.path / f"metrics_{kind}.csv"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def subsets(self) -> Path:
        """Stem of the evaluation table (``.csv`` and ``.md``)."""
        return self.eval_dir / "subsets"

    @property
    def observed(self) -> Path:
        """Stem of the as-observed table (``.csv`` and ``.md``)."""
        return self.eval_dir / "observed"

    @property
    def singles(self) -> Path:
        """Stem of the table of each modality alone on the samples that have every modality."""
        return self.eval_dir / "singles_on_complete"

    @property
    def patterns(self) -> Path:
        """Stem of the table of missingness patterns per split (``.csv`` and ``.md``)."""
        return self.eval_dir / "patterns"

    @property
    def table1(self) -> Path:
        """Stem of the segmentation table in the paper's Table 1 layout (``.md``)."""
        return self.eval_dir / "table"

    def data_eval_dir(self, data: str | Path) -> Path:
        """Where ``mckd evaluate RUN --data DATA`` writes its tables: ``eval_<DATA's folder name>``."""
        import re

        name = re.sub(r"[^0-9A-Za-z._-]+", "_", Path(data).resolve().name).strip("_") or "data"
        return self.path / f"eval_{name}"

    # --- multi-seed directories ---

    def seed(self, seed: int) -> "RunDir":
        return RunDir(self.path / f"seed_{seed}")

    @property
    def aggregate(self) -> Path:
        """Stem of the mean-over-seeds table of a multi-seed directory."""
        return self.path / "subsets"

    @property
    def aggregate_observed(self) -> Path:
        """Stem of the mean-over-seeds as-observed table of a multi-seed directory."""
        return self.path / "observed"

    @property
    def aggregate_singles(self) -> Path:
        """Stem of the mean-over-seeds table of single modalities on complete samples (multi-seed directory)."""
        return self.path / "singles_on_complete"

    @property
    def seeds_record(self) -> Path:
        return self.path / "seeds.json"

    @property
    def weights_plot(self) -> Path:
        return self.path / "weights.png"

    def results_table(self, table: str = "subsets") -> Path:
        """The table to compare (``subsets`` or ``observed``): a multi-seed directory's aggregate, or a run's."""
        stems = {"subsets": (self.aggregate, self.subsets), "observed": (self.aggregate_observed, self.observed)}[table]
        for candidate in (stem.with_suffix(".csv") for stem in stems):
            if candidate.exists() or candidate.is_symlink():
                return candidate  # whatever it is: reading it says what is wrong (a folder, a device)
        raise MckdError(f"{str(self.path)!r} has no {table}.csv or eval/{table}.csv: pass a run directory made by "
                        "mckd train (evaluated) or a multi-seed directory")
