"""What produced a result: mckd's version and git commit, the command, the libraries, the machine.

``mckd --version`` prints :func:`version_line`; every run directory keeps
:func:`environment` in its ``run.json`` (with the start and end times of each
session that trained it), so a table can be traced to the code and the
libraries that made it.
"""

from __future__ import annotations

import functools
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

PACKAGE_DIR = Path(__file__).resolve().parent


def mckd_version() -> str:
    """The installed distribution's version (the package's own when it is not installed)."""
    try:
        return metadata.version("mckd")
    except metadata.PackageNotFoundError:
        from mckd import __version__

        return __version__


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout mckd runs from (``+dirty`` with uncommitted changes); None outside git."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+dirty" if status else "")


def _version_of(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def version_line() -> str:
    """``mckd 0.1.0 (git abc1234), Python 3.11.9, torch 2.13.0`` (torch's version read without importing it)."""
    commit = git_commit()
    where = f" (git {commit[:12]}{'+dirty' if commit.endswith('+dirty') else ''})" if commit else ""
    return f"mckd {mckd_version()}{where}, Python {platform.python_version()}, torch {_installed('torch')}"


def _installed(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


_COMMAND: list[str] = []  # set by the CLI: the arguments of the mckd command being run


def set_command(argv: Sequence[str]) -> None:
    """Remember the arguments of the ``mckd`` command this process runs (``mckd.cli.main`` calls it)."""
    _COMMAND[:] = ["mckd", *argv]


def command_line() -> str:
    """The command as the user typed it (``mckd train ...``, or the Python script's arguments)."""
    import shlex

    if _COMMAND:
        return shlex.join(_COMMAND)
    program = Path(sys.argv[0]).name if sys.argv else ""
    if program in ("mckd", "cli.py", "__main__.py"):
        return " ".join(["mckd", *sys.argv[1:]])
    return " ".join([sys.executable, *sys.argv])


def environment(device: Any = None) -> dict[str, Any]:
    """mckd's version and commit, the command, Python, torch, MONAI, CUDA and cuDNN versions, the machine and device."""
    import torch

    cuda = torch.version.cuda if torch.cuda.is_available() or torch.version.cuda else None
    return {
        "mckd": mckd_version(),
        "git_commit": git_commit(),
        "command": command_line(),
        "cwd": str(Path.cwd()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": _version_of("monai"),
        "numpy": _version_of("numpy"),
        "cuda": cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "device": str(device) if device is not None else None,
        "gpu": torch.cuda.get_device_name(device) if device is not None and str(device).startswith("cuda") else None,
        "cpu_threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }


def now() -> str:
    """The local time with its UTC offset, ISO 8601 (``2024-05-01T10:32:01+02:00``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
