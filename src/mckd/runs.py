"""Trained runs loaded back: to evaluate (with their dataset) or to predict (without it).

A run directory's files, and those of a multi-seed directory, are named by
:class:`mckd.rundir.RunDir` (its docstring lists them). A trained model is
rebuilt one way, by :func:`mckd.build.build_model` from the config and the
shapes stored in the checkpoint: :func:`load_run` with its dataset (to
evaluate), :func:`load_model` without it (to predict).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mckd import distributed
from mckd.build import Experiment, assemble_model, build_experiment, build_method, build_model
from mckd.checkpoint import load_checkpoint, load_state_into
from mckd.data.recorded_split import recorded_split
from mckd.config import Config, config_from_dict
from mckd.errors import CheckpointError, ConfigError, MckdError
from mckd.evaluation import Evaluation, evaluate, missingness_patterns
from mckd.report import write_table, write_task_tables
from mckd.progress import with_progress
from mckd.rundir import RunDir
from mckd.tasks import Task, build_task
from mckd.threads import apply_threads



def primary_metric(run: RunDir) -> str | None:
    """The task's primary metric from a run's (or its first seed's) ``config.yaml``; None if unreadable."""
    import yaml

    for path in (run.config, *sorted(run.path.glob("seed_*/config.yaml"))):
        try:
            return config_from_dict(yaml.safe_load(path.read_text())).task.options.primary_metric
        except Exception:  # noqa: BLE001 - any unreadable config: fall back to the table's first metric
            continue
    return None


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
    if int(metadata.get("format", 1)) < 3 and "weights.raw" in tensors:
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
    with recorded_split(run.data):  # the run's own split, as data.json recorded it: never re-drawn
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


def load_model(checkpoint: str | Path, device: torch.device, parts: Any = None) -> LoadedModel:
    """The trained model of a run directory or ``.safetensors`` file, built without reading any dataset.

    ``parts``: the run's encoders and head (:class:`mckd.nets.base.NetworkParts`) where the config cannot
    build them (a run of :func:`mckd.api.fit`); the checkpoint's tensors are loaded into them.
    """
    path = Path(checkpoint)
    if path.is_dir():
        path = RunDir(path).checkpoint
    tensors, metadata = read_checkpoint(path)
    config = checkpoint_config(metadata, path)
    apply_threads(config.train.threads)
    modalities, input_shapes, facts = _stored_shapes(config, metadata)
    task = build_task(config.task, facts)
    method = build_method(config, modalities)
    if parts is None:
        model = build_model(config, modalities, input_shapes, task.num_outputs, method)
    else:
        model = assemble_model(config, parts, modalities, input_shapes, task.num_outputs, method)
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
        write_table(result.singles_on_complete, run.singles, title=f"{run.path.name}: {split} split, each "
                    "modality alone on the samples that have every modality", notes=SINGLES_NOTE)
        write_table(patterns, run.patterns, title=f"{run.path.name}: samples per pattern of present modalities",
                    notes="train: each sample's modalities as the data give them (missing.policy drops more at random "
                          "during training, not counted here); val is the meta-validation split.")
        write_task_tables(experiment.task, result.subsets, run.table1, experiment.model.modalities)
    return result


SUBSETS_NOTE = ("Each row: the test samples that have every modality of the subset (`samples`), each predicted "
                "from exactly that subset. `–`: no sample has the subset, so its metrics are undefined.")
SINGLES_NOTE = ("Each modality alone over the same test samples, those that have every modality (`samples`), so "
                "single modalities compare like with like. `–`: no test sample has every modality.")
OBSERVED_NOTE = ("`all, as observed`: every test sample predicted from the modalities it has; then one row per pattern of "
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
