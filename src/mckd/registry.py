"""Named datasets and networks that a config can pick by ``name``.

A dataset entry builds a :class:`mckd.data.bundle.DataBundle` (train,
meta-validation and test splits plus what a network needs to know); a model
entry builds a :class:`mckd.method.MultiModalModel` for a bundle. Each entry
declares an options dataclass: its fields are the config section's keys, with
their defaults and comments.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from mckd.errors import ConfigError

# Modules that register the built-in entries; imported on first lookup.
BUILTIN_MODULES: list[str] = [
    "mckd.data.multiview",
    "mckd.nets.mlp",
    "mckd.data.brats",
    "mckd.nets.unet3d",
    "mckd.data.avmnist",
    "mckd.nets.avmnist",
]

KINDS = ("data", "model")


@dataclass(frozen=True)
class Entry:
    """A registered dataset or network."""

    name: str
    options: type  # a dataclass whose fields are the section's keys
    build: Callable[..., Any]
    description: str


_ENTRIES: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_loaded = False


def _register(kind: str, name: str, options: type, description: str) -> Callable:
    def decorate(build: Callable) -> Callable:
        if name in _ENTRIES[kind]:
            raise ValueError(f"{kind} entry {name!r} is registered twice")
        _ENTRIES[kind][name] = Entry(name, options, build, description)
        return build

    return decorate


def register_dataset(name: str, options: type, description: str) -> Callable:
    """Decorator: ``build(options, seed) -> DataBundle`` under ``data.name``."""
    return _register("data", name, options, description)


def register_model(name: str, options: type, description: str) -> Callable:
    """Decorator: ``build(options, bundle, config) -> MultiModalModel`` under ``model.name``."""
    return _register("model", name, options, description)


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def names(kind: str) -> list[str]:
    """Registered names of a kind (``data`` or ``model``)."""
    _load_builtins()
    return sorted(_ENTRIES[kind])


def lookup(kind: str, name: str) -> Entry:
    """The entry ``name`` of ``kind``, or a :class:`ConfigError` naming the known ones."""
    _load_builtins()
    try:
        return _ENTRIES[kind][name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(str(name), list(_ENTRIES[kind]), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{kind}.name {name!r} is not known{hint}; known: {', '.join(sorted(_ENTRIES[kind]))}"
        ) from None
