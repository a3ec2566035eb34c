"""Experiment configuration: YAML files with every default written down.

A config has fixed sections (``missing``, ``train``, ``eval``) and four open
ones, ``task``, ``data``, ``model`` and ``method``, whose ``name`` picks a
registered task, dataset, network or training method; the registered options
dataclass then defines the section's keys and defaults (see
:mod:`mckd.registry`). The ``model`` section also has the keys every network
shares, ``fill`` and ``fusion`` (:class:`ModelSection`): the architecture
around the network's encoders and decoder.

Loading checks everything: an unknown key is an error that suggests the
closest known key, a value of the wrong type or out of range is an error that
names the key. ``--set key=value`` overrides use dotted keys and YAML values.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from mckd.errors import ConfigError
from mckd.io import atomic_write_text, file_problem, path_problem

from mckd.registry import FOLDER_OR_CWD, PATH, PATH_UNDER_ROOT  # noqa: F401  (path markers; datasets use them)

INT64 = (-(2**63), 2**63 - 1)  # what torch and NumPy can hold; a larger integer in a config is a mistake
MAX_SEED = 2**32 - 1  # NumPy's legacy seed range (torch's is wider)
MAX_YAML_VALUES = 100_000  # a config has a few hundred; an alias bomb expands to billions


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
    threads: int = 0  # CPU threads of torch; 0: auto (1 on the CPU, or what OMP_NUM_THREADS / torch.set_num_threads set)
    eval_every: int = 500  # iterations between validation scores (meta-validation split); 0: none
    save_best: bool = False  # also keep checkpoint_best.safetensors, the model best on validation
    loggers: list[str] = field(default_factory=lambda: ["csv"])  # beside metrics.jsonl: csv, tensorboard

    def validate(self, path: str) -> None:
        _check(self.epochs >= 1 or self.iterations >= 1, f"{path}: set epochs >= 1 or iterations >= 1")
        _check(self.iterations >= 0, f"{path}.iterations must be >= 0, got {self.iterations}")
        _check(self.batch_size >= 1, f"{path}.batch_size must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, f"{path}.lr must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, f"{path}.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.step_epochs > 0, f"{path}.step_epochs must be > 0, got {self.step_epochs}")
        _check(0 < self.gamma <= 1, f"{path}.gamma must be in (0, 1], got {self.gamma}")
        _check(0 <= self.momentum < 1, f"{path}.momentum must be in [0, 1), got {self.momentum}")
        _check(not (self.optimizer == "sgd" and self.nesterov and self.momentum == 0),
               f"{path}.nesterov needs {path}.momentum > 0 (Nesterov momentum without momentum is undefined)")
        _check(self.poly_power >= 0, f"{path}.poly_power must be >= 0 (a negative power would raise the lr to "
                                     f"infinity at the last iteration), got {self.poly_power}")
        _check(self.num_workers >= 0, f"{path}.num_workers must be >= 0")
        _check(self.log_every >= 1, f"{path}.log_every must be >= 1, got {self.log_every}")
        _check(self.checkpoint_every >= 0, f"{path}.checkpoint_every must be >= 0, got {self.checkpoint_every}")
        _check(self.threads >= 0, f"{path}.threads must be >= 0 (0: auto), got {self.threads}")
        _check(self.eval_every >= 0, f"{path}.eval_every must be >= 0 (0: no validation), got {self.eval_every}")
        _check(not self.save_best or self.eval_every > 0,
               f"{path}.save_best needs validation scores: set {path}.eval_every > 0")
        for logger in self.loggers:
            _check(logger in LOGGERS, f"{path}.loggers: {logger!r} is not one of {list(LOGGERS)}")
        _check(len(set(self.loggers)) == len(self.loggers), f"{path}.loggers names a logger twice: {self.loggers}")
        if "tensorboard" in self.loggers:
            import importlib.util

            _check(importlib.util.find_spec("tensorboard") is not None,
                   f"{path}.loggers: tensorboard needs the tensorboard package: pip install 'mckd[tensorboard]'")


LOGGERS = ("csv", "tensorboard")  # metrics.jsonl is always written


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

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.options)}

    def component(self, kind: str) -> Any:
        """The registered entry of this section (``kind``: data, model, task or method).

        Resolved once, when the config is read (not a config key); a section made by hand looks it up here.
        """
        entry = getattr(self, "_entry", None)
        if entry is None:
            from mckd import components

            entry = self._entry = components.lookup(kind, self.name)
        return entry


@dataclass
class ModelSection(Section):
    """The ``model`` section: a registered network plus the architecture every network shares."""

    fill: str = "mean"  # missing features: mean of the present ones (Eq. 2), zero, or a registered fill (mckd list)
    fusion: str = "concat"  # concat (Eq. 3), hemis (mean and variance over present modalities), or a registered fusion

    def check_names(self, source: Any = None) -> None:
        """``fill`` and ``fusion`` name registered components (:mod:`mckd.method.fusion`, plug-ins).

        ``source`` answers ``fills()`` and ``fusions()``: :mod:`mckd.components` (the default) or a
        :class:`mckd.catalog.Catalog`.
        """
        if source is None:
            from mckd import components as source

        for key, known in (("fill", source.fills()), ("fusion", source.fusions())):
            value = getattr(self, key)
            if value not in known:
                close = difflib.get_close_matches(str(value), list(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"model.{key} must be one of {sorted(known)}, got {_show(value)}{hint}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fill": self.fill, "fusion": self.fusion, **dataclasses.asdict(self.options)}


# Keys of the open sections besides ``name`` and the entry's options, with their types.
_SECTION_TYPES: dict[str, type[Section]] = {"model": ModelSection}


def _default_section(kind: str, name: str) -> Any:
    return lambda: _build_section(kind, {"name": name})


@dataclass(kw_only=True)
class Config:
    """A whole experiment."""

    imports: list[str] = field(default_factory=list)  # Python modules that register components (methods from outside mckd)
    task: Section = field(default_factory=_default_section("task", "classification"))
    seed: int = 0
    data: Section
    model: ModelSection
    method: Section = field(default_factory=_default_section("method", "mckd"))
    missing: MissingConfig = field(default_factory=MissingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self, path: str) -> None:
        _check(0 <= self.seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED}], got {_show(self.seed)}")

    def to_dict(self) -> dict[str, Any]:
        """The resolved config, every default filled in, as plain YAML-able data."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Section):
                out[f.name] = value.to_dict()
            elif dataclasses.is_dataclass(value):
                out[f.name] = dataclasses.asdict(value)
            else:
                out[f.name] = value
        return out


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error names the value, it does not print a huge one."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


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
            raise ConfigError(f"{path} must be one of {list(args)}, got {_show(value)}{hint}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {type(value).__name__} {_show(value)}")
        item = args[0] if args else Any
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {type(value).__name__} {_show(value)}")
        key_tp, value_tp = args if args else (Any, Any)
        return {_convert(k, key_tp, f"{path}"): _convert(v, value_tp, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Section):
        return _build_section(path, value)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {_show(value)}")
        if not INT64[0] <= value <= INT64[1]:
            raise ConfigError(f"{path} must be an integer of at most 64 bits, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_EXPONENT.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; people mean the number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float range
            raise ConfigError(f"{path} must be a finite number, got {_show(value)}") from None
        if not math.isfinite(number):  # .inf and .nan pass every range check; training would diverge
            raise ConfigError(f"{path} must be a finite number, got {number}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {_show(value)}")
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
    return ConfigError(f"unknown config key {_show(where)}{hint}")


def build_dataclass(cls: type, values: Any, path: str) -> Any:
    """Make ``cls`` from a mapping, checking keys, types and (``validate``) ranges."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {type(values).__name__} {_show(values)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise unknown_key_error(str(key), list(fields), path)
        kwargs[key] = _convert(value, hints[key], f"{path}.{key}" if path else key)
        if key.endswith("seed") and isinstance(kwargs[key], int) and not 0 <= kwargs[key] <= MAX_SEED:
            raise ConfigError(f"{(path + '.') if path else ''}{key} must be in [0, {MAX_SEED}], got "
                              f"{_show(kwargs[key])}")  # every seed (data.split_seed too): what NumPy takes
        if fields[key].metadata.get("path") and isinstance(kwargs[key], str) and kwargs[key]:
            problem = path_problem(kwargs[key], home=True)  # the one path validator, as for command-line paths
            if problem:
                raise ConfigError(f"{path}.{key} {_show(kwargs[key])} {problem}")
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key {(path + '.' if path else '') + name!r}")
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(path or cls.__name__)
    return obj


def _build_section(kind: str, values: Any, source: Any = None) -> Section:
    """An open section: its ``name``'s registered options, plus the section's shared keys (``model``: fill, fusion).

    ``source`` answers ``names(kind)``, ``lookup(kind, name)``, ``fills()`` and ``fusions()``:
    :mod:`mckd.components` (the default: imports the components) or a :class:`mckd.catalog.Catalog` (the
    built-in components' options, read without importing them).
    """
    if source is None:
        from mckd import components as source

    if not isinstance(values, dict) or "name" not in values:
        names = source.names(kind)
        raise ConfigError(f"config section {kind!r} needs a 'name', one of: {', '.join(names)}")
    values = dict(values)
    name = values.pop("name")
    if not isinstance(name, str):
        raise ConfigError(f"{kind}.name must be a string, got {_show(name)}")
    entry = source.lookup(kind, name)
    section_type = _SECTION_TYPES.get(kind, Section)
    shared = {f.name: f for f in dataclasses.fields(section_type) if f.name not in ("name", "options")}
    own = {f.name for f in dataclasses.fields(entry.options) if f.init}
    for key in values:
        if key not in own and key not in shared:
            raise unknown_key_error(str(key), ["name", *own, *shared], kind)
    hints = typing.get_type_hints(section_type)
    common = {key: _convert(values.pop(key), hints[key], f"{kind}.{key}") for key in list(values) if key in shared}
    section = section_type(name=name, options=build_dataclass(entry.options, values, kind), **common)
    section._entry = entry  # type: ignore[attr-defined]
    if isinstance(section, ModelSection):
        section.check_names(source)
    return section


OPEN_SECTIONS = ("task", "data", "model", "method")


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key; the base class says so
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {_show(key, 40)} appears twice in one mapping (first on line "
                    f"{seen[key] + 1}); the second would silently win: keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _count_values(value: Any, limit: int) -> int:
    """Values in ``value`` with YAML aliases expanded, counted up to just past ``limit``."""
    count, stack = 0, [value]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text safely (no Python tags); ``source`` names it in errors ("config file 'x.yaml'").

    A key given twice in one mapping and a document that expands, through its
    aliases, to more than :data:`MAX_YAML_VALUES` values (an alias bomb) are
    :class:`ConfigError` s, as is anything PyYAML cannot read.
    """
    from mckd.bounds import BOUNDS, nesting_depth

    limit = int(BOUNDS["nesting"].high())
    what = "value " + _show(text, 60) + " " if source.startswith("--set") else ""
    try:
        value = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: {what}is not valid YAML ({_one_line(error)})") from None
    except RecursionError:  # PyYAML's parser recurses once per level
        raise ConfigError(f"{source}: {what}nests more than {limit} levels deep; a config needs a few") from None
    if _count_values(value, MAX_YAML_VALUES) > MAX_YAML_VALUES:  # first: an alias bomb is counted, not walked
        raise ConfigError(f"{source} expands to more than {MAX_YAML_VALUES:,} values through its YAML aliases "
                          "(an alias bomb?); a config needs a few hundred")
    if nesting_depth(value, limit) > limit:
        raise ConfigError(f"{source}: {what}nests more than {limit} levels deep; a config needs a few")
    return value


def resolve_paths(config: "Config", base: str | Path | None = None) -> "Config":
    """``config`` with every file or folder option (marked :data:`PATH`) made absolute against ``base`` (the cwd).

    A run directory stores its config this way, so that ``mckd evaluate RUN`` works
    from any folder and after the run is moved. Empty paths (a dataset's default) stay empty, except a
    :data:`FOLDER_OR_CWD` folder, which becomes the current folder it stands for.
    """
    base = Path(base) if base is not None else Path.cwd()
    for f in dataclasses.fields(config):
        section = getattr(config, f.name)
        options = getattr(section, "options", None)
        if not dataclasses.is_dataclass(options):
            continue
        for option in dataclasses.fields(options):
            value = getattr(options, option.name)
            if not (option.metadata.get("path") and isinstance(value, str)) or option.metadata.get("under"):
                continue
            if value and not Path(value).expanduser().is_absolute():
                setattr(options, option.name, str((base / Path(value).expanduser()).resolve()))
            elif not value and option.metadata.get("empty") == "cwd":
                setattr(options, option.name, str(base.resolve()))
    return config


def input_paths(config: "Config") -> list[str]:
    """Every file or folder a config reads (its :data:`PATH` options, and the ``path`` of nested sources), non-empty."""
    found: list[str] = []

    def visit(options: Any, base: str) -> None:
        for option in dataclasses.fields(options):
            value = getattr(options, option.name)
            if isinstance(value, str) and value and option.metadata.get("path"):
                under = option.metadata.get("under") and base and not Path(value).expanduser().is_absolute()
                found.append(str(Path(base).expanduser() / Path(value).expanduser()) if under else value)
            items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
            for item in items:
                if dataclasses.is_dataclass(item) and not isinstance(item, type):
                    visit(item, str(getattr(options, "root", "") or base))

    for f in dataclasses.fields(config):
        options = getattr(getattr(config, f.name), "options", None)
        if dataclasses.is_dataclass(options):
            visit(options, "")
    return found


def split_override(item: str) -> tuple[str, str]:
    """``"train.lr=0.01"`` -> ``("train.lr", "0.01")``; a malformed item is a :class:`ConfigError`."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {_show(item)}")
    key, text = item.split("=", 1)
    key = key.strip()
    if not all(key.split(".")):
        raise ConfigError(f"--set key {key!r} is not a dotted key like train.lr")
    return key, text


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` of a raw config mapping in place, making sections on the way."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a copy of a raw config mapping.

    A section given a bare name (``--set method=lckd``, ``--set task=segmentation``) becomes that
    registered entry with its defaults, as ``{name: ...}``.
    """
    raw = copy.deepcopy(raw) or {}
    for item in overrides:
        key, text = split_override(item)
        value = parse_yaml(text, f"--set {key}")
        if "." not in key and key in OPEN_SECTIONS and isinstance(value, str):
            value = {"name": value}
        set_key(raw, key, value)
    return raw


def check_fixed_sections(raw: Any) -> None:
    """Check what needs no registered component, before any is imported (and so before torch loads).

    The top-level keys, ``seed``, ``imports`` and the fixed sections (``train``, ``eval``, ``missing``):
    their keys, types and ranges, with the errors :func:`config_from_dict` gives. The open sections
    (``task``, ``data``, ``model``, ``method``) are checked by :func:`config_from_dict`, which imports
    the components that define their options.
    """
    if not isinstance(raw, dict):
        return  # build_dataclass says what a config must be
    hints = typing.get_type_hints(Config)
    fields = {f.name: f for f in dataclasses.fields(Config) if f.init}
    for key, value in raw.items():
        if key not in fields:
            raise unknown_key_error(str(key), list(fields), "")
        kind = hints[key]
        if isinstance(kind, type) and issubclass(kind, Section):
            continue
        if dataclasses.is_dataclass(kind):
            build_dataclass(kind, value, key)
        elif key == "seed":
            build_dataclass(_SeedOnly, {"seed": value}, "")


def check_open_sections(raw: Any) -> None:
    """Check the open sections (``task``, ``data``, ``model``, ``method``) against the built-in components'
    catalog, without importing them (and torch): names, keys, types and paths, with the errors
    :func:`config_from_dict` gives. Nothing is checked when the catalog cannot answer for this config (it
    ``imports:`` modules, a plug-in is installed, or mckd's sources changed since the catalog was made);
    ranges checked by an options class's ``validate`` wait for :func:`config_from_dict` either way.
    """
    if not isinstance(raw, dict) or raw.get("imports"):
        return
    from mckd.catalog import builtin_catalog

    catalog = builtin_catalog()
    if catalog is None:
        return
    for kind in OPEN_SECTIONS:
        if kind in raw:
            _build_section(kind, raw[kind], catalog)


@dataclass
class _SeedOnly:
    seed: int = 0


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build and check a :class:`Config` from plain data (an older layout is upgraded first)."""
    from mckd.config_upgrade import upgrade_raw_config

    raw = upgrade_raw_config(raw)
    check_fixed_sections(raw)  # before the components (and torch) are imported: a typo there answers at once
    from mckd import components

    if isinstance(raw, dict) and raw.get("imports") is not None:
        # before the sections, which may name what these register; files are kept by their absolute path
        raw = {**raw, "imports": components.resolve_imports(raw["imports"], Path.cwd())}
        components.import_modules(raw["imports"])
    return resolve_paths(build_dataclass(Config, raw, ""))


def load_raw(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file as plain data (duplicate keys and alias bombs refused)."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise ConfigError(f"config file {str(path)!r} {problem}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {str(path)!r} is not a text (UTF-8) YAML file: {error.reason} at byte {error.start}") from None
    except OSError as error:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {error.strerror or error}") from None
    raw = parse_yaml(text, f"config file {str(path)!r}")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, override and check a config file."""
    return config_from_dict(apply_overrides(load_raw(path), overrides or []))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config (every default filled in) as YAML."""
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))  # never half a config.yaml
