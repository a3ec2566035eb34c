"""Runs over several seeds, and benchmarks that compare methods on one dataset.

A method of a benchmark is a registered training method or a preset
(``mckd list``), run over the same data, encoders, decoder and training
budget, so every comparison is like for like (:func:`method_config`). The
first method of a benchmark is the reference the others are compared with.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mckd import components, distributed
from mckd.build import Experiment
from mckd.config import apply_overrides, config_from_dict, load_raw, set_key, split_override
from mckd.config_upgrade import upgrade_raw_config
from mckd.errors import ConfigError, Interrupted, MckdError, Stopped
from mckd.evaluation import Evaluation
from mckd.io import atomic_write_json, atomic_write_text, check_writes_into_own_folder, claim_output
from mckd.progress import plural
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
    P_UNDEFINED_NOTE,
    defined,
    format_p,
    rows_defined_in_all,
    single_modality_ranking,
    write_table,
)
from mckd.runs import RunDir, evaluate_experiment
from mckd.train import Callback, train


def train_and_evaluate(config: Any, run_dir: str | Path, resume: bool = False, force: bool = False,
                       callbacks: Sequence[Callback] = (), experiment: Experiment | None = None) -> Evaluation:
    """Train one run into ``run_dir`` (:func:`mckd.train.train`), then evaluate the trained model and write ``eval/``.

    The one place where a run is trained and evaluated: ``mckd train``,
    ``mckd benchmark`` and :func:`mckd.api.fit` call it. The evaluation uses
    the trained model and data in memory (what the final checkpoint holds).
    A signal during the evaluation says that training is complete and how to
    write the tables.
    """
    trained = train(config, run_dir, resume=resume, callbacks=callbacks, force=force, experiment=experiment)
    try:
        return evaluate_experiment(trained, RunDir(run_dir), distributed.local_device(config.train.device))
    except Interrupted as stopped:
        raise Stopped(f"{stopped.signal_name} stopped the evaluation of {str(run_dir)!r}; its training is complete "
                      f"and saved: write the tables with `mckd evaluate {run_dir}`") from None


def method_names() -> list[str]:
    """Every name ``--methods`` takes: the registered training methods, then the presets."""
    return [*components.names("method"), *sorted(components.presets())]


def describe_method(name: str) -> str:
    """One line on what method or preset ``name`` is."""
    presets = components.presets()
    return presets[name].description if name in presets else components.lookup("method", name).description


def base_method(name: str) -> str:
    """The registered training method that method or preset ``name`` trains.

    An unknown name is a :class:`ConfigError` suggesting the closest method or
    preset and listing the two apart (a preset is a method with fixed settings).
    """
    presets = components.presets()
    base = presets[name].method if name in presets else name
    if base not in components.names("method"):
        close = difflib.get_close_matches(str(name), method_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown method {name!r}{hint}; methods: {', '.join(components.names('method'))}; "
                          f"presets: {', '.join(sorted(presets))}")
    return base


def method_config(raw: dict[str, Any], name: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A raw config that trains method (or preset) ``name`` on what ``raw`` describes.

    1. The ``method:`` section becomes ``name``'s method; the keys the old and
       the new method share (``alpha``, ``p``, ...) carry over, the others go.
    2. ``overrides`` are applied; a ``method.KEY`` override only to a method
       that has ``KEY`` (so one benchmark can set ``method.teacher_every`` for
       LCKD alone).
    3. A preset's own settings are applied last: they define it.
    """
    if isinstance(raw.get("imports"), list):
        components.import_modules(raw["imports"])  # the config's own methods are names too
    preset = components.presets().get(name)
    base = base_method(name)
    keys = {f.name for f in dataclasses.fields(components.lookup("method", base).options)}
    raw = upgrade_raw_config(copy.deepcopy(raw), warn=False)
    old = raw.get("method") if isinstance(raw.get("method"), dict) else {}
    raw["method"] = dict(old) if old.get("name") == base else {"name": base, **{k: v for k, v in old.items()
                                                                              if k in keys}}
    own = []
    for item in overrides:
        key, _ = split_override(item)
        parts = key.split(".")
        if parts[0] == "method" and len(parts) == 2 and parts[1] != "name" and parts[1] not in keys:
            continue  # another method's key
        own.append(item)
    raw = apply_overrides(raw, own)
    for key, value in preset.overrides if preset else ():
        set_key(raw, key, value)
    return raw


