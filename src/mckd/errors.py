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
