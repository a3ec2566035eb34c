"""Run directories: the one place that knows their file names, and how a trained run is loaded back.

A run directory (``mckd train --out RUN``) holds::

    RUN/config.yaml              the resolved config, every default written down
    RUN/data.json                the dataset's modalities, classes, splits and facts
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

A trained model is rebuilt one way, by :func:`mckd.build.build_model` from
the config and the shapes stored in the checkpoint: :func:`load_run` with its
dataset (to evaluate), :func:`load_model` without it (to predict).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mckd import distributed
from mckd.build import Experiment, build_experiment, build_method, build_model
from mckd.checkpoint import load_checkpoint, load_state_into
from mckd.config import Config, config_from_dict
from mckd.errors import CheckpointError, ConfigError, MckdError
from mckd.evaluation import Evaluation, evaluate, missingness_patterns
from mckd.report import write_table, write_task_tables
from mckd.progress import with_progress
from mckd.tasks import Task, build_task
from mckd.threads import apply_threads

CHECKPOINT_FORMAT = 3  # 1: model and weights; 2: the training state of mckd 0.1; 3: methods as components


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
    def seeds_record(self) -> Path:
        return self.path / "seeds.json"

    @property
    def weights_plot(self) -> Path:
        return self.path / "weights.png"

    def primary_metric(self) -> str | None:
        """The task's primary metric from this run's (or its first seed's) ``config.yaml``; None if unreadable."""
        import yaml

        for path in (self.config, *sorted(self.path.glob("seed_*/config.yaml"))):
            try:
                return config_from_dict(yaml.safe_load(path.read_text())).task.options.primary_metric
            except Exception:  # noqa: BLE001 - any unreadable config: fall back to the table's first metric
                continue
        return None

    def results_table(self, table: str = "subsets") -> Path:
        """The table to compare (``subsets`` or ``observed``): a multi-seed directory's aggregate, or a run's."""
        stems = {"subsets": (self.aggregate, self.subsets), "observed": (self.aggregate_observed, self.observed)}[table]
        for candidate in (stem.with_suffix(".csv") for stem in stems):
            if candidate.is_file():
                return candidate
        raise MckdError(f"{str(self.path)!r} has no {table}.csv or eval/{table}.csv: pass a run directory made by "
                        "mckd train (evaluated) or a multi-seed directory")


# --- checkpoints of trained runs -------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, metadata)`` of a run's checkpoint, an older format's names mapped to today's.

    Format 2 (mckd 0.1) kept the importance weights as ``weights.raw``; they
    are ``method.weights.raw`` now. Its training state cannot be resumed
    (:mod:`mckd.train` says so); the model evaluates and predicts as before.
    """
    tensors, metadata = load_checkpoint(path)
    if "config" not in metadata:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no config; it was not written by mckd train")
    if int(metadata.get("format", 1)) < CHECKPOINT_FORMAT and "weights.raw" in tensors:
        tensors["method.weights.raw"] = tensors.pop("weights.raw")
    return tensors, metadata


def checkpoint_config(metadata: dict[str, Any], path: str | Path) -> Config:
    """The config stored in a checkpoint; an error in it says that it came from there."""
    try:
        return config_from_dict(metadata["config"])
    except ConfigError as error:
        raise ConfigError(f"the config stored in checkpoint {str(path)!r} is not valid here: {error}") from None


def load_run(run_dir: str | Path, device: str = "cpu") -> Experiment:
    """Rebuild a run's experiment (with its dataset) from its checkpoint and load the trained model."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise MckdError(f"run directory {str(run.path)!r} does not exist")
    tensors, metadata = read_checkpoint(run.checkpoint)
    config = checkpoint_config(metadata, run.checkpoint)
    config.train.device = device
    apply_threads(config.train.threads)
    experiment = build_experiment(config)
    load_state_into(experiment.model, tensors, "model.", str(run.checkpoint))
    experiment.model.to(distributed.resolve_device(device))
    return experiment


@dataclass
class LoadedModel:
    """A trained model without its dataset (what :func:`load_model` returns)."""

    model: Any
    config: Config
    task: Task
    path: Path
    facts: dict[str, Any]


def _stored_shapes(config: Config, metadata: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, list[int]], dict]:
    """Modalities, input shapes and task facts a checkpoint stores (derived from the config for format 2)."""
    modalities = tuple(metadata.get("modalities") or getattr(config.data.options, "modalities", ()) or ())
    if "input_shapes" in metadata and "facts" in metadata:
        return modalities, metadata["input_shapes"], metadata["facts"]
    if config.data.name != "brats":  # format 2 kept only the modalities; BraTS shapes follow from the config
        raise CheckpointError("this checkpoint (mckd 0.1) does not store its input shapes; load it with its "
                              "dataset (mckd evaluate), or train the run again to predict from it")
    options = config.data.options
    facts = {"target": "label_map", "num_classes": 4, "roi": list(options.crop), "downsample": options.downsample,
             "spacing": [float(options.downsample)] * 3}
    return modalities, {m: [1, *options.crop] for m in modalities}, facts


