"""The tables of named components a config picks by ``name``, and the decorators that fill them.

Each entry declares an options dataclass whose fields are its config
section's keys, with their defaults and comments, and a ``build`` callable:

| kind | config section | registered with | ``build`` |
|---|---|---|---|
| ``data`` | ``data:`` | :func:`register_dataset` | ``build(options, seed) -> DataBundle`` |
| ``model`` | ``model:`` | :func:`register_network` | ``build(options, spec) -> NetworkParts`` |
| ``task`` | ``task:`` | :func:`register_task` | ``build(options, facts) -> Task`` |
| ``method`` | ``method:`` | :func:`mckd.method.base.register_training_method` | the method's class |

Training methods keep their own registry inside :mod:`mckd.method` (which
imports nothing outside itself), and so do fills and fusions
(:mod:`mckd.method.fusion`). A component registers itself when its module is
imported; :mod:`mckd.components` imports the built-in ones, installed
plug-ins and a config's ``imports`` on the first lookup, and answers lookups.
This module imports no component, so every component can import it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from mckd.errors import ConfigError

KINDS = ("data", "model", "task", "method")
# Installed packages declare plug-in modules under this entry-point group (mckd.components imports them).
ENTRY_POINT_GROUP = "mckd.plugins"

# Field metadata of an options dataclass: the value is a path, resolved against the folder it was given in
# (``field(default="", metadata=PATH)``), so a run stores an absolute path and evaluates from anywhere.
PATH = {"path": True}
# A file or folder of a nested source, relative to its dataset's ``root`` (the ``files`` dataset's sources).
PATH_UNDER_ROOT = {"path": True, "under": "root"}
# The same for a folder whose empty value means the current folder (the ``files`` dataset's ``root``): a run
# stores that folder, so the paths relative to it still resolve from elsewhere.
FOLDER_OR_CWD = {"path": True, "empty": "cwd"}


@dataclass(frozen=True)
class Entry:
    """A registered component."""

    name: str
    options: type  # a dataclass whose fields are the section's keys
    build: Callable[..., Any]
    description: str


ENTRIES: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS if kind != "method"}


def _register(kind: str, name: str, options: type, description: str) -> Callable:
    def decorate(build: Callable) -> Callable:
        if name in ENTRIES[kind]:
            raise ValueError(f"{kind} entry {name!r} is registered twice")
        ENTRIES[kind][name] = Entry(name, options, build, description)
        return build

    return decorate


def register_dataset(name: str, options: type, description: str) -> Callable:
    """Decorator: ``build(options, seed) -> DataBundle`` under ``data.name``."""
    return _register("data", name, options, description)


def register_network(name: str, options: type, description: str) -> Callable:
    """Decorator: ``build(options, spec: NetworkSpec) -> NetworkParts`` under ``model.name``."""
    return _register("model", name, options, description)


def register_task(name: str, options: type, description: str) -> Callable:
    """Decorator: ``build(options, facts: dict) -> Task`` under ``task.name``."""
    return _register("task", name, options, description)


def unknown_name_error(kind: str, name: Any, known: Sequence[str],
                       presets: Mapping[str, tuple[str, Sequence[tuple[str, Any]]]] | None = None) -> ConfigError:
    """The error for a ``{kind}.name`` that names no entry: the closest known name, or the preset it is."""
    if name in (presets or {}):
        method, overrides = presets[name]  # type: ignore[index]
        settings = ", ".join(f"{key}: {value}" for key, value in overrides)
        return ConfigError(f"method.name {name!r} is a preset ({method} with {settings}); write method.name: "
                           f"{method} with those keys, or name it in `mckd benchmark --methods`")
    close = difflib.get_close_matches(str(name), list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{kind}.name {name!r} is not known{hint}; known: {', '.join(sorted(known))}")
