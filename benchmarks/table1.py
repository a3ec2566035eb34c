"""Table 1 rebuilt: every method on the same cache, crops, iterations and missing-subset policy, one command.

    python benchmarks/table1.py CONFIG --out OUT [--split SPLIT.yaml] [--folds 1 2 3] [--seeds 0]
        [--methods mckd baseline hemis lckd shaspec uhved robust_mseg mmformer rfnet gss]
        [--crop-of mmformer=128,128,128] [--set KEY=VALUE ...]

For every fold of ``--split`` (a YAML file of train / val / test case ids,
``configs/splits/``; without it the config's own split, the challenge's
protocol when its test cases are the validation set) it runs ``mckd
benchmark CONFIG --methods ... --seeds ... --reuse`` with the fold's cases
(``OUT/fold_<k>/``; ``--reuse`` keeps finished runs, so an interrupted table
continues), each method with its own defaults, the config's ``train:``,
``data:`` and ``missing:`` sections for all. ``--crop-of`` gives a method
another crop (mmFormer's published 128^3), in a benchmark of its own.

Then it reads every run's ``eval/subsets.csv`` (Dice and HD95 of every
region on the test cases, for every subset of the sequences) and writes
``OUT/table1.md`` and ``OUT/table1.csv``:

- per region (ET, TC, WT), a table of Dice (%) with one row per subset
  (● present, ○ missing), one column per method, the mean over subsets, and
  the paper's last row: a one-tailed paired t-test across subsets that MCKD
  (the first method) is better than each other method;
- the same for HD95 (mm; the test asks whether MCKD's is lower);
- the published averages beside ours, with the protocol each comes from.

Values are means over seeds, then over folds. What a table built from a
handful of cases can say is in its header: nothing about which method is
better, when the test cases are few.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mckd.report import paired_test  # noqa: E402

METHODS = ["mckd", "baseline", "hemis", "lckd", "shaspec", "uhved", "robust_mseg", "mmformer", "rfnet", "gss"]
REGIONS = ("et", "tc", "wt")
NAMES = {"mckd": "MCKD", "baseline": "baseline", "hemis": "U-HeMIS", "lckd": "LCKD", "shaspec": "ShaSpec",
         "uhved": "U-HVED", "robust_mseg": "Robust-MSeg", "mmformer": "mmFormer", "rfnet": "RFNet", "gss": "GSS",
         "demoseg": "DeMoSeg", "m3ae": "M3AE"}

# Published BraTS 2018 averages over the 15 subsets (Dice % ET / TC / WT) and the protocol they come from: the
# challenge's 66 validation cases scored online, or RFNet's three folds of the 285 training cases (199 / 29 / 57,
# configs/splits/brats2018_rfnet.yaml). The MCKD paper's Table 1 lists its peers' figures beside its own.
PUBLISHED = {
    "hemis": ("as listed in the MCKD paper's Table 1", 46.10, 62.57, 74.05),
    "uhved": ("as listed in the MCKD paper's Table 1", 46.76, 64.84, 79.16),
    "robust_mseg": ("as listed in the MCKD paper's Table 1", 51.02, 69.78, 84.39),
    "mmformer": ("as listed in the MCKD paper's Table 1 (mmFormer's own paper: a split of the training cases)",
                 59.85, 72.97, 82.94),
    "shaspec": ("challenge validation set, scored online (MCKD paper, Table 1)", 61.58, 77.45, 85.92),
    "mckd": ("challenge validation set, scored online (MCKD paper, Table 1)", 63.74, 79.15, 86.90),
    "rfnet": ("3-fold split of the training cases (RFNet, ICCV 2021)", 57.12, 76.53, 85.67),
    "gss": ("3-fold split of the training cases (GSS on RFNet, ICCV 2023)", 63.49, 78.25, 87.20),
    "m3ae": ("3-fold split of the training cases (M3AE, AAAI 2023; not run here)", 59.9, 77.4, 85.8),
    "demoseg": ("3-fold split of the training cases (DeMoSeg, BIBM 2024; not run here)", 64.90, 79.79, 87.96),
}


def load_split(path: Path) -> list[dict[str, Any]]:
    """The folds of a split file: ``folds: [{name, train: [...], val: [...], test: [...]}, ...]``."""
    record = yaml.safe_load(path.read_text())
    folds = record.get("folds") if isinstance(record, dict) else None
    if not folds or any(not all(fold.get(k) for k in ("train", "val", "test")) for fold in folds):
        raise SystemExit(f"table1: {path}: expected 'folds:', each with non-empty train, val and test lists")
    for fold in folds:
        overlap = (set(fold["train"]) & set(fold["val"])) | (set(fold["train"]) | set(fold["val"])) & set(fold["test"])
        if overlap:
            raise SystemExit(f"table1: {path}: fold {fold.get('name')} has cases in two parts: {sorted(overlap)[:5]}")
    return folds


def case_overrides(fold: dict[str, Any] | None) -> list[str]:
    if fold is None:
        return []
    return [f"data.{part}_cases=[{','.join(fold[part])}]" for part in ("train", "val", "test")]


def exit_cause(returncode: int) -> str:
    """How a child process ended, for a person: its exit status, or the signal that killed it and what sends that.

    A process killed by SIGKILL writes nothing (no Python handler runs): the kernel's out-of-memory killer
    (``dmesg`` says so) or a ``kill -9`` from another process.
    """
    if returncode >= 0:
        return f"exit status {returncode} (its error is above)"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    if name == "SIGKILL":
        return ("killed by SIGKILL, which leaves no message: the kernel's out-of-memory killer (see `dmesg`) "
                "or a `kill -9` from another process")
    return f"killed by {name}"


def run_benchmarks(args: argparse.Namespace, folds: list[dict[str, Any] | None]) -> list[Path]:
    """``mckd benchmark`` for every fold (and every group of methods with their own crop); the fold folders."""
    crops = dict(item.split("=", 1) for item in args.crop_of)
    groups: list[tuple[list[str], list[str]]] = [([m for m in args.methods if m not in crops], [])]
    groups += [([m], [f"data.crop=[{crops[m]}]"]) for m in args.methods if m in crops]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out_folds = []
    for index, fold in enumerate(folds, start=1):
        folder = args.out / (f"fold_{fold.get('name', index)}" if fold else "config_split")
        out_folds.append(folder)
        for methods, extra in groups:
            if not methods:
                continue
            command = [sys.executable, "-m", "mckd.cli", "benchmark", str(args.config), "--methods", *methods,
                       "--seeds", *map(str, args.seeds), "--out", str(folder), "--reuse"]
            for item in [*case_overrides(fold), *args.set, *extra]:
                command += ["--set", item]
            start = time.perf_counter()
            print(f"[{folder.name}] {' '.join(methods)}{' with ' + ' '.join(extra) if extra else ''}", flush=True)
            done = subprocess.run(command, env=env)
            if done.returncode:
                raise SystemExit(f"table1: `mckd benchmark` failed for {folder.name} ({' '.join(methods)}): "
                                 f"{exit_cause(done.returncode)}; the same command continues from the finished runs")
            print(f"[{folder.name}] done in {time.perf_counter() - start:.0f} s", flush=True)
    return out_folds


def read_rows(folders: list[Path], methods: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """Every (fold, seed, method, subset) row of the runs' ``eval/subsets.csv``."""
    rows = []
    for folder in folders:
        for method in methods:
            for seed in seeds:
                path = folder / method / f"seed_{seed}" / "eval" / "subsets.csv"
                if not path.is_file():
                    raise SystemExit(f"table1: {path} is missing (the benchmark did not finish)")
                with path.open() as handle:
                    for row in csv.DictReader(handle):
                        rows.append({"fold": folder.name, "seed": seed, "method": method, **row})
    return rows


