"""Fingerprints of what training produces, to check that a refactoring changed nothing.

Trains a fixed list of short runs through the ``mckd`` command (every
training method and preset on the multi-view digits, both AV-MNIST
directions, the segmentation recipe; exact resume is the tests' job), evaluates
each, and writes one JSON file: per run, a SHA-256 of every tensor of the
final checkpoint, of every ``metrics.jsonl`` record without its timing
fields, and of every evaluation table. Two such files compare with
``--compare``: any difference is printed with the run and the item.

    # on the code before a change (e.g. a worktree of the old commit):
    PATH=/old/.venv/bin:$PATH python benchmarks/same_results.py --out /tmp/before.json --work /tmp/fp_before
    # on the code after it:
    .venv/bin/python benchmarks/same_results.py --out /tmp/after.json --work /tmp/fp_after
    python benchmarks/same_results.py --compare /tmp/before.json /tmp/after.json

``--only NAME...`` runs some of the cases. Runs use one thread and
``train.deterministic: true``. The AV-MNIST cases need the caches of
``mckd prepare avmnist`` (``--avmnist DIR``, made there when missing) and
the segmentation case a cache of ``mckd prepare seg`` (``--seg-cache``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TIMING = {"seconds", "iterations_per_s", "time", "started", "ended"}

DIGITS = "configs/multiview_digits.yaml"
SHORT = ["train.iterations=120", "train.log_every=20", "train.deterministic=true", "train.threads=1"]
CASES: dict[str, dict[str, Any]] = {
    **{f"digits_{m}": {"config": DIGITS, "method": m, "set": SHORT + ["method.meta_every=10"] * (m.startswith("mckd"))}
       for m in ("mckd", "baseline", "zero_fill", "hemis", "ckd_uniform", "mckd_bilevel", "mckd_bilevel_opt")},
    "digits_lckd": {"config": DIGITS, "method": "lckd", "set": SHORT + ["method.teacher_every=40"]},
    "digits_shaspec": {"config": DIGITS, "method": "shaspec", "set": SHORT},
    "digits_mckd_validation": {"config": DIGITS, "method": "mckd",
                               "set": SHORT + ["train.eval_every=40", "train.save_best=true"]},
    "avmnist_audio_mckd": {"config": "configs/avmnist_missing_audio.yaml", "method": "mckd", "avmnist": True,
                           "set": SHORT + ["train.iterations=60"]},
    "avmnist_image_mckd": {"config": "configs/avmnist_missing_image.yaml", "method": "mckd", "avmnist": True,
                           "set": SHORT + ["train.iterations=60"]},
    "seg_mckd": {"config": "configs/brats_small_cpu.yaml", "method": "mckd", "seg": True,
                 "set": ["train.iterations=12", "train.log_every=4", "train.eval_every=0", "method.meta_every=4",
                         "train.deterministic=true", "train.threads=1", "data.crop=[32,32,32]"]},
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprint(run: Path) -> dict[str, str]:
    """SHA-256 prefixes of a run's checkpoint tensors, records (without timing) and evaluation tables."""
    from safetensors.numpy import load_file

    out: dict[str, str] = {}
    for key, value in sorted(load_file(str(run / "checkpoint.safetensors")).items()):
        if key.startswith(("model.", "method.")):
            out[f"tensor {key}"] = sha(value.tobytes()) + f" {value.dtype} {list(value.shape)}"
    records = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        records.append({k: v for k, v in row.items() if k not in TIMING})
    out["records"] = sha(json.dumps(records, sort_keys=True).encode())
    for table in sorted((run / "eval").glob("*.csv")):
        out[f"table {table.name}"] = sha(table.read_bytes())
    return out


def mckd(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["mckd", *args], env=env, capture_output=True, text=True)
    if result.returncode not in (0, 130):
        raise SystemExit(f"mckd {' '.join(args)} failed:\n{result.stderr[-2000:]}")


def run_case(name: str, case: dict[str, Any], work: Path, avmnist: Path, seg_cache: Path) -> dict[str, str]:
    """Train and evaluate one case through a one-seed ``mckd benchmark`` (it resolves methods and presets alike)."""
    overrides = list(case["set"])
    if case.get("avmnist"):
        overrides.append(f"data.path={avmnist / 'avmnist_smil.safetensors'}")
    if case.get("seg"):
        overrides.append(f"data.cache={seg_cache}")
    bench = work / name
    mckd("benchmark", str(ROOT / case["config"]), "--methods", case["method"], "--seeds", "0", "--out", str(bench),
         "--force", *sum((["--set", o] for o in overrides), []))
    return fingerprint(bench / case["method"] / "seed_0")


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    differences = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name}: only in {'after' if name not in a else 'before'}")
            differences += 1
            continue
        for item in sorted(set(a[name]) | set(b[name])):
            if a[name].get(item) != b[name].get(item):
                print(f"{name}: {item}: {a[name].get(item)} -> {b[name].get(item)}")
                differences += 1
    print(f"{differences} difference(s) over {len(set(a) | set(b))} runs")
    return 1 if differences else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="the JSON file of fingerprints to write")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mckd_same_results"), help="where the runs go")
    parser.add_argument("--only", nargs="*", default=None, help="case names (default: all)")
    parser.add_argument("--avmnist", type=Path, default=None, help="folder of the AV-MNIST caches (default: WORK/avmnist)")
    parser.add_argument("--seg-cache", type=Path, default=None, help="a BraTS 2013 cache (default: WORK/brats2013)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.out is None:
        parser.error("--out is needed (or --compare BEFORE AFTER)")
    args.work.mkdir(parents=True, exist_ok=True)
    names = args.only or list(CASES)
    avmnist = args.avmnist or args.work / "avmnist"
    seg_cache = args.seg_cache or args.work / "brats2013"
    if any(CASES[n].get("avmnist") for n in names) and not (avmnist / "avmnist_smil.safetensors").is_file():
        mckd("prepare", "avmnist", "--recipe", "smil", "--out", str(avmnist / "avmnist_smil.safetensors"),
             "--images", str(SHARED / "mnist" / "mnist-part-a-images-idx3-ubyte.gz"),
             "--labels", str(SHARED / "mnist" / "mnist-part-a-labels-idx1-ubyte.gz"),
             "--recordings", str(SHARED / "fsdd" / "recordings"), "--no-progress")
    if any(CASES[n].get("seg") for n in names) and not seg_cache.is_dir():
        mckd("prepare", "seg", str(SHARED / "brats2013"), str(seg_cache), "--layout",
             str(ROOT / "configs" / "brats2013_layout.yaml"))
    results = {}
    for name in names:
        print(f"{name} ...", flush=True)
        results[name] = run_case(name, CASES[name], args.work, avmnist, seg_cache)
    args.out.write_text(json.dumps(results, indent=1, sort_keys=True))
    print(f"wrote {args.out} ({len(results)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
