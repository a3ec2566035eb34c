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
from mckd.io import atomic_write, atomic_write_text, file_problem


Row = dict[str, Any]


KEYS = ("subset", "pattern")  # the columns that name a row of an evaluation table
PLURAL = {"subset": "subsets", "pattern": "patterns"}


def is_summary(name: Any) -> bool:
    """Whether a row name is a summary row's (``all, as observed``, ``mean, over subsets``): it holds a comma,
    which no modality, and so no subset or pattern, can hold."""
    return "," in str(name)
UNDEFINED = "–"  # a metric that is undefined for a row (no sample, one class): never NaN


def _format(value: Any) -> str:
    if value is None or value == "":
        return UNDEFINED if value is None else ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def row_key(rows: Sequence[Row]) -> str:
    """The column that names the rows of an evaluation table: ``subset`` or ``pattern``."""
    for key in KEYS:
        if rows and key in rows[0]:
            return key
    raise MckdError(f"a table without a {' or '.join(repr(k) for k in KEYS)} column is not an evaluation table")


def _size(value: Any) -> int | str:
    """A row's ``size`` (modalities in its subset), or "" for a row of no one subset (``all, as observed``,
    ``mean, over subsets``)."""
    return int(value) if defined(value) else ""


def defined(value: Any) -> bool:
    """Whether a table cell holds a number (not an undefined metric)."""
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))


# A row over fewer test samples than this is marked: one sample more or less moves its metrics by 1/n or more.
FEW_SAMPLES = 10
FEW_NOTE = (f"`(few)`: fewer than {FEW_SAMPLES} test samples, so one sample moves the row's metrics by a tenth or "
            "more (a 1.0000 there may be a handful of samples); read it as an indication, not a result.")


def is_few(row: Row) -> bool:
    """Whether ``row`` is over fewer than :data:`FEW_SAMPLES` test samples (but some)."""
    samples = row.get("samples")
    return defined(samples) and 0 < int(samples) < FEW_SAMPLES


def markdown_table(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of ``rows`` (floats with 4 decimals); a ``samples`` cell under
    :data:`FEW_SAMPLES` is marked ``(few)``."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())

    def cell(row: Row, column: str) -> str:
        text = _format(row.get(column, ""))
        return f"{text} (few)" if column == "samples" and is_few(row) else text

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row, c) for c in columns) + " |" for row in rows]
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
    notes = " ".join(part for part in (notes, FEW_NOTE if any(is_few(r) for r in rows) else "") if part)
    atomic_write_text(stem.with_suffix(".md"), heading + markdown_table(rows) + (f"\n{notes}\n" if notes else ""))