def check_overrides_fit_some_method(methods: Sequence[str], overrides: Sequence[str]) -> None:
    """A ``method.KEY`` override that none of ``methods`` has is a :class:`ConfigError` (a typo, most likely), and so
    is one that names the method (``method``, ``method.name``): --methods does, and would be overridden silently."""
    keys: set[str] = set()
    for name in methods:
        keys |= {f.name for f in dataclasses.fields(components.lookup("method", base_method(name)).options)}
    for item in overrides:
        key, _ = split_override(item)
        parts = key.split(".")
        if key in ("method", "method.name"):
            raise ConfigError(f"--set {key}: a benchmark trains the methods named by --methods ({', '.join(methods)}); "
                              "name the method there, not in --set")
        if parts[0] == "method" and len(parts) == 2 and parts[1] not in keys | {"name"}:
            raise ConfigError(f"--set {key}: none of the methods {list(methods)} has the key {parts[1]!r}")


def train_seeds(raw: dict[str, Any], overrides: Sequence[str], seeds: Sequence[int], out: str | Path,
                reuse: bool = False, method: str | None = None, force: bool = False) -> list[Row]:
    """Train and evaluate one config per seed into ``out/seed_<s>``; aggregate into ``out/subsets``.

    ``method``: train that method or preset (:func:`method_config`) instead of
    the config's own. With ``reuse``, a seed whose run directory was trained
    and evaluated with the same resolved config is read instead of trained
    again (an interrupted benchmark continues; copies of one benchmark with
    other methods share runs), and the others are trained again in place.
    An existing ``out`` is refused unless ``force`` or ``reuse``.

    Returns the per-subset mean and standard deviation over seeds.
    """
    out = RunDir(out)
    if not seeds:
        raise ConfigError("at least one seed is needed")
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise ConfigError(f"seeds {repeated} are given more than once: each seed must appear once")
    with claim_output(out.path, replace=force or reuse, kind="dir", what="multi-seed folder"):
        for seed in seeds:
            seeded = [*overrides, f"seed={seed}"]
            config = config_from_dict(method_config(raw, method, seeded) if method else apply_overrides(raw, seeded))
            run = out.seed(seed)
            if not (reuse and finished_run(run.path, config)):
                with claim_output(run.path, replace=True, kind="dir", what="run directory"):
                    train_and_evaluate(config, run.path, force=force or reuse)
        rows = aggregate_run_seeds(out, seeds)
        atomic_write_text(out.seeds_record, json.dumps({"seeds": list(seeds), "method": method,
                                                        "overrides": list(overrides)}, indent=2))
    return rows


def run_seeds(out: RunDir) -> list[int]:
    """The seeds of a multi-seed directory's evaluated runs (``seed_<s>/``), in order."""
    seeds = sorted(int(p.name[len("seed_"):]) for p in out.path.glob("seed_*") if p.name[len("seed_"):].isdigit()
                   and RunDir(p).checkpoint.is_file())
    if not seeds:
        raise ConfigError(f"{str(out.path)!r} is neither a run directory (no checkpoint.safetensors) nor a "
                          "multi-seed directory (no seed_<s>/ runs)")
    return seeds


