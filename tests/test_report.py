"""Comparisons (paired t-test), seed aggregation, tables and plots."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
from scipy import stats

from mckd.errors import MckdError
from mckd.report import (
    aggregate_seeds,
    compare_tables,
    markdown_table,
    plot_subset_comparison,
    plot_weights,
    read_table,
    read_weight_history,
    write_table,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _table(values: list[float], names: list[str] | None = None) -> list[dict]:
    names = names or [f"s{i}" for i in range(len(values))]
    return [{"subset": n, "size": 1 + i % 2, "accuracy": v} for i, (n, v) in enumerate(zip(names, values))]


def test_compare_tables_gives_per_subset_differences_and_a_mean_row():
    a = _table([0.9, 0.8, 0.7])
    b = _table([0.85, 0.82, 0.6])
    rows, summary = compare_tables(a, b, "accuracy", "mckd", "baseline")
    assert [r["subset"] for r in rows] == ["s0", "s1", "s2", "mean, over subsets"]
    assert [r["difference"] for r in rows[:3]] == pytest.approx([0.05, -0.02, 0.1])
    assert rows[3]["mckd"] == pytest.approx(0.8) and rows[3]["baseline"] == pytest.approx(0.7566667, rel=1e-6)
    assert summary["difference"] == pytest.approx((0.05 - 0.02 + 0.1) / 3)
    assert (summary["wins"], summary["losses"], summary["rows"]) == (2, 1, 3)


def test_compare_tables_one_tailed_paired_t_test_matches_the_formula():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.9, size=63)
    a, b = base + rng.normal(0.004, 0.01, size=63), base
    rows, summary = compare_tables(_table(list(a)), _table(list(b)), "accuracy", "mckd", "baseline")
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    p = stats.t.sf(t, df=len(d) - 1)  # one tailed: mckd > baseline
    assert summary["t"] == pytest.approx(t, rel=1e-9)
    assert summary["p_one_tailed"] == pytest.approx(p, rel=1e-9)
    # the other way round, the same t with the opposite sign, and p = 1 - p
    _, reverse = compare_tables(_table(list(b)), _table(list(a)), "accuracy", "baseline", "mckd")
    assert reverse["t"] == pytest.approx(-t, rel=1e-9)
    assert reverse["p_one_tailed"] == pytest.approx(1 - p, rel=1e-9)


def test_compare_tables_pairs_rows_by_subset_name_not_by_position():
    a = _table([0.9, 0.5], ["fou", "mor"])
    b = list(reversed(_table([0.8, 0.3], ["fou", "mor"])))
    rows, _ = compare_tables(a, b, "accuracy", "x", "y")
    assert {r["subset"]: r["difference"] for r in rows[:2]} == pytest.approx({"fou": 0.1, "mor": 0.2})


def test_compare_tables_of_identical_runs_has_no_test_and_no_nan():
    rows, summary = compare_tables(_table([0.5, 0.6]), _table([0.5, 0.6]), "accuracy", "x", "y")
    assert summary["t"] is None and summary["p_one_tailed"] is None
    assert summary["difference"] == 0.0


def test_compare_tables_lists_rows_without_samples_but_tests_only_the_others():
    a, b = _table([0.5, 0.6, 0.9]), _table([0.4, 0.4, 0.1])
    a[2]["accuracy"] = None  # no test sample had that subset
    rows, summary = compare_tables(a, b, "accuracy", "x", "y")
    assert summary["rows"] == 2 and summary["difference"] == pytest.approx(0.15)
    assert rows[2]["difference"] is None and rows[-1]["subset"] == "mean, over subsets"


def test_compare_tables_refuses_runs_evaluated_on_different_subsets():
    with pytest.raises(MckdError, match="different subsets"):
        compare_tables(_table([0.5, 0.6], ["a", "b"]), _table([0.5, 0.6], ["a", "c"]), "accuracy", "x", "y")


def test_aggregate_seeds_gives_mean_and_sample_standard_deviation_per_subset():
    seeds = [[0.90, 0.50], [0.80, 0.55], [0.85, 0.65]]
    tables = [_table(values, ["fac", "mor"]) for values in seeds]
    rows = aggregate_seeds(tables, ["accuracy"])
    for k, name in enumerate(["fac", "mor"]):
        column = [s[k] for s in seeds]
        assert rows[k]["subset"] == name and rows[k]["seeds"] == 3
        assert rows[k]["accuracy"] == pytest.approx(statistics.mean(column))
        assert rows[k]["accuracy_std"] == pytest.approx(statistics.stdev(column))


def test_aggregate_seeds_of_one_seed_has_zero_std_and_refuses_mismatched_tables():
    rows = aggregate_seeds([_table([0.7])], ["accuracy"])
    assert rows[0]["accuracy_std"] == 0.0
    with pytest.raises(MckdError, match="different subsets"):
        aggregate_seeds([_table([0.7], ["a"]), _table([0.7], ["b"])], ["accuracy"])


def test_compare_carries_the_standard_deviations_of_aggregated_tables():
    a = aggregate_seeds([_table([0.9]), _table([0.8])], ["accuracy"])
    b = aggregate_seeds([_table([0.7]), _table([0.7])], ["accuracy"])
    rows, _ = compare_tables(a, b, "accuracy", "mckd", "baseline")
    assert rows[0]["mckd_std"] == pytest.approx(statistics.stdev([0.9, 0.8]))
    assert rows[0]["baseline_std"] == 0.0


def test_tables_round_trip_through_csv_and_render_as_markdown(tmp_path):
    rows = _table([0.91234567, 0.5], ["fac+pix", "mor"])
    write_table(rows, tmp_path / "t" / "subsets", title="a title", notes="a note")
    assert read_table(tmp_path / "t" / "subsets.csv") == [
        {"subset": "fac+pix", "size": 1.0, "accuracy": 0.91234567},
        {"subset": "mor", "size": 2.0, "accuracy": 0.5},
    ]
    markdown = (tmp_path / "t" / "subsets.md").read_text()
    assert markdown.startswith("# a title")
    assert "| fac+pix | 1 | 0.9123 |" in markdown and "a note" in markdown
    assert markdown_table([]) == "(no rows)\n"
    with pytest.raises(MckdError, match="evaluate the run first"):
        read_table(tmp_path / "missing.csv")


def _metrics(path, values):
    with path.open("w") as stream:
        for i, (a, b) in enumerate(values):
            stream.write(json.dumps({"iteration": i * 10, "kind": "weights", "weights": {"fac": a, "mor": b}}) + "\n")
            stream.write(json.dumps({"iteration": i * 10, "kind": "train", "task_loss": 1.0}) + "\n")


def test_weight_history_and_plots_are_written_as_png(tmp_path):
    _metrics(tmp_path / "a.jsonl", [(0.5, 0.5), (0.6, 0.4), (0.7, 0.3)])
    _metrics(tmp_path / "b.jsonl", [(0.5, 0.5), (0.55, 0.45), (0.8, 0.2)])
    iterations, history = read_weight_history(tmp_path / "a.jsonl")
    assert iterations == [0, 10, 20] and history == {"fac": [0.5, 0.6, 0.7], "mor": [0.5, 0.4, 0.3]}
    plot_weights([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path / "weights.png")
    rows, _ = compare_tables(_table([0.9, 0.6]), _table([0.8, 0.7]), "accuracy", "mckd", "baseline")
    plot_subset_comparison(rows, "mckd", "baseline", "accuracy", tmp_path / "compare.png")
    for name in ("weights.png", "compare.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def test_a_distance_is_better_when_smaller_in_wins_losses_and_the_test():
    from mckd.report import compare_tables

    subsets = ["a", "b", "a+b"]
    a = [{"subset": s, "size": 1, "dice_et": d, "hd95_et": h} for s, d, h in zip(subsets, (0.6, 0.7, 0.8), (10.0, 12.0, 8.0))]
    b = [{"subset": s, "size": 1, "dice_et": d, "hd95_et": h} for s, d, h in zip(subsets, (0.5, 0.6, 0.9), (20.0, 30.0, 9.0))]
    _, dice = compare_tables(a, b, "dice_et", "A", "B")
    _, hd = compare_tables(a, b, "hd95_et", "A", "B")
    assert (dice["wins"], dice["losses"], dice["higher_is_better"]) == (2, 1, True)
    assert (hd["wins"], hd["losses"], hd["higher_is_better"]) == (3, 0, False)  # A's distances are all smaller
    assert hd["difference"] == pytest.approx(np.mean([10 - 20, 12 - 30, 8 - 9]))  # the difference stays A - B
    assert hd["t"] > 0 and hd["p_one_tailed"] < 0.5  # the test asks whether A is better: smaller
