"""Runs over several seeds, and benchmarks that compare methods on one dataset.

A *method* is a named set of config overrides over the same data, encoders,
decoder and training budget (see :data:`METHODS`), so every comparison is
like for like. The first method of a benchmark is the reference the others
are compared with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mckd.checkpoint import atomic_write_text
from mckd.config import apply_overrides, config_from_dict, load_raw
from mckd.errors import ConfigError
from mckd.evaluate import evaluate_run
from mckd.report import (
    Row,
    aggregate_seeds,
    compare_tables,
    markdown_table,
    method_comparison,
    plot_subset_comparison,
    plot_weights,
    read_table,
    read_weight_history,
    write_table,
)
from mckd.train import METRICS, train

# Each method: (config overrides, what it is).
METHODS: dict[str, tuple[list[str], str]] = {
    "mckd": ([], "MCKD: cross-modal distillation weighted by meta-learned importance (the config as written)"),
    "baseline": (["method.alpha=0", "method.meta=false"], "the same network and data without distillation or meta step"),
    # Peers, each over the same encoders, decoder, data and budget (see mckd.variants):
    "mckd_bilevel": (["method.meta_mode=bilevel"],
                     "MCKD with the bi-level meta-gradient of Eq. 4 through a one-step look-ahead (method/bilevel.py)"),
    "mckd_bilevel_opt": (["method.meta_mode=bilevel", "method.lookahead_step=optimizer"],
                         "bi-level MCKD whose look-ahead is preconditioned as the model's optimiser steps "
                         "(Adam: 1/(sqrt(v)+eps))"),
    "zero_fill": (["method.fill=zero", "method.alpha=0", "method.meta=false"],
                  "missing features are zeros, no distillation: how mmFormer and RFNet drop absent modalities"),
    "hemis": (["method.fusion=hemis", "method.alpha=0", "method.meta=false"],
              "HeMIS (Havaei et al., 2016): mean and variance over the present modalities replace concatenation"),
    "lckd": (["method.distill=teacher", "method.meta=false"],
             "LCKD (Wang et al., 2023): every method.teacher_every iterations the best single modality on "
             "validation becomes the teacher; unweighted L1 distillation teacher -> others"),
    "shaspec": (["method.shared_specific=true", "method.alpha=0", "method.meta=false"],
                "ShaSpec (Wang et al., 2023): shared + specific encoders, residual fusion, L1 alignment of "
                "shared features, domain classifier on specific features"),
}


def method_overrides(name: str) -> list[str]:
    """The overrides that make method ``name``; an unknown name is a config error."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return list(METHODS[name][0])


def train_seeds(raw: dict[str, Any], overrides: Sequence[str], seeds: Sequence[int], out: str | Path,
                reuse: bool = False) -> list[Row]:
    """Train and evaluate one config per seed into ``out/seed_<s>``; aggregate into ``out/subsets``.

    With ``reuse``, a seed whose run directory was trained and evaluated with
    the same resolved config is read instead of trained again (an interrupted
    benchmark continues; copies of one benchmark with other methods share runs).

    Returns the per-subset mean and standard deviation over seeds.
    """
    out = Path(out)
    if not seeds:
        raise ConfigError("at least one seed is needed")
    tables, metric_names, metrics_paths = [], None, []
    for seed in seeds:
        config = config_from_dict(apply_overrides(raw, [*overrides, f"seed={seed}"]))
        run_dir = out / f"seed_{seed}"
        if reuse and finished_run(run_dir, config):
            table = read_table(run_dir / "eval" / "subsets.csv")
            metric_names = tuple(k for k in table[0] if k not in ("subset", "size"))
            tables.append(table)
        else:
            experiment = train(config, run_dir)
            metric_names = experiment.task.metric_names
            tables.append(evaluate_run(run_dir, config.train.device))
        metrics_paths.append(run_dir / METRICS)
    assert metric_names is not None
    rows = aggregate_seeds(tables, metric_names)
    write_table(rows, out / "subsets", title=f"{out.name}: mean and standard deviation over seeds {list(seeds)}")
    atomic_write_text(out / "seeds.json", json.dumps({"seeds": list(seeds), "overrides": list(overrides)}, indent=2))
    plot_weights(metrics_paths, out / "weights.png", title=f"Importance weights, {out.name}")
    return rows


