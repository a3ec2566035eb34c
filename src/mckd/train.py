"""The training loop: inner steps (Eq. 4 inner) and meta steps (Eq. 4 outer).

Read it top to bottom: build everything from the config, then for each
iteration draw a batch, drop modalities by the missing policy, take one
optimiser step on ``l_task + alpha * l_ckd``, and every ``meta_every``
iterations take a meta step on the importance weights with a batch of the
meta-validation split. The run directory receives the resolved config,
``metrics.jsonl`` and a tensors-only checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mckd.build import Experiment, build_experiment, resolve_device
from mckd.checkpoint import atomic_write_text, save_checkpoint
from mckd.config import Config, TrainConfig, save_config
from mckd.data.bundle import move_batch
from mckd.data.missing import fixed_subset, random_subset, subset_mask
from mckd.method.distill import cross_modal_distillation_loss
from mckd.method.meta import meta_step

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"


def make_optimizer(params: Any, train: TrainConfig) -> torch.optim.Optimizer:
    """The model's optimiser from ``train.*``."""
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(
        params, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov, weight_decay=train.weight_decay
    )


def lr_factor(iteration: int, total: int, per_epoch: int, train: TrainConfig) -> float:
    """Multiplier of the base learning rate at ``iteration`` (0-based) of ``total``."""
    if train.schedule == "step":
        return train.gamma ** math.floor(iteration / max(1, round(train.step_epochs * per_epoch)))
    if train.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * iteration / total))
    if train.schedule == "poly":
        return (1.0 - iteration / total) ** train.poly_power
    return 1.0


def cycle(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """Endless batches; each pass reshuffles."""
    while True:
        yield from loader


def loader_for(dataset: Any, batch_size: int, shuffle: bool, seed: int, config: Config, device: torch.device) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=min(batch_size, len(dataset)),
        shuffle=shuffle,
        drop_last=shuffle and len(dataset) > batch_size,
        generator=generator,
        num_workers=config.train.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=config.train.num_workers > 0,
    )


def train(config: Config, run_dir: str | Path) -> Experiment:
    """Train one run into ``run_dir``; return the trained experiment."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    device = resolve_device(config.train.device)
    experiment = build_experiment(config)
    bundle, model, weights, task = experiment.bundle, experiment.model, experiment.weights, experiment.task
    method, settings = config.method, config.train
    atomic_write_text(
        run_dir / "data.json",
        json.dumps({"modalities": list(bundle.modalities), "num_classes": bundle.num_classes, **bundle.info}, indent=2),
    )
    model.to(device)
    weights.to(device)

    train_loader = loader_for(bundle.train, settings.batch_size, True, config.seed, config, device)
    val_loader = loader_for(bundle.val, settings.batch_size, True, config.seed + 1, config, device)
    per_epoch = len(train_loader)
    total = settings.iterations if settings.iterations > 0 else settings.epochs * per_epoch

    optimizer = make_optimizer(model.parameters(), settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, total, per_epoch, settings))
    weight_optimizer = torch.optim.Adam([weights.raw], lr=method.meta_lr, weight_decay=method.meta_weight_decay)
    drop_generator = torch.Generator(device=device).manual_seed(config.seed + 2)
    keep = subset_mask(bundle.modalities, config.missing.subset).to(device) if config.missing.policy == "fixed" else None

    metrics_file = (run_dir / METRICS).open("w")
    record = lambda entry: metrics_file.write(json.dumps(entry) + "\n")  # noqa: E731
    record({"iteration": 0, "kind": "weights", "weights": weights.as_dict()})

    batches, val_batches = cycle(train_loader), cycle(val_loader)
    weight_history: list[tuple[int, torch.Tensor]] = []  # (iteration, normalised weights [N]) per meta step
    sums = torch.zeros(2, device=device)  # running task and CKD losses, read only at log time
    count = 0
    start = time.perf_counter()
    progress = tqdm(range(total), desc=f"train seed {config.seed}", disable=not settings.progress, dynamic_ncols=True)
    model.train()
    for iteration in progress:
        batch = move_batch(next(batches), device)
        present = batch["present"]
        if config.missing.policy == "random_subset":
            present = random_subset(present, drop_generator)
        elif keep is not None:
            present = fixed_subset(present, keep)

        output = model(batch["inputs"], present)
        task_loss = task.loss(output.prediction, batch["target"])
        loss = task_loss
        ckd_loss = torch.zeros((), device=device)
        if method.alpha > 0:
            ckd_loss = cross_modal_distillation_loss(output.features, present, weights(), method.p, method.ckd_reduction)
            loss = task_loss + method.alpha * ckd_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        sums += torch.stack([task_loss.detach(), ckd_loss.detach()])
        count += 1

        if method.meta and (iteration + 1) % method.meta_every == 0:
            for _ in range(method.meta_batches):
                val = move_batch(next(val_batches), device)
                meta_step(model, weights, weight_optimizer, val["inputs"], val["target"], task.loss)
            weight_history.append((iteration + 1, weights().detach()))  # stays on the device until logged

        if (iteration + 1) % settings.log_every == 0 or iteration + 1 == total:
            for step, values in weight_history:
                record({"iteration": step, "kind": "weights", "weights": dict(zip(bundle.modalities, values.tolist()))})
            weight_history.clear()
            task_mean, ckd_mean = (sums / count).tolist()
            entry = {
                "iteration": iteration + 1,
                "epoch": (iteration + 1) / per_epoch,
                "kind": "train",
                "task_loss": task_mean,
                "ckd_loss": ckd_mean,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - start,
            }
            record(entry)
            metrics_file.flush()
            progress.set_postfix(task=f"{task_mean:.4f}", ckd=f"{ckd_mean:.4f}")
            sums.zero_()
            count = 0
    metrics_file.close()
    save_run_checkpoint(run_dir / CHECKPOINT, experiment, total)
    return experiment


def save_run_checkpoint(path: Path, experiment: Experiment, iteration: int) -> None:
    """Model and importance weights as tensors, with the config as metadata."""
    tensors = {f"model.{k}": v for k, v in experiment.model.state_dict().items()}
    tensors["weights.raw"] = experiment.weights.raw.detach()
    save_checkpoint(path, tensors, {"iteration": iteration, "config": experiment.config.to_dict(),
                                    "modalities": list(experiment.bundle.modalities)})
