"""Tables (Markdown and CSV), seed aggregation, run comparisons and plots."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from mckd.errors import MckdError
from mckd.io import atomic_write, atomic_write_text

Row = dict[str, Any]


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def markdown_table(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of ``rows`` (floats with 4 decimals)."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_format(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[Row], stem: str | Path, title: str = "", notes: str = "") -> None:
    """Write ``stem.csv`` and ``stem.md`` atomically."""
    stem = Path(stem)
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(stem.with_suffix(".csv"), buffer.getvalue())
    heading = f"# {title}\n\n" if title else ""
    atomic_write_text(stem.with_suffix(".md"), heading + markdown_table(rows) + (f"\n{notes}\n" if notes else ""))


def read_table(path: str | Path) -> list[Row]:
    """Read a CSV table written by :func:`write_table`; numbers become floats."""
    path = Path(path)
    if not path.is_file():
        raise MckdError(f"table {str(path)!r} does not exist; evaluate the run first (mckd evaluate)")
    rows = []
    try:
        with path.open(encoding="utf-8") as stream:
            for row in csv.DictReader(stream):
                parsed: Row = {}
                for key, value in row.items():
                    try:
                        parsed[key] = float(value) if key != "subset" else value
                    except (ValueError, TypeError):
                        parsed[key] = value
                rows.append(parsed)
    except (UnicodeDecodeError, csv.Error) as error:
        raise MckdError(f"table {str(path)!r} is not a readable CSV table ({error})") from None
    if not rows or "subset" not in rows[0] or "size" not in rows[0]:
        raise MckdError(f"table {str(path)!r} holds no rows with 'subset' and 'size' columns; evaluate the run again")
    return rows


def aggregate_seeds(tables: Sequence[Sequence[Row]], metrics: Sequence[str]) -> list[Row]:
    """Mean and standard deviation (ddof 1) over seeds, per subset.

    Every table must list the same subsets. Output columns: ``subset``,
    ``size``, ``<metric>`` (the mean), ``<metric>_std``, ``seeds``.
    """
    if not tables:
        raise MckdError("aggregate_seeds: no tables")
    subsets = [row["subset"] for row in tables[0]]
    for table in tables[1:]:
        if [row["subset"] for row in table] != subsets:
            raise MckdError("aggregate_seeds: the runs were evaluated on different subsets")
    out = []
    for i, subset in enumerate(subsets):
        row: Row = {"subset": subset, "size": int(tables[0][i]["size"])}
        for metric in metrics:
            values = np.array([float(t[i][metric]) for t in tables])
            row[metric] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        row["seeds"] = len(tables)
        out.append(row)
    return out


def compare_tables(a: Sequence[Row], b: Sequence[Row], metric: str, name_a: str, name_b: str) -> tuple[list[Row], Row]:
    """Per-subset difference ``a - b`` of ``metric`` and a one-tailed paired t-test across subsets.

    The test (as the paper's Table 1) asks whether ``a`` beats ``b``: the
    alternative is mean(a - b) > 0 over the subsets.

    Returns:
        (rows, summary): rows per subset with both values and the difference,
        then a ``mean`` row; summary with the means, t statistic and p-value.
    """
    by_subset = {row["subset"]: row for row in b}
    if set(by_subset) != {row["subset"] for row in a}:
        raise MckdError(f"cannot compare {name_a!r} and {name_b!r}: they were evaluated on different subsets")
    rows: list[Row] = []
    for row in a:
        other = by_subset[row["subset"]]
        try:
            value_a, value_b = float(row[metric]), float(other[metric])
        except (TypeError, ValueError):
            raise MckdError(f"subset {row['subset']!r}: {metric} is {row[metric]!r} and {other[metric]!r}; "
                            "expected numbers in both tables") from None
        entry: Row = {"subset": row["subset"], "size": int(row["size"]), name_a: value_a, name_b: value_b,
                      "difference": value_a - value_b}
        if f"{metric}_std" in row and f"{metric}_std" in other:
            entry[f"{name_a}_std"] = float(row[f"{metric}_std"])
            entry[f"{name_b}_std"] = float(other[f"{metric}_std"])
        rows.append(entry)
    values_a = np.array([r[name_a] for r in rows])
    values_b = np.array([r[name_b] for r in rows])
    if len(rows) > 1 and np.any(values_a != values_b):
        test = stats.ttest_rel(values_a, values_b, alternative="greater")
        t_stat, p_value = float(test.statistic), float(test.pvalue)
    else:
        t_stat, p_value = float("nan"), float("nan")
    summary = {
        "metric": metric,
        name_a: float(values_a.mean()),
        name_b: float(values_b.mean()),
        "difference": float((values_a - values_b).mean()),
        "t": t_stat,
        "p_one_tailed": p_value,
        "subsets": len(rows),
        "wins": int((values_a > values_b).sum()),
        "losses": int((values_a < values_b).sum()),
    }
    rows.append({"subset": "mean", "size": "", name_a: summary[name_a], name_b: summary[name_b],
                 "difference": summary["difference"]})
    return rows, summary


def read_weight_history(metrics_path: str | Path) -> tuple[list[int], dict[str, list[float]]]:
    """Iterations and normalised weights per modality from a run's ``metrics.jsonl``."""
    iterations: list[int] = []
    history: dict[str, list[float]] = {}
    with Path(metrics_path).open() as stream:
        for line in stream:
            entry = json.loads(line)
            if entry.get("kind") != "weights":
                continue
            iterations.append(int(entry["iteration"]))
            for name, value in entry["weights"].items():
                history.setdefault(name, []).append(float("nan") if value is None else float(value))
    return iterations, history


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_weights(metrics_paths: Sequence[str | Path], out: str | Path, title: str = "Importance weights") -> bool:
    """The normalised importance weights over training (the paper's Fig. 4): mean over runs, band = min..max.

    Runs without a meta step (no weights, or only their random start) get no
    plot: returns whether one was written.
    """
    histories = [read_weight_history(p) for p in metrics_paths]
    if not histories or len(histories[0][0]) < 2:
        return False
    plt = _pyplot()
    iterations = histories[0][0]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in histories[0][1]:
        curves = np.array([h[1][name][: len(iterations)] for h in histories if len(h[1][name]) >= len(iterations)])
        ax.plot(iterations, curves.mean(axis=0), label=name)
        if len(curves) > 1:
            ax.fill_between(iterations, curves.min(axis=0), curves.max(axis=0), alpha=0.2)
    ax.set_xlabel("iteration")
    ax.set_ylabel("normalised weight")
    ax.set_title(f"{title} ({len(histories)} run{'s' if len(histories) > 1 else ''})")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, out)
    return True


