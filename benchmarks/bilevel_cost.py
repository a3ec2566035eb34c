"""Cost of one bi-level meta step against the authors' first-order step.

Builds the experiment of a config (default: the multi-view digits), draws one
training batch (modalities dropped as in training) and one validation batch,
and times each kind of meta step on them; prints milliseconds per step and the
ratio. Run: ``.venv/bin/python benchmarks/bilevel_cost.py [CONFIG] [--steps 50]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from mckd.build import build_experiment, build_method
from mckd.config import load_config
from mckd.data.bundle import move_batch
from mckd.data.missing import random_subset
from mckd.distributed import resolve_device
from mckd.method import MethodServices
from mckd.train import make_optimizer, train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/multiview_digits.yaml")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per kind (after 5 warm-up steps)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    config = load_config(args.config, [f"train.device={args.device}"])
    device = resolve_device(args.device)
    experiment = build_experiment(config)
    model, task = experiment.model.to(device), experiment.task
    loader = lambda split: torch.utils.data.DataLoader(split, batch_size=config.train.batch_size, shuffle=True)  # noqa: E731
    train_batch = move_batch(next(iter(loader(experiment.bundle.train))), device)
    val = move_batch(next(iter(loader(experiment.bundle.val))), device)
    present = random_subset(train_batch["present"], torch.Generator(device=device).manual_seed(0))
    model_optimizer = make_optimizer(model.parameters(), config.train)
    methods = {}
    for mode in ("first_order", "bilevel"):  # the same MCKD, one meta step kind each
        mode_config = load_config(args.config, [f"train.device={args.device}", f"method.meta_mode={mode}"])
        methods[mode] = build_method(mode_config, experiment.bundle.modalities).to(device)
        methods[mode].setup(MethodServices(task_loss=task.loss, model_optimizer=model_optimizer))
    model.train()

    def inner() -> None:  # what the meta step's cost is spread over (one meta step every meta_every of these)
        train_step(model, methods["first_order"], task, model_optimizer, train_batch, present)

    def meta(mode: str):
        return lambda: methods[mode].meta_step(model, val, train_batch, present, config.train.lr)

    seconds = {}
    for name, step in (("inner", inner), ("first_order", meta("first_order")), ("bilevel", meta("bilevel"))):
        for _ in range(5):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds[name] = (time.perf_counter() - start) / args.steps
    parameters = sum(p.numel() for p in model.parameters())
    print(f"config {args.config}: {parameters} model parameters, batch {config.train.batch_size}, "
          f"{torch.get_num_threads()} threads, {device}")
    for name, value in seconds.items():
        print(f"{name:12s} {1000 * value:8.2f} ms per step")
    print(f"bilevel / first_order: {seconds['bilevel'] / seconds['first_order']:.2f}x")
    every = config.method.options.meta_every
    for name in ("first_order", "bilevel"):
        share = seconds[name] / (every * seconds["inner"] + seconds[name])
        print(f"training time in {name} meta steps, one every {every} iterations: {100 * share:.1f}%")


if __name__ == "__main__":
    main()