def finished_run(run_dir: Path, config: Any) -> bool:
    """Whether ``run_dir`` holds an evaluated run of exactly ``config`` (its resolved ``config.yaml``)."""
    import yaml

    saved, table = run_dir / "config.yaml", run_dir / "eval" / "subsets.csv"
    if not (saved.is_file() and table.is_file() and (run_dir / METRICS).is_file()):
        return False
    return yaml.safe_load(saved.read_text()) == config.to_dict()


def final_weights(run_dirs: Sequence[Path]) -> dict[str, float]:
    """Final normalised weights, mean over runs."""
    finals = [read_weight_history(d / METRICS)[1] for d in run_dirs]
    return {name: float(np.mean([f[name][-1] for f in finals])) for name in finals[0]}


def benchmark(
    config_path: str | Path,
    methods: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    overrides: Sequence[str] = (),
    reuse: bool = False,
) -> dict[str, Any]:
    """Train every method over every seed, compare each with the first, and write a summary.

    ``reuse``: keep finished runs of the same resolved config (see :func:`train_seeds`).

    Writes ``out/<method>/...`` (see :func:`train_seeds`), ``out/compare_<a>_vs_<b>.{csv,md,png}``
    and ``out/summary.md``. Returns the comparison summaries.
    """
    out = Path(out)
    raw = load_raw(config_path)
    config = config_from_dict(apply_overrides(raw, list(overrides)))  # fail early on a bad config
    for name in methods:
        method_overrides(name)
    if len(methods) < 1:
        raise ConfigError("benchmark needs at least one method")
    tables = {name: train_seeds(raw, [*overrides, *method_overrides(name)], seeds, out / name, reuse)
              for name in methods}
    reference = methods[0]
    metric = _primary_metric(config.task)
    summaries = {}
    for other in methods[1:]:
        rows, summary = compare_tables(tables[reference], tables[other], metric, reference, other)
        stem = out / f"compare_{reference}_vs_{other}"
        write_table(rows, stem, title=f"{metric}: {reference} vs {other}, mean over seeds {list(seeds)}",
                    notes=_test_sentence(summary, reference, other))
        plot_subset_comparison(rows, reference, other, metric, stem.with_suffix(".png"))
        summaries[other] = summary
    weights = final_weights([out / reference / f"seed_{s}" for s in seeds])
    summary_text = write_summary(out, config_path, methods, seeds, tables, summaries, weights, metric)
    if len(methods) > 1:
        summary_text += write_methods_table(out, config_path, methods, seeds, tables, metric, overrides)
    atomic_write_text(out / "summary.md", summary_text)
    atomic_write_text(out / "summary.json", json.dumps({"metric": metric, "comparisons": summaries,
                                                        "final_weights": weights}, indent=2))
    return summaries


def write_methods_table(
    out: Path,
    config_path: str | Path,
    methods: Sequence[str],
    seeds: Sequence[int],
    tables: dict[str, list[Row]],
    metric: str,
    overrides: Sequence[str] = (),
) -> str:
    """Write ``out/methods.{md,csv}``: every method against the first; return the summary's Markdown."""
    seed_means = {
        name: [float(np.mean([r[metric] for r in read_table(out / name / f"seed_{s}" / "eval" / "subsets.csv")]))
               for s in seeds]
        for name in methods
    }
    summary, per_subset, strongest = method_comparison(tables, metric, methods[0], seed_means)
    command = " ".join(["mckd benchmark", str(config_path), "--methods", *methods,
                        "--seeds", *map(str, seeds), *(f"--set {o}" for o in overrides)])
    text = "\n".join([
        f"## Methods compared ({metric}, test split, mean over seeds {list(seeds)})",
        "",
        f"Strongest modality (best alone under `{methods[0]}`): {strongest}. p: one-tailed paired t-test "
        f"across subsets that `{methods[0]}` is better.",
        "",
        markdown_table(summary),
        "",
        "Methods: " + "; ".join(f"`{name}`: {METHODS[name][1]}" for name in methods if name in METHODS) + ".",
        "",
        f"Command: `{command}`; per subset: `methods.md`, `methods.csv`.",
        "",
    ])
    write_table(per_subset, out / "methods", title=f"{metric} per subset, mean over seeds {list(seeds)}",
                notes=text)
    return text