def plot_subset_comparison(rows: Sequence[Row], name_a: str, name_b: str, metric: str, out: str | Path,
                           difference_std: Mapping[str, float] | None = None, seeds: int | None = None) -> None:
    """Two panels sharing one row per subset, sorted by the difference (the ``mean`` row is left out).

    Left: each run's ``metric`` per subset (points; bars: the standard deviation
    over seeds when the rows carry one). Right: the difference ``a - b`` per
    subset (bars; whiskers: the standard deviation over seeds of the paired,
    seed-by-seed difference, ``difference_std``), with zero marked, so a
    difference of a fraction of a point is as visible as a large one.
    """
    plt = _pyplot()
    rows = sorted((r for r in rows if r["subset"] != "mean"), key=lambda r: float(r["difference"]))
    n = len(rows)
    y = np.arange(n)
    labels = [str(r["subset"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(11, max(3.0, 0.2 * n + 1.6)),
                                      gridspec_kw={"width_ratios": [1, 1]})
    for offset, name, colour in ((-0.15, name_a, "tab:blue"), (0.15, name_b, "tab:orange")):
        values = [float(r[name]) for r in rows]
        errors = [float(r.get(f"{name}_std", 0.0) or 0.0) for r in rows]
        left.errorbar(values, y + offset, xerr=errors if any(errors) else None, fmt="o", markersize=3.5,
                      capsize=2, elinewidth=0.8, color=colour, label=name)
    left.set_xlabel(metric + (f", mean over {seeds} seeds\n(bars: std over seeds)" if seeds and seeds > 1 else ""))
    left.set_ylabel("subset of modalities present")
    left.set_yticks(y)
    left.set_yticklabels(labels, fontsize=8 if n <= 40 else 7)
    left.set_ylim(-0.7, n - 0.3)
    left.grid(axis="x", alpha=0.3)
    left.legend(loc="best", fontsize=8)
    differences = np.array([float(r["difference"]) for r in rows])
    spread = [float((difference_std or {}).get(r["subset"], 0.0)) for r in rows]
    colours = ["tab:green" if d > 0 else "tab:red" if d < 0 else "grey" for d in differences]
    right.barh(y, differences, xerr=spread if any(spread) else None, color=colours, alpha=0.8,
               error_kw={"elinewidth": 0.8, "capsize": 2})
    right.axvline(0.0, color="black", linewidth=0.8)
    right.set_xlabel(f"difference {name_a} − {name_b}"
                     + ("\n(whiskers: std over seeds of the seed-by-seed difference)" if any(spread) else ""))
    right.grid(axis="x", alpha=0.3)
    mean = float(differences.mean()) if n else 0.0
    right.axvline(mean, color="tab:blue", linewidth=0.8, linestyle="--", label=f"mean {mean:+.4f}")
    right.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{metric} per subset: {name_a} vs {name_b} ({int((differences > 0).sum())} better, "
                 f"{int((differences < 0).sum())} worse), sorted by the difference", fontsize=10)
    fig.tight_layout()
    _save_figure(fig, out)


def _save_figure(fig: Any, out: str | Path) -> None:
    plt = _pyplot()
    out = Path(out)
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=130, format=out.suffix.lstrip(".") or "png"))
    plt.close(fig)


