"""Fuzzing presence masks through the method: every mask either works or fails with the product's error.

Random numbers of samples and modalities, random feature shapes, and random
masks that include the all-present and the one-present cases. A sample that
has at least one modality must go through filling (Eq. 2), distillation
(Eq. 5) and the model (shared and per-modality encoders, both fills, both
fusions) and give finite results that match a direct computation; a sample
with no modality at all is a :class:`mckd.errors.MckdError` that says so,
never an arbitrary exception or a silent result.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from helpers import ckd_by_loops
from mckd.data.missing import availability_mask, fixed_subset, random_subset
from mckd.errors import MckdError
from mckd.method.distill import cross_modal_distillation_loss
from mckd.method.fill import fill_missing_features, zero_missing_features
from mckd.method.fusion import fused_channels
from mckd.method.model import MultiModalModel

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def masks(draw, min_batch: int = 1, max_batch: int = 6, max_modalities: int = 4, allow_empty_rows: bool = True):
    """A bool ``[B, N]`` mask: all present, one present per row, or random (rows may be empty)."""
    batch = draw(st.integers(min_batch, max_batch))
    n = draw(st.integers(1, max_modalities))
    kind = draw(st.sampled_from(["all", "one", "random"] if allow_empty_rows else ["all", "one", "random_nonempty"]))
    if kind == "all":
        return torch.ones(batch, n, dtype=torch.bool)
    if kind == "one":
        chosen = draw(st.lists(st.integers(0, n - 1), min_size=batch, max_size=batch))
        mask = torch.zeros(batch, n, dtype=torch.bool)
        mask[torch.arange(batch), torch.tensor(chosen)] = True
        return mask
    rows = draw(st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=batch, max_size=batch))
    mask = torch.tensor(rows, dtype=torch.bool).reshape(batch, n)
    if kind == "random_nonempty":
        mask[~mask.any(dim=1), 0] = True
    return mask


feature_shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


def has_empty_row(present: torch.Tensor) -> bool:
    return bool((~present.any(dim=1)).any())


@FUZZ
@given(present=masks(), shape=feature_shapes, seed=st.integers(0, 2**16))
def test_mean_fill_of_any_mask_is_the_per_sample_mean_or_a_product_error(present, shape, seed):
    features = torch.randn(*present.shape, *shape, generator=torch.Generator().manual_seed(seed))
    features[~present] = 1e6  # missing entries must not leak into the mean
    if has_empty_row(present):
        with pytest.raises(MckdError, match="no modality"):
            fill_missing_features(features, present)
        return
    filled = fill_missing_features(features, present)
    assert filled.shape == features.shape
    for b in range(present.shape[0]):
        mean = features[b][present[b]].mean(dim=0)
        for n in range(present.shape[1]):
            expected = features[b, n] if present[b, n] else mean
            torch.testing.assert_close(filled[b, n], expected)


@FUZZ
@given(present=masks(), shape=feature_shapes)
def test_zero_fill_of_any_mask_zeroes_exactly_the_missing_entries(present, shape):
    features = torch.randn(*present.shape, *shape)
    filled = zero_missing_features(features, present)
    assert torch.equal(filled[present], features[present])
    assert bool((filled[~present] == 0).all())


@FUZZ
@given(present=masks(), shape=feature_shapes, p=st.sampled_from([1, 2]), reduction=st.sampled_from(["mean", "norm"]))
def test_distillation_of_any_mask_sums_only_pairs_present_in_the_same_sample(present, shape, p, reduction):
    batch, n = present.shape
    features = torch.randn(batch, n, *shape, requires_grad=True)
    weights = torch.softmax(torch.randn(n), dim=0)
    loss = cross_modal_distillation_loss(features, present, weights, p=p, reduction=reduction)
    expected = ckd_by_loops(features.detach(), present, weights, p, reduction)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-5)
    loss.backward()  # a mask with no pair still gives a usable (zero) gradient
    assert torch.isfinite(features.grad).all()
    assert bool((features.grad[~present] == 0).all())  # missing entries receive nothing


class Affine(nn.Module):
    """A linear encoder on inputs of any shape: ``[P, *X] -> [P, F]``."""

    def __init__(self, size_in: int, size_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(size_in, size_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(start_dim=1))


def _model(n: int, shared: bool, input_sizes: list[int], feature: int, fill: str, fusion: str) -> MultiModalModel:
    names = [f"m{i}" for i in range(n)]
    encoder: nn.Module | dict[str, nn.Module]
    if shared:
        encoder = Affine(input_sizes[0], feature)
    else:
        encoder = {name: Affine(size, feature) for name, size in zip(names, input_sizes)}
    decoder = nn.Linear(fused_channels(fusion, n, feature), 3)
    return MultiModalModel(names, encoder, decoder, fill=fill, fusion=fusion)


@FUZZ
@given(
    present=masks(),
    shared=st.booleans(),
    sizes=st.lists(st.integers(1, 5), min_size=4, max_size=4),
    feature=st.integers(1, 4),
    fill=st.sampled_from(["mean", "zero"]),
    fusion=st.sampled_from(["concat", "hemis"]),
    train_mode=st.booleans(),
)
def test_the_model_runs_on_any_mask_without_reading_missing_inputs_or_fails_with_a_product_error(
    present, shared, sizes, feature, fill, fusion, train_mode
):
    batch, n = present.shape
    torch.manual_seed(0)
    model = _model(n, shared, sizes, feature, fill, fusion).train(train_mode)
    input_sizes = [sizes[0]] * n if shared else sizes[:n]
    inputs = [torch.randn(batch, size) for size in input_sizes]
    for m, x in enumerate(inputs):
        x[~present[:, m]] = float("nan")  # reading a missing input would spread NaN
    if has_empty_row(present):
        with pytest.raises(MckdError, match="no modality"):
            model(inputs, present)
        return
    output = model(inputs, present)
    assert output.prediction.shape == (batch, 3)
    assert torch.isfinite(output.prediction).all()
    assert output.features.shape == (batch, n, feature)
    assert bool((output.features[~present] == 0).all())
    # the prediction is the decoder of the filled, fused features, computed another way
    clean = [torch.nan_to_num(x) for x in inputs]
    encoders = [model.shared_encoder] * n if shared else [model.encoders[f"m{m}"] for m in range(n)]
    features = torch.stack([enc(x) for enc, x in zip(encoders, clean)], dim=1) * present.unsqueeze(-1)
    filled = fill_missing_features(features, present) if fill == "mean" else features
    if fusion == "concat":
        fused = filled.flatten(1)
    else:
        weight = present.unsqueeze(-1).float()
        count = weight.sum(dim=1)
        mean = (filled * weight).sum(dim=1) / count
        fused = torch.cat([mean, ((filled - mean.unsqueeze(1)) ** 2 * weight).sum(dim=1) / count], dim=1)
    torch.testing.assert_close(output.prediction, model.decoder(fused), rtol=1e-4, atol=1e-5)
    loss = output.prediction.sum() + cross_modal_distillation_loss(output.features, present, torch.ones(n) / n)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@FUZZ
@given(present=masks(), seed=st.integers(0, 2**16))
def test_missing_policies_keep_a_non_empty_subset_of_what_each_sample_has(present, seed):
    generator = torch.Generator().manual_seed(seed)
    if has_empty_row(present):
        with pytest.raises(MckdError):
            random_subset(present, generator)
        return
    kept = random_subset(present, generator)
    assert bool((kept <= present).all()) and bool(kept.any(dim=1).all())
    keep = present[0].clone()
    if bool((present & keep).any(dim=1).all()):
        assert torch.equal(fixed_subset(present, keep), present & keep)
    else:
        with pytest.raises(MckdError):
            fixed_subset(present, keep)


@FUZZ
@given(
    samples=st.integers(1, 40),
    rates=st.lists(st.floats(0, 1), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_availability_masks_never_leave_a_sample_empty(samples, rates, seed):
    names = [f"m{i}" for i in range(len(rates))]
    if not any(rates):  # every rate 0: no sample could have a modality; refused rather than silently reverted
        with pytest.raises(MckdError, match="without a modality"):
            availability_mask(samples, names, dict(zip(names, rates)), seed)
        return
    mask = availability_mask(samples, names, dict(zip(names, rates)), seed)
    assert mask.shape == (samples, len(names))
    assert bool(mask.any(dim=1).all())


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_availability_rates_outside_zero_one_are_a_config_error(rate):
    with pytest.raises(MckdError, match="must be in"):
        availability_mask(10, ["image", "audio"], {"audio": rate}, 0)