def aggregate_run_seeds(out: RunDir, seeds: Sequence[int]) -> list[Row]:
    """Mean and std over the seeds' evaluations: ``out/subsets`` and ``out/observed``; the weights over training."""
    tables = [read_table(out.seed(s).subsets.with_suffix(".csv")) for s in seeds]
    observed = [read_table(out.seed(s).observed.with_suffix(".csv")) for s in seeds]
    metric_names = tuple(k for k in tables[0][0] if k not in ("subset", "size", "samples"))
    rows = aggregate_seeds(tables, metric_names)
    title = f"{out.path.name}: mean and standard deviation over seeds {list(seeds)}"
    write_table(rows, out.aggregate, title=title)
    write_table(aggregate_seeds(observed, metric_names), out.aggregate_observed, title=f"{title}, as observed")
    singles = [out.seed(s).singles.with_suffix(".csv") for s in seeds]
    if all(path.is_file() for path in singles):  # runs evaluated before the table existed have none
        write_table(aggregate_seeds([read_table(p) for p in singles], metric_names), out.aggregate_singles,
                    title=f"{title}, each modality alone on the samples that have every modality")
    if not plot_weights([out.seed(s).metrics for s in seeds], out.weights_plot,
                        title=f"Importance weights, {out.path.name}"):
        out.weights_plot.unlink(missing_ok=True)  # no meta step: no plot, and none left from an earlier run
    return rows


def seed_tables(folder: str | Path) -> dict[int, list[Row]]:
    """The per-seed evaluation tables of a multi-seed folder (its ``seeds.json``); empty for a single run."""
    folder = RunDir(folder)
    try:
        seeds = json.loads(folder.seeds_record.read_text(encoding="utf-8"))["seeds"]
        return {int(s): read_table(folder.seed(int(s)).subsets.with_suffix(".csv")) for s in seeds}
    except (OSError, ValueError, KeyError, TypeError, MckdError):
        return {}


def paired_difference_spread(folder_a: str | Path, folder_b: str | Path, metric: str) -> dict[str, float]:
    """Per subset, the standard deviation over seeds of ``a - b``, seed by seed (folders with common seeds).

    The spread a reader needs to judge a per-subset difference: the runs of
    one seed share a data split and a random start, so the paired spread is
    the honest one. Empty when the folders share fewer than two seeds.
    """
    tables_a, tables_b = seed_tables(folder_a), seed_tables(folder_b)
    common = sorted(set(tables_a) & set(tables_b))
    if len(common) < 2:
        return {}
    spread = {}
    for row in tables_a[common[0]]:
        subset = row["subset"]
        try:
            diffs = [float(next(r for r in tables_a[s] if r["subset"] == subset)[metric])
                     - float(next(r for r in tables_b[s] if r["subset"] == subset)[metric]) for s in common]
        except (StopIteration, KeyError, TypeError, ValueError):
            continue  # a subset undefined in some seed (no sample has it): no spread for it
        spread[subset] = float(np.std(diffs, ddof=1))
    return spread


def seed_means(folder: str | Path, metric: str) -> list[float]:
    """The mean of ``metric`` over all subsets, one value per seed of a multi-seed folder."""
    return [float(np.mean([float(r[metric]) for r in table if defined(r.get(metric))]))
            for _, table in sorted(seed_tables(folder).items())]


def finished_run(run_dir: Path, config: Any) -> bool:
    """Whether ``run_dir`` holds an evaluated run of exactly ``config`` (its resolved ``config.yaml``)."""
    import yaml

    run = RunDir(run_dir)
    files = (run.config, run.subsets.with_suffix(".csv"), run.observed.with_suffix(".csv"), run.metrics)
    if not all(path.is_file() for path in files):
        return False
    return yaml.safe_load(run.config.read_text()) == config.to_dict()


def final_weights(run_dirs: Sequence[Path]) -> dict[str, float]:
    """Final normalised weights, mean over runs (empty for a method without importance weights)."""
    finals = [read_weight_history(RunDir(d).metrics)[1] for d in run_dirs]
    if not finals or not finals[0]:
        return {}
    return {name: float(np.mean([f[name][-1] for f in finals])) for name in finals[0]}


