"""Configs written before methods and tasks were registered components, read in today's layout.

Until version 0.1 a config had ``task: classification`` (a string), a
``method:`` section of switches for every method at once (``distill:
teacher`` for LCKD, ``shared_specific: true`` for ShaSpec, ``fill`` and
``fusion`` among them), and the BraTS dataset carried the segmentation
settings (``head``, ``overlap``, ``sw_batch_size``, ``et_min_voxels``). Such a
config (a file, a run's ``config.yaml``, a checkpoint's metadata) is mapped
here to what it meant:

- ``task: NAME`` -> ``task: {name: NAME}``, plus the BraTS dataset's
  segmentation keys;
- ``method.fill`` / ``method.fusion`` -> ``model.fill`` / ``model.fusion``;
- the switches -> ``method.name``: ``shaspec`` when ``shared_specific`` was
  true, ``lckd`` when ``distill`` was ``teacher``, else ``mckd``, keeping the
  keys that method has and dropping those it has not (they had no effect).

A switch set that no method of today reproduces is one :class:`ConfigError`
sentence saying what to write instead.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from mckd.errors import ConfigError

# The old method switches, by the method that used them.
MCKD_KEYS = ("alpha", "p", "ckd_reduction", "weight_norm", "meta", "meta_every", "meta_batches", "meta_lr",
             "meta_weight_decay", "meta_mode", "lookahead_lr", "lookahead_step")
LCKD_KEYS = ("alpha", "p", "ckd_reduction", "teacher_every")
SHASPEC_KEYS = ("align_weight", "domain_weight")
OLD_SWITCHES = {"fill", "fusion", "distill", "shared_specific", "teacher_every", "align_weight", "domain_weight",
                *MCKD_KEYS}
BRATS_TASK_KEYS = ("head", "overlap", "sw_batch_size", "et_min_voxels")


class OldConfigLayout(UserWarning):
    """A config in the layout of mckd 0.1 was read and upgraded."""


def is_old_layout(raw: dict[str, Any]) -> bool:
    """Whether ``raw`` is in the layout before method and task sections had a ``name``."""
    method = raw.get("method")
    old_method = isinstance(method, dict) and "name" not in method and bool(set(method) & OLD_SWITCHES)
    return isinstance(raw.get("task"), str) or old_method


def _upgrade_method(method: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    for key in ("fill", "fusion"):
        if key in method:
            model.setdefault(key, method.pop(key))
    shared_specific = bool(method.pop("shared_specific", False))
    distill = method.pop("distill", "weighted")
    if shared_specific:
        if not isinstance(method.get("alpha", 0.1), (int, float)) or float(method.get("alpha", 0.1)) > 0:
            raise ConfigError("this config (mckd 0.1 layout) combines ShaSpec (method.shared_specific: true) with "
                              "MCKD's distillation (method.alpha > 0), which no method reproduces now: write "
                              "method: {name: shaspec} for ShaSpec as benchmarked, or method: {name: mckd} without it")
        name, keys = "shaspec", SHASPEC_KEYS
    elif distill == "teacher":
        name, keys = "lckd", LCKD_KEYS
    else:
        name, keys = "mckd", MCKD_KEYS
    known = set(OLD_SWITCHES)
    upgraded = {"name": name, **{k: v for k, v in method.items() if k in keys}}
    upgraded.update({k: v for k, v in method.items() if k not in known})  # typos stay, to be reported as unknown keys
    return upgraded


def upgrade_raw_config(raw: dict[str, Any], warn: bool = True) -> dict[str, Any]:
    """``raw`` in today's layout (a copy; unchanged when it already is)."""
    if not isinstance(raw, dict) or not is_old_layout(raw):
        return raw
    raw = copy.deepcopy(raw)
    model = raw.setdefault("model", {})
    if not isinstance(model, dict):
        raise ConfigError(f"model must be a mapping, got {type(model).__name__} {model!r}")
    task = raw.get("task", "classification")
    if isinstance(task, str):
        raw["task"] = {"name": task}
    data = raw.get("data")
    if isinstance(data, dict) and data.get("name") == "brats" and isinstance(raw["task"], dict):
        for key in BRATS_TASK_KEYS:
            if key in data:
                raw["task"].setdefault(key, data.pop(key))
    method = raw.get("method")
    if isinstance(method, dict) and "name" not in method:
        raw["method"] = _upgrade_method(dict(method), model)
    if warn:
        warnings.warn(OldConfigLayout(
            f"a config in the mckd 0.1 layout was read as method {raw.get('method', {}).get('name', 'mckd')!r} "
            "(method and task are named sections now; see configs/ for the layout)"), stacklevel=3)
    return raw
