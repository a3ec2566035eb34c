"""Summary rows no modality can be named like, and plots whose titles say what their tables say."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mckd import report
from mckd.data.bundle import check_modality_names
from mckd.errors import DataError
from mckd.evaluation import OBSERVED
from mckd.experiment import test_sentence as sentence_of
from mckd.report import compare_tables, is_summary, plot_subset_comparison


def subset_rows(values: dict[str, float]) -> list[dict]:
    return [{"subset": name, "size": name.count("+") + 1, "accuracy": value} for name, value in values.items()]


def drawn_title(monkeypatch, rows, tmp_path, name_a="a", name_b="b") -> str:
    """The suptitle of the comparison figure of ``rows``, as drawn."""
    titles = []
    monkeypatch.setattr(report, "_save_figure", lambda fig, out: titles.append(fig._suptitle.get_text()))
    plot_subset_comparison(rows, name_a, name_b, "accuracy", tmp_path / "comparison.png")
    return titles[0]


def test_a_modality_named_mean_is_compared_and_drawn_like_any_other(monkeypatch, tmp_path):
    a = {"mean": 0.90, "x": 0.80, "mean+x": 0.95, "y": 0.60, "mean+y": 0.91, "x+y": 0.85, "mean+x+y": 0.97}
    b = {"mean": 0.92, "x": 0.79, "mean+x": 0.93, "y": 0.60, "mean+y": 0.90, "x+y": 0.84, "mean+x+y": 0.96}
    rows, summary = compare_tables(subset_rows(a), subset_rows(b), "accuracy", "a", "b")
    differences = np.array([a[k] - b[k] for k in a])
    assert summary["rows"] == 7 and summary["wins"] == int((differences > 0).sum()) == 5
    assert summary["losses"] == int((differences < 0).sum()) == 1  # the modality `mean` is one of them
    assert summary["difference"] == pytest.approx(differences.mean())
    assert [r["subset"] for r in rows if is_summary(r["subset"])] == ["mean, over subsets"]
    title = drawn_title(monkeypatch, rows, tmp_path)
    better, worse, mean = re.search(r"\((\d+) better, (\d+) worse, mean ([+-]\d\.\d{4})\)", title).groups()
    table_mean = next(r for r in rows if r["subset"] == "mean, over subsets")["difference"]
    assert (int(better), int(worse)) == (summary["wins"], summary["losses"])
    assert float(mean) == pytest.approx(table_mean, abs=5e-5) and "over 7 subsets" in title
    assert f"better on {better}, worse on {worse}" in sentence_of(summary, "a", "b")


def test_observed_rows_keep_the_overall_row_apart_and_weigh_patterns_by_samples(monkeypatch, tmp_path):
    def rows(overall: float, values: dict[str, float]) -> list[dict]:
        samples = {"all": 79, "mean": 2, "all+mean": 19}  # modalities named `all` and `mean`
        return [{"pattern": OBSERVED, "size": "", "samples": 100, "accuracy": overall},
                *({"pattern": k, "size": k.count("+") + 1, "samples": samples[k], "accuracy": v}
                  for k, v in values.items())]

    a, b = {"all": 0.80, "mean": 1.0, "all+mean": 0.90}, {"all": 0.82, "mean": 0.5, "all+mean": 0.90}
    table, summary = compare_tables(rows(0.83, a), rows(0.84, b), "accuracy", "a", "b")
    by_name = {r["pattern"]: r for r in table}
    assert summary["rows"] == 3 and summary["kind"] == "patterns"  # the overall row is not a fourth pattern
    assert by_name["mean, unweighted"]["difference"] == pytest.approx((-0.02 + 0.5 + 0.0) / 3)
    assert by_name["mean, weighted by samples"]["difference"] == pytest.approx((79 * -0.02 + 2 * 0.5) / 100)
    assert by_name[OBSERVED]["difference"] == pytest.approx(-0.01) and by_name["mean"]["difference"] == 0.5
    sentence = sentence_of(summary, "a", "b")
    assert "Mean over 3 patterns, unweighted" in sentence and "weighted by test samples" in sentence
    title = drawn_title(monkeypatch, table, tmp_path)
    assert "per pattern" in title and "over 3 patterns" in title and "(1 better, 1 worse, mean, unweighted" in title


def test_no_modality_can_take_a_summary_row_name():
    for name in (OBSERVED, "mean, over subsets", "mean, weighted by samples", "mean, unweighted"):
        assert is_summary(name)
        with pytest.raises(DataError, match="holds ','"):
            check_modality_names([name], "the data's modalities")
    check_modality_names(["all", "mean"], "the data's modalities")  # plain words stay modality names


def test_rows_over_few_samples_are_marked_in_tables_and_plots(monkeypatch, tmp_path):
    from mckd.report import FEW_SAMPLES, write_table

    def rows(values):
        samples = {"a": FEW_SAMPLES - 1, "b": FEW_SAMPLES, "a+b": 2 * FEW_SAMPLES}
        return [{"pattern": k, "size": k.count("+") + 1, "samples": samples[k], "accuracy": v} for k, v in values.items()]

    table, _ = compare_tables(rows({"a": 1.0, "b": 0.8, "a+b": 0.9}), rows({"a": 0.9, "b": 0.8, "a+b": 0.95}),
                              "accuracy", "x", "y")
    write_table(table, tmp_path / "comparison")
    text = (tmp_path / "comparison.md").read_text()
    assert f"| {FEW_SAMPLES - 1} (few) |" in text and f"| {FEW_SAMPLES} |" in text and f"fewer than {FEW_SAMPLES}" in text
    drawn = []
    monkeypatch.setattr(report, "_save_figure",
                        lambda fig, out: drawn.append([t.get_text() for t in fig.axes[0].get_yticklabels()]))
    plot_subset_comparison(table, "x", "y", "accuracy", tmp_path / "comparison.png")
    assert sorted(drawn[0]) == sorted([f"a (n={FEW_SAMPLES - 1}, few)", "b", "a+b"])


def test_a_single_modality_ranking_over_different_samples_says_so(tmp_path):
    from mckd.experiment import write_summary

    def table(values):
        samples = {"a": 40, "b": 25, "a+b": 10}
        return [{"subset": k, "size": k.count("+") + 1, "samples": samples[k], "accuracy": v} for k, v in values.items()]

    tables = {"mckd": table({"a": 0.9, "b": 0.7, "a+b": 0.95}), "baseline": table({"a": 0.85, "b": 0.72, "a+b": 0.9})}
    _, summary = compare_tables(tables["mckd"], tables["baseline"], "accuracy", "mckd", "baseline")
    text = write_summary(tmp_path, "c.yaml", ["mckd", "baseline"], [0], tables, {"baseline": summary}, {}, "accuracy")
    assert "a 0.900 (n=40), b 0.700 (n=25)" in text and "compares different samples" in text


def test_single_modalities_are_ranked_on_the_samples_that_have_every_modality_when_there_are_some(tmp_path):
    from mckd.experiment import write_summary
    from mckd.report import method_comparison, write_table
    from mckd.rundir import RunDir

    def table(values):
        samples = {"a": 40, "b": 25, "a+b": 10}
        return [{"subset": k, "size": k.count("+") + 1, "samples": samples[k], "accuracy": v} for k, v in values.items()]

    tables = {"mckd": table({"a": 0.9, "b": 0.7, "a+b": 0.95}), "baseline": table({"a": 0.85, "b": 0.72, "a+b": 0.9})}
    # on the 10 samples with both, b alone does better than a alone: the other order from the rows above
    common = [{"subset": "a", "size": 1, "samples": 10, "accuracy": 0.6},
              {"subset": "b", "size": 1, "samples": 10, "accuracy": 0.8}]
    write_table(common, RunDir(tmp_path / "mckd").aggregate_singles)
    ranked = sorted(common, key=lambda r: -r["accuracy"])
    _, summary = compare_tables(tables["mckd"], tables["baseline"], "accuracy", "mckd", "baseline")
    text = write_summary(tmp_path, "c.yaml", ["mckd", "baseline"], [0], tables, {"baseline": summary}, {}, "accuracy")
    listed = ", ".join(f"{r['subset']} {r['accuracy']:.3f}" for r in ranked)
    assert f"{listed}, each scored on the same {tables['mckd'][-1]['samples']} test samples" in text
    assert "different samples" not in text
    assert method_comparison(tables, "accuracy", "mckd", common=common)[2] == ranked[0]["subset"]
