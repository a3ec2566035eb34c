"""Experiment configuration: YAML files with every default written down.

A config has fixed sections (``method``, ``missing``, ``train``, ``eval``) and
two open ones, ``data`` and ``model``, whose ``name`` picks a registered
dataset or network; the registered options dataclass then defines the
section's keys and defaults (see :mod:`mckd.registry`).

Loading checks everything: an unknown key is an error that suggests the
closest known key, a value of the wrong type or out of range is an error that
names the key. ``--set key=value`` overrides use dotted keys and YAML values.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mckd.errors import ConfigError


@dataclass
class MethodConfig:
    """The MCKD method's settings (paper defaults)."""

    alpha: float = 0.1  # weight of the CKD term in Eq. 4; 0 turns distillation off
    p: int = 1  # norm of Eq. 5: 1 (paper default) or 2 (ablation)
    ckd_reduction: Literal["mean", "norm"] = "mean"  # mean |f_i-f_j|^p per element (authors' code) or ||f_i-f_j||_p (paper text)
    weight_norm: Literal["softmax", "sigmoid", "relu"] = "softmax"  # normalisation of Eq. 6
    fill: Literal["mean", "zero"] = "mean"  # missing features: mean of present ones (Eq. 2) or zeros
    fusion: Literal["concat", "hemis"] = "concat"  # concat (Eq. 3) or hemis: mean and variance over present modalities
    meta: bool = True  # take meta steps on the importance weights; false keeps them at their random start
    meta_every: int = 1  # inner iterations between meta steps
    meta_batches: int = 1  # validation batches (one Adam step each) per meta step
    meta_lr: float = 1e-2  # Adam learning rate of the importance weights
    meta_weight_decay: float = 1e-2  # Adam weight decay of the importance weights
    meta_mode: Literal["first_order", "bilevel"] = "first_order"  # authors' step, or through a one-step look-ahead
    lookahead_lr: float = 0.0  # bilevel: step size of the look-ahead; 0 uses the model optimiser's current lr
    lookahead_step: Literal["sgd", "optimizer"] = "sgd"  # bilevel: theta - eta*grad, or preconditioned as the optimiser steps
    distill: Literal["weighted", "teacher"] = "weighted"  # MCKD's w_i/w_j pairs, or LCKD: elected teacher -> others
    teacher_every: int = 100  # teacher: iterations between elections of the best single modality on validation
    shared_specific: bool = False  # ShaSpec: shared + specific encoders, residual fusion, alignment and domain losses
    align_weight: float = 0.1  # ShaSpec: weight of the L1 alignment of shared features across modalities
    domain_weight: float = 0.1  # ShaSpec: weight of the domain (which modality) classifier on specific features

    def validate(self, path: str) -> None:
        _check(self.alpha >= 0, f"{path}.alpha must be >= 0, got {self.alpha}")
        _check(self.p in (1, 2), f"{path}.p must be 1 or 2, got {self.p}")
        _check(self.meta_every >= 1, f"{path}.meta_every must be >= 1, got {self.meta_every}")
        _check(self.meta_batches >= 1, f"{path}.meta_batches must be >= 1, got {self.meta_batches}")
        _check(self.meta_lr > 0, f"{path}.meta_lr must be > 0, got {self.meta_lr}")
        _check(self.meta_weight_decay >= 0, f"{path}.meta_weight_decay must be >= 0")
        _check(self.lookahead_lr >= 0, f"{path}.lookahead_lr must be >= 0, got {self.lookahead_lr}")
        _check(self.teacher_every >= 1, f"{path}.teacher_every must be >= 1, got {self.teacher_every}")
        _check(min(self.align_weight, self.domain_weight) >= 0, f"{path}.align_weight and domain_weight must be >= 0")


