"""Runs a README segmentation recipe as written and prints its Dice per region and subset beside the README's figures.

The recipes (the commands are the README's, run with ``mckd`` in subprocesses
at one thread):

- ``small`` (configs/brats_small_cpu.yaml): the four 2-sequence BraTS 2013
  cases, FLAIR + T1c; test case brats_2013_pat0006_1;
- ``four`` (configs/brats4_cpu.yaml): the two 4-sequence BraTS 2018/2021
  cases and the 2013 cases in one cache; test case BraTS2021_00006, all 15
  subsets.

The README states each recipe's figures in a table after a marker line
``<!-- seg-quality: RECIPE -->`` (``| subset | ET | TC | WT |``, Dice in %);
this script reads them from there and prints, per subset, the measured Dice
beside the stated one and the difference. ``--seeds 0 1 2`` trains one run
per seed (the README states seed 0's figures; other seeds show the spread).
``--set KEY=VALUE`` passes a config override to ``mckd train`` (its runs go to
their own folders and are not held to the README's figures), e.g.
``--set task.output_prior=false`` for the head's start before issue 20's fix.
Times are wall seconds and the CPU seconds of the ``mckd`` process (on a
shared machine the second is the one to compare).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/seg_quality.py                 # the small recipe, seed 0
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/seg_quality.py --recipe four
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/seg_quality.py --seeds 0 1 2 --work /tmp/sq
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/seg_quality.py --set task.output_prior=false

Exit status 1 when a region of a subset differs from the README by more than
``--tolerance`` Dice points on seed 0 (the same code on the same machine gives
the same figures to about a point: float sums in another order).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MCKD_SHARED_DATA", ROOT.parent / "shared" / "data"))
MCKD = [sys.executable, "-m", "mckd.cli"]

RECIPES = {
    "small": {
        "config": "configs/brats_small_cpu.yaml",
        "prepare": lambda cache: ["prepare", "seg", str(DATA / "brats2013"), str(cache),
                                  "--format", "configs/brats2013_layout.yaml"],
    },
    "four": {
        "config": "configs/brats4_cpu.yaml",
        "prepare": lambda cache: ["prepare", "seg", str(DATA / "brats4"), str(DATA / "brats2013"), str(cache),
                                  "--format", "auto", "--format", "configs/brats2013_layout.yaml", "--allow-missing"],
    },
}
REGIONS = ("et", "tc", "wt")


def readme_figures(recipe: str) -> dict[str, dict[str, float]]:
    """The README's table after ``<!-- seg-quality: RECIPE -->``: subset -> region -> Dice (%)."""
    text = (ROOT / "docs" / "segmentation.md").read_text()
    marker = f"<!-- seg-quality: {recipe} -->"
    if marker not in text:
        return {}
    figures = {}
    for line in text.split(marker, 1)[1].lstrip().splitlines():
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"[\d.]+", cells[1] or ""):
            figures[cells[0]] = dict(zip(REGIONS, (float(c) for c in cells[1:4])))
    return figures


def run(command: list[str], log: Path) -> tuple[float, float]:
    """Run ``mckd`` with ``command`` at one thread from the project root; its output to ``log``; (wall, CPU) seconds."""
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("a") as out:
        out.write("$ mckd " + " ".join(command) + "\n")
        out.flush()
        result = subprocess.run(MCKD + command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode:
        sys.exit(f"mckd {' '.join(command)} failed (exit {result.returncode}); see {log}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - started, cpu


def measured(run_dir: Path) -> dict[str, dict[str, float]]:
    """subset -> region -> Dice (%) from a run's eval/subsets.csv (subsets no test case has are left out)."""
    out = {}
    for row in csv.DictReader((run_dir / "eval" / "subsets.csv").open()):
        if row.get("dice_et") not in ("", None):
            out[row["subset"].replace("+", " + ")] = {r: 100 * float(row[f"dice_{r}"]) for r in REGIONS}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="small")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work", help="folder for the cache and runs (default: a new temporary folder)")
    parser.add_argument("--tolerance", type=float, default=2.0, help="Dice points (default 2)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for mckd train (repeatable); not held to the README's figures")
    args = parser.parse_args()
    recipe = RECIPES[args.recipe]
    work = Path(args.work or tempfile.mkdtemp(prefix=f"mckd_seg_quality_{args.recipe}_"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    cache = work / "cache"
    if not (cache / "dataset.json").is_file():
        wall, cpu = run(recipe["prepare"](cache) + ["--no-progress"], log)
        print(f"prepare: {wall:.1f} s ({cpu:.1f} s CPU)")
    stated = {} if args.overrides else readme_figures(args.recipe)
    tag = "".join("_" + re.sub(r"[^\w.=-]", "", o) for o in args.overrides)
    sets = [arg for override in args.overrides for arg in ("--set", override)]
    worst = 0.0
    for seed in args.seeds:
        run_dir = work / f"run_seed{seed}{tag}"
        if not (run_dir / "eval" / "subsets.csv").is_file():
            wall, cpu = run(["train", recipe["config"], "--out", str(run_dir), "--force", "--set", f"data.cache={cache}",
                             "--set", f"seed={seed}", "--set", "train.progress=false", *sets], log)
            print(f"seed {seed}: train and evaluate {wall:.0f} s ({cpu:.0f} s CPU)")
        found = measured(run_dir)
        print(f"\n{args.recipe} recipe ({recipe['config']}{''.join(' --set ' + o for o in args.overrides)}), "
              f"seed {seed}: Dice % on the test case, measured (README)"
              f"{'' if stated else ' - no README figures to compare with'}")
        print(f"| subset | ET | TC | WT |\n|---|---|---|---|")
        for subset, dice in found.items():
            cells = []
            for region in REGIONS:
                said = stated.get(subset, {}).get(region)
                if said is None:
                    cells.append(f"{dice[region]:.1f}")
                else:
                    cells.append(f"{dice[region]:.1f} ({said:.1f})")
                    if seed == args.seeds[0]:
                        worst = max(worst, abs(dice[region] - said))
            print(f"| {subset} | " + " | ".join(cells) + " |")
        means = {r: sum(d[r] for d in found.values()) / len(found) for r in REGIONS}
        print(f"| mean over {len(found)} subsets | " + " | ".join(f"{means[r]:.1f}" for r in REGIONS) + " |")
    print(f"\nwork folder: {work} (commands and output in {log})")
    if stated:
        print(f"largest difference from the README on seed {args.seeds[0]}: {worst:.1f} Dice points")
        if worst > args.tolerance:
            sys.exit(1)


if __name__ == "__main__":
    main()
