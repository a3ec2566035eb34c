"""MCKD from Python on your own arrays and modules: :func:`arrays_bundle`, then :func:`fit`.

    bundle = arrays_bundle({"image": images, "record": records}, labels)   # NaN rows: missing
    result = fit(bundle, {"image": image_net, "record": record_net}, head, out="runs/mine")
    result.observed   # the test split as observed, then per missingness pattern
    predictor = result.predictor()                # or later, in another process: load("runs/mine", encoders, head)
    predictor.predict({"image": new_images, "record": new_records})   # NaN rows: missing; class names

:func:`fit` trains with the same loop, training method and evaluation as
``mckd train`` (the defaults of a config, overridden by ``settings``), writes
the run directory (config, metrics, checkpoint, ``eval/`` tables) and
returns the trained experiment with its evaluation. The run's config
records ``data: python`` and ``model: python``: the arrays and modules lived
in the caller's process, so ``mckd evaluate`` cannot rebuild that run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mckd.build import Experiment, assemble_model, build_method, seed_everything
from mckd.config import Config, config_from_dict, set_key
from mckd.data.bundle import DataBundle
from mckd.data.samples import ModalityRows, draw_split, encode_labels, make_bundle, parse_split, presence_by_name
from mckd.errors import ConfigError, DataError
from mckd.evaluation import Evaluation
from mckd.experiment import train_and_evaluate
from mckd.io import claim_output
from mckd.nets.base import NetworkParts
from mckd.predict_table import Predictor, load  # noqa: F401  (mckd.api.load: a trained run on new samples)
from mckd.probe import check_modules, probe_encoders, probe_model
from mckd.rundir import RunDir
from mckd.tasks import build_task


def arrays_bundle(
    modalities: Mapping[str, np.ndarray | torch.Tensor],
    labels: Sequence[Any] | np.ndarray,
    ids: Sequence[str] | None = None,
    present: Mapping[str, np.ndarray] | None = None,
    split: Sequence[str] | None = None,
    fractions: Sequence[float] = (0.6, 0.1, 0.3),
    split_seed: int = 0,
    classes: Sequence[str] = (),
    standardise: bool = True,
) -> DataBundle:
    """Train, meta-validation and test splits of in-memory arrays, with real missingness.

    Args:
        modalities: name -> ``[S, *shape]`` array (any shape per sample), rows in the order of ``labels``;
            a row that is entirely NaN is a missing modality for that sample.
        labels: ``[S]`` class labels (numbers or names).
        ids: ``[S]`` sample ids (default ``0..S-1``), recorded with the split.
        present: optional name -> bool ``[S]``; False marks the modality missing (its values are not read).
        split: optional ``[S]`` of ``train`` / ``val`` / ``test``; default: drawn by ``fractions``,
            stratified by class, with ``split_seed``.
        classes: class names in order (default: the sorted distinct labels).
        standardise: z-score vectors per feature and other shapes per channel, on the training split.

    Raises:
        DataError: a present row with NaN or infinite values, a modality no sample has, a sample with none,
            labels that do not fit ``classes``, an empty split (see :mod:`mckd.data.samples`).
    """
    labels = list(np.asarray(labels).tolist())
    sample_ids = [str(i) for i in (ids if ids is not None else range(len(labels)))]
    rows = []
    flags_of = presence_by_name(present, list(modalities), "present")
    for name, values in modalities.items():
        array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        if len(array) != len(labels):
            raise DataError(f"modality {name!r} has {len(array)} rows but there are {len(labels)} labels")
        flags = flags_of.get(name)  # read (as 0/1, booleans or text) by mckd.data.samples.parse_presence
        rows.append(ModalityRows(name, sample_ids, array, flags, f"array {name!r}"))
    codes, names = encode_labels(labels, list(classes), "labels")
    split_codes = parse_split(split, "split") if split is not None else draw_split(codes, fractions, split_seed)
    return make_bundle(rows, sample_ids, codes, names, split_codes, standardise, info={"source": "arrays from Python"})


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    experiment: Experiment
    evaluation: Evaluation
    run_dir: Path

    @property
    def subsets(self) -> list[dict[str, Any]]:
        """Every subset of modalities, over the test samples that have it."""
        return self.evaluation.subsets

    @property
    def observed(self) -> list[dict[str, Any]]:
        """The test split as observed, then one row per missingness pattern."""
        return self.evaluation.observed

    def predictor(self) -> Predictor:
        """The trained model for new samples (raw arrays, NaN rows missing), as :func:`load` gives it later."""
        experiment, bundle = self.experiment, self.experiment.bundle
        model = experiment.model.eval()
        device = next(model.parameters()).device
        classes = [str(c) for c in bundle.info.get("classes") or range(bundle.num_classes)]
        shapes = {m: tuple(bundle.input_shapes[m]) for m in bundle.modalities}
        return Predictor(model, tuple(bundle.modalities), shapes, classes, dict(bundle.scaling), self.run_dir,
                         experiment.config, device)


def _config(bundle: DataBundle, encoders: Any, head: nn.Module, method: str, fill: str, fusion: str,
            settings: Mapping[str, Any]) -> Config:
    described = ", ".join(f"{name}: {type(module).__name__}" for name, module in encoders.items()) \
        if isinstance(encoders, Mapping) else f"shared: {type(encoders).__name__}"
    raw: dict[str, Any] = {
        "data": {"name": "python", "description": f"{len(bundle.train) + len(bundle.val) + len(bundle.test)} samples "
                                                  f"of {', '.join(bundle.modalities)}"},
        "model": {"name": "python", "fill": fill, "fusion": fusion,
                  "description": f"{described}; head: {type(head).__name__}"},
        "method": {"name": method},
    }
    for key, value in settings.items():
        if key.split(".")[0] in ("data", "model"):
            raise ConfigError(f"fit(settings={{{key!r}: ...}}): the data and the model are the arrays and modules "
                              "given to fit")
        set_key(raw, key, value)
    from mckd import components

    if method in components.presets():  # a method with fixed settings (mckd list): as mckd benchmark --methods takes it
        from mckd.experiment import method_config

        raw = method_config(raw, method)
    return config_from_dict(raw)


def fit(
    bundle: DataBundle,
    encoders: Mapping[str, nn.Module] | nn.Module,
    head: nn.Module,
    out: str | Path,
    method: str = "mckd",
    fill: str = "mean",
    fusion: str = "concat",
    settings: Mapping[str, Any] | None = None,
    force: bool = False,
) -> FitResult:
    """Train MCKD (or another registered method) on ``bundle`` with your modules, evaluate, write ``out``.

    Args:
        bundle: from :func:`arrays_bundle` (or any registered dataset's build).
        encoders: one module per modality (``[P, *shape_n] -> [P, *F]``, one feature shape for all), or one
            module shared by every modality (inputs of one shape).
        head: the decoder: fused features (``N * F`` channels for ``concat``) -> ``[B, classes]``.
        out: the run directory.
        method: a registered training method or preset (``mckd list``; a preset is its method with its
            settings, which come after ``settings``).
        fill, fusion: as ``model.fill`` and ``model.fusion`` (Eq. 2, Eq. 3).
        settings: dotted config keys with their values, e.g. ``{"train.iterations": 300, "method.alpha": 0.3}``.
        force: replace a run already in ``out`` (once the new one has written its first checkpoint);
            without it an existing run is refused, as by ``mckd train``.

    Returns:
        The trained experiment, its evaluation on the test split, and the run directory.
    """
    check_modules(encoders, head, bundle.modalities)
    probe_encoders(encoders, bundle)  # before assembling: it runs an encoder to size the fusion
    config = _config(bundle, encoders, head, method, fill, fusion, dict(settings or {}))
    seed_everything(config.seed)
    training_method = build_method(config, bundle.modalities)
    task = build_task(config.task, bundle.task_facts())
    model = assemble_model(config, NetworkParts(encoders, head), bundle.modalities, bundle.input_shapes,
                           task.num_outputs, training_method)
    probe_model(model, bundle, task.num_outputs)  # wrong modules: one error naming the encoder or the head
    experiment = Experiment(config=config, bundle=bundle, model=model, method=training_method, task=task)
    run = RunDir(out)
    hint = "pass force=True to fit() to replace it (the old run stays until the new one's first checkpoint)"
    with claim_output(run.path, replace=force, kind="dir", what="run directory", hint=hint, replaces=True):  # through the evaluation
        evaluation = train_and_evaluate(config, run.path, force=force, experiment=experiment)
    return FitResult(experiment, evaluation, run.path)
