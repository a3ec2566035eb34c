"""The paper's Table 2 on Audiovision-MNIST, and its Fig. 4b (importance weights over training).

For each direction (missing audio: test with images only; missing images: test
with audio only) and each rate r (the share of training samples that keep the
missing modality), train over several seeds:

- ``MCKD``: the config as written (CKD + meta-learned weights);
- ``no-CKD``: the same network and data, ``method.alpha=0``, no meta step;
- ``LowerB``: a single-modality network on the test-time modality only
  (every training sample has it, so it does not depend on r);
- ``UpperB``: the two-modality no-CKD network trained with both modalities
  complete, tested with both (it depends on neither r nor the direction).

Every run trains for the config's full length and its final model is
evaluated once on the test split: nothing is selected on the test split.
Finished runs are kept (``<out>/<name>/seed_<s>/eval/subsets.csv``) and
skipped when the script is run again, so an interrupted table continues;
several copies of the same command share the work (each run is claimed by
one live process); ``--report-only`` writes the table from what has finished.

Writes ``<out>/table.md`` (mean ± std over seeds, in %, beside the paper's
numbers), ``<out>/table.csv`` and ``<out>/weights_missing_<m>.png`` (Fig. 4b).

    python benchmarks/avmnist_table.py --seeds 0 1 2 --out runs/avmnist_table
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from mckd.io import atomic_write_text
from mckd.config import apply_overrides, config_from_dict, load_raw
from mckd.report import plot_weights, read_table, read_weight_history
from mckd.runs import evaluate_run
from mckd.train import train

METRICS = "metrics.jsonl"

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"audio": ROOT / "configs" / "avmnist_missing_audio.yaml", "image": ROOT / "configs" / "avmnist_missing_image.yaml"}
OTHER = {"audio": "image", "image": "audio"}
# The paper's Table 2 (missing audio, image-only test accuracy %, r = 5/10/15/20).
PAPER = {
    "MCKD": [93.56, 94.22, 94.89, 95.11],
    "ShaSpec": [93.33, 93.56, 93.78, 94.67],
    "SMIL": [92.89, 93.11, 93.33, 94.44],
    "LowerB": [92.35] * 4,
    "UpperB": [98.22] * 4,
}
NO_METHOD = ["method.alpha=0", "method.meta=false"]


def plan(rates: list[int], directions: list[str]) -> list[tuple[str, str, list[str], str]]:
    """``(run name, config direction, overrides, subset reported)`` in the order they run.

    The bounds first, then the rates in the order given (so a partial table has whole columns).
    """
    runs = [("upperb", directions[0], ["missing.policy=none", *NO_METHOD], "image+audio")]
    for missing in directions:
        test = OTHER[missing]
        runs.append((f"missing_{missing}/lowerb", missing,
                     [f"data.modalities=[{test}]", "missing.policy=none", *NO_METHOD], test))
    for rate in rates:
        for missing in directions:
            test = OTHER[missing]
            rate_set = f"missing.rates={{{missing}: {rate / 100}}}"
            runs.append((f"missing_{missing}/r{rate}/mckd", missing, [rate_set], test))
            runs.append((f"missing_{missing}/r{rate}/nockd", missing, [rate_set, *NO_METHOD], test))
    return runs


def claim(run_dir: Path) -> bool:
    """Take ``run_dir`` for this process unless another live process has it (several workers share one plan)."""
    marker = run_dir / "claimed_by"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            os.kill(int(marker.read_text() or 0), 0)
            return False  # a live worker is on it
        except (ProcessLookupError, ValueError):
            marker.unlink(missing_ok=True)  # a stopped worker's claim: take it over
            return claim(run_dir)
    with os.fdopen(fd, "w") as stream:
        stream.write(str(os.getpid()))
    return True


def run_one(name: str, missing: str, overrides: list[str], seed: int, out: Path, extra: list[str]) -> None:
    """Train and evaluate one seed unless it has finished before or another worker is on it."""
    run_dir = out / name / f"seed_{seed}"
    if (run_dir / "eval" / "subsets.csv").is_file() or not claim(run_dir):
        return
    raw = load_raw(CONFIGS[missing])
    config = config_from_dict(apply_overrides(raw, [*overrides, *extra, f"seed={seed}", "train.progress=false"]))
    start = time.perf_counter()
    train(config, run_dir)
    evaluate_run(run_dir, config.train.device)
    print(f"{name} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)


def accuracy(out: Path, name: str, subset: str, seeds: list[int]) -> list[float]:
    """Test accuracy (%) of ``subset`` for each finished seed of run ``name``."""
    values = []
    for seed in seeds:
        path = out / name / f"seed_{seed}" / "eval" / "subsets.csv"
        if path.is_file():
            rows = {r["subset"]: r for r in read_table(path)}
            values.append(100.0 * float(rows[subset]["accuracy"]))
    return values


def paired(out: Path, name: str, subset: str, seeds: list[int]) -> dict[int, float]:
    """Seed -> test accuracy (%) of the finished seeds of run ``name``."""
    return {seed: value for seed in seeds for value in accuracy(out, name, subset, [seed])}


def cell(values: list[float], seeds: list[int]) -> str:
    if not values:
        return "—"
    text = f"{np.mean(values):.2f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.2f}"
    return text if len(values) == len(seeds) else f"{text} ({len(values)} seeds)"


def final_weights(out: Path, name: str, seeds: list[int]) -> list[dict[str, float]]:
    finals = []
    for seed in seeds:
        path = out / name / f"seed_{seed}" / METRICS
        if (out / name / f"seed_{seed}" / "eval" / "subsets.csv").is_file():
            _, history = read_weight_history(path)
            finals.append({m: values[-1] for m, values in history.items()})
    return finals


def report(out: Path, rates: list[int], directions: list[str], seeds: list[int], command: str) -> str:
    """Write ``table.md``, ``table.csv`` and the weight plots from the finished runs; return the Markdown."""
    header = ["direction", "model"] + [f"r = {r}%" for r in rates]
    rows: list[list[str]] = []
    csv_rows = []
    for missing in directions:
        test = OTHER[missing]
        direction = f"missing {missing} ({test}-only test)"
        named = [("MCKD", "mckd"), ("no-CKD", "nockd")]
        for label, key in named:
            cells = []
            for rate in rates:
                values = accuracy(out, f"missing_{missing}/r{rate}/{key}", test, seeds)
                cells.append(cell(values, seeds))
                csv_rows.append({"direction": missing, "model": label, "rate": rate, "values": values})
            rows.append([direction, label, *cells])
        lower = accuracy(out, f"missing_{missing}/lowerb", test, seeds)
        rows.append([direction, f"LowerB ({test} only)", *[cell(lower, seeds)] * len(rates)])
        for label, other in (("MCKD − no-CKD, paired by seed", "nockd"), ("MCKD − LowerB, paired by seed", None)):
            cells = []
            for rate in rates:
                ours = paired(out, f"missing_{missing}/r{rate}/mckd", test, seeds)
                theirs = paired(out, f"missing_{missing}/r{rate}/{other}" if other else f"missing_{missing}/lowerb",
                                test, seeds)
                common = sorted(set(ours) & set(theirs))
                cells.append(cell([ours[s] - theirs[s] for s in common], seeds) if common else "—")
            rows.append([direction, label, *cells])
        csv_rows.append({"direction": missing, "model": "LowerB", "rate": "", "values": lower})
        if missing == "audio":
            for label, values in PAPER.items():
                rows.append([direction, f"paper: {label}",
                             *[f"{values[[5, 10, 15, 20].index(r)]:.2f}" if r in (5, 10, 15, 20) else "—" for r in rates]])
    upper = accuracy(out, "upperb", "image+audio", seeds)
    rows.append(["both complete (image+audio test)", "UpperB", *[cell(upper, seeds)] * len(rates)])
    csv_rows.append({"direction": "none", "model": "UpperB", "rate": "", "values": upper})

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    weight_lines = []
    for missing in directions:
        for rate in rates:
            finals = final_weights(out, f"missing_{missing}/r{rate}/mckd", seeds)
            if finals:
                mean = {m: np.mean([f[m] for f in finals]) for m in finals[0]}
                low = {m: min(f[m] for f in finals) for m in finals[0]}
                high = {m: max(f[m] for f in finals) for m in finals[0]}
                weight_lines.append(f"| missing {missing} | {rate}% | " + " | ".join(
                    f"{mean[m]:.3f} ({low[m]:.3f}-{high[m]:.3f})" for m in ("image", "audio")) + f" | {len(finals)} |")
        for rate in rates:
            paths = [out / f"missing_{missing}/r{rate}/mckd" / f"seed_{s}" / METRICS for s in seeds
                     if (out / f"missing_{missing}/r{rate}/mckd" / f"seed_{s}" / "eval" / "subsets.csv").is_file()]
            if paths:
                plot_weights(paths, out / f"weights_missing_{missing}_r{rate}.png",
                             title=f"AV-MNIST importance weights, missing {missing}, r = {rate}%")
    text = "\n".join([
        f"Test accuracy (%), mean ± std over seeds {seeds} (sample std); the final model of each run, "
        "nothing selected on the test split.",
        "",
        *lines,
        "",
        "Final importance weights of MCKD (softmax), mean over seeds (min-max):",
        "",
        "| direction | r | image | audio | seeds |",
        "|---|---|---|---|---|",
        *weight_lines,
        "",
        f"Command: `{command}`",
        "",
    ])
    atomic_write_text(out / "table.md", text)
    with (out / "table.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["direction", "model", "rate_percent", "mean", "std", "seeds", "values"])
        for row in csv_rows:
            values = row["values"]
            writer.writerow([row["direction"], row["model"], row["rate"],
                             f"{np.mean(values):.4f}" if values else "",
                             f"{np.std(values, ddof=1):.4f}" if len(values) > 1 else "",
                             len(values), json.dumps([round(v, 4) for v in values])])
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[5, 10, 15, 20], help="percentages (default: 5 10 15 20)")
    parser.add_argument("--directions", nargs="+", choices=["audio", "image"], default=["audio", "image"],
                        help="which modality goes missing (default: audio image)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--out", default="runs/avmnist_table", help="output folder (default: runs/avmnist_table)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of both configs for every run (e.g. data.path=...)")
    parser.add_argument("--report-only", action="store_true", help="write the table from the finished runs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    command = " ".join(["python benchmarks/avmnist_table.py", "--rates", *map(str, args.rates), "--directions",
                        *args.directions, "--seeds", *map(str, args.seeds), "--out", str(out),
                        *(f"--set {o}" for o in args.overrides)])
    if not args.report_only:
        out.mkdir(parents=True, exist_ok=True)
        # seeds innermost per run name, so a partial table has whole cells
        for name, missing, overrides, _ in plan(args.rates, args.directions):
            for seed in args.seeds:
                run_one(name, missing, overrides, seed, out, args.overrides)
    print(report(out, sorted(args.rates), args.directions, args.seeds, command))
    print(f"written: {out / 'table.md'}, {out / 'table.csv'}, {out}/weights_missing_*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
