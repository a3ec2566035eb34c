"""Training-step time and peak memory of every method of Table 1, at one crop and batch, on the CPU or a GPU.

Each method runs the real loop (:func:`mckd.train.train`) on random volumes
of the config's crop (the ``synthetic_volumes`` dataset of
``benchmarks/gpu_check.py``: four 1-channel sequences, BraTS labels), every
sample keeping a random subset of its sequences, in a process of its own:

- time: seconds per training iteration after ``--warmup`` iterations (from
  the run's ``metrics.jsonl``), MCKD's meta step left out (``method.meta_every``
  beyond the run; ``benchmarks/gpu_check.py`` and ``meta_cost.py`` time it);
- memory: on a GPU the peak allocated by torch; on the CPU the process's peak
  resident set (``ru_maxrss``, so it includes Python, torch and the data).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/seg_method_cost.py --config configs/table1_cpu.yaml
    python3 benchmarks/seg_method_cost.py --config configs/table1_gpu.yaml --device cuda --precision bf16 \\
        --crop-of mmformer=128,128,128          # on a GPU (benchmarks/gpu_check.sh --methods does this)

Methods: ``--methods`` (default every method of Table 1); each with its
defaults but ``method.optimizer`` (the config's for all, so the optimiser
does not differ between rows). ``--rounds R`` runs the whole list R times,
interleaved, and reports each method's median time (a shared machine's load
then slows every method alike).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

TABLE1 = ["mckd", "baseline", "hemis", "lckd", "shaspec", "uhved", "robust_mseg", "mmformer", "rfnet", "gss"]


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.one`` for ``warmup + iterations`` iterations in this process; its time and peak memory."""
    import gpu_check  # noqa: F401  (registers the synthetic_volumes dataset)
    from gpu_check import seconds_per_iteration
    from mckd.config import config_from_dict, load_raw
    from mckd.experiment import method_config
    from mckd.train import train

    raw = load_raw(args.config)
    crop = args.crop or raw["data"]["crop"]
    raw["data"] = {"name": "synthetic_volumes", "modalities": raw["data"].get("modalities") or
                   ["flair", "t1", "t1ce", "t2"], "crop": list(crop), "samples": 4}
    total = args.warmup + args.iterations
    overrides = [f"train.iterations={total}", f"train.batch_size={args.batch}", "train.log_every=1",
                 "train.progress=false", "train.checkpoint_every=0", "train.eval_every=0", f"train.device={args.device}",
                 f"train.precision={args.precision}", "train.num_workers=0", "missing.policy=random_subset",
                 "method.meta_every=100000", "method.optimizer=config", "method.teacher_every=100000", *args.set]
    config = config_from_dict(method_config(raw, args.one, overrides))
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        experiment = train(config, Path(tmp) / "run")
        wall = time.perf_counter() - start
        seconds = seconds_per_iteration(Path(tmp) / "run", args.warmup)
    peak = (torch.cuda.max_memory_allocated() if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    parameters = sum(p.numel() for p in experiment.model.parameters())
    parts = sum(p.numel() for p in experiment.method.parts.parameters())
    return {"method": args.one, "crop": list(crop), "batch": args.batch, "device": args.device,
            "precision": args.precision, "s_per_iteration": seconds, "peak_gib": peak / 2**30,
            "model_parameters": parameters, "training_only_parameters": parts, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "table1_cpu.yaml"))
    parser.add_argument("--methods", nargs="+", default=TABLE1)
    parser.add_argument("--crop", type=int, nargs=3, help="[X, Y, Z] (default: the config's data.crop)")
    parser.add_argument("--crop-of", nargs="*", default=[], metavar="METHOD=X,Y,Z",
                        help="another crop for one method (mmFormer's published 128^3)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=6, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--set", nargs="*", default=[], help="more config overrides for every method")
    parser.add_argument("--rounds", type=int, default=1, help="run every method this many times, interleaved; median")
    parser.add_argument("--budget-s", type=float, default=0.0, help="skip the methods left once this is spent (0: none)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_one(args)), flush=True)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("seg_method_cost: no CUDA device", file=sys.stderr)
        return 2
    crops = dict(item.split("=", 1) for item in args.crop_of)
    runs = [(m, None) for m in args.methods] + [(m, [int(v) for v in c.split(",")]) for m, c in crops.items()]
    runs = runs * max(1, args.rounds)
    measured: dict[tuple[str, str], list[dict[str, Any]]] = {}
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for method, crop in runs:
        if args.budget_s and time.perf_counter() - start > args.budget_s:
            print(f"  budget of {args.budget_s:.0f} s spent: {method} and later skipped", flush=True)
            break
        command = [sys.executable, __file__, "--one", method, "--config", args.config, "--batch", str(args.batch),
                   "--iterations", str(args.iterations), "--warmup", str(args.warmup), "--device", args.device,
                   "--precision", args.precision]
        if crop or args.crop:
            command += ["--crop", *map(str, crop or args.crop)]
        if args.set:
            command += ["--set", *args.set]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
        if done.returncode or line is None:
            print(f"  {method}: failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        result = json.loads(line[len("RESULT "):])
        measured.setdefault((method, "x".join(map(str, result["crop"]))), []).append(result)
        print(f"  {method} at {result['crop']}: {result['s_per_iteration']:.3f} s/iteration, peak "
              f"{result['peak_gib']:.2f} GiB", flush=True)
    results = []
    for tries in measured.values():
        result = dict(tries[0])
        result["s_per_iteration"] = statistics.median(r["s_per_iteration"] for r in tries)
        result["peak_gib"] = max(r["peak_gib"] for r in tries)
        result["rounds"] = len(tries)
        results.append(result)
    memory = "peak GPU memory allocated" if args.device == "cuda" else "peak resident memory of the process"
    print()
    print(f"| method | crop | s / iteration | {memory} (GiB) | model parameters | training-only parameters |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['method']} | {'x'.join(map(str, r['crop']))} | {r['s_per_iteration']:.3f} | {r['peak_gib']:.2f} | "
              f"{r['model_parameters'] / 1e6:.2f} M | {r['training_only_parameters'] / 1e6:.2f} M |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if sum(len(t) for t in measured.values()) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main())
