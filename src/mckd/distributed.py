"""Several processes, one model: the helpers around ``torch.distributed``.

A run started by ``torchrun`` (``env://`` rendezvous: ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` in the environment) trains
one model replica per process. PyTorch's own engine does the work:

- :class:`torch.nn.parallel.DistributedDataParallel` averages the model's
  gradients (``find_unused_parameters`` when each modality has its own
  encoder, since an encoder whose modality is missing from every sample of a
  rank's batch takes no part in that rank's backward pass);
- :class:`ResumableDistributedSampler` (a :class:`DistributedSampler`) gives
  each rank its share of the training and meta-validation splits, in an order
  that depends only on ``(seed, epoch)`` and that can restart mid-epoch;
- :func:`average_gradients` averages the importance weights' gradient before
  every step of their optimiser, so ``w`` is identical on every rank;
- :func:`all_reduce_mean` reduces logged metrics;
- :class:`StopRequest` turns SIGTERM / SIGHUP / Ctrl-C on any rank into a stop that
  every rank agrees on, at the same iteration.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every helper is a no-op and
nothing is initialised.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from mckd.errors import ConfigError


@dataclass(frozen=True)
class Context:
    """Where this process stands among the processes of a run.

    Attributes:
        rank: global rank, 0..world_size-1 (0 writes every file).
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
        device: this process's device.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device of ``train.device`` (or ``--device``) for the process of ``local_rank``: the one resolver.

    ``auto`` is ``cuda:<local_rank>`` when CUDA is available, else CPU; a bare
    ``cuda`` becomes ``cuda:<local_rank>``, so each process of a machine gets
    its own GPU.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device {name!r}: mckd runs on cpu or cuda (use auto, cpu, cuda or cuda:N)")
    if device.type == "cpu" and device.index not in (None, 0):
        raise ConfigError(f"train.device {name!r}: the CPU has no index (use cpu)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device is {name!r} but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device {name!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        if device.index is None:
            count = torch.cuda.device_count()
            if local_rank >= count:
                raise ConfigError(f"local rank {local_rank} has no GPU: this machine has {count}")
            device = torch.device("cuda", local_rank)
    return device


def local_device(name: str = "auto") -> torch.device:
    """:func:`resolve_device` this process (``LOCAL_RANK`` from torchrun, 0 otherwise)."""
    return resolve_device(name, _env_int("LOCAL_RANK", 0))


def setup(device_name: str = "auto", timeout_minutes: float = 30.0) -> Context:
    """Join the run's process group (``env://``) if ``torchrun`` started several processes.

    Idempotent: a second call (several seeds in one process) reuses the group.
    The backend is NCCL on CUDA and gloo on CPU.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=timedelta(minutes=timeout_minutes))
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def current() -> Context:
    """The context of an initialised group, or of a single CPU/GPU process (for evaluation)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int("LOCAL_RANK", 0)
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        return Context(rank=rank, world_size=world, local_rank=local, device=device)
    return Context(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def is_main() -> bool:
    """True on rank 0, and in a process that is not part of a group.

    Before the group is joined, a process that torchrun started says so by its ``RANK``: only rank 0 claims
    outputs or prints while the command starts.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return _env_int("RANK", 0) == 0


def barrier() -> None:
    """Wait for every rank (no-op without a group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Barrier, then destroy the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, context: Context, find_unused_parameters: bool) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` in a group; the model itself otherwise.

    DDP broadcasts rank 0's parameters and buffers when it is built, so every
    replica starts equal.
    """
    if not context.distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` in place with rank ``src``'s values (no-op without a group)."""
    if dist.is_available() and dist.is_initialized():
        with torch.no_grad():
            dist.broadcast(tensor.data, src=src)
    return tensor


def _collective_device() -> torch.device:
    """Where a collective's tensors must be: this rank's GPU with NCCL, the CPU with gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over ranks (a new tensor on ``tensor``'s device; the input without a group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    out = tensor.detach().to(_collective_device(), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def shard(dataset: Any) -> Any:
    """This rank's samples of ``dataset`` (every ``world_size``-th, no padding); all without a group.

    For evaluation: unlike a :class:`DistributedSampler`, nothing is repeated,
    so sums over ranks count every sample once.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dataset
    return torch.utils.data.Subset(dataset, range(dist.get_rank(), len(dataset), dist.get_world_size()))


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over ranks (a new tensor; the input without a group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """The maximum of ``tensor`` over ranks (a new tensor; the input without a group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (every rank must call; the flag itself without a group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    return bool(all_reduce_max(torch.tensor([int(flag)], device=device)).item())


def average_gradients(parameters: list[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over ranks (no-op without a group).

    A rank whose gradient is ``None`` contributes zeros, so every rank ends
    with the same gradient and, after the same optimiser step, the same values.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)


def average_gradients_before_step(optimizer: torch.optim.Optimizer) -> Any:
    """Average ``optimizer``'s gradients over ranks before each of its steps (a step pre-hook).

    Returns the hook's handle (``.remove()`` detaches it); ``None`` without a group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return optimizer.register_step_pre_hook(lambda opt, args, kwargs: average_gradients(params))


def gather_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape and dtype on all ranks), in rank order.

    Without a group: ``[tensor]``. With NCCL the tensor travels through this
    rank's GPU and comes back on the CPU.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return [tensor]
    local = tensor.detach().to(_collective_device())
    out = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(out, local)
    return [t.cpu() for t in out]


def gather_json(value: Any) -> list[Any]:
    """Every rank's ``value`` (JSON data: rows of a table, records of cases), in rank order.

    Sent as JSON text in a byte tensor (nothing is pickled). Without a group: ``[value]``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    import json

    data = torch.tensor(list(json.dumps(value).encode("utf-8")), dtype=torch.uint8)
    sizes = gather_tensors(torch.tensor([data.numel()], dtype=torch.int64))
    longest = max(int(size) for size in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: data.numel()] = data
    parts = gather_tensors(padded)
    return [json.loads(bytes(part[: int(size)].tolist()).decode("utf-8")) for part, size in zip(parts, sizes)]


def rank_and_size() -> tuple[int, int]:
    """``(rank, world size)`` of this process (``(0, 1)`` without a group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` ``[R_rank, ...]`` (R may differ by rank, the rest may not), concatenated in rank order.

    Without a group: ``tensor`` itself. Rows are padded to the longest rank's
    for the all-gather and cut back, so ranks with no rows take part too.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    sizes = gather_tensors(torch.tensor([tensor.shape[0]], dtype=torch.int64))
    longest = max(int(size) for size in sizes)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = gather_tensors(padded)
    return torch.cat([part[: int(size)] for part, size in zip(parts, sizes)])


class ResumableDistributedSampler(DistributedSampler):
    """A :class:`DistributedSampler` that can start part-way through an epoch.

    The order of epoch ``e`` is PyTorch's: a permutation seeded by
    ``seed + e``, padded to a multiple of the number of replicas, and this
    rank's share every ``num_replicas``-th index. ``start`` skips the first
    ``start`` indices of this rank's share, so a resumed run sees exactly the
    samples an uninterrupted one would. With ``num_replicas=1`` it is a plain
    seeded shuffle (no process group is needed).
    """

    def __init__(self, dataset: Any, num_replicas: int, rank: int, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


# The signals that stop mckd cleanly: SIGTERM (a scheduler, kill), Ctrl-C, and SIGHUP (the terminal or ssh
# session closed: training is checkpointed as for SIGTERM rather than lost).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def leave_closed_terminal(signum: int) -> None:
    """After SIGHUP, point stdout and stderr at /dev/null where they were the closed terminal.

    Writing to a terminal that has gone away fails (EIO); the checkpoint and
    clean-up after the signal must not stop at a progress bar's next line.
    """
    if signum != signal.SIGHUP:
        return
    for fd in (1, 2):
        try:
            if os.isatty(fd):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)
        except OSError:
            continue


class StopRequest:
    """SIGTERM, SIGHUP or Ctrl-C (SIGINT) asks the training loop to stop cleanly.

    The handler only sets a flag; the loop calls :meth:`should_stop` once per
    iteration, then saves a checkpoint and leaves. A second signal of the same
    kind gets the previous handler (Ctrl-C twice interrupts at once).

    With several processes the flag is combined over ranks (max) through a
    gloo group on the CPU, one iteration late and without waiting: each call
    starts the reduction of this iteration's flag and reads the previous one,
    so every rank stops at the same iteration and the GPU is never waited for.
    """

    SIGNALS = STOP_SIGNALS

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}
        self._group = None
        self._pending: tuple[Any, torch.Tensor] | None = None
        if dist.is_available() and dist.is_initialized():
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        leave_closed_terminal(signum)
        previous = self._previous.get(signum, signal.SIG_DFL)
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        if self._pending is not None and exc_type is None:  # after an error the other ranks may be gone
            self._pending[0].wait()
        self._pending = None

    def should_stop(self) -> bool:
        """Whether every rank should stop after this iteration (same answer on every rank)."""
        if self._group is None:
            return self.requested
        agreed = False
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            agreed = bool(flag.item())  # a CPU tensor: no device synchronisation
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32)
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True), flag)
        return agreed


def ignore_stop_signals_in_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers leave SIGTERM, SIGHUP and Ctrl-C to the main process.

    Otherwise Ctrl-C would end the workers while the main process is still
    saving its checkpoint. Workers exit with the main process anyway.
    """
    for signum in StopRequest.SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
