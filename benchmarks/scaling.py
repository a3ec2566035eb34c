"""Samples per second with 1 and 2 processes under torchrun on the CPU (gloo).

The launcher starts ``torchrun --standalone --nproc-per-node=P`` on this same
file for each P of ``--procs``; each rank trains the config for
``--iterations`` iterations with :func:`mckd.train.train` (DDP, distributed
samplers, meta steps with the weights' gradient averaged), one thread per
process. An observer timestamps every iteration (wall clock and the process's
CPU time); the first 10% are warm-up. Throughput counts the global batch
(``batch_size x P``). On a machine shared with other work the wall-clock
figure shows what P processes got; the CPU-time figure (rank 0's CPU time
per iteration, all processes doing the same work) shows what they would get
with a free core each, the communication's CPU cost included.

    .venv/bin/python benchmarks/scaling.py                    # digits, 1 and 2 processes
    .venv/bin/python benchmarks/scaling.py --procs 1 2 4 --set train.batch_size=32
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

ROOT = Path(__file__).resolve().parents[1]


def worker(config_path: str, run_dir: str, iterations: int, overrides: list[str]) -> None:
    """One rank: train, then rank 0 prints its throughput as one JSON line."""
    from mckd import distributed
    from mckd.config import apply_overrides, config_from_dict, load_raw
    from mckd.train import Callback, train

    config = config_from_dict(apply_overrides(load_raw(config_path), [
        f"train.iterations={iterations}", f"train.log_every={iterations}", "train.progress=false",
        "train.device=cpu", "train.checkpoint_every=0", *overrides,
    ]))
    cpu: list[float] = []
    wall: list[float] = []

    class Clock(Callback):
        def on_iteration_end(self, iteration: int, experiment: object) -> None:  # end of every iteration
            cpu.append(time.process_time())
            wall.append(time.perf_counter())

    train(config, run_dir, callbacks=[Clock()])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if distributed.is_main():
        warmup = max(1, iterations // 10)
        timed = len(wall) - 1 - warmup
        seconds = wall[-1] - wall[warmup]
        cpu_seconds = cpu[-1] - cpu[warmup]
        batch = config.train.batch_size * world
        print("RESULT " + json.dumps({"procs": world, "samples_per_s": timed * batch / seconds,
                                      "ms_per_iteration": 1000 * seconds / timed,
                                      "cpu_ms_per_iteration": 1000 * cpu_seconds / timed,
                                      "samples_per_cpu_s": timed * batch / cpu_seconds,
                                      "batch_per_rank": config.train.batch_size}))
    distributed.shutdown()


def launch(procs: int, args: argparse.Namespace, run_dir: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
               __file__, "--worker", "--config", args.config, "--iterations", str(args.iterations),
               "--out", str(run_dir)]
    for item in args.overrides:
        command += ["--set", item]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"torchrun with {procs} processes failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "multiview_digits.yaml"))
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="runs per process count; the best is reported")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.config, args.out, args.iterations, args.overrides)
        return 0
    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for procs in args.procs:
                result = launch(procs, args, Path(tmp) / f"p{procs}_{repeat}")
                if procs not in results or result["samples_per_s"] > results[procs]["samples_per_s"]:
                    results[procs] = result
    print(f"config {args.config} {' '.join(args.overrides)}; {args.iterations} iterations; gloo on CPU, "
          f"1 thread per process; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; best of {args.repeats}")
    print("| processes | global batch | wall ms / iteration | samples/s (wall) | speed-up | "
          "CPU ms / iteration (rank 0) | samples/s with a free core per process |")
    print("|---|---|---|---|---|---|---|")
    base = results[args.procs[0]]
    for procs in args.procs:
        r = results[procs]
        print(f"| {procs} | {r['batch_per_rank'] * procs} | {r['ms_per_iteration']:.2f} | {r['samples_per_s']:.0f} | "
              f"{r['samples_per_s'] / base['samples_per_s']:.2f}x | {r['cpu_ms_per_iteration']:.2f} | "
              f"{r['samples_per_cpu_s']:.0f} ({r['samples_per_cpu_s'] / base['samples_per_cpu_s']:.2f}x) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
