"""The one table of bounds on what a number may ask of the machine: processes, threads, voxels, bytes, nesting.

A number a user gives (``--workers``, ``train.threads``, ``--spacing``) or a
file claims (a ``.npy`` header's shape, a NIfTI header's dimensions, an image's
pixel count, a YAML document's nesting) sizes something mckd would then make:
processes, threads, an array in memory. Each such number is checked here,
against one row of :data:`BOUNDS`, before anything is made:

- a *resource* above the machine's means (more worker processes or threads
  than CPUs) is capped to it, with one warning naming the option;
- anything else out of bounds is one :class:`~mckd.errors.MckdError` naming
  the option or file, the value, and the bound.

The README's reliability section lists this table.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable

from mckd.errors import MckdError


def cpu_count() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def memory_bytes() -> int:
    """This machine's physical memory in bytes (8 GiB where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


@dataclass(frozen=True)
class Bound:
    """One row of the table.

    Attributes:
        low: the smallest value allowed.
        high: the largest (a function: it depends on the machine).
        unit: what the number counts, for messages.
        capped: a resource: above ``high`` is capped to it with a warning, not refused.
        why: where ``high`` comes from, for messages and the README.
    """

    low: float
    high: Callable[[], float]
    unit: str
    capped: bool
    why: str


BOUNDS: dict[str, Bound] = {
    # processes and threads: more than the CPUs only makes them wait for each other (and forks without end)
    "workers": Bound(1, cpu_count, "processes", True, "this machine's CPUs"),
    "num_workers": Bound(0, cpu_count, "DataLoader worker processes", True, "this machine's CPUs"),
    "threads": Bound(0, cpu_count, "CPU threads", True, "this machine's CPUs"),
    # sizes: what one array may take, whoever asks (a header, a spacing, an image)
    "voxels": Bound(1, lambda: 2**30, "voxels in one volume", False, "2^30 (4 GiB as float32)"),
    "voxel_threshold": Bound(0, lambda: 2**30, "voxels", False, "the voxels of the largest volume, 2^30"),
    "array_bytes": Bound(0, memory_bytes, "bytes in one array", False, "this machine's memory"),
    "image_pixels": Bound(1, lambda: 2**28, "pixels in one image", False, "2^28 (a decompression bomb beyond)"),
    "spacing": Bound(1e-3, lambda: 1e3, "mm per voxel", False, "0.001 to 1000 mm"),
    # nesting: Python's recursion stops far sooner than any real config or checkpoint needs
    "nesting": Bound(0, lambda: 100, "levels of nesting", False, "100 levels"),
}


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def check_bound(name: str, value: float, where: str) -> float:
    """``value`` if it is a finite number within ``BOUNDS[name]``; a capped resource above it comes back capped.

    Args:
        name: the row of :data:`BOUNDS`.
        value: the number asked for.
        where: the option, key or file that asked (``"--workers"``, ``"train.threads"``, a path).

    Raises:
        MckdError: a value that is not finite, below the bound, or (not a resource) above it.
    """
    bound = BOUNDS[name]
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise MckdError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise MckdError(f"{where} must be a finite number of {bound.unit}, got {value}")
    high = bound.high()
    if number < bound.low:
        raise MckdError(f"{where} must be at least {_number(bound.low)} ({bound.unit}), got {_number(value)}")
    if number > high:
        if bound.capped:
            warnings.warn(f"{where} {_number(value)} is more than {bound.why} ({_number(high)}); using "
                          f"{_number(high)}", stacklevel=2)
            return type(value)(high) if isinstance(value, int) else high
        raise MckdError(f"{where} asks for {_number(value)} {bound.unit}; at most {_number(high)} ({bound.why})")
    return value


def check_size(name: str, shape: tuple[int, ...], itemsize: int, where: str) -> None:
    """An array of ``shape`` (``itemsize`` bytes each) that ``where`` would make must fit ``BOUNDS[name]`` and memory.

    Checked before it is allocated: a header claiming 10^12 rows is refused, not attempted.
    """
    count = math.prod(int(d) for d in shape)
    if any(int(d) < 0 for d in shape):
        raise MckdError(f"{where} claims the shape {tuple(shape)}; dimensions must be >= 0")
    if name != "array_bytes" and count > BOUNDS[name].high():
        raise MckdError(f"{where} claims {_number(count)} {BOUNDS[name].unit} (shape {tuple(int(d) for d in shape)}); "
                        f"at most {_number(BOUNDS[name].high())} ({BOUNDS[name].why})")
    size = count * max(1, int(itemsize))
    if size > BOUNDS["array_bytes"].high():
        raise MckdError(f"{where} claims an array of {size / 2**30:,.1f} GiB (shape {tuple(int(d) for d in shape)}); "
                        f"more than this machine's memory ({BOUNDS['array_bytes'].high() / 2**30:,.1f} GiB)")


def nesting_depth(value: object, limit: int | None = None, items: int = 10**6) -> int:
    """How deeply ``value`` (dicts and lists) nests, counted without recursion, up to just past ``limit``.

    At most ``items`` values are visited (a structure whose shared parts expand to billions is not walked).
    """
    limit = int(BOUNDS["nesting"].high()) if limit is None else limit
    deepest, stack = 0, [(value, 0)]
    while stack and items > 0:
        items -= 1
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
    return deepest
