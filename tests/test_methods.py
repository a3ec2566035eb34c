"""Training methods as components: one defined outside mckd trains by name, every loss term is logged."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers import AtIteration, ckd_by_loops
from mckd.config import config_from_dict, load_raw
from mckd.errors import MckdError
from mckd.experiment import method_config
from mckd.method import base as method_base
from mckd.method.base import Term, TrainingMethod, register_training_method
from mckd.method.model import ModelOutput
from mckd.method.uniform_ckd import UniformCKD, UniformCKDOptions
from mckd.runs import RunDir
from mckd.train import TrainingInterrupted, train

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["train.iterations=12", "train.batch_size=32", "train.log_every=4", "train.progress=false",
         "train.device=cpu", "train.deterministic=true", "method.meta_every=3"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def records(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in RunDir(run).metrics.read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


@dataclass
class FeatureNormOptions:
    """A made-up method: penalise the features' size."""

    weight: float = 0.01


class FeatureNorm(TrainingMethod):
    """Adds ``weight * mean f^2`` of the present features; counts its steps (state kept on resume)."""

    name = "feature_norm"
    description = "a method defined in a test"

    def __init__(self, options, modalities, seed):
        super().__init__(options, modalities, seed)
        self.steps = 0

    def loss_term_names(self):
        return ("norm",)

    def loss_terms(self, output: ModelOutput, present, weights=None):
        mask = present.reshape(present.shape + (1,) * (output.features.dim() - 2)).float()
        return {"norm": Term(self.options.weight, (output.features.pow(2) * mask).mean())}

    def after_iteration(self, iteration):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.steps = int(state["steps"])


@pytest.fixture
def outside_method():
    register_training_method(FeatureNormOptions)(FeatureNorm)
    yield FeatureNorm
    method_base.TRAINING_METHODS.pop("feature_norm")
    method_base.OPTIONS.pop("feature_norm")


def digits(method: str, *overrides: str):
    return config_from_dict(method_config(load_raw(ROOT / "configs" / "multiview_digits.yaml"), method,
                                          [*SHORT, *overrides]))


def test_a_method_defined_outside_mckd_trains_by_name_logs_its_term_and_resumes_its_state(
        outside_method, digits_csv_dir, tmp_path):
    config = digits("feature_norm", "method.weight=0.5")
    assert config.method.options == FeatureNormOptions(weight=0.5)
    experiment = train(config, tmp_path / "straight")
    assert experiment.method.steps == 12
    norms = [r["norm_loss"] for r in records(tmp_path / "straight", "train")]
    assert len(norms) == 3 and all(v > 0 for v in norms)
    assert records(tmp_path / "straight", "weights") == []  # no importance weights, no weight records

    with pytest.raises(TrainingInterrupted):
        train(config, tmp_path / "resumed", callbacks=[AtIteration(6, lambda: os.kill(os.getpid(), signal.SIGTERM))])
    resumed = train(config, tmp_path / "resumed", resume=True)
    assert resumed.method.steps == 12  # 6 before the stop, restored from the checkpoint, then 6 more


def test_the_uniform_method_is_mckds_distillation_with_every_ratio_one():
    torch.manual_seed(0)
    features = torch.randn(5, 3, 4)
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    method = UniformCKD(UniformCKDOptions(alpha=0.3, p=2), ["a", "b", "c"], seed=0)
    terms = method.loss_terms(ModelOutput(prediction=torch.zeros(5, 2), features=features, levels=[features]), present)
    assert list(terms) == ["ckd"] and terms["ckd"].weight == 0.3
    torch.testing.assert_close(terms["ckd"].value, ckd_by_loops(features, present, torch.ones(3), p=2))


def test_every_loss_term_of_a_method_is_logged(digits_csv_dir, tmp_path):
    train(digits("shaspec"), tmp_path / "shaspec")
    rows = records(tmp_path / "shaspec", "train")
    assert all(r["align_loss"] > 0 and r["domain_loss"] > 0 and r["task_loss"] > 0 for r in rows)
    train(digits("lckd", "method.teacher_every=6"), tmp_path / "lckd")
    assert all(r["ckd_loss"] > 0 for r in records(tmp_path / "lckd", "train"))
    assert [r["iteration"] for r in records(tmp_path / "lckd", "teacher")] == [0, 6, 12]


def test_a_method_returning_a_term_it_did_not_declare_is_a_clear_error(outside_method, digits_csv_dir, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(FeatureNorm, "loss_term_names", lambda self: ())
    with pytest.raises(MckdError, match=r"training_step logged \['norm'\], which the method does not declare \(it declares \['task'\]"):
        train(digits("feature_norm"), tmp_path)