def read_table(path: str | Path) -> list[Row]:
    """Read a CSV table written by :func:`write_table`; numbers become floats."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise MckdError(f"table {str(path)!r} {problem}" + ("; evaluate the run first (mckd evaluate)"
                                                            if problem == "does not exist" else ""))
    rows = []
    try:
        with path.open(encoding="utf-8") as stream:
            for row in csv.DictReader(stream):
                parsed: Row = {}
                for key, value in row.items():
                    if key in KEYS:
                        parsed[key] = value
                    elif value == "":
                        parsed[key] = None  # an undefined metric (written as an empty cell)
                    else:
                        try:
                            parsed[key] = float(value)
                        except (ValueError, TypeError):
                            parsed[key] = value
                rows.append(parsed)
    except (UnicodeDecodeError, csv.Error) as error:
        raise MckdError(f"table {str(path)!r} is not a readable CSV table ({error})") from None
    if not rows or not any(key in rows[0] for key in KEYS) or "size" not in rows[0]:
        raise MckdError(f"table {str(path)!r} holds no rows with 'subset' and 'size' columns; evaluate the run again")
    return rows


def aggregate_seeds(tables: Sequence[Sequence[Row]], metrics: Sequence[str]) -> list[Row]:
    """Mean and standard deviation (ddof 1) over seeds, per row (subset or pattern).

    Every table must list the same rows. Output columns: the key (``subset``
    or ``pattern``), ``size``, ``samples`` when the tables have it, ``<metric>``
    (the mean) and ``<metric>_std`` for each metric, ``seeds``. A metric that
    is undefined in any seed's row is undefined in the mean.
    """
    if not tables:
        raise MckdError("aggregate_seeds: no tables")
    key = row_key(tables[0])
    names = [row[key] for row in tables[0]]
    for table in tables[1:]:
        if [row[key] for row in table] != names:
            raise MckdError(f"aggregate_seeds: the runs were evaluated on different {key}s")
    out = []
    for i, name in enumerate(names):
        first = tables[0][i]
        row: Row = {key: name, "size": _size(first["size"])}
        if "samples" in first:
            row["samples"] = int(first["samples"])
        for metric in metrics:
            if not all(defined(t[i].get(metric)) for t in tables):
                row[metric], row[f"{metric}_std"] = None, None
                continue
            values = np.array([float(t[i][metric]) for t in tables])
            row[metric] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        row["seeds"] = len(tables)
        out.append(row)
    return out


def paired_test(values_a: np.ndarray, values_b: np.ndarray) -> tuple[float | None, float | None]:
    """One-tailed paired t-test that ``a > b``: ``(t, p)``, or ``(None, None)`` when it is undefined.

    Undefined: fewer than two pairs, or every difference the same (zero variance).
    """
    differences = values_a - values_b
    if len(differences) < 2 or np.all(differences == differences[0]):
        return None, None
    test = stats.ttest_rel(values_a, values_b, alternative="greater")
    return float(test.statistic), float(test.pvalue)


# --- statistics over a few runs (data draws x training seeds) ------------------------------------------------------

MIN_RUNS_TO_TELL = 6  # with fewer paired runs an exact sign-flip test cannot reach p < 0.05 (two-sided): 2 / 2^5


def _strata_of(values: Sequence[float], strata: Sequence[Any] | None) -> list[np.ndarray]:
    keys = [0] * len(values) if strata is None else list(strata)
    if len(keys) != len(values):
        raise ValueError(f"{len(values)} values but {len(keys)} strata")
    array = np.asarray(values, dtype=float)
    return [array[[i for i, key in enumerate(keys) if key == k]] for k in dict.fromkeys(keys)]


def bootstrap_mean_interval(values: Sequence[float], strata: Sequence[Any] | None = None, resamples: int = 10_000,
                            seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of the strata's means and its percentile bootstrap interval over runs.

    Each resample draws, within every stratum (a rate, say; one stratum by
    default), as many runs as it has, with replacement. The interval is made of
    means of observed values, so it never leaves their range (an accuracy
    interval stays within [0, 100]); with one run it is that run's value.
    """
    groups = _strata_of(values, strata)
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("bootstrap_mean_interval: no values")
    mean = float(np.mean([g.mean() for g in groups]))
    rng = np.random.default_rng(seed)
    means = np.mean([g[rng.integers(0, len(g), (resamples, len(g)))].mean(axis=1) for g in groups], axis=0)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return mean, float(low), float(high)


def sign_flip_p(differences: Sequence[float], alternative: str = "greater", resamples: int = 100_000,
                seed: int = 0) -> float:
    """p of the paired sign-flip (permutation) test that the mean difference is 0.

    Under the null each run's difference is as likely positive as negative;
    ``alternative``: ``greater`` (mean > 0), ``less`` or ``two-sided``. Exact
    (every sign pattern) up to 16 differences, Monte Carlo beyond. The smallest
    p it can give with n differences is ``1 / 2^n`` one-tailed (``2 / 2^n`` two-tailed).
    """
    d = np.asarray(differences, dtype=float)
    if len(d) == 0:
        raise ValueError("sign_flip_p: no differences")
    observed = d.mean()
    if len(d) <= 16:
        signs = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)  # (2^n, n) of +-1
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(resamples, len(d)))
    null = (signs * d).mean(axis=1)
    tolerance = 1e-12 * max(1.0, abs(observed))
    if alternative == "greater":
        return float(np.mean(null >= observed - tolerance))
    if alternative == "less":
        return float(np.mean(null <= observed + tolerance))
    return float(np.mean(np.abs(null) >= abs(observed) - tolerance))


