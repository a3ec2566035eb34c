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
    (:func:`evaluate_run_on_data`), into ``eval_<data>/``.
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


def evaluate_run_on_data(run_dir: str | Path, data: str | Path, device: str = "auto", data_format: str = "auto",
                         labels: str = "auto", subsets: str | list[list[str]] = "all", options: Any = None,
                         channels: list[str] | None = None, out: str | Path | None = None,
                         progress: bool = True) -> Evaluation:
    """Score a segmentation run on the labelled cases of ``data``; write ``RUN/eval_<data>/`` (or ``out``).

    ``data`` is a cache (``mckd prepare seg``; made on the run's grid, scored
    there, as the run's own test split) or a dataset folder in any format,
    whose cases are each segmented as ``mckd predict`` would and scored on
    their own grid (:mod:`mckd.seg_evaluation`).
    """
    import json

    from mckd.data.brats_cache import DATASET_FILE
    from mckd.segment import SegmentOptions

    run = RunDir(run_dir)
    device_obj = distributed.local_device(device)
    loaded = load_model(run.path, device_obj)
    if loaded.config.task.name != "segmentation":
        raise MckdError(f"--data evaluates segmentation runs; {str(run.path)!r} is a {loaded.config.task.name} run")
    target = Path(out) if out else run.data_eval_dir(data)
    options = options or SegmentOptions()
    description = Path(data) / DATASET_FILE
    is_cache = description.is_file() and str(_json_field(description, "format")).startswith("mckd-")
    if is_cache:
        result, cases, about = _evaluate_cache(loaded, Path(data), device_obj)
    else:
        result, cases, about = _evaluate_folder(loaded, Path(data), device_obj, data_format, labels, subsets,
                                                options, channels, progress)
    if distributed.is_main():
        name = Path(data).name
        write_table(result.subsets, target / "subsets", title=f"{run.path.name} on {name}: every subset",
                    notes=SUBSETS_NOTE.replace("test samples", "cases"))
        write_table(result.observed, target / "observed", title=f"{run.path.name} on {name} as observed",
                    notes=OBSERVED_NOTE.replace("test sample", "case"))
        if cases:
            write_table(cases, target / "cases", title=f"{run.path.name} on {name}: each case",
                        notes="Each case predicted from each subset of the sequences it has, scored on its own grid.")
        write_task_tables(loaded.task, result.subsets, target / "table", loaded.model.modalities)
        from mckd.io import atomic_write_text

        atomic_write_text(target / "evaluation.json", json.dumps({
            "run": str(run.path.resolve()), "data": str(Path(data).resolve()), **about,
            "options": options.to_json()}, indent=2) + "\n")
    return result


def _json_field(path: Path, key: str) -> Any:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None


def _evaluate_cache(loaded: LoadedModel, cache: Path, device: torch.device) -> tuple[Evaluation, list, dict]:
    """A cache on the run's grid, scored there (the run's downsampling), as the run's own test split."""
    import numpy as np

    from mckd.data.brats import BratsCaseDataset, BratsCases
    from mckd.data.brats_cache import cache_plan, cache_scheme, read_dataset_record
    from mckd.data.labels import class_map
    from mckd.segment import run_plan

    record = read_dataset_record(cache)
    plan, mine = cache_plan(record), run_plan(loaded.facts)
    if plan.orientation != mine.orientation or (plan.spacing and mine.spacing and not np.allclose(plan.spacing, mine.spacing)):
        raise MckdError(f"cache {str(cache)!r} is on a {plan.describe()} grid, the run's on {mine.describe()}: "
                        "evaluate the dataset's folder instead (--data SRC), or prepare it with the run's "
                        f"--spacing {' '.join(f'{s:g}' for s in mine.spacing)} --orientation {mine.orientation or 'none'}")
    lookup = class_map(cache_scheme(record), loaded.task.scheme, f"cache {cache}")
    step = int(loaded.facts.get("downsample", 1))
    cases = BratsCases(cache, record["cases"], loaded.model.modalities, step, label_lookup=lookup)
    result = evaluate(loaded.model, loaded.task, BratsCaseDataset(cases), 1, device)
    return result, [], {"kind": "cache", "cases": len(record["cases"]), "grid": "the cache's, downsampled as in training"}


def _evaluate_folder(loaded: LoadedModel, folder: Path, device: torch.device, data_format: str, labels: str,
                     subsets: Any, options: Any, channels: list[str] | None, progress: bool) -> tuple[Evaluation, list, dict]:
    """A dataset folder in any format: each case segmented as mckd predict would, scored on its own grid."""
    from mckd.data.formats import detect_format
    from mckd.progress import CaseProgress
    from mckd.data.seg_prepare import resolve_scheme
    from mckd.seg_evaluation import evaluate_cases
    from mckd.segment import file_grid_task

    found = detect_format(folder, data_format, record=loaded.facts.get("plan", {}).get("source_format"),
                          channels=channels)
    cases = found.cases(labelled=True, allow_missing=True)
    scheme, reason = resolve_scheme(found, labels, cases)
    task = file_grid_task(loaded)
    if distributed.is_main():
        print(f"evaluating {len(cases)} cases of {found.title}; labels: {reason}")
    rank, size = distributed.rank_and_size()
    bar = CaseProgress(len(cases[rank::size]), "evaluate", enabled=progress, prefix=f"rank {rank} " if size > 1 else "")

    def done(case_id: str, rows: list) -> None:
        observed = [r for r in rows if r["as_observed"] == "yes"]
        count = f"{len(rows)} subset{'s' if len(rows) != 1 else ''}"
        note = (f"{count}; from {observed[0]['subset']}: dice_mean {observed[0]['dice_mean']:.4f}"
                if observed else count)
        bar.update(case_id, note)

    result = evaluate_cases(loaded, task, cases, found.modalities, scheme, subsets, options, device, progress=done)
    bar.close()
    about = {"kind": found.kind, "format": found.title, "labels": reason, "cases": len(cases),
             "grid": "each case's own (the files' voxels, HD95 in their mm)",
             "subsets": subsets if isinstance(subsets, str) else ["+".join(s) for s in subsets]}
    return Evaluation(result.subsets, result.observed), result.cases, about
