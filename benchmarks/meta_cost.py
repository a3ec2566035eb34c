"""What MCKD costs over its no-distillation baseline, measured in the real training loop.

Three variants of one config, each trained for ``--iterations`` inner
iterations with :func:`mckd.train.train`, interleaved over ``--repeats``
rounds:

- ``baseline``: ``method.alpha=0``, no meta step (the same network and data);
- ``ckd``: the CKD term over all ordered pairs of present modalities, no meta step;
- ``mckd``: CKD plus a meta step every ``method.meta_every`` iterations (the config's).

A callback timestamps the end of every iteration with the process's CPU time
and the wall clock; the first 10% of iterations are warm-up. The CPU time per
iteration (this process only, one thread) is the headline figure: on a shared
machine the wall clock also counts other people's work. The best of the
repeats is kept for each (other work only adds time).

Printed: the inner-step ratio ckd / baseline (target <= 1.10), the meta
step's share of MCKD's training time, amortised over its interval (target
<= 5%), and the whole-method ratio mckd / baseline.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/meta_cost.py            # the digits config, CPU
    .venv/bin/python benchmarks/meta_cost.py --config configs/X.yaml --set method.meta_every=100
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "baseline": ["method.alpha=0", "method.meta=false"],
    "ckd": ["method.meta=false"],
    "mckd": [],
}


class IterationClock:
    """A callback of :func:`mckd.train.train`: CPU and wall time at the end of every iteration."""

    name = "clock"

    def __init__(self) -> None:
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def state_dict(self) -> dict:
        return {}

    def on_iteration_end(self, iteration: int, experiment: object) -> None:
        self.cpu.append(time.process_time())
        self.wall.append(time.perf_counter())

    def per_iteration(self, warmup: int) -> tuple[float, float]:
        """(mean CPU seconds, median wall seconds) per iteration after ``warmup`` iterations."""
        cpu = (self.cpu[-1] - self.cpu[warmup]) / (len(self.cpu) - 1 - warmup)
        wall = statistics.median(b - a for a, b in zip(self.wall[warmup:], self.wall[warmup + 1:]))
        return cpu, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "multiview_digits.yaml"))
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    from mckd.config import apply_overrides, config_from_dict, load_raw
    from mckd.train import train

    raw = load_raw(args.config)
    common = [f"train.iterations={args.iterations}", f"train.log_every={args.iterations}", "train.progress=false",
              "train.checkpoint_every=0", *args.overrides]
    meta_every = config_from_dict(apply_overrides(raw, common)).method.options.meta_every
    warmup = max(1, args.iterations // 10)
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    wall: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, overrides in VARIANTS.items():
                clock = IterationClock()
                train(config_from_dict(apply_overrides(raw, [*common, *overrides])), Path(tmp) / f"{name}_{repeat}",
                      callbacks=[clock])
                c, w = clock.per_iteration(warmup)
                cpu[name].append(c)
                wall[name].append(w)
    best = {name: min(values) for name, values in cpu.items()}
    best_wall = {name: min(values) for name, values in wall.items()}
    meta_share = (best["mckd"] - best["ckd"]) / best["mckd"]
    print(f"config {args.config} {' '.join(args.overrides)}; {args.iterations} iterations x {args.repeats} repeats; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    print("| variant | CPU ms / iteration (best) | all repeats | wall ms / iteration (median, best) |")
    print("|---|---|---|---|")
    for name in VARIANTS:
        print(f"| {name} | {1000 * best[name]:.3f} | {', '.join(f'{1000 * v:.2f}' for v in cpu[name])} | "
              f"{1000 * best_wall[name]:.3f} |")
    print(f"CKD inner step / baseline step: {best['ckd'] / best['baseline']:.3f}x CPU time, "
          f"{best_wall['ckd'] / best_wall['baseline']:.3f}x wall (target <= 1.10x)")
    print(f"meta step every {meta_every} iterations: {1000 * meta_every * (best['mckd'] - best['ckd']):.2f} ms each, "
          f"{100 * meta_share:.1f}% of MCKD training time (target <= 5%)")
    print(f"whole MCKD iteration / baseline iteration: {best['mckd'] / best['baseline']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
