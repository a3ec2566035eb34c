"""CPU threads: iterations per second with mckd's default, 1 and 2 threads, idle and under a competing load.

Two models, each measured in a fresh process per setting (thread pools are
per process):

- ``digits``: the main job's training loop (``configs/multiview_digits.yaml``,
  the real :func:`mckd.train.train`, 300 iterations; the rate is the loop's,
  set-up excluded);
- ``unet3d``: a small 3D U-Net training step (4 sequences, crop 32^3, batch 2,
  widths 8-16-32; :func:`mckd.train.train_step` on random volumes).

Each with ``train.threads`` at its default (``auto``), 1 and 2, first on the
machine as it is ("idle"), then with two competing CPU-bound processes
(``python -c 'while True: pass'``) that this script starts in its own session
(the worst case: with the kernel's autogroup scheduling, processes started from
another terminal take a smaller share from this one). ``--main-job`` also times
``make run``'s command (6 runs of 1,080 iterations, evaluation and plots)
idle and loaded.

    .venv/bin/python benchmarks/threads.py              # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/threads.py --main-job   # + about 3 minutes
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
SETTINGS = {"default (auto)": 0, "1 thread": 1, "2 threads": 2}


def measure_digits(threads: int, iterations: int) -> float:
    """Iterations per second of the digits training loop (the real train(), set-up excluded)."""
    from mckd.config import load_config
    from mckd.train import train

    config = load_config(ROOT / "configs" / "multiview_digits.yaml", [
        f"train.iterations={iterations}", f"train.log_every={iterations}", "train.progress=false",
        "train.device=cpu", f"train.threads={threads}", "train.eval_every=0", "train.loggers=[]"])
    with tempfile.TemporaryDirectory() as folder:
        train(config, Path(folder) / "run")
        record = [json.loads(line) for line in (Path(folder) / "run" / "metrics.jsonl").read_text().splitlines()
                  if '"train"' in line][-1]
    return iterations / record["seconds"]


def measure_unet(threads: int, steps: int) -> float:
    """Training steps per second of a small 3D U-Net (random volumes, 4 sequences, 32^3, batch 2)."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from brats_step_time import make

    from mckd.method import MethodServices
    from mckd.tasks.segmentation import SegmentationTask
    from mckd.threads import apply_threads
    from mckd.train import train_step

    apply_threads(threads)
    torch.manual_seed(0)
    crop = 32
    model, method = make(crop, [8, 16, 32], 0.1)
    task = SegmentationTask(3, roi=[crop] * 3)
    method.setup(MethodServices(task_loss=task.loss))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    shape = (2, 1, crop, crop, crop)
    batch = {"inputs": [torch.randn(shape) for _ in range(4)], "target": torch.randint(0, 4, shape, dtype=torch.uint8)}
    present = torch.ones(2, 4, dtype=torch.bool)
    train_step(model, method, task, optimizer, batch, present)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, method, task, optimizer, batch, present)
    return steps / (time.perf_counter() - start)


def in_fresh_process(model: str, threads: int) -> tuple[float, int]:
    """(rate, threads in use) measured by a child process."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([sys.executable, __file__, "--worker", model, "--threads", str(threads)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    rate, used = done.stdout.split()[-2:]
    return float(rate), int(used)


class Load:
    """Two CPU-bound processes, for as long as the ``with`` block runs.

    ``separate``: in a session of their own (as jobs started from another
    terminal are; with the kernel's autogroup scheduling each session gets a
    fair share of the CPUs, not each process).
    """

    separate = False

    def __enter__(self) -> "Load":
        self.processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=self.separate)
                          for _ in range(2)]
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


def time_main_job() -> float:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        subprocess.run([str(ROOT / ".venv" / "bin" / "mckd"), "benchmark", "configs/multiview_digits.yaml",
                        "--methods", "mckd", "baseline", "--seeds", "0", "1", "2", "--out", f"{folder}/main"],
                       check=True, cwd=ROOT, env=env, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=["digits", "unet3d"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, default=300, help="digits iterations per measurement")
    parser.add_argument("--steps", type=int, default=6, help="U-Net steps per measurement")
    parser.add_argument("--main-job", action="store_true", help="also time make run's command idle and loaded")
    parser.add_argument("--main-job-only", action="store_true", help="only time make run's command idle and loaded")
    parser.add_argument("--load-session", choices=["same", "separate"], default="same",
                        help="the competing processes in this script's session (default) or in one of their own")
    args = parser.parse_args()
    Load.separate = args.load_session == "separate"
    if args.worker:
        import torch

        rate = measure_digits(args.threads, args.iterations) if args.worker == "digits" \
            else measure_unet(args.threads, args.steps)
        print(rate, torch.get_num_threads())
        return
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the start; competing processes in "
          f"{'a session of their own' if Load.separate else 'this session'}; iterations per second")
    if args.main_job_only:
        report_main_job()
        return
    print("| model | load | " + " | ".join(SETTINGS) + " |")
    print("|---|---|" + "---|" * len(SETTINGS))
    results = {}
    for model in ("digits", "unet3d"):
        for load in ("idle", "2 CPU-bound processes"):
            with Load() if load != "idle" else _nothing():
                cells = []
                for name, threads in SETTINGS.items():
                    rate, used = in_fresh_process(model, threads)
                    results[(model, load, name)] = rate
                    cells.append(f"{rate:.3g}" + (f" ({used} thread{'s' if used > 1 else ''})" if threads == 0 else ""))
            print(f"| {model} | {load} | " + " | ".join(cells) + " |", flush=True)
    for model in ("digits", "unet3d"):
        idle = results[(model, "idle", "default (auto)")]
        loaded = results[(model, "2 CPU-bound processes", "default (auto)")]
        print(f"{model}, default: loaded / idle rate {loaded / idle:.2f} (slowdown {idle / loaded:.2f}x)")
    if args.main_job:
        report_main_job()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


def report_main_job() -> None:
    idle = time_main_job()
    with Load():
        loaded = time_main_job()
    print(f"main job (mckd benchmark ... --seeds 0 1 2, as make run): idle {idle:.1f} s, with two CPU-bound "
          f"processes {loaded:.1f} s ({loaded / idle:.2f}x); load average {os.getloadavg()[0]:.2f}")


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    main()