def _primary_metric(task: str) -> str:
    from mckd.tasks import build_task

    return build_task(task, 2).primary_metric


def _test_sentence(summary: Row, a: str, b: str) -> str:
    return (
        f"Mean over {summary['subsets']} subsets: {a} {summary[a]:.4f}, {b} {summary[b]:.4f} "
        f"(difference {summary['difference']:+.4f}); {a} better on {summary['wins']}, worse on "
        f"{summary['losses']}; one-tailed paired t-test across subsets ({a} > {b}): "
        f"t = {summary['t']:.3f}, p = {summary['p_one_tailed']:.4f}."
    )


def write_summary(
    out: Path,
    config_path: str | Path,
    methods: Sequence[str],
    seeds: Sequence[int],
    tables: dict[str, list[Row]],
    summaries: dict[str, Row],
    weights: dict[str, float],
    metric: str,
) -> str:
    """A short, readable account: weight ranking, single-modality ranking, where the reference gains or loses."""
    reference = methods[0]
    ranked = sorted(weights, key=weights.get, reverse=True)
    singles = sorted((r for r in tables[reference] if int(r["size"]) == 1), key=lambda r: r[metric], reverse=True)
    lines = [
        f"# Benchmark: {', '.join(methods)} on `{config_path}`",
        "",
        f"Seeds {list(seeds)}; {metric} on the test split, every subset of modalities; mean over seeds.",
        "",
        "## Learned importance weights",
        "",
        f"Final normalised weights of `{reference}` (mean over seeds), highest first: "
        + ", ".join(f"{name} {weights[name]:.3f}" for name in ranked) + ".",
        "",
        f"Single-modality {metric} of `{reference}`, highest first: "
        + ", ".join(f"{r['subset']} {r[metric]:.3f}" for r in singles) + ".",
        "",
        "## Mean over subsets",
        "",
        markdown_table([
            {"method": name, f"mean {metric}": float(np.mean([r[metric] for r in tables[name]])),
             "mean std over seeds": float(np.mean([r.get(f"{metric}_std", 0.0) for r in tables[name]]))}
            for name in methods
        ]),
    ]
    top_two = set(ranked[:2])
    for other, summary in summaries.items():
        lacking = [r for r in tables[reference] if not top_two & set(str(r["subset"]).split("+"))]
        others = {r["subset"]: r for r in tables[other]}
        diffs = sorted(((r[metric] - others[r["subset"]][metric]), r["subset"]) for r in tables[reference])
        lines += [
            f"## `{reference}` against `{other}`",
            "",
            _test_sentence(summary, reference, other),
            "",
        ]
        if lacking:
            gain = float(np.mean([r[metric] - others[r["subset"]][metric] for r in lacking]))
            lines += [
                f"Over the {len(lacking)} subsets that lack both of the two highest-weighted modalities "
                f"({', '.join(ranked[:2])}), the mean difference is {gain:+.4f}.",
                "",
            ]
        lines += [
            "Largest gains: " + ", ".join(f"{s} {d:+.4f}" for d, s in reversed(diffs[-3:])) + ".",
            "",
            "Largest losses: " + ", ".join(f"{s} {d:+.4f}" for d, s in diffs[:3]) + ".",
            "",
            f"Table: `compare_{reference}_vs_{other}.md`; plot: `compare_{reference}_vs_{other}.png`.",
            "",
        ]
    lines += [f"Weights over training: `{reference}/weights.png`.", ""]
    return "\n".join(lines)