def benchmark(
    config_path: str | Path,
    methods: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    overrides: Sequence[str] = (),
    reuse: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Train every method over every seed, compare each with the first, and write a summary.

    ``reuse``: keep finished runs of the same resolved config (see :func:`train_seeds`);
    ``force``: replace an existing ``out`` (refused otherwise).

    Writes ``out/<method>/...`` (see :func:`train_seeds`), ``out/compare_<a>_vs_<b>.{csv,md,png}``
    and ``out/summary.md``. Returns the comparison summaries.
    """
    out = Path(out)
    raw = load_raw(config_path)
    if len(methods) < 1:
        raise ConfigError("benchmark needs at least one method")
    repeated = sorted({m for m in methods if list(methods).count(m) > 1})
    if repeated:
        raise ConfigError(f"methods {repeated} are given more than once: a method compared with itself tells nothing")
    components.import_modules(apply_overrides(raw, overrides).get("imports") or [])  # methods they register
    check_overrides_fit_some_method(methods, overrides)
    configs = {name: config_from_dict(method_config(raw, name, overrides)) for name in methods}  # fail early
    check_writes_into_own_folder(out, "benchmark folder")
    with claim_output(out, replace=force or reuse, kind="dir", what="benchmark folder"):
        tables = {name: train_seeds(raw, overrides, seeds, out / name, reuse, method=name, force=force)
                  for name in methods}
        reference = methods[0]
        metric = configs[reference].task.options.primary_metric
        summaries = {}
        for other in methods[1:]:
            rows, summary = compare_tables(tables[reference], tables[other], metric, reference, other)
            stem = out / f"compare_{reference}_vs_{other}"
            write_table(rows, stem, title=f"{metric}: {reference} vs {other}, mean over seeds {list(seeds)}",
                        notes=test_sentence(summary, reference, other))
            plot_subset_comparison(rows, reference, other, metric, stem.with_suffix(".png"),
                                   difference_std=paired_difference_spread(out / reference, out / other, metric),
                                   seeds=len(seeds))
            summaries[other] = summary
        weights = final_weights([out / reference / f"seed_{s}" for s in seeds])
        spreads = {name: seed_means(out / name, metric) for name in methods}
        summary_text = write_summary(out, config_path, methods, seeds, tables, summaries, weights, metric, spreads)
        observed_text, observed = observed_comparison(out, methods, seeds, metric)
        summary_text += "\n" + observed_text
        if len(methods) > 1:
            summary_text += "\n" + write_methods_table(out, config_path, methods, seeds, tables, metric, overrides)
        atomic_write_text(out / "summary.md", summary_text)
        atomic_write_json(out / "summary.json", {"metric": metric, "comparisons": summaries, "observed": observed,
                                                 "final_weights": weights})
    return summaries


def observed_comparison(out: Path, methods: Sequence[str], seeds: Sequence[int], metric: str) -> tuple[str, list[Row]]:
    """The test split as observed (each sample with its own modalities), per method, paired by seed.

    For every method: the mean and standard deviation over seeds of the
    ``all, as observed`` row of ``eval/observed``; for every other method, the reference's
    difference paired by seed and a one-tailed paired t-test across seeds that
    the reference is better. Written to ``out/observed.{md,csv}``; returns the
    summary's Markdown and the rows.
    """
    from mckd.report import paired_test

    def all_row(name: str, seed: int) -> float | None:
        rows = read_table(RunDir(out / name).seed(seed).observed.with_suffix(".csv"))
        return rows[0].get(metric)

    values = {name: [all_row(name, s) for s in seeds] for name in methods}
    reference = methods[0]
    rows: list[Row] = []
    for name in methods:
        got = [v for v in values[name] if defined(v)]
        row: Row = {"method": name, metric: float(np.mean(got)) if got else None,
                    "std over seeds": float(np.std(got, ddof=1)) if len(got) > 1 else None, "seeds": len(got)}
        pairs = [(a, b) for a, b in zip(values[reference], values[name]) if defined(a) and defined(b)]
        if name != reference and pairs:
            a, b = np.array(pairs).T
            t, p = paired_test(a, b)
            row.update({f"{reference} - method": float((a - b).mean()), "p (paired by seed)": format_p(p)})
        rows.append(row)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    rows = [{key: row.get(key) for key in columns} for row in rows]
    note = (f"Every test sample predicted from the modalities it has (the `all, as observed` row of each seed's "
            "eval/observed); "
            f"p: one-tailed paired t-test across seeds {list(seeds)} that `{reference}` is better; {P_UNDEFINED_NOTE}")
    write_table(rows, out / "observed", title=f"{metric} as observed, mean over seeds {list(seeds)}", notes=note)
    text = "\n".join([f"## As observed ({metric})", "", note, "", markdown_table(rows), ""])
    return text, rows


def common_singles(out: Path, method: str) -> list[Row]:
    """``method``'s single modalities on the samples that have every modality, mean over seeds (none if not written)."""
    path = RunDir(out / method).aggregate_singles.with_suffix(".csv")
    return read_table(path) if path.is_file() else []


def ranking_samples(shared: int) -> str:
    """Which test samples a single-modality ranking is over (``shared``: how many have every modality, 0: none)."""
    if shared:
        return (f"each scored on the same {shared} test sample{'s' if shared != 1 else ''}, those that have every "
                "modality")
    return ("each scored on the test samples that have it, which differ from one modality to another when "
            "modalities are missing (no test sample has every modality)")


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
    seed_tables = {name: [read_table(RunDir(out / name).seed(s).subsets.with_suffix(".csv")) for s in seeds]
                   for name in methods}
    seed_means = {name: [float(np.mean([r[metric] for r in table if defined(r[metric])])) for table in tables_]
                  for name, tables_ in seed_tables.items()}
    common = common_singles(out, methods[0])
    summary, per_subset, strongest = method_comparison(tables, metric, methods[0], seed_means, common)
    shared = single_modality_ranking(rows_defined_in_all(tables, metric)[methods[0]], common, metric)[1]
    command = " ".join(["mckd benchmark", str(config_path), "--methods", *methods,
                        "--seeds", *map(str, seeds), *(f"--set {o}" for o in overrides), "--out", str(out)])
    text = "\n".join([
        f"## Methods compared ({metric}, test split, mean over seeds {list(seeds)})",
        "",
        f"Strongest modality (best alone under `{methods[0]}`; {ranking_samples(shared)}): {strongest}. "
        f"p: one-tailed paired t-test across subsets that `{methods[0]}` is better; {P_UNDEFINED_NOTE}",
        "",
        markdown_table(summary),
        "",
        "Methods: " + "; ".join(f"`{name}`: {describe_method(name)}" for name in methods) + ".",
        "",
        f"Command: `{command}`; per subset: `methods.md`, `methods.csv`.",
        "",
    ])
    write_table(per_subset, out / "methods", title=f"{metric} per subset, mean over seeds {list(seeds)}",
                notes=text)
    return text


def test_sentence(summary: Row, a: str, b: str) -> str:
    """One sentence: the means, the difference, wins and losses, and the one-tailed paired t-test.

    Over patterns it gives the mean weighted by samples too (each pattern counts by its test samples; the
    unweighted mean is the one the t-test is on).
    """
    count, kind = summary["rows"], summary["kind"]
    rows = f"{count} {kind if count != 1 else kind[:-1]}"
    head = (f"Mean over {rows}{', unweighted' if 'weighted' in summary else ''}: {a} {summary[a]:.4f}, "
            f"{b} {summary[b]:.4f} (difference {summary['difference']:+.4f})")
    if "weighted" in summary:
        weighted = summary["weighted"]
        head += (f"; weighted by test samples: {a} {weighted[a]:.4f}, {b} {weighted[b]:.4f} "
                 f"(difference {weighted['difference']:+.4f})")
    head += f"; {a} better on {summary['wins']}, worse on {summary['losses']}; "
    if summary["t"] is None or math.isnan(summary["t"]):
        why = (f"the two are equal on every {kind[:-1]}" if summary["wins"] == summary["losses"] == 0
               else f"the differences do not vary, or too few {kind}")
        return head + f"no t-test ({why})."
    better = ">" if summary.get("higher_is_better", True) else "<, lower is better"
    return head + (f"one-tailed paired t-test across {kind} ({a} {better} {b}): t = {summary['t']:.2f}, "
                   f"p = {format_p(summary['p_one_tailed'])}.")


def write_summary(
    out: Path,
    config_path: str | Path,
    methods: Sequence[str],
    seeds: Sequence[int],
    tables: dict[str, list[Row]],
    summaries: dict[str, Row],
    weights: dict[str, float],
    metric: str,
    seed_spreads: dict[str, Sequence[float]] | None = None,
) -> str:
    """A short, readable account: weight ranking, single-modality ranking, where the reference gains or loses.

    ``seed_spreads``: per method, the mean over subsets of each seed; its
    standard deviation over seeds is the one spread the summary gives.
    """
    reference = methods[0]
    tables = rows_defined_in_all(tables, metric)  # subsets no test sample has are not summarised
    ranked = sorted(weights, key=weights.get, reverse=True)
    singles, shared = single_modality_ranking(tables[reference], common_singles(out, reference), metric)
    different = not shared and len({r.get("samples") for r in singles}) > 1  # modalities missing for different samples

    def spread(name: str) -> Any:
        values = (seed_spreads or {}).get(name) or []
        return float(np.std(values, ddof=1)) if len(values) > 1 else "n/a (one seed)"

    lines = [
        f"# Benchmark: {', '.join(methods)} on `{config_path}`",
        "",
        f"Seeds {list(seeds)}; {metric} on the test split, every subset of modalities; mean over seeds. "
        "Each run's final checkpoint (nothing is selected on the test split).",
        "",
        "## Learned importance weights",
        "",
        (f"Final normalised weights of `{reference}` (mean over seeds), highest first: "
         + ", ".join(f"{name} {weights[name]:.3f}" for name in ranked) + ".") if weights
        else f"`{reference}` learns no importance weights.",
        "",
        f"Single-modality {metric} of `{reference}`, highest first: "
        + ", ".join(f"{r['subset']} {r[metric]:.3f}" + (f" (n={r['samples']})" if different else "") for r in singles)
        + (f", {ranking_samples(shared)}." if shared else
           ". Each is scored on the test samples that have that modality, which differ from one modality to "
           "another here, so the ranking compares different samples as well as modalities." if different else "."),
        "",
        "## Mean over subsets",
        "",
        markdown_table([
            {"method": name, f"mean {metric}": float(np.mean([r[metric] for r in tables[name]])),
             "std over seeds": spread(name)}
            for name in methods
        ]),
        f"std over seeds: the sample standard deviation, over the seeds, of each seed's mean {metric} over "
        "all subsets.",
        "",
    ]
    top_two = set(ranked[:2])
    for other, summary in summaries.items():
        lacking = [r for r in tables[reference] if top_two and not top_two & set(str(r["subset"]).split("+"))]
        others = {r["subset"]: r for r in tables[other]}
        diffs = sorted(((r[metric] - others[r["subset"]][metric]), r["subset"]) for r in tables[reference])
        gains = [(d, s) for d, s in reversed(diffs) if d > 0][:3]
        losses = [(d, s) for d, s in diffs if d < 0][:3]
        lines += [
            f"## `{reference}` against `{other}`",
            "",
            test_sentence(summary, reference, other),
            "",
        ]
        if lacking:
            gain = float(np.mean([r[metric] - others[r["subset"]][metric] for r in lacking]))
            lines += [
                f"Over the {plural(len(lacking), 'subset')} that lack{'s' if len(lacking) == 1 else ''} both of the two "
                "highest-weighted modalities "
                f"({', '.join(ranked[:2])}), the mean difference is {gain:+.4f}.",
                "",
            ]
        lines += [
            "Largest gains: " + (", ".join(f"{s} {d:+.4f}" for d, s in gains) if gains
                                 else f"none (`{reference}` is better on no subset)") + ".",
            "",
            "Largest losses: " + (", ".join(f"{s} {d:+.4f}" for d, s in losses) if losses
                                  else f"none (`{reference}` is worse on no subset)") + ".",
            "",
            f"Table: `compare_{reference}_vs_{other}.md`; plot: `compare_{reference}_vs_{other}.png`.",
            "",
        ]
    if weights:
        lines += [f"Weights over training: `{reference}/weights.png`.", ""]
    return "\n".join(lines)
