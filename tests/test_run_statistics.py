"""Statistics over a few runs (data draws x training seeds): bootstrap intervals, sign-flip tests, too few runs."""

from __future__ import annotations

import itertools
import sys

import numpy as np
import pytest

from conftest import ROOT
from mckd.report import MIN_RUNS_TO_TELL, bootstrap_mean_interval, paired_runs, run_cell, sign_flip_p


def test_an_accuracy_interval_never_leaves_the_range_of_the_runs():
    for values in ([100.0, 100.0, 99.0], [0.0, 0.0, 3.0], [91.0, 97.5], [50.0]):
        mean, low, high = bootstrap_mean_interval(values)
        assert min(values) <= low <= mean <= high <= max(values)
        assert 0 <= low and high <= 100
    assert bootstrap_mean_interval([93.0]) == (93.0, 93.0, 93.0)


def test_two_runs_give_an_interval_inside_the_pair_where_t_with_one_degree_of_freedom_runs_past_100():
    values = [99.0, 93.0]
    from scipy import stats

    half = stats.t.ppf(0.975, 1) * np.std(values, ddof=1) / np.sqrt(2)
    assert np.mean(values) + half > 100  # the interval the benchmark used to print
    _, low, high = bootstrap_mean_interval(values)
    assert 93.0 <= low and high <= 99.0


def test_the_bootstrap_interval_is_the_percentiles_of_resampled_means_computed_another_way():
    values = [1.0, 4.0, 2.0, 8.0]
    rng = np.random.default_rng(0)
    means = np.array([rng.choice(values, 4).mean() for _ in range(20_000)])
    _, low, high = bootstrap_mean_interval(values, resamples=20_000, seed=1)
    assert abs(low - np.percentile(means, 2.5)) < 0.2 and abs(high - np.percentile(means, 97.5)) < 0.2


def test_strata_are_resampled_within_and_their_means_averaged():
    values, strata = [1.0, 1.0, 1.0, 10.0], ["a", "a", "a", "b"]
    mean, low, high = bootstrap_mean_interval(values, strata)
    assert mean == 5.5 and low == high == 5.5  # one value per stratum varies nothing


def test_the_sign_flip_p_is_the_share_of_sign_patterns_at_least_as_extreme():
    differences = [1.0, 2.0, -0.5, 3.0]
    observed = np.mean(differences)
    patterns = [np.mean([s * d for s, d in zip(signs, differences)]) for signs in itertools.product([1, -1], repeat=4)]
    assert sign_flip_p(differences, "greater") == pytest.approx(np.mean([m >= observed - 1e-12 for m in patterns]))
    assert sign_flip_p(differences, "two-sided") == pytest.approx(np.mean([abs(m) >= observed - 1e-12 for m in patterns]))
    assert sign_flip_p([1.0] * 5, "two-sided") == pytest.approx(2 / 32)  # the smallest p five runs can give
    assert sign_flip_p([1.0] * 6, "two-sided") == pytest.approx(2 / 64) and 2 / 64 < 0.05


def test_a_cell_with_fewer_than_six_paired_runs_is_too_few_to_tell_models_apart():
    assert MIN_RUNS_TO_TELL == 6
    assert paired_runs([1.0, 2.0, 1.5, 2.5, 1.2])["too_few"]
    enough = paired_runs([1.0, 2.0, 1.5, 2.5, 1.2, 0.8])
    assert not enough["too_few"] and enough["p_two"] < 0.05 and enough["low"] > 0
    assert run_cell([]) == {"mean": None, "low": None, "high": None, "runs": 0}


def test_the_table2_benchmark_pools_every_rate_into_one_comparison_per_row():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import avmnist_table

    a = {5: {(0, 0): 94.0, (0, 1): 95.0}, 10: {(0, 0): 90.0}, 20: {(0, 0): 93.0, (0, 1): 96.0}}
    b = {5: {(0, 0): 93.0, (0, 1): 94.5}, 10: {}, 20: {(0, 0): 93.5, (0, 1): 94.0}}  # r = 10%: b not run
    pooled = avmnist_table.paired_over_rates(a, b)
    assert pooled["pairs"] == 4 and pooled["difference"] == pytest.approx(np.mean([1.0, 0.5, -0.5, 2.0]))
    assert pooled["too_few"] and pooled["rates"] == [5, 20]
    sentence = avmnist_table.verdict("MCKD", pooled)
    assert sentence.startswith("too few runs to tell from MCKD (+0.75") and "r = 5, 20%" in sentence
    disagreeing = {"difference": -2.0, "low": -3.0, "high": -1.0, "p_two": 0.062, "too_few": False, "pairs": 8}
    assert avmnist_table.verdict("MCKD", disagreeing).startswith(
        "not distinguishable from MCKD by the sign-flip test, though the interval is behind it (-2.00")
    lower = {(0, 0): 93.0, (0, 1): 94.0, (1, 0): 95.0}  # LowerB: one run per draw and seed, the same at every r
    against_lower = avmnist_table.paired_over_rates(a, {5: lower, 10: lower, 20: lower}, b_per_rate=False)
    assert against_lower["pairs"] == 2  # (0, 0) and (0, 1), each counted once whatever the rates
    assert against_lower["difference"] == pytest.approx(np.mean([np.mean([1.0, -3.0, 0.0]), np.mean([1.0, 2.0])]))
    cell = avmnist_table.summarise({(0, 0): 99.0, (1, 0): 93.0})
    assert cell["runs"] == 2 and cell["high"] <= 100
