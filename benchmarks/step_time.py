"""Training step time of MCKD over its baseline, measured in one run.

Three models are built from one config (default: the multi-view digits
network), identical at start:

- ``baseline``: ``method.alpha=0`` and no meta step, the same network and data;
- ``ckd``: the inner step of Eq. 4, the task loss plus alpha times the CKD
  term over every ordered pair of present modalities, no meta step;
- ``mckd``: the ``ckd`` step plus the first-order meta step on the
  importance weights every ``method.meta_every`` iterations (the config's).

Each step is what :func:`mckd.train.train` does per iteration, by the same
calls: modalities dropped by ``random_subset``, :func:`mckd.train.train_step`
(forward, loss, backward, optimiser step), and for ``mckd`` the method's meta
step. Batches are drawn
once, in memory, and the same batches feed every variant, so data loading is
left out and the figures are the step itself (``benchmarks/meta_cost.py``
times the whole loop instead). The variants run interleaved in blocks, in a
rotating order, and the median of the per-block times is reported, so a busy
machine slows all three alike.

    .venv/bin/python benchmarks/step_time.py                       # digits, batch 64
    .venv/bin/python benchmarks/step_time.py --batch-size 256 --iterations 600
    .venv/bin/python benchmarks/step_time.py --set method.meta_every=1
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, list[str]] = {
    "baseline": ["method.alpha=0", "method.meta=false"],
    "ckd": ["method.meta=false"],
    "mckd": [],
}


def draw_batches(dataset: Any, count: int, batch_size: int, generator: torch.Generator) -> list[dict[str, Any]]:
    """``count`` random batches of an in-memory split (every modality present)."""
    size = len(dataset)
    batches = []
    for _ in range(count):
        index = torch.randint(0, size, (min(batch_size, size),), generator=generator)
        batches.append({
            "inputs": [t[index] for t in dataset.inputs],
            "present": dataset.present[index],
            "target": dataset.target[index],
        })
    return batches


def make_step(config: Any, device: torch.device, train_batches: list, val_batches: list,
              drops: list[torch.Tensor], meta_seconds: list[float]) -> Callable[[int], None]:
    """One training iteration of ``config``'s method (:func:`mckd.train.train_step` and the method's meta step).

    The time of each meta step (synchronised on CUDA) is appended to ``meta_seconds``.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    from mckd.build import build_experiment
    from mckd.method import MethodServices
    from mckd.train import make_optimizer, train_step

    experiment = build_experiment(config)
    model, method, task = experiment.model, experiment.method, experiment.task
    model.to(device).train()
    method.to(device)
    optimizer = make_optimizer(model.parameters(), config.train)
    method.setup(MethodServices(task_loss=task.loss, model_optimizer=optimizer))

    def step(iteration: int) -> None:
        batch = train_batches[iteration % len(train_batches)]
        present = drops[iteration % len(drops)]  # the same random subsets for every variant
        train_step(model, method, task, optimizer, batch, present)
        if method.meta_due(iteration + 1):
            sync()
            start = time.perf_counter()
            for k in range(method.meta_batches):
                val = val_batches[(iteration + k) % len(val_batches)]
                method.meta_step(model, val, batch, present, optimizer.param_groups[0]["lr"])
            sync()
            meta_seconds.append(time.perf_counter() - start)

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "multiview_digits.yaml"),
                        help="experiment config (default: configs/multiview_digits.yaml)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the config's)")
    parser.add_argument("--iterations", type=int, default=400, help="timed iterations per variant (default: 400)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed iterations per variant first (default: 20)")
    parser.add_argument("--block", type=int, default=20,
                        help="iterations per timed block, rounded up to a multiple of meta_every (default: 20)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set method.meta_every=1 (repeatable)")
    args = parser.parse_args(argv)

    from mckd.build import build_data
    from mckd.config import apply_overrides, config_from_dict, load_raw
    from mckd.data.missing import random_subset

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    raw = load_raw(args.config)
    common = [*args.overrides, f"train.device={args.device}"]
    if args.batch_size:
        common.append(f"train.batch_size={args.batch_size}")
    configs = {name: config_from_dict(apply_overrides(raw, [*common, *extra])) for name, extra in VARIANTS.items()}
    reference = configs["mckd"]
    meta_every = reference.method.options.meta_every
    block = meta_every * math.ceil(args.block / meta_every)
    blocks = max(1, math.ceil(args.iterations / block))

    bundle = build_data(reference)
    generator = torch.Generator().manual_seed(reference.seed)
    to_device = lambda batches: [  # noqa: E731
        {"inputs": [t.to(device) for t in b["inputs"]], "present": b["present"].to(device),
         "target": b["target"].to(device)} for b in batches]
    train_batches = to_device(draw_batches(bundle.train, 64, reference.train.batch_size, generator))
    val_batches = to_device(draw_batches(bundle.val, 16, reference.train.batch_size, generator))
    drop_generator = torch.Generator(device=device).manual_seed(reference.seed + 2)
    if reference.missing.policy == "random_subset":
        drops = [random_subset(b["present"], drop_generator) for b in train_batches]
    else:
        drops = [b["present"] for b in train_batches]

    meta_seconds: list[float] = []
    steps = {name: make_step(config, device, train_batches, val_batches, drops, meta_seconds)
             for name, config in configs.items()}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    counters = {name: 0 for name in steps}
    for name, step in steps.items():
        for _ in range(args.warmup):
            step(counters[name])
            counters[name] += 1
    counters = {name: 0 for name in steps}  # timed blocks start on a meta-step boundary
    meta_seconds.clear()
    per_block: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for b in range(blocks):
        for name in names[b % len(names):] + names[: b % len(names)]:  # rotate who goes first
            step = steps[name]
            sync()
            start = time.perf_counter()
            for _ in range(block):
                step(counters[name])
                counters[name] += 1
            sync()
            per_block[name].append((time.perf_counter() - start) / block)

    median = {name: statistics.median(values) for name, values in per_block.items()}
    spread = {name: (min(values), max(values)) for name, values in per_block.items()}
    print(f"config {args.config}{' ' + ' '.join(args.overrides) if args.overrides else ''}")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"device {device}, {torch.get_num_threads()} thread(s), load average {load}; batch {reference.train.batch_size}; "
          f"{blocks} blocks x {block} iterations per variant after {args.warmup} warm-up; "
          f"meta step every {meta_every} iteration(s), {reference.method.options.meta_batches} batch(es)")
    print()
    print("| variant | ms per step (median over blocks) | min .. max |")
    print("|---|---|---|")
    for name in names:
        low, high = spread[name]
        print(f"| {name} | {1000 * median[name]:.3f} | {1000 * low:.3f} .. {1000 * high:.3f} |")
    print()
    print(f"CKD inner step / baseline step: {median['ckd'] / median['baseline']:.3f}x")
    meta_ms = 1000 * statistics.median(meta_seconds)
    print(f"meta step: {meta_ms:.3f} ms each (median of {len(meta_seconds)}), "
          f"{meta_ms / meta_every:.3f} ms per step amortised over {meta_every}")
    print(f"MCKD step / baseline step: {median['mckd'] / median['baseline']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
