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
    RUN/eval/subsets.{csv,md}    the metrics of every subset of modalities (mckd evaluate)
    RUN/eval/table.md            segmentation only: the paper's Table 1 layout

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
from mckd.evaluation import evaluate_subsets
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
    def table1(self) -> Path:
        """Stem of the segmentation table in the paper's Table 1 layout (``.md``)."""
        return self.eval_dir / "table"

    # --- multi-seed directories ---

    def seed(self, seed: int) -> "RunDir":
        return RunDir(self.path / f"seed_{seed}")

    @property
    def aggregate(self) -> Path:
        """Stem of the mean-over-seeds table of a multi-seed directory."""
        return self.path / "subsets"

    @property
    def seeds_record(self) -> Path:
        return self.path / "seeds.json"

    @property
    def weights_plot(self) -> Path:
        return self.path / "weights.png"

    def results_table(self) -> Path:
        """The per-subset table to compare: a multi-seed directory's aggregate, or a run's evaluation."""
        for candidate in (self.aggregate.with_suffix(".csv"), self.subsets.with_suffix(".csv")):
            if candidate.is_file():
                return candidate
        raise MckdError(f"{str(self.path)!r} has no subsets.csv or eval/subsets.csv: pass a run directory made by "
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


def evaluate_run(run_dir: str | Path, device: str = "auto") -> list[dict[str, Any]]:
    """Evaluate a trained run on its test split over every subset; write ``eval/subsets.{csv,md}``."""
    run = RunDir(run_dir)
    device_obj = distributed.local_device(device)  # under torchrun: this rank's GPU
    experiment = load_run(run.path, str(device_obj))
    split = experiment.config.eval.split
    dataset = experiment.bundle.test if split == "test" else experiment.bundle.val
    dataset = with_progress(dataset, f"evaluate {run.path.name}", distributed.is_main())  # bar or plain lines
    rows = evaluate_subsets(experiment.model, experiment.task, dataset, experiment.config.eval.batch_size, device_obj)
    if distributed.is_main():
        write_table(rows, run.subsets, title=f"{run.path.name}: {split} split, every subset")
        write_task_tables(experiment.task, rows, run.table1, experiment.model.modalities)
    return rows
