"""Missing-modality policies for training: random subsets, availability rates, a fixed subset."""

from __future__ import annotations

import pytest
import torch

from mckd.data.missing import availability_mask, fixed_subset, random_subset, subset_mask
from mckd.errors import ConfigError, DataError


def test_random_subset_keeps_a_non_empty_part_of_what_each_sample_has():
    generator = torch.Generator().manual_seed(0)
    present = torch.rand(2000, 5, generator=generator) < 0.6
    present[:, 2] |= ~present.any(dim=1)
    kept = random_subset(present, generator)
    assert kept.dtype == torch.bool and kept.shape == present.shape
    assert not bool((kept & ~present).any())  # never invents a modality
    assert bool(kept.any(dim=1).all())  # never empty


def test_random_subset_keeps_k_uniform_on_1_to_K_and_each_modality_equally_often():
    generator = torch.Generator().manual_seed(1)
    samples = 40_000
    present = torch.ones(samples, 4, dtype=torch.bool)
    kept = random_subset(present, generator)
    sizes = torch.bincount(kept.sum(dim=1), minlength=5)[1:].float() / samples
    torch.testing.assert_close(sizes, torch.full((4,), 0.25), atol=0.01, rtol=0)
    # E[kept per modality] = E[k] / 4 = 2.5 / 4
    torch.testing.assert_close(kept.float().mean(dim=0), torch.full((4,), 0.625), atol=0.01, rtol=0)
    # the full set is drawn a quarter of the time (k = 4), each single modality 1/16
    single = kept[kept.sum(dim=1) == 1].float().mean(dim=0)
    torch.testing.assert_close(single, torch.full((4,), 0.25), atol=0.02, rtol=0)


def test_random_subset_draws_k_from_what_the_sample_has():
    generator = torch.Generator().manual_seed(2)
    present = torch.tensor([[True, False, True, False]]).repeat(30_000, 1)  # K = 2
    kept = random_subset(present, generator)
    sizes = torch.bincount(kept.sum(dim=1), minlength=3).float() / len(kept)
    torch.testing.assert_close(sizes, torch.tensor([0.0, 0.5, 0.5]), atol=0.015, rtol=0)
    one = torch.tensor([[False, True, False]]).repeat(10, 1)
    assert torch.equal(random_subset(one, generator), one)


def test_random_subset_is_reproducible_with_a_seeded_generator():
    present = torch.ones(50, 6, dtype=torch.bool)
    a = random_subset(present, torch.Generator().manual_seed(5))
    b = random_subset(present, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_random_subset_refuses_an_empty_sample():
    with pytest.raises(DataError, match="no modality"):
        random_subset(torch.tensor([[True, False], [False, False]]))


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.15, 0.2])
def test_availability_mask_gives_exact_counts_per_modality(rate):
    mask = availability_mask(1500, ["image", "audio"], {"audio": rate}, seed=3)
    assert mask.shape == (1500, 2)
    assert int(mask[:, 0].sum()) == 1500  # not named: rate 1
    assert int(mask[:, 1].sum()) == round(rate * 1500)


def test_availability_mask_never_leaves_a_sample_empty_and_is_seeded():
    rates = {"a": 0.3, "b": 0.5, "c": 0.2}
    mask = availability_mask(1000, ["a", "b", "c"], rates, seed=4)
    assert bool(mask.any(dim=1).all())
    assert int(mask[:, 0].sum()) == 300 and int(mask[:, 2].sum()) == 200
    assert int(mask[:, 1].sum()) >= 500  # emptied samples get back the highest-rate modality
    assert torch.equal(mask, availability_mask(1000, ["a", "b", "c"], rates, seed=4))
    assert not torch.equal(mask, availability_mask(1000, ["a", "b", "c"], rates, seed=5))


def test_availability_mask_refuses_unknown_names_and_rates_outside_0_1():
    with pytest.raises(ConfigError, match="audoi"):
        availability_mask(10, ["image", "audio"], {"audoi": 0.1}, seed=0)
    with pytest.raises(ConfigError, match=r"missing.rates.audio must be in \[0, 1\]"):
        availability_mask(10, ["image", "audio"], {"audio": 1.5}, seed=0)


def test_fixed_subset_keeps_exactly_the_named_modalities():
    keep = subset_mask(["flair", "t1", "t1ce", "t2"], ["t1ce", "flair"])
    assert keep.tolist() == [True, False, True, False]
    present = torch.ones(3, 4, dtype=torch.bool)
    present[1, 0] = False
    kept = fixed_subset(present, keep)
    assert kept.tolist() == [[True, False, True, False], [False, False, True, False], [True, False, True, False]]


def test_fixed_subset_refuses_unknown_names_and_samples_left_empty():
    with pytest.raises(ConfigError, match="t3"):
        subset_mask(["t1", "t2"], ["t3"])
    with pytest.raises(DataError, match="none of the kept"):
        fixed_subset(torch.tensor([[False, True]]), torch.tensor([True, False]))
