"""The built-in components' names, descriptions and option keys, readable without importing them (or torch).

A component registers itself when its module is imported, and those modules
import torch (over a second). Two answers need none of it: ``mckd list``, and
the first check of a config's open sections (``task``, ``data``, ``model``,
``method``: a misspelt key or name, a value of the wrong type). This module
keeps what they need in ``catalog.json`` beside it, made from the live
registries::

    python -m mckd.catalog --write     # after adding or changing a built-in component
    python -m mckd.catalog --check     # exit 1 when catalog.json differs from the registries (a test runs it)

The file records a hash of every source file its content came from. The
catalog answers only when nothing outside it can register a component and
those files are unchanged (:func:`builtin_catalog`); otherwise callers import
the components as before, so a stale catalog is slower, never wrong.

The catalog's JSON (``kinds``: data, model, task, method -> name ->
description and options; ``presets``, ``fills``, ``fusions``; ``classes``: the
nested options dataclasses; ``sources``: file -> SHA-256) is also what
:func:`listing` prints, from the catalog or from the registries alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import sys
import types
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from mckd.io import atomic_write_text
from mckd.registry import ENTRY_POINT_GROUP, KINDS, Entry, unknown_name_error

PACKAGE = Path(__file__).resolve().parent
CATALOG_FILE = PACKAGE / "catalog.json"
# Files whose change can change what is registered, besides those that define an entry or its options.
ALWAYS_HASHED = ("components.py", "registry.py", "method/__init__.py", "method/fusion.py")

# --- from the live registries (imports the components) -------------------------------------------------


def type_text(tp: Any, classes: dict[str, Any]) -> str:
    """A type hint as text that :func:`_type_of` reads back; a nested options dataclass is added to ``classes``."""
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a, classes) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(type_text(a, classes) for a in args)}]" if args else origin.__name__
    if dataclasses.is_dataclass(tp):
        if tp.__name__ not in classes:
            classes[tp.__name__] = None  # reserved first: a class that names itself does not recurse forever
            classes[tp.__name__] = options_record(tp, classes)
        return tp.__name__
    if tp in (int, float, str, bool):
        return tp.__name__
    raise TypeError(f"the catalog cannot record the type {tp!r}")


def options_record(cls: type, classes: dict[str, Any]) -> list[dict[str, Any]]:
    """The init fields of an options dataclass: name, type text, whether it is required, its metadata."""
    hints = typing.get_type_hints(cls)
    record = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        record.append({"name": f.name, "type": type_text(hints[f.name], classes), "required": required,
                       "metadata": dict(f.metadata)})
    return record


def _source_files(objects: list[Any]) -> list[str]:
    files = set(ALWAYS_HASHED)
    for obj in objects:
        for cls in getattr(obj, "__mro__", [obj]):
            if cls is object or getattr(cls, "__module__", "").split(".")[0] != "mckd":
                continue
            path = Path(inspect.getsourcefile(cls) or "").resolve()
            if path.is_relative_to(PACKAGE):
                files.add(path.relative_to(PACKAGE).as_posix())
    return sorted(files)


def hashes(files: list[str]) -> dict[str, str]:
    """SHA-256 of each file (relative to the package); a missing file hashes as empty."""
    out = {}
    for name in files:
        path = PACKAGE / name
        out[name] = hashlib.sha256(path.read_bytes() if path.is_file() else b"").hexdigest()
    return out


def snapshot(builtin_only: bool = True) -> dict[str, Any]:
    """The catalog as the registries say now (imports the components; ``builtin_only``: entries of mckd only)."""
    from mckd import components

    def ours(obj: Any) -> bool:
        return not builtin_only or getattr(obj, "__module__", "").split(".")[0] == "mckd"

    classes: dict[str, Any] = {}
    kinds: dict[str, Any] = {}
    defining: list[Any] = []
    for kind in KINDS:
        kinds[kind] = {}
        for name, entry in sorted(components.entries(kind).items()):
            if not ours(entry.build):
                continue
            kinds[kind][name] = {"description": entry.description, "options": entry.options.__name__}
            if entry.options.__name__ not in classes:
                classes[entry.options.__name__] = options_record(entry.options, classes)
            defining += [entry.build, entry.options]
    registered = {"fills": components.fills(), "fusions": components.fusions()}
    data = {
        "kinds": kinds,
        "presets": {name: {"method": p.method, "overrides": [list(item) for item in p.overrides],
                           "description": p.description}
                    for name, p in sorted(components.presets().items())},
        **{key: {name: cls.description for name, cls in sorted(found.items()) if ours(cls)}
           for key, found in registered.items()},
        "classes": classes,  # a nested class comes before the class that uses it
    }
    defining += [cls for found in registered.values() for cls in found.values() if ours(cls)]
    data["sources"] = hashes(_source_files(defining))
    return data


# --- from catalog.json (imports nothing of the components) ----------------------------------------------


def _type_of(text: str, made: dict[str, type]) -> Any:
    """The type hint that :func:`type_text` wrote as ``text``."""
    names = {"Any": Any, "Literal": Literal, "None": type(None), "list": list, "tuple": tuple, "dict": dict,
             "int": int, "float": float, "str": str, "bool": bool, **made}
    return eval(text, {"__builtins__": {}}, names)  # noqa: S307  (our own file's type texts, no builtins)


class Catalog:
    """The catalog's answers, as :mod:`mckd.components` gives them: ``names``, ``lookup``, ``presets``,
    ``fills``, ``fusions``; an entry's ``options`` is a dataclass with the recorded fields and types (no
    ``validate``: ranges are checked when the real components are built)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self._made: dict[str, type] = {}
        for name, record in data["classes"].items():  # in the order written: a nested class before its user
            fields = [(item["name"], _type_of(item["type"], self._made),
                       dataclasses.field(metadata=item["metadata"]) if item["required"]
                       else dataclasses.field(default=None, metadata=item["metadata"]))
                      for item in record]
            fields.sort(key=lambda f: f[2].default is not dataclasses.MISSING)  # required ones first
            self._made[name] = dataclasses.make_dataclass(name, fields)

    def names(self, kind: str) -> list[str]:
        return sorted(self.data["kinds"][kind])

    def lookup(self, kind: str, name: str) -> Entry:
        known = self.data["kinds"][kind]
        if name in known:
            return Entry(name, self._made[known[name]["options"]], _not_built, known[name]["description"])
        presets = {key: (p["method"], [tuple(item) for item in p["overrides"]])
                   for key, p in self.data["presets"].items()} if kind == "method" else {}
        raise unknown_name_error(kind, name, list(known), presets)

    def fills(self) -> dict[str, str]:
        return dict(self.data["fills"])

    def fusions(self) -> dict[str, str]:
        return dict(self.data["fusions"])