@dataclass
class MissingConfig:
    """How modalities go missing in the training split (validation and test stay complete)."""

    policy: Literal["none", "random_subset", "rates", "fixed"] = "random_subset"
    # random_subset: each sample of each batch keeps k ~ U{1..N} random modalities (k of those it has)
    # rates: modality -> fraction of training samples that have it, drawn once per run (others: 1.0)
    rates: dict[str, float] = field(default_factory=dict)
    # fixed: the modalities every training sample keeps
    subset: list[str] = field(default_factory=list)

    def validate(self, path: str) -> None:
        for name, rate in self.rates.items():
            _check(0.0 <= rate <= 1.0, f"{path}.rates.{name} must be in [0, 1], got {rate}")
        _check(self.policy != "fixed" or bool(self.subset), f"{path}.subset must name modalities when policy is 'fixed'")
        _check(self.policy != "rates" or bool(self.rates), f"{path}.rates must name modalities when policy is 'rates'")


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = 60  # passes over the training split; ignored when iterations > 0
    iterations: int = 0  # total inner iterations; 0 means epochs x batches per epoch
    batch_size: int = 64
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    momentum: float = 0.99  # sgd only
    nesterov: bool = True  # sgd only
    schedule: Literal["none", "step", "cosine", "poly"] = "step"
    step_epochs: float = 20.0  # step schedule: multiply lr by gamma every this many epochs
    gamma: float = 0.9  # step schedule factor
    poly_power: float = 0.9  # poly schedule: lr * (1 - t/T)^power
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:1 ...
    num_workers: int = 0  # DataLoader worker processes (pinned memory on CUDA)
    log_every: int = 50  # iterations between loss records in metrics.jsonl
    progress: bool = True  # show a progress bar
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # autocast: auto is bf16 on CUDA, fp32 on CPU
    checkpoint_every: int = 0  # iterations between checkpoints (resumable); 0: only at the end and on SIGTERM/Ctrl-C
    deterministic: bool = False  # deterministic algorithms only (slower on CUDA); off: cuDNN autotuning

    def validate(self, path: str) -> None:
        _check(self.epochs >= 1 or self.iterations >= 1, f"{path}: set epochs >= 1 or iterations >= 1")
        _check(self.iterations >= 0, f"{path}.iterations must be >= 0, got {self.iterations}")
        _check(self.batch_size >= 1, f"{path}.batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"{path}.lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"{path}.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.step_epochs > 0, f"{path}.step_epochs must be > 0, got {self.step_epochs}")
        _check(0 < self.gamma <= 1, f"{path}.gamma must be in (0, 1], got {self.gamma}")
        _check(self.num_workers >= 0, f"{path}.num_workers must be >= 0")
        _check(self.log_every >= 1, f"{path}.log_every must be >= 1, got {self.log_every}")
        _check(self.checkpoint_every >= 0, f"{path}.checkpoint_every must be >= 0, got {self.checkpoint_every}")


@dataclass
class EvalConfig:
    """Evaluation over every subset of modalities, on the test split."""

    batch_size: int = 256
    split: Literal["test", "val"] = "test"

    def validate(self, path: str) -> None:
        _check(self.batch_size >= 1, f"{path}.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Section:
    """An open section: a registered ``name`` and that entry's options dataclass."""

    name: str
    options: Any


@dataclass
class Config:
    """A whole experiment."""

    data: Section
    model: Section
    task: Literal["classification", "segmentation"] = "classification"
    seed: int = 0
    method: MethodConfig = field(default_factory=MethodConfig)
    missing: MissingConfig = field(default_factory=MissingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, every default filled in, as plain YAML-able data."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Section):
                out[f.name] = {"name": value.name, **dataclasses.asdict(value.options)}
            elif dataclasses.is_dataclass(value):
                out[f.name] = dataclasses.asdict(value)
            else:
                out[f.name] = value
        return out


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# A number in exponent notation without a dot (1e-3, 5E+2), which PyYAML leaves a string.
_YAML11_EXPONENT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the type hint ``tp``; return it (ints become floats where needed)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{path} must not be null")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path} must be one of {list(args)}, got {value!r}{hint}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {type(value).__name__} {value!r}")
        key_tp, value_tp = args if args else (Any, Any)
        return {_convert(k, key_tp, f"{path}"): _convert(v, value_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is Section:
        return _build_section(path, value)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_EXPONENT.match(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; people mean the number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {_type_name(tp)}")


def _one_line(error: Exception) -> str:
    """A YAML error's several lines (problem, line, caret) joined into one for the CLI."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip() and part.strip() != "^")


def unknown_key_error(key: str, known: list[str], path: str) -> ConfigError:
    """An error for an unknown ``key`` under ``path``, suggesting the closest known key."""
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"
    where = f"{path}.{key}" if path else key
    return ConfigError(f"unknown config key {where!r}{hint}")


def build_dataclass(cls: type, values: Any, path: str) -> Any:
    """Make ``cls`` from a mapping, checking keys, types and (``validate``) ranges."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {type(values).__name__} {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise unknown_key_error(str(key), list(fields), path)
        kwargs[key] = _convert(value, hints[key], f"{path}.{key}" if path else key)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key {(path + '.' if path else '') + name!r}")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(path or cls.__name__)
    return obj


def _build_section(kind: str, values: Any) -> Section:
    from mckd import registry

    if not isinstance(values, dict) or "name" not in values:
        names = registry.names(kind)
        raise ConfigError(f"config section {kind!r} needs a 'name', one of: {', '.join(names)}")
    values = dict(values)
    name = values.pop("name")
    entry = registry.lookup(kind, name)
    return Section(name=name, options=build_dataclass(entry.options, values, kind))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping."""
    raw = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set key {key!r} is not a dotted key like train.lr")
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {key}: value {text!r} is not valid YAML ({_one_line(error)})") from None
    return raw


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build and check a :class:`Config` from plain data."""
    return build_dataclass(Config, raw, "")


def load_raw(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file as plain data."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not a text (UTF-8) YAML file: {error.reason} at byte {error.start}") from None
    except OSError as error:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {_one_line(error)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, override and check a config file."""
    return config_from_dict(apply_overrides(load_raw(path), overrides or []))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config (every default filled in) as YAML."""
    from mckd.checkpoint import atomic_write_text  # a crash mid-write must not leave half a config.yaml

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
