"""Where a run is written: the directory claimed for the run, staged until its first checkpoint, and ``run.json``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from mckd.errors import MckdError
from mckd.io import atomic_write_json, claim_output, temporary_name
from mckd.rundir import RunDir


def claim_run_directory(target: str | Path, resume: bool = False, force: bool = False, inputs: Any = ()) -> Any:
    """The claim (:func:`mckd.io.claim_output`) of a run directory: an existing run only with ``force`` or ``resume``."""
    return claim_output(target, replace=force or resume, kind="dir", what="run directory", replaces=not resume,
                        inputs=inputs,
                        hint=f"pass --force to replace it (the old run stays until the new one has written its "
                             f"first checkpoint), or continue it with `mckd train --resume {target}`")


class RunStaging:
    """Where a run is being written, held for the whole run (``with``): the one writer of its directory.

    The run directory is claimed (:func:`mckd.io.claim_output`): a second
    process on it is refused with this one's process id, and an existing run
    is refused unless ``force`` (replace it) or ``resume`` (continue it). A new
    run is written into a hidden staging folder beside the target,
    ``.<name>.<pid>.new-<random>.tmp``, and moved into place when it has written
    its first checkpoint (:meth:`promote`): only then does it replace an older
    run, and a run that fails or is killed before that leaves nothing at the
    target (a killed one's staging folder is removed by the next command on it).

    On ranks other than 0 nothing is written and :attr:`path` is the target.
    """

    def __init__(self, target: Path, resume: bool, force: bool, is_main: bool) -> None:
        self.target, self.resume, self.force, self.is_main = Path(target), resume, force, is_main
        self.run = RunDir(self.target)  # the run's files where they are now (the staging folder until promote)
        self.promoted = True
        self._claim: Any = None

    @property
    def path(self) -> Path:
        """Where the run is now (the staging folder until :meth:`promote`)."""
        return self.run.path

    def __enter__(self) -> "RunStaging":
        self._claim = claim_run_directory(self.target, self.resume, self.force)
        self._claim.__enter__()
        if self.is_main and not self.resume:
            self.run.path, self.promoted = temporary_name(self.target, "new-"), False
            try:
                self.path.mkdir()
            except OSError as error:
                self._claim.__exit__(None, None, None)
                raise MckdError(f"cannot make the run directory {str(self.target)!r}: {error.strerror or error}") from None
        return self

    def promote(self) -> None:
        """Move the staged run into place (replacing an older run there); a no-op once done."""
        if self.promoted:
            return
        old = temporary_name(self.target, "old-") if self.target.exists() else None
        try:
            if old is not None:
                os.rename(self.target, old)
            try:
                os.rename(self.path, self.target)
            except OSError:
                if old is not None:
                    os.rename(old, self.target)  # put the old run back
                raise
        except OSError as error:
            raise MckdError(f"cannot move the new run into {str(self.target)!r}: {error.strerror or error}; "
                            "the previous run, if any, is intact") from None
        self.run.path, self.promoted = self.target, True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if not self.promoted:  # failed or stopped before its first checkpoint: nothing worth keeping
                shutil.rmtree(self.path, ignore_errors=True)
        finally:
            self._claim.__exit__(exc_type, exc, tb)


class RunRecord:
    """``run.json``: what made the run (versions, commit, command, device) and when, session by session.

    A resumed run adds a session. Each session has ``started``, ``ended``,
    ``status`` (``running``, ``trained``, ``stopped``, ``diverged``,
    ``failed``) and the iteration it reached.
    """

    def __init__(self, staging: RunStaging, device: torch.device, resume: bool) -> None:
        self.staging = staging
        self.sessions: list[dict[str, Any]] = []
        if resume:
            with contextlib.suppress(OSError, ValueError):
                earlier = json.loads(staging.run.record.read_text(encoding="utf-8"))
                if isinstance(earlier, dict) and isinstance(earlier.get("sessions"), list):
                    self.sessions = earlier["sessions"]
        from mckd.provenance import environment, now

        self.sessions.append({"started": now(), "ended": None, "status": "running", "iteration": 0,
                              **environment(device)})
        self.write()

    def write(self) -> None:
        current = self.sessions[-1]
        atomic_write_json(self.staging.run.record, {
            "status": current["status"], "iteration": current["iteration"],
            "started": self.sessions[0]["started"], "ended": current["ended"], "sessions": self.sessions})

    def end(self, status: str, iteration: int) -> None:
        from mckd.provenance import now

        self.sessions[-1].update(ended=now(), status=status, iteration=iteration)
        if self.staging.promoted:  # a staged run that never checkpointed is removed anyway
            with contextlib.suppress(MckdError):  # a full disk must not hide the error that ended the run
                self.write()
