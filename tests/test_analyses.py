"""The paper's analyses and the methods table, end to end on a tiny budget."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mckd.analyses import removed_modality_feature_quality
from mckd.cli import main
from mckd.method.fill import fill_missing_features
from mckd.report import method_comparison

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "multiview_digits.yaml")
TINY = ["--set", "train.iterations=6", "--set", "train.log_every=3", "--set", "train.progress=false",
        "--set", "train.device=cpu", "--set", "method.meta_every=2"]


def test_removed_modality_quality_compares_eq2_with_the_real_feature():
    torch.manual_seed(0)
    features = torch.randn(5, 4, 3)
    l1, cosine = removed_modality_feature_quality(features)
    for n in range(4):
        present = torch.ones(5, 4, dtype=torch.bool)
        present[:, n] = False
        generated = fill_missing_features(features, present)[:, n]  # Eq. 2 with n removed
        assert torch.allclose(l1[:, n], (generated - features[:, n]).abs().mean(dim=1), atol=1e-6)
        assert torch.allclose(cosine[:, n], torch.cosine_similarity(generated, features[:, n], dim=1), atol=1e-6)


def test_method_comparison_finds_the_strongest_modality_and_tests_against_the_reference():
    subsets = [("a", 1), ("b", 1), ("a+b", 2)]
    ref = [{"subset": s, "size": k, "accuracy": v} for (s, k), v in zip(subsets, (0.9, 0.5, 0.95))]
    other = [{"subset": s, "size": k, "accuracy": v} for (s, k), v in zip(subsets, (0.8, 0.3, 0.94))]
    summary, per_subset, strongest = method_comparison({"mckd": ref, "peer": other}, "accuracy", "mckd")
    assert strongest == "a"
    assert summary[1]["without a"] == pytest.approx(0.3)
    assert summary[1]["mckd - method"] == pytest.approx((0.1 + 0.2 + 0.01) / 3)
    assert 0 < float(summary[1]["p (all)"]) < 0.5
    assert [r["subset"] for r in per_subset] == ["a", "b", "a+b", "mean, all subsets", "mean, subsets without a"]
    assert per_subset[-1]["peer"] == pytest.approx(0.3)


def test_alpha_analysis_writes_a_table_and_a_plot(tmp_path):
    assert main(["analyse", "alpha", CONFIG, "--seeds", "0", "--values", "0", "0.1", "--out", str(tmp_path), *TINY]) == 0
    rows = list(csv.DictReader((tmp_path / "alpha.csv").open()))
    assert [(r["p"], r["alpha"]) for r in rows] == [("1", "0.0"), ("1", "0.1"), ("2", "0.0"), ("2", "0.1")]
    assert rows[0]["all subsets"] == rows[2]["all subsets"]  # alpha = 0 is one run for both distances
    assert (tmp_path / "alpha.png").stat().st_size > 0 and (tmp_path / "alpha.md").is_file()


def test_features_analysis_tracks_quality_over_training(tmp_path):
    assert main(["analyse", "features", CONFIG, "--seeds", "0", "--out", str(tmp_path), *TINY]) == 0
    rows = list(csv.DictReader((tmp_path / "features.csv").open()))
    assert {r["method"] for r in rows} == {"mckd", "baseline"}
    assert [int(r["iteration"]) for r in rows if r["method"] == "mckd"] == [1, 3, 6]
    assert all(-1 <= float(r["cosine"]) <= 1 and float(r["l1"]) >= 0 for r in rows)
    assert (tmp_path / "features.png").stat().st_size > 0