def number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def averaged(rows: list[dict[str, Any]], methods: list[str], metric: str) -> tuple[list[str], dict[str, list[float | None]]]:
    """Subsets in order and, per method, ``metric`` per subset: mean over seeds within a fold, then over folds."""
    subsets = list(dict.fromkeys(r["subset"] for r in rows))
    table: dict[str, list[float | None]] = {}
    for method in methods:
        values = []
        for subset in subsets:
            per_fold: dict[str, list[float]] = {}
            for r in rows:
                value = number(r.get(metric))
                if r["method"] == method and r["subset"] == subset and value is not None:
                    per_fold.setdefault(r["fold"], []).append(value)
            means = [float(np.mean(v)) for v in per_fold.values()]
            values.append(float(np.mean(means)) if means else None)
        table[method] = values
    return subsets, table


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def format_p(p: float | None) -> str:
    return "–" if p is None or math.isnan(p) else f"{p:.2g}"


def region_table(subsets: list[str], table: dict[str, list[float | None]], modalities: list[str], methods: list[str],
                 scale: float, higher_is_better: bool) -> list[str]:
    """Markdown lines: one row per subset, the mean over subsets, and MCKD's one-tailed paired test against each."""
    header = [*modalities, *(NAMES.get(m, m) for m in methods)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for i, subset in enumerate(subsets):
        marks = ["●" if m in subset.split("+") else "○" for m in modalities]
        lines.append("| " + " | ".join(marks + [fmt(None if table[m][i] is None else scale * table[m][i])
                                               for m in methods]) + " |")
    defined = [i for i in range(len(subsets)) if all(table[m][i] is not None for m in methods)]
    means = [float(np.mean([table[m][i] for i in defined])) * scale if defined else None for m in methods]
    lines.append("| **average** |" + " |" * (len(modalities) - 1) + " " + " | ".join(f"**{fmt(v)}**" for v in means) + " |")
    reference = methods[0]
    ps = ["" ]
    for m in methods[1:]:
        a = np.array([table[reference][i] for i in defined], dtype=float)
        b = np.array([table[m][i] for i in defined], dtype=float)
        _, p = paired_test(a, b) if higher_is_better else paired_test(b, a)
        ps.append(format_p(p))
    lines.append(f"| p ({NAMES.get(reference, reference)} better) |" + " |" * (len(modalities) - 1) + " "
                 + " | ".join(ps) + " |")
    return lines


def write_tables(args: argparse.Namespace, rows: list[dict[str, Any]], modalities: list[str], folds: list[str],
                 elapsed: float) -> str:
    methods = args.methods
    test_cases = sorted({r.get("samples") for r in rows if r.get("samples")})
    lines = [
        f"# Table 1 rebuilt: {', '.join(NAMES.get(m, m) for m in methods)}",
        "",
        f"Config `{args.config}`; {'split file `' + str(args.split) + '`, folds ' + ', '.join(folds) if args.split else 'the config own split'}; "
        f"seeds {args.seeds}; overrides {args.set or 'none'}; per-method crops {args.crop_of or 'none'}. "
        f"Each method with its own defaults; the same cache, crops, iterations and missing-subset policy. "
        f"Mean over seeds, then over folds, of the mean over the test cases that have each subset "
        f"(test cases per subset: {', '.join(map(str, test_cases))}). Final checkpoints; nothing selected on a test split. "
        f"Wall time {elapsed / 60:.0f} min.",
        "",
    ]
    if args.note:
        lines += [args.note, ""]
    for kind, metric, scale, better in (("Dice (%)", "dice", 100.0, True), ("HD95 (mm)", "hd95", 1.0, False)):
        for region in REGIONS:
            subsets, table = averaged(rows, methods, f"{metric}_{region}")
            lines += [f"## {kind}, {region.upper()}", "", *region_table(subsets, table, modalities, methods, scale, better), ""]
    lines += ["p: one-tailed paired t-test across the subsets (rows) that the first method is better (Dice higher, "
              "HD95 lower), as the paper's last row; – when undefined.", "",
              "## Published averages beside ours (Dice %, ET / TC / WT, mean over the 15 subsets)", "",
              "| method | ours | published | protocol of the published figure |", "|---|---|---|---|"]
    ours = {region: averaged(rows, methods, f"dice_{region}")[1] for region in REGIONS}
    for m in [*methods, *(k for k in PUBLISHED if k not in methods)]:
        mine = "not run"
        if m in methods:
            means = []
            for region in REGIONS:
                values = [v for v in ours[region][m] if v is not None]
                means.append(fmt(100 * float(np.mean(values)) if values else None))
            mine = " / ".join(means)
        protocol, *published = PUBLISHED.get(m, ("no published BraTS 2018 figure", None, None, None))
        lines.append(f"| {NAMES.get(m, m)} | {mine} | {' / '.join(fmt(v) for v in published)} | {protocol} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", type=Path, help="YAML of folds of train / val / test case ids (configs/splits/)")
    parser.add_argument("--folds", nargs="*", type=int, help="which folds of --split (1-based; default all)")
    parser.add_argument("--methods", nargs="+", default=METHODS, help="the first is the reference of the tests")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--crop-of", nargs="*", default=[], metavar="METHOD=X,Y,Z")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every method")
    parser.add_argument("--note", default="", help="a sentence written under the table's header")
    parser.add_argument("--tables-only", action="store_true", help="write the tables from the runs already in --out")
    args = parser.parse_args(argv)
    split_folds = load_split(args.split) if args.split else [None]
    if args.split and args.folds:
        split_folds = [split_folds[k - 1] for k in args.folds]
    start = time.perf_counter()
    if args.tables_only:
        folders = [args.out / (f"fold_{f.get('name', i)}" if f else "config_split")
                   for i, f in enumerate(split_folds, start=1)]
    else:
        folders = run_benchmarks(args, split_folds)
    rows = read_rows(folders, args.methods, args.seeds)
    data = json.loads((folders[0] / args.methods[0] / f"seed_{args.seeds[0]}" / "data.json").read_text())
    text = write_tables(args, rows, list(data["modalities"]), [f.name for f in folders], time.perf_counter() - start)
    (args.out / "table1.md").write_text(text)
    with (args.out / "table1.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"written: {args.out / 'table1.md'}, {args.out / 'table1.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
