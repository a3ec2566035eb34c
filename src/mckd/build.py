"""From a config to the objects a run needs: data, model, task, importance weights."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from mckd import registry
from mckd.config import Config
from mckd.data.bundle import DataBundle
from mckd.data.missing import availability_mask, subset_mask
from mckd.errors import ConfigError, DataError
from mckd.method.model import MultiModalModel
from mckd.method.weights import ImportanceWeights
from mckd.tasks import Task, build_task


@dataclass
class Experiment:
    """Everything built from one config."""

    config: Config
    bundle: DataBundle
    model: MultiModalModel
    weights: ImportanceWeights
    task: Task


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but no CUDA device is available")
    return device


def build_data(config: Config) -> DataBundle:
    """The dataset's splits, with the training split's availability (``missing.policy: rates``) applied."""
    entry = registry.lookup("data", config.data.name)
    bundle: DataBundle = entry.build(config.data.options, config.seed)
    for name in ("train", "val", "test"):  # training reads train and val, evaluation test: none may be empty
        if len(getattr(bundle, name)) == 0:
            raise DataError(f"data {config.data.name!r}: the {name} split has no samples; check data.split "
                            "(train / meta-validation / test all need some)")
    missing = config.missing
    if missing.policy == "fixed":
        subset_mask(bundle.modalities, missing.subset)  # check the names now
    if missing.policy == "rates":
        train = bundle.train
        if not hasattr(train, "with_present") or not hasattr(train, "present"):
            raise ConfigError(f"missing.policy 'rates' needs a dataset that can mask samples; {config.data.name!r} cannot")
        mask = availability_mask(len(train), bundle.modalities, missing.rates, seed=config.seed)
        bundle.train = train.with_present(train.present & mask)
    return bundle


def build_experiment(config: Config) -> Experiment:
    """Seed, then build the data, the model, the importance weights and the task."""
    seed_everything(config.seed)
    bundle = build_data(config)
    entry = registry.lookup("model", config.model.name)
    model = entry.build(config.model.options, bundle, config)
    if config.method.shared_specific:  # ShaSpec over the same encoders and decoder (mckd.variants)
        from mckd.variants import shared_specific_model

        model = shared_specific_model(model, bundle)
    generator = torch.Generator().manual_seed(config.seed)
    weights = ImportanceWeights(bundle.modalities, config.method.weight_norm, generator=generator)
    task = build_task(config.task, bundle.num_classes, **bundle.info.get("task_options", {}))
    return Experiment(config=config, bundle=bundle, model=model, weights=weights, task=task)
