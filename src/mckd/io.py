"""Writing files safely: every file mckd writes goes through :func:`atomic_write`.

The content is written to a hidden temporary file in the target's folder,
flushed to disk, then renamed over the target, so a crash, a full disk or a
SIGKILL mid-write leaves the previous version intact (at worst a hidden
``.<name>.*.tmp`` file beside it). Under ``torchrun`` only rank 0 writes.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable

from mckd import distributed
from mckd.errors import MckdError

# Errors of the machine, not of the program: a full disk, a read-only or over-quota file system, no permission.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EISDIR}


def current_umask() -> int:
    """The process's umask (read without changing it for longer than a moment)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], object], suffix: str = ".tmp",
                 every_rank: bool = False) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: a crash leaves the old file intact.

    Args:
        path: the file to write.
        write: writes the content to the path it is given.
        suffix: the temporary file's ending (a writer that picks the format from
            the name, such as nibabel's, needs the real one, e.g. ``.tmp.nii.gz``).
        every_rank: write on every rank (each rank's own files, e.g. the cases
            ``mckd predict`` shares out under torchrun).

    On other ranks than 0 under torchrun this does nothing, unless ``every_rank``.
    """
    if not (every_rank or distributed.is_main()):
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    except OSError as error:  # the folder is a file, not writable, ...
        raise MckdError(f"cannot write {str(path)!r}: {error.strerror or error}") from None
    os.close(handle)
    try:
        write(tmp)
        with open(tmp, "rb") as stream:
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; results should read like any file
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
            raise MckdError(f"cannot write {str(path)!r}: {error.strerror}; the previous version, if any, "
                            "is intact") from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
