"""Progress over cases, readable on a terminal and in a log.

On a terminal (stderr is a TTY with a width): a tqdm bar. Through a pipe or into a file:
one plain line per finished item on stdout (``[3/10] case: what happened``),
since a bar's carriage returns make a log unreadable.
"""

from __future__ import annotations

import sys
from typing import Any


def terminal_width() -> int:
    """Columns of the terminal stderr writes to; 0 for a pipe, a file, or a terminal of no size (a bar would not show)."""
    import os

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