def load_model(checkpoint: str | Path, device: torch.device) -> LoadedModel:
    """The trained model of a run directory or ``.safetensors`` file, built without reading any dataset."""
    path = Path(checkpoint)
    if path.is_dir():
        path = RunDir(path).checkpoint
    tensors, metadata = read_checkpoint(path)
    config = checkpoint_config(metadata, path)
    apply_threads(config.train.threads)
    modalities, input_shapes, facts = _stored_shapes(config, metadata)
    task = build_task(config.task, facts)
    method = build_method(config, modalities)
    model = build_model(config, modalities, input_shapes, task.num_outputs, method)
    load_state_into(model, tensors, "model.", str(path))
    model.to(device).eval()
    return LoadedModel(model, config, task, path, dict(facts))


def evaluate_run(run_dir: str | Path, device: str = "auto", data: str | Path | None = None,
                 **data_options: Any) -> Evaluation:
    """Evaluate a trained run on its test split: every subset, as observed, per pattern; write ``eval/``.

    With ``data`` (segmentation runs): score other labelled cases instead, a
    cache made by ``mckd prepare seg`` or a dataset folder in any format
    (:mod:`mckd.seg.evaluate`), into ``eval_<data>/``.
    """
    if data is not None:
        return evaluate_run_on_data(run_dir, data, device, **data_options)
    run = RunDir(run_dir)
    device_obj = distributed.local_device(device)  # under torchrun: this rank's GPU
    experiment = load_run(run.path, str(device_obj))
    return evaluate_experiment(experiment, run, device_obj)


def evaluate_experiment(experiment: Experiment, run: RunDir, device: torch.device) -> Evaluation:
    """Evaluate an experiment's trained model on its ``eval.split`` and write the tables into ``run``'s ``eval/``."""
    split = experiment.config.eval.split
    bundle = experiment.bundle
    dataset = bundle.test if split == "test" else bundle.val
    dataset = with_progress(dataset, f"evaluate {run.path.name}", distributed.is_main())  # bar or plain lines
    result = evaluate(experiment.model, experiment.task, dataset, experiment.config.eval.batch_size, device)
    patterns = missingness_patterns({"train": bundle.train, "val": bundle.val, "test": bundle.test}, bundle.modalities)
    if distributed.is_main():
        write_table(result.subsets, run.subsets, title=f"{run.path.name}: {split} split, every subset",
                    notes=SUBSETS_NOTE)
        write_table(result.observed, run.observed, title=f"{run.path.name}: {split} split as observed",
                    notes=OBSERVED_NOTE)
        write_table(patterns, run.patterns, title=f"{run.path.name}: samples per pattern of present modalities",
                    notes="train: as training saw it (after missing.policy rates); val is the meta-validation split.")
        write_task_tables(experiment.task, result.subsets, run.table1, experiment.model.modalities)
    return result


SUBSETS_NOTE = ("Each row: the test samples that have every modality of the subset (`samples`), each predicted "
                "from exactly that subset. `–`: no sample has the subset, so its metrics are undefined.")
OBSERVED_NOTE = ("`all`: every test sample predicted from the modalities it has; then one row per pattern of "
                 "present modalities. `–`: undefined for those samples (AUROC with one class).")


# --- segmentation on other labelled data (mckd evaluate RUN --data) ----------------------------------


def evaluate_run_on_data(run_dir: str | Path, data: str | Path, device: str = "auto", out: str | Path | None = None,
                         **options: Any) -> Evaluation:
    """Score a segmentation run on the labelled cases of ``data`` (:func:`mckd.seg.evaluate.evaluate_on_data`),
    into ``RUN/eval_<data>/`` (or ``out``)."""
    from mckd.seg.evaluate import evaluate_on_data

    run = RunDir(run_dir)
    device_obj = distributed.local_device(device)
    target = Path(out) if out else run.data_eval_dir(data)
    return evaluate_on_data(load_model(run.path, device_obj), run.path.name, data, target, device_obj, **options)
