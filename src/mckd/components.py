"""Every component a config can name, found on first use: built-in ones, installed plug-ins, a config's imports.

A component (dataset, network, task, training method, fill, fusion)
registers itself when its module is imported (:mod:`mckd.registry`,
:mod:`mckd.method.base`, :mod:`mckd.method.fusion`). The first lookup imports

- the built-in modules (:data:`BUILTIN_MODULES`);
- every module an installed package declares under the entry-point group
  ``mckd.plugins`` (``[project.entry-points."mckd.plugins"] my_method = "my_package.my_method"``);

and a config's top-level ``imports: [my_package.my_method]`` imports more
(:func:`import_modules`), before its sections are checked: a run trained with
a method defined outside mckd records the key, so ``mckd evaluate``,
``predict`` and ``compare`` rebuild it.
"""

from __future__ import annotations

import difflib
import importlib
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from mckd.errors import ConfigError
from mckd.method import base as method_base
from mckd.method import fusion as fusion_base
from mckd.registry import ENTRIES, KINDS, Entry  # noqa: F401  (KINDS: the kinds, for callers)

# Modules that register the built-in entries; imported on first lookup.
BUILTIN_MODULES: list[str] = [
    "mckd.tasks.classification",
    "mckd.tasks.segmentation",
    "mckd.data.multiview",
    "mckd.data.brats",
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
ENTRY_POINT_GROUP = "mckd.plugins"
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

_loaded = False


def load_builtins() -> None:
    """Import the built-in components and the installed plug-ins (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        _import(point.value.split(":")[0], f"the plug-in {point.name!r} (entry point group {ENTRY_POINT_GROUP!r})")


def import_modules(names: Sequence[Any], where: str = "imports") -> None:
    """Import the modules a config's ``imports`` names (each registers components); an unknown one is a ConfigError.

    A module is looked up on ``sys.path`` and in the current folder (a ``my_method.py`` beside the config).
    """
    load_builtins()
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"{where} must be a list of Python module names, got {type(names).__name__}")
    for index, name in enumerate(names):
        if not isinstance(name, str) or not MODULE_NAME.match(name):
            raise ConfigError(f"{where}[{index}] must be a Python module name such as my_package.my_method, "
                              f"got {str(name)[:80]!r}")
        _import(name, f"{where}[{index}] {name!r}")


def _import(name: str, what: str) -> None:
    if name in sys.modules:
        return
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)  # last: an installed package of the same name wins
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        raise ConfigError(f"{what}: no module named {error.name!r} (is the package installed, or the file in "
                          f"the current folder?)") from None
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - a plug-in's own failure, reported in one line
        raise ConfigError(f"{what} failed to import: {type(error).__name__}: {error}") from None
    finally:
        if added:
            sys.path.remove(cwd)


def _method_entries() -> dict[str, Entry]:
    return {name: Entry(name, method_base.OPTIONS[name], cls, cls.description)
            for name, cls in method_base.TRAINING_METHODS.items()}


def entries(kind: str) -> dict[str, Entry]:
    """Every registered entry of ``kind``, by name."""
    load_builtins()
    return _method_entries() if kind == "method" else dict(ENTRIES[kind])


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
    load_builtins()
    return dict(method_base.PRESETS)


def fills() -> dict[str, type]:
    """Registered fills of missing features (``model.fill``), by name."""
    load_builtins()
    return dict(fusion_base.FILLS)


def fusions() -> dict[str, type]:
    """Registered fusions of modalities (``model.fusion``), by name."""
    load_builtins()
    return dict(fusion_base.FUSIONS)
