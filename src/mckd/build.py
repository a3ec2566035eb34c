"""From a config to the objects a run needs: data, task, training method and model.

:func:`build_experiment` is the one place where a run is assembled, in a
fixed order (the random streams depend on it): seed, data, training method,
task, model. :func:`assemble_model` is the one place where a model is put
together, for training, for loading a trained run and for modules given from
Python (:mod:`mckd.api`) alike: the network's encoders and decoder with
``model.fill`` and ``model.fusion``, then wrapped by the training method,
which is told the network's :class:`~mckd.method.model.ModelSpec`.
"""

from __future__ import annotations

import functools
import random
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from mckd.config import Config
from mckd.data.bundle import DataBundle
from mckd.data.missing import availability_mask, subset_mask
from mckd.errors import ConfigError, DataError
from mckd.method.base import TrainingMethod
from mckd.method.fusion import fused_channels
from mckd.method.model import ModelSpec, MultiModalModel, check_fusion_channels, encoder_feature_shapes
from mckd.nets.base import NetworkParts, NetworkSpec
from mckd.tasks import Task, build_task


@dataclass
class Experiment:
    """Everything built from one config."""

    config: Config
    bundle: DataBundle
    model: MultiModalModel
    method: TrainingMethod
    task: Task


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_data(config: Config) -> DataBundle:
    """The dataset's splits, with the training split's availability (``missing.policy: rates``) applied."""
    entry = config.data.component("data")
    bundle: DataBundle = entry.build(config.data.options, config.seed)
    for name in ("train", "val", "test"):  # training reads train and val, evaluation test: none may be empty
        if len(getattr(bundle, name)) == 0:
            raise DataError(f"data {config.data.name!r}: the {name} split has no samples; check data.split "
                            "(train / meta-validation / test all need some)")
    missing = config.missing
    for key, value, reader in (("rates", missing.rates, "rates"), ("subset", missing.subset, "fixed")):
        if value and missing.policy != reader:  # set, but not read: a typo there would go unnoticed
            unknown = [name for name in value if name not in bundle.modalities]
            named = (f"; it also names {unknown}, which are not modalities of this dataset {list(bundle.modalities)}"
                     if unknown else "")
            warnings.warn(f"missing.{key} is set but missing.policy is {missing.policy!r}, which does not read it "
                          f"(policy '{reader}' does): it has no effect on this run{named}", stacklevel=2)
    if missing.policy == "fixed":
        subset_mask(bundle.modalities, missing.subset)  # check the names now
    if missing.policy == "rates":
        train = bundle.train
        if not hasattr(train, "with_present") or not hasattr(train, "present"):
            raise ConfigError(f"missing.policy 'rates' needs a dataset that can mask samples; {config.data.name!r} cannot")
        mask = availability_mask(len(train), bundle.modalities, missing.rates, seed=config.seed)
        bundle.train = train.with_present(train.present & mask)
    return bundle


def build_method(config: Config, modalities: Sequence[str]) -> TrainingMethod:
    """The training method of ``config.method`` (its own random start comes from the seed, not the global RNG)."""
    cls = config.method.component("method").build
    return cls(config.method.options, modalities, config.seed)


def build_model(config: Config, modalities: Sequence[str], input_shapes: Mapping[str, Sequence[int]],
                num_outputs: int, method: TrainingMethod) -> MultiModalModel:
    """The network of ``config.model`` (:func:`build_network`), assembled and wrapped (:func:`assemble_model`)."""
    parts = build_network(config, modalities, input_shapes, num_outputs)
    return assemble_model(config, parts, modalities, input_shapes, num_outputs, method)


def build_network(config: Config, modalities: Sequence[str], input_shapes: Mapping[str, Sequence[int]],
                  num_outputs: int) -> NetworkParts:
    """The encoders and decoder of the registered network ``config.model.name``."""
    fused = functools.partial(fused_channels, config.model.fusion, len(modalities))  # channels -> fused channels
    spec = NetworkSpec(tuple(modalities), dict(input_shapes), num_outputs, fused)
    return config.model.component("model").build(config.model.options, spec)


def assemble_model(config: Config, parts: NetworkParts, modalities: Sequence[str],
                   input_shapes: Mapping[str, Sequence[int]], num_outputs: int,
                   method: TrainingMethod) -> MultiModalModel:
    """Encoders and decoder with ``model.fill`` and ``model.fusion``, wrapped by ``method`` (told the model's spec).

    The feature shape of each encoder level is measured once here (one zero
    sample through an encoder in eval mode), so neither a fill, a fusion nor
    a method has to run the network to size its own layers.
    """
    shapes = encoder_feature_shapes(parts.encoder, list(modalities), input_shapes)
    spec = ModelSpec(tuple(modalities), {m: tuple(int(v) for v in input_shapes[m]) for m in modalities},
                     num_outputs, shapes, parts.distill_level, config.model.fill, config.model.fusion)
    model = MultiModalModel(modalities, parts.encoder, parts.decoder, fill=config.model.fill,
                            fusion=config.model.fusion, distill_level=parts.distill_level,
                            feature_channels=spec.feature_channels)
    check_fusion_channels(model, spec)
    return method.wrap_model(model, spec)


def build_experiment(config: Config) -> Experiment:
    """Seed, then build the data, the training method, the task and the model."""
    seed_everything(config.seed)
    bundle = build_data(config)
    method = build_method(config, bundle.modalities)
    if bundle.info.get("val_in_train") and method.takes_meta_steps:
        raise ConfigError("data.train_on_val puts the meta-validation samples into the training split, but method "
                          f"{config.method.name!r} takes meta steps on them: set method.meta: false or train_on_val: false")
    task = build_task(config.task, bundle.task_facts())
    model = build_model(config, bundle.modalities, bundle.input_shapes, task.num_outputs, method)
    return Experiment(config=config, bundle=bundle, model=model, method=method, task=task)
