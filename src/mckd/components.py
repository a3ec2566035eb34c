"""Every component a config can name, found on first use: built-in ones, installed plug-ins, a config's imports.

A component (dataset, network, task, training method, fill, fusion)
registers itself when its module is imported (:mod:`mckd.registry`,
:mod:`mckd.method.base`, :mod:`mckd.method.fusion`). The first lookup imports

- the built-in modules (:data:`BUILTIN_MODULES`);
- every module an installed package declares under the entry-point group
  ``mckd.plugins`` (``[project.entry-points."mckd.plugins"] my_method = "my_package.my_method"``);

and a config's top-level ``imports: [my_package.my_method, my_method.py]``
imports more (:func:`import_modules`), before its sections are checked: a run
trained with a method defined outside mckd records the key (a file by its
absolute path, :func:`resolve_imports`), so ``mckd evaluate``, ``predict`` and
``compare`` rebuild it from any folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from mckd.errors import ConfigError
from mckd.method import base as method_base
from mckd.method import fusion as fusion_base
from mckd.registry import KINDS  # noqa: F401  (the kinds, for callers)
from mckd.registry import ENTRIES, ENTRY_POINT_GROUP, Entry, unknown_name_error

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


def resolve_imports(names: Any, base: Path, where: str = "imports") -> list[str]:
    """A config's ``imports`` as a run stores them: module names, or absolute paths of Python files and packages.

    An entry that names a file (``my_method.py``, ``plugins/my_method.py``) or a package folder is made
    absolute against ``base``; a module name that only the current folder provides (``my_method`` for a
    ``my_method.py`` there) becomes that file's absolute path, so the run is rebuilt from any folder.
    """
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"{where} must be a list of Python modules or files, got {type(names).__name__}")
    resolved = []
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name or "\0" in name:
            raise ConfigError(f"{where}[{index}] must be a Python module name such as my_package.my_method or a "
                              f"file such as my_method.py, got {str(name)[:80]!r}")
        if name.endswith(".py") or "/" in name or name.startswith("~"):
            path = (base / Path(name).expanduser()).resolve()
            if not (path.is_file() or (path / "__init__.py").is_file()):
                state = "does not exist" if not path.exists() else "is neither a Python file nor a package folder"
                raise ConfigError(f"{where}[{index}] {name!r}: {str(path)!r} {state}")
            resolved.append(str(path))
        elif not MODULE_NAME.match(name):
            raise ConfigError(f"{where}[{index}] must be a Python module name such as my_package.my_method or a "
                              f"file such as my_method.py, got {name[:80]!r}")
        else:
            local = _local(base, name)
            resolved.append(str(local) if local is not None and not _installed_elsewhere(name, base) else name)
    return resolved


def _installed_elsewhere(name: str, base: Path) -> bool:
    """Whether the top package of ``name`` is found on the path outside ``base`` (an installed package wins)."""
    try:
        spec = importlib.util.find_spec(name.split(".")[0])
    except (ImportError, ValueError):
        return False
    if spec is None or spec.origin is None:
        return False
    return not Path(spec.origin).resolve().is_relative_to(base.resolve())


def _local(base: Path, name: str) -> Path | None:
    """``base/name.py`` or the package folder ``base/name`` (dots as folders), when it exists."""
    parts = name.split(".")
    candidates = [base.joinpath(*parts[:-1], parts[-1] + ".py"), base.joinpath(*parts)]
    for candidate in candidates:
        if candidate.is_file() or (candidate / "__init__.py").is_file():
            return candidate.resolve()
    return None


def import_modules(names: Sequence[Any], where: str = "imports") -> None:
    """Import what a config's ``imports`` names (each registers components); a failure is one ConfigError line."""
    load_builtins()
    for index, name in enumerate(resolve_imports(names, Path.cwd(), where)):
        _import(name, f"{where}[{index}] {name!r}")


def _import(name: str, what: str) -> None:
    if name.startswith("/"):  # a file or a package folder
        _import_file(Path(name), what)
        return
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        missing = error.name or name
        if name == missing or name.startswith(missing + "."):
            raise ConfigError(f"{what}: no module named {missing!r} (is the package installed? a file in the "
                              "current folder is named by its path: my_method.py)") from None
        raise ConfigError(f"{what} needs the module {missing!r}, which is not installed") from None
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - a plug-in's own failure, reported in one line
        raise ConfigError(f"{what} failed to import: {type(error).__name__}: {error}") from None


def _import_file(path: Path, what: str) -> None:
    """Import a Python file or package folder by its path, once, under its own name (``my_method``)."""
    init = path / "__init__.py" if path.is_dir() else path
    name = path.stem if path.is_file() else path.name
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == init.resolve():
        return
    if not init.is_file():
        raise ConfigError(f"{what}: {str(path)!r} does not exist (the run was trained with it: restore it, or "
                          "install its package and name the module instead)")
    if loaded is not None:  # another module has the name: keep both apart
        name = f"mckd_plugin_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, init,
                                                  submodule_search_locations=[str(path)] if path.is_dir() else None)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and relative imports look it up
    try:
        spec.loader.exec_module(module)
    except BaseException as error:
        del sys.modules[name]
        if isinstance(error, ModuleNotFoundError):
            raise ConfigError(f"{what} needs the module {error.name!r}, which is not installed") from None
        if isinstance(error, ConfigError) or not isinstance(error, Exception):
            raise
        raise ConfigError(f"{what} failed to import: {type(error).__name__}: {error}") from None


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
    presets_named = {key: (p.method, p.overrides) for key, p in presets().items()} if kind == "method" else {}
    raise unknown_name_error(kind, name, list(known), presets_named)


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
