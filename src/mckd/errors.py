"""The product's own error types.

Every error a user can cause (bad config, bad file, bad data) is raised as a
subclass of :class:`MckdError`, whose message says which key or file is wrong,
what was found and what was expected. The CLI prints these in one line and
exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class MckdError(Exception):
    """Base class of every error the product raises on purpose."""


class ConfigError(MckdError):
    """A config file or ``--set`` override is wrong (unknown key, type, range)."""


class DataError(MckdError):
    """An input file or dataset is missing, malformed or inconsistent."""


class MissingModalityError(DataError, ValueError):
    """A sample has no modality present: nothing to encode, fill from or predict with.

    Also a ``ValueError``, as the method's functions raise for other bad arguments.
    """


class CheckpointError(MckdError):
    """A checkpoint is missing, unsafe, or does not match the model."""


class OutputInUse(MckdError):
    """Another process is writing the output (run directory, cache, prediction); the message names it."""


class Stopped(MckdError):
    """Not a fault: a signal (SIGTERM, Ctrl-C) stopped the command; the message says what was kept and what next.

    The CLI prints it as ``mckd: <message>`` and exits with status 130.
    """


class TrainingDiverged(MckdError):
    """A loss, a parameter or an importance weight of a training run became NaN or infinite."""


class Interrupted(BaseException):
    """Raised by mckd's handler of SIGTERM (and, like KeyboardInterrupt, of Ctrl-C) outside the training loop.

    A ``BaseException``, so that ``except Exception`` blocks let it through and
    every ``finally`` and atomic write cleans up on the way out.
    """

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
