"""Does each method learn? Train on one real case with all four sequences, predict it, score every region.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/seg_learning.py --cases CASES_FOLDER --cache CACHE \\
        [--methods uhved rfnet ...] [--iterations 100] [--json out.json] [--set KEY=VALUE ...]

``CASES_FOLDER`` is ``benchmarks/shared_cases.py``'s folder and ``CACHE`` its
``mckd prepare seg ... --allow-missing`` cache. Each method trains with
``configs/table1_cpu.yaml`` (3 mm, 32^3 crops, Adam 3e-3 cosine for every
method: ``method.optimizer=config``) on ``Brats18_2013_21_1`` alone, every
sequence present (``missing.policy=none``), then ``mckd predict`` segments
that training case from its files and the Dice of ET, TC and WT is computed
here against its label file on the original grid (nibabel; BraTS 2018
values), not by mckd. A method that learns predicts every region there;
this says nothing about unseen cases.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CASE = "Brats18_2013_21_1"
OTHERS = {"val": "brats_2013_pat0003_1", "test": "brats_2013_pat0005_1"}  # required by the data; never scored here
REGIONS = {"ET": (4,), "TC": (1, 4), "WT": (1, 2, 4)}
METHODS = ["mckd", "baseline", "hemis", "lckd", "shaspec", "uhved", "robust_mseg", "mmformer", "rfnet", "gss"]


def dice(predicted: np.ndarray, truth: np.ndarray, values: tuple[int, ...]) -> float:
    p, g = np.isin(predicted, values), np.isin(truth, values)
    total = p.sum() + g.sum()
    return 1.0 if total == 0 else float(2 * (p & g).sum() / total)


def learn(method: str, cases: Path, cache: Path, iterations: int, overrides: list[str], work: Path) -> dict:
    from mckd.config import config_from_dict, load_raw
    from mckd.experiment import method_config
    from mckd.train import train

    settings = [f"data.cache={cache}", f"data.train_cases=[{CASE}]", f"data.val_cases=[{OTHERS['val']}]",
                f"data.test_cases=[{OTHERS['test']}]", f"train.iterations={iterations}", "train.progress=false",
                f"train.log_every={max(1, iterations // 4)}", "missing.policy=none", "method.optimizer=config",
                "method.meta=false", *overrides]
    config = config_from_dict(method_config(load_raw(ROOT / "configs" / "table1_cpu.yaml"), method, settings))
    start = time.perf_counter()
    train(config, work / "run")
    seconds = time.perf_counter() - start
    (work / "input").mkdir()
    os.symlink((cases / CASE).resolve(), work / "input" / CASE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "mckd.cli", "predict", str(work / "run"), "--input", str(work / "input"),
                           "--output", str(work / "predicted")], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"seg_learning: mckd predict failed for {method}: {done.stderr.strip()[-500:]}")
    predicted = np.asarray(nib.load(str(next((work / "predicted").rglob(f"{CASE}*.nii.gz")))).dataobj)
    truth = np.asarray(nib.load(str(cases / CASE / f"{CASE}_seg.nii.gz")).dataobj)
    return {"method": method, "iterations": iterations, "train_s": seconds,
            **{f"dice_{r.lower()}": dice(predicted, truth, v) for r, v in REGIONS.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=Path, required=True, help="benchmarks/shared_cases.py's folder")
    parser.add_argument("--cache", type=Path, required=True, help="its `mckd prepare seg --allow-missing` cache")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--set", nargs="*", default=[], help="more overrides for every method")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    results = []
    for method in args.methods:
        with tempfile.TemporaryDirectory() as tmp:
            result = learn(method, args.cases, args.cache, args.iterations, args.set, Path(tmp))
        results.append(result)
        print(f"  {method}: {result['train_s']:.0f} s; Dice on the training case ET {result['dice_et']:.3f}, "
              f"TC {result['dice_tc']:.3f}, WT {result['dice_wt']:.3f}", flush=True)
    print()
    print(f"| method | iterations | training (s) | Dice ET | Dice TC | Dice WT |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['method']} | {r['iterations']} | {r['train_s']:.0f} | {r['dice_et']:.3f} | {r['dice_tc']:.3f} | "
              f"{r['dice_wt']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
