"""Writing files safely: the one atomic writer, the one output guard, and append-only logs.

Every file mckd writes goes through :func:`atomic_write`: the content is
written to a hidden temporary file in the target's folder
(``.<name>.<pid>.<random>.tmp``), flushed to disk, then renamed over the
target, so a crash, a full disk or a SIGKILL mid-write leaves the previous
version intact. A failure of the machine rather than of the program (a full
disk, a read-only file system, no permission), whoever raises it (Python,
safetensors, nibabel, matplotlib), is one :class:`~mckd.errors.MckdError`
naming the file.

Every command that writes an output claims it first with :func:`claim_output`
(the output guard): an existing output is refused unless the command was told
to replace it (``--force``), and a lock file beside the output,
``.<name>.lock``, holds the claim for as long as the command runs, so a second
command on the same output is refused with the first one's process id,
command line and start time. The lock is an ``flock``: the kernel releases it
when its process ends, however it ends, so a killed command never leaves a
stale claim. Claiming an output also removes the hidden temporary files and
staging folders that a dead process left beside it.

Under ``torchrun`` only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import json
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from mckd.errors import MckdError, OutputInUse

# Errors of the machine, not of the program: a full disk, a read-only or over-quota file system, no permission.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EISDIR,
                      errno.ENOTDIR, errno.EFBIG, errno.EIO}
# How libraries written in other languages report an OS error in their message (safetensors:
# "I/O error: No space left on device (os error 28)").
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


def current_umask() -> int:
    """The process's umask (read without changing it for longer than a moment)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def environment_errno(error: BaseException) -> int | None:
    """The errno of a full disk, read-only file system or permission failure behind ``error``; else None.

    Python raises :class:`OSError`; libraries written in Rust or C (safetensors'
    ``SafetensorError``) put the OS error's number in their message instead.
    """
    if isinstance(error, OSError):
        return error.errno if error.errno in ENVIRONMENT_ERRNOS else None
    match = _OS_ERROR_CODE.search(str(error))
    if match:
        code = int(match.group(1) or match.group(2))
        return code if code in ENVIRONMENT_ERRNOS else None
    return None


def write_failure(path: str | Path, code: int, keeps_previous: bool = True) -> MckdError:
    """The one-line error of a write that the machine refused."""
    tail = "; the previous version, if any, is intact" if keeps_previous else ""
    return MckdError(f"cannot write {str(path)!r}: {os.strerror(code)}{tail}")


