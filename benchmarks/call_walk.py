"""Where a config goes when it is trained: the mckd modules ``train()`` calls into, and the calls that climb up.

Traces every Python call made while :func:`mckd.train.train` trains a short
run of the multi-view digits (``sys.setprofile``) and prints

- the mckd modules entered (a module counts once, however often it is called),
  and the units of the README's layer list they belong to (``train/``,
  ``data/``, ``method/`` count once each);
- the calls that *climb back up*: from a module to one of a higher layer of
  the README's architecture list (a closure or callback of a higher layer run
  from below), counted once per (caller, callee) pair of functions.

It measures whichever mckd is imported, so the code before a change can be
measured the same way (``PYTHONPATH=/old/checkout/src``); the layers are read
from the README beside that package.

    .venv/bin/python benchmarks/call_walk.py
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_layers(readme: Path) -> list[list[str]]:
    """The README's layers, lowest first, each a list of module prefixes (``mckd.train``)."""
    block = re.search(r"<!-- layers -->\n```\n(.*?)```", readme.read_text(), re.S)
    assert block, f"{readme} has no layers block"
    layers = []
    for line in block.group(1).splitlines():
        match = re.match(r"\s*(\d+)\s+(.*?)\s{2,}", line + "  ")
        if match:
            layers.append((int(match.group(1)), [f"mckd.{m.strip().rstrip('/')}" for m in match.group(2).split(",")]))
    return [modules for _, modules in sorted(layers)]


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    for level, prefixes in enumerate(layers):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    return None


def main() -> int:
    import mckd
    from mckd.config import apply_overrides, config_from_dict, load_raw
    from mckd.train import train

    package = Path(mckd.__file__).resolve().parent
    layers = readme_layers(package.parents[1] / "docs" / "architecture.md")
    config = config_from_dict(apply_overrides(load_raw(package.parents[1] / "configs" / "multiview_digits.yaml"), [
        "train.iterations=20", "train.log_every=10", "train.eval_every=10", "train.progress=false",
        "method.meta_every=5"]))
    visited: set[str] = set()
    climbs: set[tuple[str, str]] = set()

    def profile(frame, event, arg):  # noqa: ANN001
        if event != "call":
            return
        callee = frame.f_globals.get("__name__", "")
        if not callee.startswith("mckd"):
            return
        visited.add(callee)
        caller_frame = frame.f_back
        caller = caller_frame.f_globals.get("__name__", "") if caller_frame else ""
        if caller.startswith("mckd") and caller != callee:
            low, high = layer_of(caller, layers), layer_of(callee, layers)
            if low is not None and high is not None and high > low:
                climbs.add((f"{caller}.{caller_frame.f_code.co_name}", f"{callee}.{frame.f_code.co_name}"))

    with tempfile.TemporaryDirectory() as folder:
        sys.setprofile(profile)
        try:
            train(config, Path(folder) / "run")
        finally:
            sys.setprofile(None)
    print(f"mckd at {package}")
    units = {next((p for level in layers for p in level if name == p or name.startswith(p + ".")), name)
             for name in visited}
    print(f"modules entered by train(): {len(visited)}; units of the README's layer list: {len(units)}")
    for name in sorted(visited):
        print(f"  {name}")
    print(f"calls that climb to a higher layer: {len(climbs)}")
    for caller, callee in sorted(climbs):
        print(f"  {caller} -> {callee}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
