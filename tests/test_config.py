"""Configs: every key checked, errors that name the key, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mckd.config import apply_overrides, config_from_dict, load_config, load_raw, save_config
from mckd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "multiview_digits.yaml"


def _load(*overrides: str):
    return load_config(DIGITS, list(overrides))


def test_the_shipped_digits_config_loads_with_paper_defaults():
    config = _load()
    assert config.data.name == "multiview_digits" and config.model.name == "multiview_mlp"
    assert config.data.options.views == ["fou", "fac", "kar", "pix", "zer", "mor"]
    assert (config.method.alpha, config.method.p, config.method.weight_norm) == (0.1, 1, "softmax")
    assert config.method.meta_lr == 0.01


@pytest.mark.parametrize(
    "override,named,suggested",
    [
        ("method.alpah=0.2", "method.alpah", "alpha"),
        ("metod.alpha=0.2", "metod", "method"),
        ("data.viewz=[fou]", "data.viewz", "views"),
        ("model.feature_dims=8", "model.feature_dims", "feature_dim"),
        ("train.batchsize=8", "train.batchsize", "batch_size"),
    ],
)
def test_unknown_key_is_an_error_that_names_it_and_suggests_the_closest(override, named, suggested):
    with pytest.raises(ConfigError) as error:
        _load(override)
    message = str(error.value)
    assert f"unknown config key '{named}'" in message
    assert f"did you mean '{suggested}'" in message


def test_unknown_key_in_a_yaml_file_is_an_error_too(tmp_path):
    raw = load_raw(DIGITS)
    raw["method"]["meta_evry"] = 5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="unknown config key 'method.meta_evry'; did you mean 'meta_every'"):
        load_config(path)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.lr=abc", "train.lr must be a number, got 'abc'"),
        ("train.iterations=2.5", "train.iterations must be an integer"),
        ("method.meta=maybe", "method.meta must be true or false"),
        ("data.views=fou", "data.views must be a list"),
        ("method.weight_norm=softmx", "did you mean 'softmax'"),
        ("seed=x", "seed must be an integer"),
    ],
)
def test_a_value_of_the_wrong_type_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        _load(override)


@pytest.mark.parametrize(
    "override,message",
    [
        ("method.alpha=-0.1", "method.alpha must be >= 0"),
        ("method.p=3", "method.p must be 1 or 2"),
        ("missing.rates.fou=1.5", r"missing.rates.fou must be in \[0, 1\]"),
        ("missing.rates.fou=-0.2", r"missing.rates.fou must be in \[0, 1\]"),
        ("method.meta_every=0", "method.meta_every must be >= 1"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("data.split=[0.5,0.1,0.3]", "data.split must be three non-negative fractions summing to 1"),
        ("data.views=[fou,fou]", "data.views must be distinct"),
    ],
)
def test_a_value_out_of_range_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        _load(override)


def test_an_unknown_dataset_or_model_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="data.name 'multiview_digit' is not known.*did you mean 'multiview_digits'"):
        _load("data.name=multiview_digit")


def test_fixed_policy_needs_a_subset():
    with pytest.raises(ConfigError, match="missing.subset must name modalities"):
        _load("missing.policy=fixed")


def test_set_overrides_replace_nested_values_and_parse_yaml():
    config = _load("method.alpha=0", "method.meta=false", "train.lr=0.01", "missing.rates.mor=0.2",
                   "missing.policy=rates", "data.views=[fac, mor]", "seed=4")
    assert config.method.alpha == 0.0 and isinstance(config.method.alpha, float)
    assert config.method.meta is False
    assert config.train.lr == 0.01
    assert config.missing.rates == {"mor": 0.2}
    assert config.data.options.views == ["fac", "mor"]
    assert config.seed == 4


def test_set_overrides_do_not_change_the_raw_config_they_start_from():
    raw = load_raw(DIGITS)
    apply_overrides(raw, ["method.alpha=0.5"])
    assert raw["method"]["alpha"] == 0.1


@pytest.mark.parametrize("override,message", [("train", "expects key=value"), ("train..lr=1", "dotted key"),
                                              ("method.alpha.x=1", "'alpha' is not a section")])
def test_malformed_set_overrides_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        _load(override)


def test_the_saved_config_has_every_default_and_loads_back_the_same(tmp_path):
    raw = {"data": {"name": "multiview_digits"}, "model": {"name": "multiview_mlp"}}
    config = config_from_dict(raw)  # every other key from its default
    save_config(config, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["feature_dim"] == 64 and saved["method"]["alpha"] == 0.1
    assert config_from_dict(saved).to_dict() == config.to_dict()


def test_a_missing_config_file_or_section_is_named():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/config.yaml")
    with pytest.raises(ConfigError, match="missing config key 'model'"):
        config_from_dict({"data": {"name": "multiview_digits"}})


@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("5e-5", 5e-5), ("2.5E+2", 250.0), (".5e1", 5.0)])
def test_exponent_notation_without_a_dot_is_a_number_though_yaml_reads_it_as_a_string(text, value, tmp_path):
    assert _load(f"train.lr={text}").train.lr == value
    raw = load_raw(DIGITS)
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(raw).replace("meta_weight_decay: 0.01", f"meta_weight_decay: {text}"))
    assert load_config(path).method.meta_weight_decay == value


def test_strings_that_are_not_numbers_stay_errors_for_number_keys():
    for text in ("e-3", "1e", "1e-3x", "one"):
        with pytest.raises(ConfigError, match="train.lr must be a number"):
            _load(f"train.lr={text}")
    with pytest.raises(ConfigError, match="train.iterations must be an integer"):
        _load("train.iterations=1e3")  # an integer key does not take exponent notation