def temporary_name(path: Path, tag: str = "") -> Path:
    """A hidden sibling of ``path`` that names this process: ``.<name>.<pid>.<tag><random>.tmp``."""
    return path.parent / f".{path.name}.{os.getpid()}.{tag}{secrets.token_hex(4)}.tmp"


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

    Raises:
        MckdError: the folder cannot be made or written, or the disk is full
            (whatever library ``write`` uses); the previous ``path`` is intact.

    On other ranks than 0 under torchrun this does nothing, unless ``every_rank``.
    """
    from mckd import distributed  # here, not at the top: reading a config needs no torch (the CLI answers at once)

    if not (every_rank or distributed.is_main()):
        return
    path = Path(path)
    with contextlib.suppress(OSError):
        mode = os.lstat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):  # renaming over a device (as root: /dev/null) breaks it
            raise MckdError(f"cannot write {str(path)!r}: it {file_problem(path)}; mckd writes only regular files")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix, dir=path.parent)
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
        code = environment_errno(error)
        if code is not None:
            raise write_failure(path, code) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, value: Any) -> None:
    """Write JSON atomically; NaN and infinities become ``null`` (JSON has no such numbers)."""
    atomic_write_text(path, json.dumps(finite_json(value), indent=2) + "\n")


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, so that ``json.dumps`` writes valid JSON."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


class AppendLog:
    """An append-only text file (``metrics.jsonl``, the CSV logs): each line written and flushed whole.

    A full disk or read-only file system is one :class:`MckdError` naming the
    file; what was written before stays (a line cut by the failure is the last
    one, and a resumed run drops it with everything after its checkpoint).
    """

    def __init__(self, path: str | Path, mode: str = "a") -> None:
        self.path = Path(path)
        try:
            self._stream = self.path.open(mode, encoding="utf-8")
        except OSError as error:
            raise write_failure(self.path, error.errno or errno.EIO, keeps_previous=False) from None

    def write_line(self, line: str) -> None:
        try:
            self._stream.write(line.rstrip("\n") + "\n")
            self._stream.flush()
        except OSError as error:
            raise write_failure(self.path, error.errno or errno.EIO, keeps_previous=False) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._stream.close()


# --- paths: the one validator, and a path that must be a regular file -------------------------------------

NAME_MAX = 255  # bytes in one file or folder name (Linux, macOS and most file systems)
PATH_MAX = 4096  # bytes in a whole path (Linux)


def shown(text: Any, limit: int = 80) -> str:
    """``text`` for a message, cut to ``limit`` characters (an error names a value; it does not print a huge one)."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def path_problem(path: str | Path, home: bool = False) -> str:
    """Why ``path`` cannot be a path on this machine ("" when it can): a NUL byte, a name or path too long.

    ``home``: ``~`` and ``~user`` stand for home folders (config values); an unknown user is a problem.
    On the command line the shell expands them, and a ``~`` that reaches mckd is part of a name.
    """
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(text, str):
        return f"is a {type(path).__name__}, not a path"
    if not text:
        return "is empty"
    if "\x00" in text:
        return "contains a NUL byte, which no file name can hold"
    if home and text.startswith("~"):
        try:
            text = os.fspath(Path(text).expanduser())
        except RuntimeError:
            return f"names the home folder of {text.split('/')[0]!r}, an unknown user"
    encoded = text.encode("utf-8", "surrogateescape")
    if len(encoded) >= PATH_MAX:
        return f"is {len(encoded):,} bytes long; paths hold at most {PATH_MAX - 1:,}"
    longest = max(text.split("/"), key=lambda part: len(part.encode("utf-8", "surrogateescape")))
    size = len(longest.encode("utf-8", "surrogateescape"))
    if size > NAME_MAX:
        which = "" if longest == text else f" ({shown(longest, 40)})"
        return f"has a name of {size:,} bytes{which}; file systems allow at most {NAME_MAX}"
    return ""


def name_problem(name: str, forbidden: str = "") -> str:
    """Why ``name`` cannot be one file or folder name ("" when it can): empty, ``.``, ``..``, a ``/`` or NUL,
    too long, or holding one of ``forbidden`` (characters that mean something else where the name is used)."""
    if not isinstance(name, str) or not name.strip():
        return "is empty"
    if name in (".", ".."):
        return "is '.' or '..', a folder's name"
    bad = sorted({c for c in name if c in "/\x00" + forbidden})
    if bad:
        return f"holds {', '.join(repr(c) for c in bad)}, which cannot be part of it"
    if name != name.strip():
        return "begins or ends with a space"
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"is {len(name.encode('utf-8', 'surrogateescape')):,} bytes long; names hold at most {NAME_MAX}"
    return ""


def check_path(path: str | Path, what: str, home: bool = False) -> Path:
    """``path`` as a :class:`~pathlib.Path`, or an :class:`MckdError` saying why it cannot be one.

    The one validator of every path mckd is given: command-line options, config
    values (``home``: ``~`` expanded), arguments of the Python API, and every
    output the guard claims.
    """
    problem = path_problem(path, home)
    if problem:
        raise MckdError(f"{what} {shown(path)!r} {problem}")
    path = Path(path)
    return path.expanduser() if home and str(path).startswith("~") else path


def file_problem(path: str | Path) -> str:
    """Why ``path`` cannot be read as a regular file ("" when it can): missing, a folder, a FIFO, a device."""
    problem = path_problem(path)
    if problem:
        return problem
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a named pipe (FIFO), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a regular file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a regular file"
    return "is not a regular file"


def folder_problem(path: str | Path) -> str:
    """Why ``path`` cannot be read as a folder ("" when it can): missing, a file, not readable."""
    problem = path_problem(path)
    if problem:
        return problem
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISDIR(mode):
        return ""
    return "is a file, not a folder" if stat.S_ISREG(mode) else "is not a folder"


