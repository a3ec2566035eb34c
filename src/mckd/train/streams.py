"""Endless, resumable batches of one split for this process."""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader

from mckd import distributed
from mckd.bounds import check_bound


class BatchStream:
    """Endless batches of one split for this rank, in an order a checkpoint can restore.

    Epoch ``e`` visits this rank's share of a permutation seeded by
    ``seed + e`` (:class:`mckd.distributed.ResumableDistributedSampler`); the
    position is ``(epoch, batches taken this epoch)``. The DataLoader has its
    own generator, so starting a pass never draws from the global torch RNG.

    Args:
        dataset: the split.
        batch_size: samples per batch on this rank (the global batch is
            ``batch_size x world_size``).
        seed: seed of the data order.
        context: this process's rank and device.
        num_workers: DataLoader worker processes (pinned memory on CUDA).
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int, context: distributed.Context, num_workers: int) -> None:
        num_workers = int(check_bound("num_workers", num_workers, "train.num_workers"))  # at most one per CPU
        self.sampler = distributed.ResumableDistributedSampler(dataset, context.world_size, context.rank, seed)
        per_rank = self.sampler.num_samples
        self.batch_size = min(batch_size, per_rank)
        drop_last = per_rank > batch_size
        self.batches_per_epoch = per_rank // self.batch_size if drop_last else math.ceil(per_rank / self.batch_size)
        self.loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            pin_memory=context.device.type == "cuda",
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
            worker_init_fn=distributed.ignore_stop_signals_in_worker if num_workers > 0 else None,
        )
        self.epoch = 0
        self.step = 0
        self._iterator: Iterator[Any] | None = None

    def _start_pass(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = self.step * self.batch_size
        self._iterator = iter(self.loader)

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            self._start_pass()
        try:
            batch = next(self._iterator)  # type: ignore[arg-type]
        except StopIteration:
            self.epoch, self.step = self.epoch + 1, 0
            self._start_pass()
            batch = next(self._iterator)  # type: ignore[arg-type]
        self.step += 1
        return batch

    def close(self) -> None:
        """Stop this stream's DataLoader workers. They ignore SIGTERM (the main process handles stops), so
        Python's exit, which terminates and then joins every child process, would otherwise wait for them forever
        if anything still held the stream."""
        for iterator in (self._iterator, getattr(self.loader, "_iterator", None)):  # ours, and the persistent one
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        self._iterator = None
        self.loader._iterator = None  # a later pass starts new workers

    def state(self) -> torch.Tensor:
        """``[epoch, batches taken this epoch]`` (int64)."""
        return torch.tensor([self.epoch, self.step], dtype=torch.int64)

    def load_state(self, state: torch.Tensor, saved_world_size: int, world_size: int) -> None:
        """Continue from :meth:`state`; with another number of processes, from the same sample count."""
        epoch, step = (int(v) for v in state.tolist())
        if saved_world_size != world_size:
            step = step * saved_world_size // world_size
        self.epoch, self.step, self._iterator = epoch, step, None