def _p_value(p: float) -> str:
    """A p-value for a table in scientific notation (``4.1e-06``), so small ones do not print as 0.0000."""
    return "undefined" if math.isnan(p) else f"{p:.1e}"


def method_comparison(
    tables: dict[str, Sequence[Row]],
    metric: str,
    reference: str,
    seed_means: dict[str, Sequence[float]] | None = None,
) -> tuple[list[Row], list[Row], str]:
    """Several methods on one dataset: one summary row per method, and one row per subset.

    The *strongest* modality is the one the reference method scores best with
    alone. Each method is compared with the reference by a one-tailed paired
    t-test across subsets (reference > method), over all subsets and over the
    subsets without the strongest modality.

    Args:
        tables: method -> per-subset rows (mean over seeds, as :func:`aggregate_seeds`).
        metric: the column compared.
        reference: the method the others are tested against (MCKD).
        seed_means: optional method -> the mean over all subsets of each seed, for a spread.

    Returns:
        (summary rows, per-subset rows with one column per method and two mean rows, strongest modality).
    """
    singles = [r for r in tables[reference] if int(r["size"]) == 1]
    strongest = str(max(singles, key=lambda r: float(r[metric]))["subset"])
    without = {str(r["subset"]) for r in tables[reference] if strongest not in str(r["subset"]).split("+")}
    summary: list[Row] = []
    for name, rows in tables.items():
        entry: Row = {"method": name, "all subsets": float(np.mean([r[metric] for r in rows]))}
        if seed_means and len(seed_means.get(name, [])) > 1:
            entry["all, std over seeds"] = float(np.std(seed_means[name], ddof=1))
        entry[f"without {strongest}"] = float(np.mean([r[metric] for r in rows if r["subset"] in without]))
        if name != reference:
            _, test_all = compare_tables(tables[reference], rows, metric, reference, name)
            _, test_without = compare_tables([r for r in tables[reference] if r["subset"] in without],
                                             [r for r in rows if r["subset"] in without], metric, reference, name)
            entry.update({
                f"{reference} - method": test_all["difference"],
                "p (all)": _p_value(test_all["p_one_tailed"]),
                f"p (without {strongest})": _p_value(test_without["p_one_tailed"]),
                f"{reference} better / worse": f"{test_all['wins']} / {test_all['losses']}",
            })
        summary.append(entry)
    columns = list(dict.fromkeys(key for entry in summary for key in entry))
    summary = [{key: entry.get(key, "") for key in columns} for entry in summary]  # the reference has no test
    per_subset: list[Row] = []
    for i, row in enumerate(tables[reference]):
        entry = {"subset": row["subset"], "size": int(row["size"])}
        for name, rows in tables.items():
            by_subset = {r["subset"]: r for r in rows}
            entry[name] = float(by_subset[row["subset"]][metric])
        per_subset.append(entry)
    for label, keep in (("mean (all)", None), (f"mean (without {strongest})", without)):
        entry = {"subset": label, "size": ""}
        for name in tables:
            entry[name] = float(np.mean([r[name] for r in per_subset[: len(tables[reference])]
                                         if keep is None or r["subset"] in keep]))
        per_subset.append(entry)
    return summary, per_subset, strongest