# --- the output guard ---------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]*\.tmp(\.[A-Za-z.]+)?$")


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the hidden temporary files and staging folders of ``path`` whose process has ended.

    They are the ``.<name>.<pid>.<...>.tmp`` siblings that :func:`atomic_write`,
    :func:`temporary_name` and the staging folders of ``mckd train`` and
    ``mckd prepare`` make; a SIGKILL (or a power cut) can leave them behind.
    Those of a live process are left alone. Returns what was removed.
    """
    path = Path(path)
    removed = []
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            match = _TEMPORARY.match(entry.name)
            if not match or match["name"] != path.name or _pid_alive(int(match["pid"])):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
    return removed


def remove_stale_temporaries_inside(folder: str | Path) -> list[Path]:
    """The same inside ``folder``: the temporary files of its outputs (``mckd predict``'s cases) whose process ended."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            match = _TEMPORARY.match(entry.name)
            if match and not _pid_alive(int(match["pid"])) and not entry.is_dir():
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(entry)
    return removed


_HELD: dict[str, list[Any]] = {}  # resolved output path -> [lock file descriptor, count]: claims are reentrant


def lock_path(path: str | Path) -> Path:
    """The lock file of an output: ``.<name>.lock`` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def _lock_info(lock: Path) -> dict[str, Any]:
    """What the holder of ``lock`` wrote into it (empty when unreadable: a holder that is still writing it)."""
    try:
        info = json.loads(lock.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _holder(lock: Path) -> str:
    """Who holds ``lock``, from what the holder wrote into it."""
    info = _lock_info(lock)
    if "pid" not in info:
        return "another process"
    where = f" on {info['host']}" if info.get("host") and info["host"] != socket.gethostname() else ""
    return f"process {info['pid']}{where} (`{_short(info.get('command', '?'))}`, since {info.get('started', '?')})"


def _short(text: Any, limit: int = 200) -> str:
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _held_by_another(lock: Path) -> bool:
    """Whether another process holds the claim of ``lock`` (a lock file left by an ended process is not held)."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases the shared lock taken to test it
    return False


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a claim made for its lock, deepest first, where the command left nothing in them."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _acquire(path: Path, replaces: bool) -> int:
    lock = lock_path(path)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MckdError(f"cannot write {str(path)!r}: {error.strerror or error}") from None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~current_umask())
        except OSError as error:  # a read-only or full file system, no permission: nothing can be written here
            raise MckdError(f"cannot write {str(path)!r}: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputInUse(f"{str(path)!r} is in use by {_holder(lock)}; wait for it to end or stop it, "
                              "then run this again") from None
        # The holder before us may have removed the lock file after we opened it: lock the file that is there.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    from mckd.provenance import command_line

    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command_line(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "replaces": replaces}
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
    return fd


def _release(path: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(lock_path(path))  # while still holding it: a waiting process re-checks the inode
    os.close(fd)


# --- what mckd may replace: its own outputs, recognised by the record each one holds ------------------------


def _json_value(path: Path, key: str) -> Any:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value.get(key) if isinstance(value, dict) else None


def recognise_output(path: str | Path) -> str | None:
    """Which mckd output the folder ``path`` is, by the record mckd writes into it; None when it is none.

    ``"run directory"`` (``config.yaml`` with ``checkpoint.safetensors``: ``mckd train``), ``"multi-seed
    folder"`` (``seeds.json`` or ``seed_<s>/`` runs), ``"cache"`` (``dataset.json`` of an ``mckd-`` format:
    ``mckd prepare seg``), ``"prediction folder"`` (``predict.json``) or ``"evaluation folder"``
    (``evaluation.json``).
    """
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / "config.yaml").is_file() and (path / "checkpoint.safetensors").is_file():
        return "run directory"
    if (path / "seeds.json").is_file() or any((seed / "checkpoint.safetensors").is_file()
                                              for seed in path.glob("seed_*")):
        return "multi-seed folder"
    if str(_json_value(path / "dataset.json", "format") or "").startswith("mckd-"):
        return "cache"
    if (path / "predict.json").is_file():
        return "prediction folder"
    if (path / "evaluation.json").is_file():
        return "evaluation folder"
    return None


