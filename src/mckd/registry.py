"""Named components a config picks by ``name``: datasets, networks, tasks and training methods.

Each entry declares an options dataclass whose fields are its config
section's keys, with their defaults and comments, and a ``build`` callable:

| kind | config section | registered with | ``build`` |
|---|---|---|---|
| ``data`` | ``data:`` | :func:`register_dataset` | ``build(options, seed) -> DataBundle`` |
| ``model`` | ``model:`` | :func:`register_network` | ``build(options, spec) -> NetworkParts`` |
| ``task`` | ``task:`` | :func:`register_task` | ``build(options, facts) -> Task`` |
| ``method`` | ``method:`` | :func:`mckd.method.base.register_training_method` | the method's class |

Training methods keep their own registry inside :mod:`mckd.method` (which
imports nothing outside itself); this module reads it, with its presets.
The built-in entries register themselves when their modules are imported,
which happens on the first lookup (:data:`BUILTIN_MODULES`).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from mckd.errors import ConfigError
from mckd.method import base as method_base

# Modules that register the built-in entries; imported on first lookup.
BUILTIN_MODULES: list[str] = [
    "mckd.tasks.classification",
    "mckd.tasks.segmentation",
    "mckd.data.multiview",
    "mckd.seg.dataset",
    "mckd.data.avmnist",
    "mckd.data.files",
    "mckd.data.from_python",
    "mckd.nets.mlp",
    "mckd.nets.by_shape",
    "mckd.nets.from_python",
    "mckd.nets.unet3d",
    "mckd.nets.avmnist",
    "mckd.method",
]

KINDS = ("data", "model", "task", "method")


@dataclass(frozen=True)
class Entry:
    """A registered component."""

    name: str
    options: type  # a dataclass whose fields are the section's keys
    build: Callable[..., Any]
    description: str


_ENTRIES: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS if kind != "method"}
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


def register_network(name: str, options: type, description: str) -> Callable:
    """Decorator: ``build(options, spec: NetworkSpec) -> NetworkParts`` under ``model.name``."""
    return _register("model", name, options, description)


def register_task(name: str, options: type, description: str) -> Callable:
    """Decorator: ``build(options, facts: dict) -> Task`` under ``task.name``."""
    return _register("task", name, options, description)


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def _method_entries() -> dict[str, Entry]:
    return {name: Entry(name, method_base.OPTIONS[name], cls, cls.description)
            for name, cls in method_base.TRAINING_METHODS.items()}


def entries(kind: str) -> dict[str, Entry]:
    """Every registered entry of ``kind``, by name."""
    _load_builtins()
    return _method_entries() if kind == "method" else dict(_ENTRIES[kind])


def names(kind: str) -> list[str]:
    """Registered names of a kind (``data``, ``model``, ``task`` or ``method``)."""
    return sorted(entries(kind))


def lookup(kind: str, name: str) -> Entry:
    """The entry ``name`` of ``kind``, or a :class:`ConfigError` naming the known ones."""
    known = entries(kind)
    if name in known:
        return known[name]
    if kind == "method" and name in presets():
        preset = presets()[name]
        settings = ", ".join(f"{key}: {value}" for key, value in preset.overrides)
        raise ConfigError(f"method.name {name!r} is a preset ({preset.method} with {settings}); write method.name: "
                          f"{preset.method} with those keys, or name it in `mckd benchmark --methods`")
    close = difflib.get_close_matches(str(name), list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{kind}.name {name!r} is not known{hint}; known: {', '.join(sorted(known))}")


def presets() -> dict[str, method_base.Preset]:
    """Registered presets (a method plus fixed settings), by name."""
    _load_builtins()
    return dict(method_base.PRESETS)