# --- segmentation: the paper's Table 1 layout ------------------------------------------------------------

SEGMENTATION_REGIONS = ("ET", "TC", "WT")


def write_task_tables(task: Any, rows: Sequence[Row], stem: str | Path, modalities: Sequence[str]) -> None:
    """A task's own table beside ``subsets``: for segmentation, the paper's Table 1 layout (``stem.md``)."""
    if getattr(task, "name", "") == "segmentation":
        atomic_write_text(Path(str(stem) + ".md"), table1(rows, modalities))


def table1(rows: Sequence[dict[str, Any]], modalities: Sequence[str]) -> str:
    """Markdown: a row per subset with ● (present) / ○ (missing) per sequence, Dice and HD95 per region, an average row."""
    dice_cols = [f"dice_{r.lower()}" for r in SEGMENTATION_REGIONS]
    hd_cols = [f"hd95_{r.lower()}" for r in SEGMENTATION_REGIONS]
    header = [*modalities, "Dice ET", "Dice TC", "Dice WT", "Dice mean", "HD95 ET", "HD95 TC", "HD95 WT"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]

    def fmt(values: Sequence[float], digits: int) -> list[str]:
        return ["nan" if math.isnan(v) else f"{v:.{digits}f}" for v in values]

    for row in rows:
        names = str(row["subset"]).split("+")
        marks = ["●" if m in names else "○" for m in modalities]
        dice = [100 * float(row[c]) for c in dice_cols]
        hd = [float(row[c]) for c in hd_cols]
        lines.append("| " + " | ".join(marks + fmt(dice + [sum(dice) / 3], 2) + fmt(hd, 2)) + " |")
    if rows:
        means = [100 * sum(float(r[c]) for r in rows) / len(rows) for c in dice_cols]
        hd_means = [sum(float(r[c]) for r in rows) / len(rows) for c in hd_cols]
        lines.append("| " + " | ".join(["**average**"] + [""] * (len(modalities) - 1)
                                       + [f"**{v}**" for v in fmt(means + [sum(means) / 3], 2)]
                                       + [f"**{v}**" for v in fmt(hd_means, 2)]) + " |")
    note = ("\nDice in %, HD95 in mm, mean over test cases per subset of sequences (● present, ○ missing). "
            "Empty prediction and empty ground truth: Dice 1, HD95 0; exactly one empty: Dice 0, HD95 373.13.\n")
    return "\n".join(lines) + "\n" + note
