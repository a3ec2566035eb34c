"""CPU threads: how many intra-op threads torch uses, from ``train.threads``, in every command.

Measured on a 2-core machine (``benchmarks/threads.py``, README "CPU
threads"): the multi-view digits MLP runs fastest with one thread whether the
machine is idle or loaded, and a 3D U-Net, which gains from a second thread on
an idle machine, slows down several-fold with two threads as soon as other
CPU-bound processes compete for the cores (every parallel region waits for
its slowest thread). So ``train.threads: 0`` (auto) is one thread on the CPU;
a positive value is used as given.

What the user chose always wins: with ``OMP_NUM_THREADS`` (or
``MKL_NUM_THREADS``) in the environment, or after ``torch.set_num_threads``
changed torch's count, auto leaves the count alone.
"""

from __future__ import annotations

import os

import torch

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
AUTO_THREADS = 1  # what auto picks on the CPU (see the module docstring for the measurement)

_AT_IMPORT = torch.get_num_threads()
_SET_BY_MCKD: set[int] = set()


def _torch_defaults() -> set[int]:
    """The counts torch picks by itself on this machine: its logical or physical cores (those we may use)."""
    logical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    return {logical, usable, max(1, logical // 2), max(1, usable // 2)}


def chosen_by_user() -> str:
    """How the user fixed the thread count ("" when they did not): an environment variable or torch.set_num_threads."""
    for name in THREAD_VARIABLES:
        if os.environ.get(name, "").strip():
            return f"{name}={os.environ[name]}"
    current = torch.get_num_threads()
    if current in _SET_BY_MCKD:
        return ""
    if current != _AT_IMPORT or current not in _torch_defaults():
        return f"torch.set_num_threads({current})"
    return ""


def apply_threads(setting: int = 0) -> int:
    """Set torch's intra-op threads for ``train.threads``; return the count in use.

    Args:
        setting: a positive count, used as given; 0 (auto): the user's choice
            if they made one (:func:`chosen_by_user`), else :data:`AUTO_THREADS`.
    """
    from mckd.bounds import check_bound

    setting = int(check_bound("threads", setting, "train.threads"))  # more threads than CPUs: capped, with a warning
    if setting <= 0:
        if chosen_by_user():
            return torch.get_num_threads()
        setting = AUTO_THREADS
    if torch.get_num_threads() != setting:
        torch.set_num_threads(setting)
    _SET_BY_MCKD.add(setting)
    return setting


def describe_threads() -> str:
    """One phrase on the thread count in use and where it came from."""
    user = chosen_by_user()
    return f"{torch.get_num_threads()} CPU thread(s)" + (f" ({user})" if user else "")