def _not_built(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a catalog entry checks a config; build components through mckd.components")


def plugins_installed() -> bool:
    """Whether an installed package declares components (entry-point group ``mckd.plugins``)."""
    from importlib import metadata

    return bool(metadata.entry_points(group=ENTRY_POINT_GROUP))


@lru_cache(maxsize=1)
def builtin_catalog() -> Catalog | None:
    """The shipped catalog when it can answer for every component a config without ``imports:`` can name:
    no plug-in installed, and every source file it was made from unchanged. Otherwise None."""
    try:
        data = json.loads(CATALOG_FILE.read_text())
    except (OSError, ValueError):
        return None
    if plugins_installed() or hashes(list(data.get("sources", {}))) != data.get("sources"):
        return None
    return Catalog(data)


# --- both -----------------------------------------------------------------------------------------------


def listing(data: dict[str, Any]) -> list[str]:
    """The lines of ``mckd list`` for the components (the catalog's JSON, from the file or :func:`snapshot`)."""
    headings = {"data": "datasets (data.name)", "model": "networks (model.name)", "task": "tasks (task.name)",
                "method": "training methods (method.name, mckd benchmark --methods)"}
    lines = []
    for kind in KINDS:
        lines.append(f"{headings[kind]}:")
        lines += [f"  {name:22s} {entry['description']}" for name, entry in sorted(data["kinds"][kind].items())]
    lines.append("presets (mckd benchmark --methods): a method with fixed settings")
    for name, preset in sorted(data["presets"].items()):
        settings = ", ".join(f"{key}={value}" for key, value in preset["overrides"])
        lines.append(f"  {name:22s} {preset['method']} with {settings}: {preset['description']}")
    for title, key in (("fills of missing features (model.fill)", "fills"),
                       ("fusions of modalities (model.fusion)", "fusions")):
        lines.append(f"{title}:")
        lines += [f"  {name:22s} {description}" for name, description in sorted(data[key].items())]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write or check mckd's catalog of built-in components.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", action="store_true", help=f"write {CATALOG_FILE.name} from the registries")
    action.add_argument("--check", action="store_true", help=f"exit 1 when {CATALOG_FILE.name} is out of date")
    args = parser.parse_args(argv)
    text = json.dumps(snapshot(), indent=1, sort_keys=False) + "\n"
    if args.write:
        atomic_write_text(CATALOG_FILE, text)
        print(f"wrote {CATALOG_FILE}")
        return 0
    current = CATALOG_FILE.read_text() if CATALOG_FILE.is_file() else ""
    if current != text:
        print(f"{CATALOG_FILE} is out of date: run python -m mckd.catalog --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
