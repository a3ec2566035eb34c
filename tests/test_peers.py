"""Peer methods in the same framework: each one's defining property on tiny tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save
from torch import nn
from torch.nn import functional as F

from mckd.config import config_from_dict, load_raw
from mckd.data.bundle import MultiModalTensorDataset
from mckd.evaluation import evaluate_subsets
from mckd.experiment import method_config
from mckd.method import MethodServices
from mckd.method.lckd import LCKD, LCKDOptions, elect_teacher, teacher_distillation_loss
from mckd.method.fusion import fused_channels, hemis_fusion
from mckd.method.model import MultiModalModel, model_spec
from mckd.method.shaspec import ShaSpecModel, domain_classification_loss, shared_alignment_loss, shared_specific_model
from mckd.tasks.classification import ClassificationTask

PRESENT = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)  # (B=4, N=3)


# --- zero filling ------------------------------------------------------------------------------------


def test_zero_fill_preset_is_zero_features_without_distillation():
    raw = load_raw(Path(__file__).resolve().parents[1] / "configs" / "multiview_digits.yaml")
    config = config_from_dict(method_config(raw, "zero_fill"))
    assert (config.method.name, config.model.fill) == ("mckd", "zero")
    assert (config.method.options.alpha, config.method.options.meta) == (0.0, False)


# --- HeMIS ---------------------------------------------------------------------------------------------


def test_hemis_fusion_is_mean_and_variance_over_present_modalities_only():
    torch.manual_seed(0)
    features = torch.randn(4, 3, 5)  # (B, N, C)
    fused = hemis_fusion(features, PRESENT)
    for b in range(4):
        kept = features[b][PRESENT[b]]  # (K, C)
        expected = torch.cat([kept.mean(dim=0), kept.var(dim=0, unbiased=False)])
        assert torch.allclose(fused[b], expected, atol=1e-6)
    garbage = features.clone()
    garbage[~PRESENT] = 1e3  # what the missing entries hold must not matter
    assert torch.allclose(hemis_fusion(garbage, PRESENT), fused)
    assert torch.all(fused[2:, 5:] == 0)  # one modality present: zero variance


def test_hemis_fusion_keeps_spatial_dimensions_and_sizes_the_decoder():
    features = torch.randn(4, 3, 2, 6, 6)  # (B, N, C, H, W)
    assert hemis_fusion(features, PRESENT).shape == (4, 4, 6, 6)
    assert fused_channels("hemis", 3, 2) == 4 and fused_channels("concat", 3, 2) == 6
    encoders = {m: nn.Linear(d, 8) for m, d in zip("abc", (2, 3, 4))}
    model = MultiModalModel(list("abc"), encoders, nn.Linear(fused_channels("hemis", 3, 8), 5), fusion="hemis")
    out = model([torch.randn(4, 2), torch.randn(4, 3), torch.randn(4, 4)], PRESENT)
    assert out.prediction.shape == (4, 5)


# --- LCKD ----------------------------------------------------------------------------------------------


def test_teacher_distillation_is_unweighted_l1_from_the_teacher_to_present_students():
    torch.manual_seed(0)
    features = torch.randn(4, 3, 6, requires_grad=True)
    loss = teacher_distillation_loss(features, PRESENT, teacher=2)
    expected = 0.0
    for b in range(4):
        for j in range(3):
            if j != 2 and PRESENT[b, 2] and PRESENT[b, j]:
                expected += (features[b, 2] - features[b, j]).abs().mean().item()
    assert loss.item() == pytest.approx(expected / 4, rel=1e-6)
    loss.backward()
    assert torch.all(features.grad[:, 2] == 0)  # the teacher side is detached
    assert torch.all(features.grad[2] == 0)  # sample 2 lacks the teacher


def test_elect_teacher_takes_the_best_score_and_the_first_on_ties():
    assert elect_teacher([0.2, 0.9, 0.5]) == 1
    assert elect_teacher([0.7, 0.7, 0.1]) == 0
    assert elect_teacher([3.0, 1.0, 2.0], higher_is_better=False) == 1


def test_lckd_elects_the_modality_that_scores_best_alone_on_validation():
    torch.manual_seed(0)
    x = torch.randn(64, 1)
    target = (x[:, 0] > 0).long()
    val = MultiModalTensorDataset([torch.randn(64, 1), x, torch.randn(64, 1)], target)
    encoders = {m: nn.Linear(1, 1) for m in "abc"}
    with torch.no_grad():
        for m in "abc":  # only b's encoder sees its input; a and c give a constant
            encoders[m].weight.fill_(1.0 if m == "b" else 0.0)
            encoders[m].bias.zero_()
        decoder = nn.Linear(3, 2)
        decoder.weight.copy_(torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
        decoder.bias.zero_()
    model = MultiModalModel(list("abc"), encoders, decoder)
    task = ClassificationTask(2)

    def score_each_modality() -> list[float]:  # what the training loop lends the method
        rows = evaluate_subsets(model, task, val, 32, torch.device("cpu"), subsets=[(m,) for m in "abc"])
        return [row["accuracy"] for row in rows]

    records = []
    method = LCKD(LCKDOptions(), list("abc"), seed=0)
    method.setup(MethodServices(task_loss=task.loss, score_each_modality=score_each_modality, record=records.append))
    assert method.teacher == 1 and records[-1]["teacher"] == "b"
    assert records[-1]["scores"]["b"] == 1.0


# --- ShaSpec ---------------------------------------------------------------------------------------------


def test_shared_alignment_is_l1_over_pairs_of_present_modalities():
    torch.manual_seed(0)
    shared = torch.randn(4, 3, 5)
    expected = sum((shared[b, i] - shared[b, j]).abs().mean().item()
                   for b in range(4) for i in range(3) for j in range(i + 1, 3) if PRESENT[b, i] and PRESENT[b, j])
    assert shared_alignment_loss(shared, PRESENT).item() == pytest.approx(expected / 4, rel=1e-6)


def test_domain_loss_is_cross_entropy_of_the_modality_label_over_present_pairs():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 3)
    pairs = [(b, n) for b in range(4) for n in range(3) if PRESENT[b, n]]
    expected = torch.stack([F.cross_entropy(logits[b, n].unsqueeze(0), torch.tensor([n])) for b, n in pairs]).mean()
    assert domain_classification_loss(logits, PRESENT).item() == pytest.approx(expected.item(), rel=1e-6)


def tiny_shaspec() -> tuple[ShaSpecModel, list[torch.Tensor]]:
    torch.manual_seed(0)
    sizes = (2, 3, 4)
    encoders = {m: nn.Sequential(nn.Linear(d, 6), nn.ReLU()) for m, d in zip("abc", sizes)}
    base = MultiModalModel(list("abc"), encoders, nn.Linear(18, 5))
    spec = model_spec(base, {m: (d,) for m, d in zip("abc", sizes)})
    return shared_specific_model(base, spec), [torch.randn(4, d) for d in sizes]


def test_shaspec_fills_a_missing_modality_with_the_mean_of_present_shared_features():
    model, inputs = tiny_shaspec()
    model.eval()
    seen = {}
    model.decoder.register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    out = model(inputs, PRESENT)
    decoder_input = seen["x"].reshape(4, 3, 6)  # concat fusion: (B, N*C) -> (B, N, C)
    shared = out.extras["shared"]
    for b in range(4):
        mean_shared = shared[b][PRESENT[b]].mean(dim=0)
        for n in range(3):
            if PRESENT[b, n]:
                assert torch.allclose(decoder_input[b, n], out.features[b, n])
            else:
                assert torch.allclose(decoder_input[b, n], mean_shared, atol=1e-6)
                assert torch.all(out.features[b, n] == 0)
    assert out.extras["domain_logits"].shape == (4, 3, 3)


def test_shaspec_losses_reach_the_right_encoders():
    model, inputs = tiny_shaspec()
    out = model(inputs, PRESENT)
    shared_alignment_loss(out.extras["shared"], PRESENT).backward(retain_graph=True)
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.encoders.parameters())  # specific: untouched
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shared_heads.parameters())
    model.zero_grad()
    domain_classification_loss(out.extras["domain_logits"], PRESENT).backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.shared_stems.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders.parameters())


def test_shaspec_model_saves_as_tensors_and_reloads():
    model, inputs = tiny_shaspec()
    blob = save({k: v.contiguous() for k, v in model.state_dict().items()})  # safetensors refuses shared tensors
    again, _ = tiny_shaspec()
    again.load_state_dict(load(blob))
    model.eval(), again.eval()
    assert torch.equal(model(inputs, PRESENT).prediction, again(inputs, PRESENT).prediction)
