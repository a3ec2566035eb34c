"""Config errors, exhaustively: every key of every section of every shipped config.

A misspelt key at any level is an error that names where it is and suggests
the closest key; a value of the wrong type names the key; out-of-range values
name the key and the range. Files that are not YAML, not text or not a
mapping are one-line errors too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from mckd.config import apply_overrides, config_from_dict, load_config, load_raw
from mckd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# Every shipped experiment config (layout files, which have no data section, are not configs).
CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if "data" in (load_raw(p) or {}))


def misspell(key: str) -> str:
    """A typo of ``key`` that stays closest to it: the last two letters swapped, or a letter doubled."""
    if len(key) >= 3 and key[-1] != key[-2]:
        return key[:-2] + key[-1] + key[-2]
    return key + key[-1]


def every_key(raw: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Dotted paths of every key in the config's fixed structure (not the keys of free mappings)."""
    for key, value in raw.items():
        if key == "name" or path[-1:] == ("rates",):
            continue
        yield (*path, key)
        if isinstance(value, dict) and key != "rates":
            yield from every_key(value, (*path, key))


RAW = {name: load_raw(ROOT / "configs" / name) for name in CONFIGS}


def _cases() -> list[tuple[str, tuple[str, ...]]]:
    return [(name, key) for name in CONFIGS for key in every_key(RAW[name])]


def _with(raw: dict[str, Any], key: tuple[str, ...], replace) -> dict[str, Any]:
    raw = yaml.safe_load(yaml.safe_dump(raw))
    node = raw
    for part in key[:-1]:
        node = node[part]
    replace(node, key[-1])
    return raw


@pytest.mark.parametrize("config,key", _cases(), ids=lambda v: ".".join(v) if isinstance(v, tuple) else v)
def test_a_misspelt_key_at_any_level_names_where_it_is_and_suggests_the_real_one(config, key):
    raw = RAW[config]
    typo = misspell(key[-1])

    def rename(node, last):
        node[typo] = node.pop(last)

    with pytest.raises(ConfigError) as error:
        config_from_dict(_with(raw, key, rename))
    message = str(error.value)
    assert repr(".".join((*key[:-1], typo))) in message
    assert f"did you mean {key[-1]!r}" in message


@pytest.mark.parametrize("config,key", _cases(), ids=lambda v: ".".join(v) if isinstance(v, tuple) else v)
def test_a_value_of_the_wrong_type_at_any_level_names_the_key(config, key):
    raw = RAW[config]
    if isinstance(_value(raw, key), dict):
        wrong: Any = [1, 2]  # a section given as a list
    else:
        wrong = {"not": "a value"}  # a value given as a mapping

    def replace(node, last):
        node[last] = wrong

    with pytest.raises(ConfigError) as error:
        config_from_dict(_with(raw, key, replace))
    assert ".".join(key) in str(error.value) or (len(key) == 1 and key[0] in str(error.value))


def _value(raw: dict[str, Any], key: tuple[str, ...]) -> Any:
    for part in key:
        raw = raw[part]
    return raw


@pytest.mark.parametrize(
    "override,message",
    [
        ("method.alpha=-0.1", "method.alpha must be >= 0, got -0.1"),
        ("missing.rates={fou: 1.2}", "missing.rates.fou must be in [0, 1], got 1.2"),
        ("missing.rates={fou: -0.5}", "missing.rates.fou must be in [0, 1], got -0.5"),
        ("missing.rates={fou: .nan}", "missing.rates.fou must be in [0, 1], got nan"),
        ("train.lr=0", "train.lr must be > 0"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("train.gamma=1.5", "train.gamma must be in (0, 1]"),
        ("method.p=3", "method.p must be 1 or 2"),
        ("method.meta_lr=-1", "method.meta_lr must be > 0"),
        ("eval.batch_size=0", "eval.batch_size must be >= 1"),
        ("data.split=[0.5, 0.5, 0.5]", "data.split must be three non-negative fractions summing to 1"),
        ("model.dropout=1", "model.dropout must be in [0, 1)"),
        ("method.weight_norm=softmx", "did you mean 'softmax'"),
        ("train.batch_size=2.5", "train.batch_size must be an integer"),
        ("train.progress=yes please", "train.progress must be true or false"),
        ("data.views=[fou, abc]", "data.views must be distinct names"),
        ("missing.policy=fixed", "missing.subset must name modalities"),
    ],
)
def test_an_out_of_range_or_ill_typed_value_names_the_key_and_what_is_expected(override, message):
    raw = load_raw(ROOT / "configs" / "multiview_digits.yaml")
    with pytest.raises(ConfigError) as error:
        config_from_dict(apply_overrides(raw, [override]))
    assert message in str(error.value)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"\xff\xfe\x00garbage\x9c", "is not a text (UTF-8) YAML file"),
        (b"data:\n\t- x\n", "is not valid YAML"),
        (b"data: [unclosed\n", "is not valid YAML"),
        (b"- a\n- b\n", "must hold a mapping of sections"),
        (b"", "must hold a mapping of sections"),
        (b"42", "must hold a mapping of sections"),
        (b"!!python/object/apply:os.system ['echo pwned']\n", "is not valid YAML"),  # safe_load refuses tags
    ],
)
def test_a_config_file_that_is_not_a_yaml_mapping_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert str(path) in str(error.value)


def test_a_misspelt_dataset_or_model_name_suggests_the_registered_one():
    raw = load_raw(ROOT / "configs" / "multiview_digits.yaml")
    with pytest.raises(ConfigError, match="did you mean 'multiview_digits'"):
        config_from_dict(apply_overrides(raw, ["data.name=multiview_digit"]))
    with pytest.raises(ConfigError, match="did you mean 'multiview_mlp'"):
        config_from_dict(apply_overrides(raw, ["model.name=multiview_mpl"]))


@pytest.mark.parametrize(
    "override,message",
    [
        ("missing.rates={audio: 0.5}", "missing.rates names ['audio'], which are not modalities of this dataset"),
        ("missing.subset=[fou, audio]", "missing.subset names ['audio'], which are not modalities of this dataset"),
    ],
)
def test_modality_names_the_dataset_does_not_have_are_config_errors(tmp_path, override, message, digits_csv_dir):
    from mckd.build import build_data

    raw = load_raw(ROOT / "configs" / "multiview_digits.yaml")
    policy = "rates" if "rates" in override else "fixed"
    config = config_from_dict(apply_overrides(raw, [override, f"missing.policy={policy}"]))
    with pytest.raises(ConfigError) as error:
        build_data(config)
    assert message in str(error.value)