def run_cell(values: Sequence[float], strata: Sequence[Any] | None = None) -> Row:
    """A cell over runs: ``mean``, ``low``, ``high`` (95% bootstrap over runs), ``runs``; ``None`` values without runs."""
    if len(values) == 0:
        return {"mean": None, "low": None, "high": None, "runs": 0}
    mean, low, high = bootstrap_mean_interval(values, strata)
    return {"mean": mean, "low": low, "high": high, "runs": len(values)}


def paired_runs(differences: Sequence[float], strata: Sequence[Any] | None = None) -> Row:
    """Paired differences A - B over runs (same data draw and seed): mean, 95% bootstrap interval, sign-flip p.

    ``too_few``: fewer than :data:`MIN_RUNS_TO_TELL` pairs, so no difference can
    be called at the 5% level however large (the interval is still given).
    """
    if len(differences) == 0:
        return {"difference": None, "low": None, "high": None, "p_greater": None, "p_two": None, "pairs": 0,
                "too_few": True}
    mean, low, high = bootstrap_mean_interval(differences, strata)
    return {"difference": mean, "low": low, "high": high, "p_greater": sign_flip_p(differences, "greater"),
            "p_two": sign_flip_p(differences, "two-sided"), "pairs": len(differences),
            "too_few": len(differences) < MIN_RUNS_TO_TELL}


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better: every metric but a distance (segmentation's ``hd95_*``, as
    :class:`mckd.tasks.segmentation` declares them)."""
    return not metric.startswith("hd")


def compare_tables(a: Sequence[Row], b: Sequence[Row], metric: str, name_a: str, name_b: str) -> tuple[list[Row], Row]:
    """Per-row difference ``a - b`` of ``metric`` and a one-tailed paired t-test across rows.

    ``a`` is better where its ``metric`` is higher, or lower for a distance (:func:`higher_is_better`): wins,
    losses and the test's alternative follow that direction; the difference is always ``a - b``.

    Rows are subsets (or missingness patterns) of the same evaluation; the
    test (as the paper's Table 1) asks whether ``a`` beats ``b``: the
    alternative is mean(a - b) > 0 over the rows. Rows where either value is
    undefined (no sample has the subset) are listed but not compared, and so
    are summary rows (:func:`is_summary`: the ``all, as observed`` row of a
    pattern table), which are not one more subset or pattern.

    Returns:
        (rows, summary): rows with both values and the difference, then the mean rows: ``mean, over
        subsets``; for patterns ``mean, weighted by samples`` (each pattern counts by its test samples)
        and ``mean, unweighted`` (the one the t-test is on). ``summary`` holds the unweighted means, t
        statistic and p-value (None when the test is undefined), how many rows were compared (``rows``,
        of kind ``kind``: subsets or patterns), wins and losses, and for patterns the weighted means.
    """
    key = row_key(a)
    by_name = {row.get(key): row for row in b}
    if set(by_name) != {row[key] for row in a}:
        raise MckdError(f"cannot compare {name_a!r} and {name_b!r}: they were evaluated on different {PLURAL[key]}")
    rows: list[Row] = []
    for row in a:
        other = by_name[row[key]]
        value_a, value_b = row.get(metric), other.get(metric)
        for value, table in ((value_a, name_a), (value_b, name_b)):
            if value is not None and not defined(value):
                raise MckdError(f"{key} {row[key]!r}: {metric} is {value!r} in {table!r}; expected a number")
        entry: Row = {key: row[key], "size": _size(row["size"])}
        if "samples" in row:
            entry["samples"] = int(row["samples"])
        both = value_a is not None and value_b is not None
        entry.update({name_a: value_a, name_b: value_b, "difference": value_a - value_b if both else None})
        if f"{metric}_std" in row and f"{metric}_std" in other:
            entry[f"{name_a}_std"] = row[f"{metric}_std"]
            entry[f"{name_b}_std"] = other[f"{metric}_std"]
        rows.append(entry)
    compared = [r for r in rows if r["difference"] is not None and not is_summary(r[key])]
    if not compared:
        raise MckdError(f"cannot compare {name_a!r} and {name_b!r}: no {key} has {metric} in both")
    values_a = np.array([r[name_a] for r in compared])
    values_b = np.array([r[name_b] for r in compared])
    sign = 1.0 if higher_is_better(metric) else -1.0  # a distance: a is better where it is smaller
    t_stat, p_value = paired_test(sign * values_a, sign * values_b)
    summary = {
        "metric": metric,
        name_a: float(values_a.mean()),
        name_b: float(values_b.mean()),
        "difference": float((values_a - values_b).mean()),
        "t": t_stat,
        "p_one_tailed": p_value,
        "rows": len(compared),
        "kind": PLURAL[key],
        "wins": int((sign * (values_a - values_b) > 0).sum()),
        "losses": int((sign * (values_a - values_b) < 0).sum()),
        "higher_is_better": sign > 0,
    }
    means = [("mean, over subsets", None)] if key == "subset" else [("mean, unweighted", None)]
    if key == "pattern" and all("samples" in r for r in compared):
        weights = np.array([float(r["samples"]) for r in compared])
        weighted = {name: float(np.average(values, weights=weights))
                    for name, values in ((name_a, values_a), (name_b, values_b))}
        summary["weighted"] = {**weighted, "difference": weighted[name_a] - weighted[name_b]}
        means.insert(0, ("mean, weighted by samples", weights))
    for label, weights in means:
        entry = {key: label, "size": ""}
        if "samples" in compared[0]:  # patterns are disjoint, so their samples add up; subsets overlap
            entry["samples"] = int(sum(r["samples"] for r in compared)) if key == "pattern" else ""
        mean_a = float(np.average(values_a, weights=weights))
        mean_b = float(np.average(values_b, weights=weights))
        rows.append({**entry, name_a: mean_a, name_b: mean_b, "difference": mean_a - mean_b})
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
    """Two panels sharing one row per subset (or pattern), sorted by the difference (summary rows left out).

    The counts and the mean in the title come from the rows drawn, which are those
    :func:`compare_tables` tests.

    Left: each run's ``metric`` per subset (points; bars: the standard deviation
    over seeds when the rows carry one). Right: the difference ``a - b`` per
    subset (bars; whiskers: the standard deviation over seeds of the paired,
    seed-by-seed difference, ``difference_std``), with zero marked, so a
    difference of a fraction of a point is as visible as a large one.
    """
    plt = _pyplot()
    key = row_key(rows)
    rows = sorted((r for r in rows if not is_summary(r[key]) and r.get("difference") is not None),  # compared only
                  key=lambda r: float(r["difference"]))
    n = len(rows)
    y = np.arange(n)
    labels = [f"{r[key]} (n={r['samples']}, few)" if is_few(r) else str(r[key]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, sharey=True, figsize=(11, max(3.0, 0.2 * n + 1.6)),
                                      gridspec_kw={"width_ratios": [1, 1]})
    for offset, name, colour in ((-0.15, name_a, "tab:blue"), (0.15, name_b, "tab:orange")):
        values = [float(r[name]) for r in rows]
        errors = [float(r.get(f"{name}_std", 0.0) or 0.0) for r in rows]
        left.errorbar(values, y + offset, xerr=errors if any(errors) else None, fmt="o", markersize=3.5,
                      capsize=2, elinewidth=0.8, color=colour, label=name)
    left.set_xlabel(metric + (f", mean over {seeds} seeds\n(bars: std over seeds)" if seeds and seeds > 1 else ""))
    thin = f"\n(few: under {FEW_SAMPLES} test samples)" if any(is_few(r) for r in rows) else ""
    left.set_ylabel(("subset of modalities present" if key == "subset" else "missingness pattern") + thin)
    left.set_yticks(y)
    left.set_yticklabels(labels, fontsize=8 if n <= 40 else 7)
    left.set_ylim(-0.7, n - 0.3)
    left.grid(axis="x", alpha=0.3)
    left.legend(loc="best", fontsize=8)
    differences = np.array([float(r["difference"]) for r in rows])
    spread = [float((difference_std or {}).get(r[key], 0.0)) for r in rows]
    sign = 1.0 if higher_is_better(metric) else -1.0  # green: a is better (for a distance, smaller)
    colours = ["tab:green" if sign * d > 0 else "tab:red" if sign * d < 0 else "grey" for d in differences]
    right.barh(y, differences, xerr=spread if any(spread) else None, color=colours, alpha=0.8,
               error_kw={"elinewidth": 0.8, "capsize": 2})
    right.axvline(0.0, color="black", linewidth=0.8)
    right.set_xlabel(f"difference {name_a} − {name_b}"
                     + ("\n(whiskers: std over seeds of the seed-by-seed difference)" if any(spread) else ""))
    right.grid(axis="x", alpha=0.3)
    mean = float(differences.mean()) if n else 0.0
    label = "mean" if key == "subset" else "mean, unweighted"
    right.axvline(mean, color="tab:blue", linewidth=0.8, linestyle="--", label=f"{label} {mean:+.4f}")
    right.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{metric} per {key}: {name_a} vs {name_b} over {n} {PLURAL[key] if n != 1 else key} "
                 f"({int((sign * differences > 0).sum())} better, {int((sign * differences < 0).sum())} worse"
                 f"{', lower is better' if sign < 0 else ''}, {label} "
                 f"{mean:+.4f}), sorted by the difference", fontsize=10)
    fig.tight_layout()
    _save_figure(fig, out)


def _save_figure(fig: Any, out: str | Path) -> None:
    plt = _pyplot()
    out = Path(out)
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=130, format=out.suffix.lstrip(".") or "png"))
    plt.close(fig)


def format_p(p: float | None) -> str:
    """A p-value, in tables and sentences alike: two significant digits (``4.1e-06``), so a small one never prints
    as 0.0000; ``–`` where no t-test is defined (fewer than two pairs, or the same difference on every pair)."""
    return UNDEFINED if p is None or math.isnan(p) else f"{p:.2g}"


P_UNDEFINED_NOTE = "p `–`: no t-test (fewer than two pairs, or the same difference on every pair, e.g. none)."


def rows_defined_in_all(tables: dict[str, Sequence[Row]], metric: str) -> dict[str, list[Row]]:
    """The tables cut to the rows whose ``metric`` is defined in every one (a subset no test sample has goes)."""
    key = row_key(next(iter(tables.values())))
    by_name = {name: {r[key]: r for r in rows} for name, rows in tables.items()}
    first = next(iter(tables.values()))
    keep = [r[key] for r in first if all(defined(by_name[name].get(r[key], {}).get(metric)) for name in tables)]
    return {name: [by_name[name][k] for k in keep] for name in tables}


def single_modality_ranking(subset_rows: Sequence[Row], common: Sequence[Row], metric: str) -> tuple[list[Row], int]:
    """The single modalities, best ``metric`` first, and the number of samples they share (0: none).

    Over the same samples, those that have every modality (``common``: the rows of
    :attr:`mckd.evaluation.Evaluation.singles_on_complete`), where some test sample
    has them all and every score is defined; otherwise the single-modality rows of
    ``subset_rows``, each over the samples that have that modality (they differ
    when modalities are missing), and 0.
    """
    shared = [r for r in common if int(r["size"]) == 1]
    if shared and int(shared[0].get("samples") or 0) > 0 and all(defined(r.get(metric)) for r in shared):
        return sorted(shared, key=lambda r: float(r[metric]), reverse=True), int(shared[0]["samples"])
    singles = [r for r in subset_rows if int(r["size"]) == 1]
    return sorted(singles, key=lambda r: float(r[metric]), reverse=True), 0


def method_comparison(
    tables: dict[str, Sequence[Row]],
    metric: str,
    reference: str,
    seed_means: dict[str, Sequence[float]] | None = None,
    common: Sequence[Row] = (),
) -> tuple[list[Row], list[Row], str]:
    """Several methods on one dataset: one summary row per method, and one row per subset.

    The *strongest* modality is the one the reference method scores best with
    alone (:func:`single_modality_ranking`: on the samples that have every modality where there are some). Each method is compared with the reference by a one-tailed paired
    t-test across subsets (reference > method), over all subsets and over the
    subsets without the strongest modality.

    Args:
        tables: method -> per-subset rows (mean over seeds, as :func:`aggregate_seeds`).
        metric: the column compared.
        reference: the method the others are tested against (MCKD).
        seed_means: optional method -> the mean over all subsets of each seed, for a spread.
        common: the reference's single modalities on the samples that have every modality.

    Returns:
        (summary rows, per-subset rows with one column per method and two mean rows, strongest modality).
        Subsets whose metric is undefined for some method (no test sample has them) are left out.
    """
    tables = rows_defined_in_all(tables, metric)
    strongest = str(single_modality_ranking(tables[reference], common, metric)[0][0]["subset"])
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
                "p (all)": format_p(test_all["p_one_tailed"]),
                f"p (without {strongest})": format_p(test_without["p_one_tailed"]),
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
    for label, keep in (("mean, all subsets", None), (f"mean, subsets without {strongest}", without)):
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
        targets = getattr(task, "targets", SEGMENTATION_REGIONS)
        atomic_write_text(Path(str(stem) + ".md"), table1(rows, modalities, targets))


def _metric_key(name: str) -> str:
    import re

    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def table1(rows: Sequence[dict[str, Any]], modalities: Sequence[str],
           targets: Sequence[str] = SEGMENTATION_REGIONS) -> str:
    """Markdown: a row per subset with ● (present) / ○ (missing) per sequence, Dice and HD95 per target, an average row.

    ``targets``: the regions or classes evaluated (BraTS: ET, TC, WT), whose
    metrics are ``dice_<target>`` and ``hd95_<target>`` (lower case, ``_``
    for other characters). A row whose metrics are undefined (no test case has
    the subset) shows ``–`` and is left out of the average.
    """
    keys = [_metric_key(t) for t in targets]
    dice_cols = [f"dice_{k}" for k in keys]
    hd_cols = [f"hd95_{k}" for k in keys]
    header = [*modalities, *(f"Dice {t}" for t in targets), "Dice mean", *(f"HD95 {t}" for t in targets)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]

    def fmt(values: Sequence[float | None], digits: int) -> list[str]:
        return [UNDEFINED if v is None else ("nan" if math.isnan(v) else f"{v:.{digits}f}") for v in values]

    scored = []
    for row in rows:
        names = str(row["subset"]).split("+")
        marks = ["●" if m in names else "○" for m in modalities]
        if not all(defined(row.get(c)) for c in dice_cols + hd_cols):
            lines.append("| " + " | ".join(marks + [UNDEFINED] * (2 * len(keys) + 1)) + " |")
            continue
        scored.append(row)
        dice = [100 * float(row[c]) for c in dice_cols]
        hd = [float(row[c]) for c in hd_cols]
        lines.append("| " + " | ".join(marks + fmt(dice + [sum(dice) / len(dice)], 2) + fmt(hd, 2)) + " |")
    if scored:
        means = [100 * sum(float(r[c]) for r in scored) / len(scored) for c in dice_cols]
        hd_means = [sum(float(r[c]) for r in scored) / len(scored) for c in hd_cols]
        lines.append("| " + " | ".join(["**average**"] + [""] * (len(modalities) - 1)
                                       + [f"**{v}**" for v in fmt(means + [sum(means) / len(means)], 2)]
                                       + [f"**{v}**" for v in fmt(hd_means, 2)]) + " |")
    note = ("\nDice in %, HD95 in mm, mean over test cases per subset of sequences (● present, ○ missing). "
            "Empty prediction and empty ground truth: Dice 1, HD95 0; exactly one empty: Dice 0, HD95 373.13.\n")
    return "\n".join(lines) + "\n" + note