def _listing(folder: Path, limit: int = 3) -> str:
    """A few names of what ``folder`` holds, for a message."""
    with contextlib.suppress(OSError):
        names = sorted(entry.name for entry in folder.iterdir())
        shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
        return f" ({shown})"
    return ""


def check_writes_into_own_folder(path: str | Path, what: str) -> None:
    """A command that writes into an existing folder (``benchmark``, ``analyse``, with ``--force`` or ``--reuse``)
    writes only into one of mckd's: the folder, or one of its subfolders, is an mckd output
    (:func:`recognise_output`). An empty folder is fine; a folder of the user's files is refused."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink() or not any(path.iterdir()):
        return
    if recognise_output(path) or any(recognise_output(child) for child in path.iterdir()
                                     if child.is_dir() and not child.is_symlink()):
        return
    raise MckdError(f"{str(path)!r} holds files mckd did not write{_listing(path)}; a {what} is written only into a "
                    f"new or empty folder or an earlier {what}, even with --force: choose another folder")


def _check_replaceable(path: Path, what: str) -> None:
    """``--force`` deletes ``path``: only an mckd ``what`` of its own, a real folder (not a link to one)."""
    if path.is_symlink():
        raise MckdError(f"{what} {str(path)!r} is a symbolic link (to {os.readlink(path)!r}); mckd replaces only a "
                        "real folder, never through a link: pass the folder itself, or another path")
    if not path.is_dir() or not any(path.iterdir()):
        return
    found = recognise_output(path)
    if found is None:
        raise MckdError(f"{str(path)!r} holds files mckd did not write{_listing(path)}; mckd replaces only its own "
                        f"outputs, even with --force: choose a new or empty folder for the {what}")
    if found != what:
        raise MckdError(f"{str(path)!r} is a {found}, not a {what}; --force replaces only a {what}: choose "
                        "another folder")
    if found == "run directory":
        foreign = sorted(entry.name for entry in path.iterdir() if not _written_by_mckd_in_a_run(entry.name))
        if foreign:
            raise MckdError(f"run directory {str(path)!r} also holds files mckd did not write ({', '.join(foreign[:3])}"
                            f"{f' and {len(foreign) - 3} more' if len(foreign) > 3 else ''}); --force would delete "
                            "them with the run: move them out, or choose another folder")


# What mckd writes at the top of a run directory (rundir.RunDir, evaluations, comparisons, the benchmarks' scores),
# and its hidden temporaries and locks: anything else there is the user's, and --force does not delete it.
_RUN_ENTRIES = ("config.yaml", "data.json", "scaling.safetensors", "metrics.jsonl", "run.json", "tensorboard",
                "checkpoint.safetensors", "checkpoint_best.safetensors", "metrics_*.csv", "eval", "eval_*",
                "compare_vs_*", "test_by_epoch.json", ".*.tmp", ".*.tmp.*", ".*.lock")


def _written_by_mckd_in_a_run(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _RUN_ENTRIES)


def _check_inputs(path: Path, inputs: Sequence[str | Path], replaces: bool, kind: str) -> None:
    """No output is written over a file this command reads, and a replaced folder holds none of them.

    (A folder written into, not replaced, may be an input's folder: only the files it names are written.)
    """
    target = path.resolve()
    for item in inputs:
        if not str(item):
            continue
        try:
            source = Path(item).resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if (source == target and kind == "file") or (replaces and source.is_relative_to(target)):
            where = "is" if source == target else "is inside"
            raise MckdError(f"the output {str(path)!r} would destroy {str(item)!r}, which this command reads (it "
                            f"{where} the output); choose another output")


def _check_surroundings(path: Path, what: str, replaces: bool) -> None:
    """Refuse a claim inside an output another process is replacing, or a replacement of a folder in use inside."""
    resolved = path.resolve()
    for ancestor in resolved.parents:
        if str(ancestor) in _HELD:
            continue
        lock = lock_path(ancestor)
        if lock.exists() and _held_by_another(lock) and _lock_info(lock).get("replaces", True):
            raise OutputInUse(f"{what} {str(path)!r} is inside {str(ancestor)!r}, which {_holder(lock)} is "
                              "replacing (it would be deleted with it); wait for it to end, or write elsewhere")
    if not (replaces and resolved.is_dir() and not path.is_symlink()):
        return
    for folder, subfolders, files in os.walk(resolved):
        for name in files:
            if name.startswith(".") and name.endswith(".lock"):
                lock = Path(folder) / name
                inner = Path(folder) / name[1 : -len(".lock")]
                if str(inner) not in _HELD and _held_by_another(lock):
                    raise OutputInUse(f"{str(inner)!r}, inside the {what} {str(path)!r} that --force would replace, "
                                      f"is in use by {_holder(lock)}; wait for it to end or stop it")


@contextlib.contextmanager
def claim_output(path: str | Path, replace: bool = False, kind: str = "file", what: str = "output",
                 hint: str = "pass --force to replace it", replaces: bool = False,
                 inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Claim ``path`` for writing, for the duration of the ``with`` block (the output guard).

    Args:
        path: the output file or folder.
        replace: whether an existing output may be written over or into (``--force``, or a
            command that writes into a run); an empty folder is never in the way.
        kind: ``"file"`` or ``"dir"``: an existing output of the other kind is refused.
        what: what the output is, for the messages ("run directory", "cache").
        hint: what the refusal of an existing output tells the user to do.
        replaces: the command deletes what is at ``path`` and puts its own in its place
            (``mckd train --force``, ``mckd prepare seg --force``). The ownership rule:
            only an mckd output of that kind (:func:`recognise_output`), a real folder
            rather than a link to one, none of whose contents another process is writing.
        inputs: files and folders the command reads: ``path`` may not be one of them,
            and a folder it replaces may not hold one.

    Raises:
        OutputInUse: another process holds the claim, or is replacing a folder ``path`` is
            inside, or (``replaces``) writes inside ``path`` (the message names it).
        MckdError: the output exists (without ``replace``), is of the wrong kind, is not
            mckd's own (``replaces``), is an input, or its folder cannot be written
            (read-only, full, no permission).

    Reentrant within one process; a no-op on other ranks than 0 under torchrun.
    """
    from mckd import distributed

    path = check_path(path, what)
    if not distributed.is_main():
        yield path
        return
    _check_inputs(path, inputs, replaces, kind)
    key = str(path.resolve())
    if key in _HELD:
        if replaces:
            _check_replaceable(path, what)
        _HELD[key][1] += 1
        try:
            yield path
        finally:
            _HELD[key][1] -= 1
        return
    if path.exists() or path.is_symlink():
        if kind == "dir" and not path.is_dir():
            state = "a broken symbolic link" if not path.exists() else "a file, not a folder"
            raise MckdError(f"{what} {str(path)!r} is {state}; choose another path")
        if kind == "file" and path.is_dir():
            raise MckdError(f"{what} {str(path)!r} is a folder, not a file; choose another path")
        problem = file_problem(path) if kind == "file" and path.exists() else ""
        if problem:  # a device, a FIFO, a socket: replacing it (as root, /dev/null) would break the machine
            raise MckdError(f"{what} {str(path)!r} {problem}; mckd writes only regular files: choose another path")
        if replaces:
            _check_replaceable(path, what)
        empty_folder = path.is_dir() and not any(path.iterdir())
        if not replace and not empty_folder:
            raise MckdError(f"{what} {str(path)!r} exists; {hint}")
    _check_surroundings(path, what, replaces)
    made = _missing_folders(path.parent)  # made for the lock: removed again if the command writes nothing there
    fd = _acquire(path, replaces)
    _HELD[key] = [fd, 1]
    try:
        remove_stale_temporaries(path)
        yield path
    finally:
        del _HELD[key]
        _release(path, fd)
        _remove_if_empty(made)


def holds_claim(path: str | Path) -> bool:
    """Whether this process holds the claim on ``path``."""
    return str(Path(path).resolve()) in _HELD
