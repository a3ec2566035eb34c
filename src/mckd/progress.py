"""Progress that fits where it goes: a bar on a terminal, plain lines in a log.

Two kinds. :class:`Progress` counts steps (training iterations, evaluation
samples): on a terminal (stderr is a TTY) a tqdm bar; anywhere else (``make ...
> log``, a pipe, a cluster's job log) a bar's carriage returns would pile up
into one line of thousands of characters, so it prints a plain line at every
tenth of the work and at least once a minute, and a last one at the end::

    train seed 0: 540/1080 (50%), task_loss 0.2011, ckd_loss 0.0123, 85.2 it/s, 6 s left

Those lines go to stderr, like tqdm's bar, so stdout keeps only results.
:class:`CaseProgress` counts cases (``prepare seg``, ``predict``, ``evaluate
--data``): a bar on a sized terminal, otherwise one plain line per finished case
on stdout (``[3/10] case: what happened``), the record of what was done.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Mapping, TextIO


def plural(count: int, noun: str) -> str:
    """``1 case``, ``3 cases``: a count with its noun, for every message that counts."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Progress of ``total`` steps: a tqdm bar on a terminal, periodic plain lines otherwise.

    Args:
        total: steps in all.
        desc: what is going on ("train seed 0", "evaluate", "prepare brats").
        initial: steps already done (a resumed run).
        enabled: False: nothing is shown.
        unit: what a step is ("it", "case", "sample").
        stream: where it goes (stderr).
        every_fraction: plain lines at each such share of the work...
        every_seconds: ... and at least this often (none in the first 2 s: a short job gets its last line only).
    """

    def __init__(self, total: int, desc: str, initial: int = 0, enabled: bool = True, unit: str = "it",
                 stream: TextIO | None = None, every_fraction: float = 0.1, every_seconds: float = 60.0) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.done = int(initial)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and self.total > 0
        self.postfix: dict[str, str] = {}
        self._bar: Any = None
        self._start = time.perf_counter()
        self._start_done = self.done
        self._last_line_at = self._start
        self._next_fraction = every_fraction * (math.floor(self.done / max(self.total, 1) / every_fraction) + 1)
        self.every_fraction, self.every_seconds = every_fraction, every_seconds
        self.quiet_seconds = 2.0  # no line before this: a job of a second needs one line, not ten
        self._closed = False
        if self.enabled and is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=desc, unit=unit, file=self.stream,
                             dynamic_ncols=True)

    @property
    def rate(self) -> float:
        """Steps per second since this object was made."""
        elapsed = time.perf_counter() - self._start
        return (self.done - self._start_done) / elapsed if elapsed > 0 else float("nan")

    def set_postfix(self, values: Mapping[str, Any]) -> None:
        """Values shown after the count (losses, a metric), as text."""
        self.postfix = {key: value if isinstance(value, str) else f"{value:.4g}" for key, value in values.items()}
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=False)

    def update(self, steps: int = 1) -> None:
        self.done += steps
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(steps)
            return
        now = time.perf_counter()
        quiet = now - self._start < self.quiet_seconds and self.done < self.total  # a short job: its last line only
        if not quiet and (self.done >= self.total or self.done / self.total >= self._next_fraction - 1e-12
                          or now - self._last_line_at >= self.every_seconds):
            while self._next_fraction <= self.done / self.total + 1e-12:
                self._next_fraction += self.every_fraction
            self._line(now)

    def line(self) -> str:
        """The plain line of the current state."""
        rate = self.rate
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        parts = [f"{self.desc}: {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%)",
                 *(f"{key} {value}" for key, value in self.postfix.items())]
        if math.isfinite(rate):
            parts.append(f"{rate:.3g} {self.unit}/s")
        parts.append(f"{_duration(left)} left" if self.done < self.total
                     else f"done in {_duration(time.perf_counter() - self._start)}")
        return ", ".join(parts)

    def _line(self, now: float) -> None:
        self._last_line_at = now
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._last_line_at == self._start and self.done > self._start_done:
            self._line(time.perf_counter())  # a short job: one line at the end at least


class _CountedDataset:
    """A dataset whose reads advance a :class:`Progress` (one step per sample); everything else passes through."""

    def __init__(self, dataset: Any, progress: Progress) -> None:
        self.dataset, self.progress = dataset, progress

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        item = self.dataset[index]
        self.progress.update()
        if self.progress.done >= self.progress.total:
            self.progress.close()
        return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dataset, name)


def with_progress(dataset: Any, desc: str, enabled: bool = True) -> Any:
    """``dataset``, reporting its reads as progress (evaluation reads each sample once, subsets per batch)."""
    try:
        total = len(dataset)
    except TypeError:
        return dataset
    return _CountedDataset(dataset, Progress(total, desc, enabled=enabled, unit="sample"))


def terminal_width() -> int:
    """Columns of the terminal stderr writes to; 0 for a pipe, a file, or a terminal of no size (a bar would not show)."""
    if not sys.stderr.isatty():
        return 0
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except OSError:
        return 0


class CaseProgress:
    """``update(item, note)`` after each item; ``close()`` at the end.

    Args:
        total: items to do.
        desc: what is done (``predict``, ``prepare seg``).
        enabled: False shows nothing.
        prefix: put before each plain line (``rank 1 `` under torchrun).
    """

    def __init__(self, total: int, desc: str, enabled: bool = True, prefix: str = "") -> None:
        self.total, self.done, self.prefix, self.enabled = total, 0, prefix, enabled
        self.tty = terminal_width() > 0
        self.bar: Any = None
        if enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"{prefix}{desc}", unit="case", dynamic_ncols=True)

    def update(self, item: str = "", note: str = "") -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update()
        elif self.enabled:
            text = f"{self.prefix}[{self.done}/{self.total}] {item}" + (f": {note}" if note else "")
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
