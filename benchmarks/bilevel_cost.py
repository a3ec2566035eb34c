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

from mckd.build import build_experiment, resolve_device
from mckd.config import load_config
from mckd.data.bundle import move_batch
from mckd.data.missing import random_subset
from mckd.method.bilevel import bilevel_meta_step
from mckd.method.distill import cross_modal_distillation_loss
from mckd.method.meta import meta_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/multiview_digits.yaml")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per kind (after 5 warm-up steps)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    config = load_config(args.config, [f"train.device={args.device}"])
    device = resolve_device(args.device)
    experiment = build_experiment(config)
    model, weights, task, method = experiment.model.to(device), experiment.weights.to(device), experiment.task, config.method
    loader = lambda split: torch.utils.data.DataLoader(split, batch_size=config.train.batch_size, shuffle=True)  # noqa: E731
    train_batch = move_batch(next(iter(loader(experiment.bundle.train))), device)
    val = move_batch(next(iter(loader(experiment.bundle.val))), device)
    present = random_subset(train_batch["present"], torch.Generator(device=device).manual_seed(0))
    optimizer = torch.optim.Adam([weights.raw], lr=method.meta_lr)
    model.train()

    def first_order() -> None:
        meta_step(model, weights, optimizer, val["inputs"], val["target"], task.loss)

    def bilevel() -> None:
        bilevel_meta_step(model, weights, optimizer, train_batch["inputs"], present, train_batch["target"],
                          val["inputs"], val["target"], task.loss, method.alpha, config.train.lr, method.p,
                          method.ckd_reduction)

    # the inner step: what the meta step's cost is spread over (one meta step every method.meta_every of these)
    model_optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)

    def inner() -> None:
        output = model(train_batch["inputs"], present)
        loss = task.loss(output.prediction, train_batch["target"]) + method.alpha * cross_modal_distillation_loss(
            output.features, present, weights(), method.p, method.ckd_reduction)
        model_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        model_optimizer.step()

    seconds = {}
    for name, step in (("inner", inner), ("first_order", first_order), ("bilevel", bilevel)):
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
    every = method.meta_every
    for name in ("first_order", "bilevel"):
        share = seconds[name] / (every * seconds["inner"] + seconds[name])
        print(f"training time in {name} meta steps, one every {every} iterations: {100 * share:.1f}%")


if __name__ == "__main__":
    main()
