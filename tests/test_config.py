"""Configs: every shipped config complete and loadable, one test per kind of key and of mistake.

A misspelt key at any level is an error that names where it is and suggests
the closest key; a value of the wrong type names the key; out-of-range
values and impossible combinations name the key and what is expected; files
that are not YAML, not text or not a mapping are one-line errors. Configs in
the layout of mckd 0.1 (method switches, ``task: NAME``) are read as what
they meant.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import yaml

from mckd import components
from mckd.config import ModelSection, apply_overrides, config_from_dict, load_config, load_raw, save_config
from mckd.config_upgrade import OldConfigLayout
from mckd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "multiview_digits.yaml"
# Every shipped experiment config (layout files, which have no data section, are not configs).
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if "data" in (load_raw(p) or {}))


def _load(*overrides: str):
    return load_config(DIGITS, list(overrides))


def _section_keys(section) -> set[str]:
    """Every key a section of a resolved config has: its options' fields, plus name (and fill, fusion)."""
    shared = {f.name for f in dataclasses.fields(section) if f.name != "options"}
    return shared | {f.name for f in dataclasses.fields(section.options)}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_round_trips_and_writes_down_every_key(path, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", OldConfigLayout)  # shipped configs are in today's layout
        config = load_config(path)
    raw = load_raw(path)
    resolved = config.to_dict()
    assert set(raw) == set(resolved), f"{path.name} lacks sections {set(resolved) - set(raw)}"
    for name, value in resolved.items():
        if isinstance(value, dict):
            missing = set(value) - set(raw[name])
            assert not missing, f"{path.name}: section {name} does not write down {sorted(missing)}"
    for kind in ("task", "data", "model", "method"):
        assert set(resolved[kind]) == _section_keys(getattr(config, kind))
    save_config(config, tmp_path / "config.yaml")
    assert config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())).to_dict() == resolved


def test_the_shipped_digits_config_loads_with_paper_defaults():
    config = _load()
    assert (config.task.name, config.data.name, config.model.name, config.method.name) == (
        "classification", "multiview_digits", "multiview_mlp", "mckd")
    assert config.data.options.views == ["fou", "fac", "kar", "pix", "zer", "mor"]
    options = config.method.options
    assert (options.alpha, options.p, options.weight_norm, options.meta_lr) == (0.1, 1, "softmax", 0.01)
    assert (config.model.fill, config.model.fusion) == ("mean", "concat")


@pytest.mark.parametrize(
    "override,named,suggested",
    [
        ("metod.alpha=0.2", "metod", "method"),  # a section
        ("train.batchsize=8", "train.batchsize", "batch_size"),  # a key of a fixed section
        ("data.viewz=[fou]", "data.viewz", "views"),  # a registered dataset's option
        ("model.feature_dims=8", "model.feature_dims", "feature_dim"),  # a network's option
        ("model.fil=zero", "model.fil", "fill"),  # a key every model has
        ("method.alpah=0.2", "method.alpah", "alpha"),  # a training method's option
        ("task.nme=classification", "task.nme", "name"),  # a task's key
    ],
)
def test_an_unknown_key_of_each_kind_names_where_it_is_and_suggests_the_closest(override, named, suggested):
    with pytest.raises(ConfigError) as error:
        _load(override)
    assert f"unknown config key '{named}'" in str(error.value)
    assert f"did you mean '{suggested}'" in str(error.value)


def test_an_unknown_key_in_a_yaml_file_is_an_error_too(tmp_path):
    raw = load_raw(DIGITS)
    raw["method"]["meta_evry"] = 5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="unknown config key 'method.meta_evry'; did you mean 'meta_every'"):
        load_config(path)


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.iterations=2.5", "train.iterations must be an integer"),  # int
        ("seed=x", "seed must be an integer"),
        ("train.lr=abc", "train.lr must be a number, got 'abc'"),  # float
        ("method.meta=maybe", "method.meta must be true or false"),  # bool
        ("train.device=[1]", "train.device must be a string"),  # str
        ("method.weight_norm=softmx", "did you mean 'softmax'"),  # Literal
        ("model.fusion=hemiss", "did you mean 'hemis'"),  # a shared model key's Literal
        ("data.views=fou", "data.views must be a list"),  # list
        ("missing.rates=[0.5]", "missing.rates must be a mapping"),  # dict
        ("train=[1, 2]", "train must be a mapping"),  # a section
        ("method=[1, 2]", "config section 'method' needs a 'name'"),  # an open section
    ],
)
def test_a_value_of_the_wrong_type_of_each_kind_names_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        _load(override)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("method.alpha=-0.1", "method.alpha must be >= 0, got -0.1"),
        ("method.p=3", "method.p must be 1 or 2, got 3"),
        ("method.meta_every=0", "method.meta_every must be >= 1"),
        ("missing.rates={fou: 1.2}", "missing.rates.fou must be in [0, 1], got 1.2"),
        ("missing.rates={fou: .nan}", "missing.rates.fou must be a finite number, got nan"),
        ("train.lr=0", "train.lr must be > 0"),
        ("train.gamma=1.5", "train.gamma must be in (0, 1]"),
        ("data.split=[0.5, 0.5, 0.5]", "data.split must be three non-negative fractions summing to 1"),
        ("data.views=[fou, fou]", "data.views must be distinct names"),
        ("model.dropout=1", "model.dropout must be in [0, 1)"),
        ("missing.policy=fixed", "missing.subset must name modalities"),
    ],
)
def test_a_value_out_of_range_names_the_key_and_the_range(override, message):
    with pytest.raises(ConfigError) as error:
        _load(override)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method.meta=false", "method.meta_mode=bilevel"], "a bi-level meta step needs meta steps"),
        (["method.lookahead_lr=0.1"], "only apply to meta_mode: bilevel"),
        (["method.name=lckd", "method.meta_every=5"], "unknown config key 'method.meta_every'"),
    ],
)
def test_settings_that_cannot_go_together_are_impossible_to_write(overrides, message):
    raw = load_raw(DIGITS)
    if "method.name=lckd" in overrides:
        raw["method"] = {"name": "lckd"}
        overrides = [o for o in overrides if o != "method.name=lckd"]
    with pytest.raises(ConfigError, match=message):
        config_from_dict(apply_overrides(raw, overrides))


@pytest.mark.parametrize("kind,typo,known", [("data", "multiview_digit", "multiview_digits"),
                                             ("model", "multiview_mpl", "multiview_mlp"),
                                             ("method", "mkcd", "mckd"), ("task", "clasification", "classification")])
def test_a_misspelt_component_name_suggests_the_registered_one(kind, typo, known):
    with pytest.raises(ConfigError, match=f"{kind}.name '{typo}' is not known.*did you mean '{known}'"):
        _load(f"{kind}.name={typo}")


def test_a_preset_name_in_a_config_says_which_settings_it_stands_for():
    raw = load_raw(DIGITS)
    raw["method"] = {"name": "baseline"}
    with pytest.raises(ConfigError, match=r"'baseline' is a preset \(mckd with method.alpha: 0.0, method.meta: False\)"):
        config_from_dict(raw)


def test_a_task_that_does_not_fit_the_data_is_refused(digits_csv_dir):
    from mckd.build import build_experiment

    raw = load_raw(DIGITS)
    raw["task"] = {"name": "segmentation"}
    config = config_from_dict(apply_overrides(raw, [f"data.csv_dir={digits_csv_dir}"]))
    with pytest.raises(ConfigError, match="task.name 'segmentation' predicts a label map .* one class label"):
        build_experiment(config)


@pytest.mark.parametrize(
    "override,message",
    [
        ("missing.rates={audio: 0.5}", "missing.rates names ['audio'], which are not modalities of this dataset"),
        ("missing.subset=[fou, audio]", "missing.subset names ['audio'], which are not modalities of this dataset"),
    ],
)
def test_modality_names_the_dataset_does_not_have_are_config_errors(override, message, digits_csv_dir):
    from mckd.build import build_data

    policy = "rates" if "rates" in override else "fixed"
    config = _load(override, f"missing.policy={policy}", f"data.csv_dir={digits_csv_dir}")
    with pytest.raises(ConfigError) as error:
        build_data(config)
    assert message in str(error.value)


def test_set_overrides_replace_nested_values_and_parse_yaml():
    config = _load("method.alpha=0", "method.meta=false", "train.lr=0.01", "missing.rates.mor=0.2",
                   "missing.policy=rates", "data.views=[fac, mor]", "seed=4", "model.fill=zero")
    assert config.method.options.alpha == 0.0 and isinstance(config.method.options.alpha, float)
    assert config.method.options.meta is False and config.model.fill == "zero"
    assert config.train.lr == 0.01 and config.missing.rates == {"mor": 0.2}
    assert config.data.options.views == ["fac", "mor"] and config.seed == 4


def test_set_overrides_do_not_change_the_raw_config_they_start_from():
    raw = load_raw(DIGITS)
    apply_overrides(raw, ["method.alpha=0.5"])
    assert raw["method"]["alpha"] == 0.1


@pytest.mark.parametrize("override,message", [("train", "expects key=value"), ("train..lr=1", "dotted key"),
                                              ("method.alpha.x=1", "'alpha' is not a section")])
def test_malformed_set_overrides_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        _load(override)


def test_a_config_with_only_names_gets_every_default_and_loads_back_the_same(tmp_path):
    config = config_from_dict({"data": {"name": "multiview_digits"}, "model": {"name": "multiview_mlp"}})
    assert (config.task.name, config.method.name) == ("classification", "mckd")  # the defaults
    save_config(config, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["feature_dim"] == 64 and saved["method"]["alpha"] == 0.1 and saved["model"]["fill"] == "mean"
    assert config_from_dict(saved).to_dict() == config.to_dict()


def test_a_missing_config_file_or_section_is_named():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/config.yaml")
    with pytest.raises(ConfigError, match="missing config key 'model'"):
        config_from_dict({"data": {"name": "multiview_digits"}})


@pytest.mark.parametrize(
    "content,message",
    [
        (b"\xff\xfe\x00garbage\x9c", "is not a text (UTF-8) YAML file"),
        (b"data:\n\t- x\n", "is not valid YAML"),
        (b"data: [unclosed\n", "is not valid YAML"),
        (b"- a\n- b\n", "must hold a mapping of sections"),
        (b"", "must hold a mapping of sections"),
        (b"!!python/object/apply:os.system ['echo pwned']\n", "is not valid YAML"),  # safe_load refuses tags
    ],
)
def test_a_config_file_that_is_not_a_yaml_mapping_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert message in str(error.value) and "\n" not in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("5e-5", 5e-5), ("2.5E+2", 250.0), (".5e1", 5.0)])
def test_exponent_notation_without_a_dot_is_a_number_though_yaml_reads_it_as_a_string(text, value):
    assert _load(f"train.lr={text}").train.lr == value


def test_strings_that_are_not_numbers_stay_errors_for_number_keys():
    for text in ("e-3", "1e", "1e-3x", "one"):
        with pytest.raises(ConfigError, match="train.lr must be a number"):
            _load(f"train.lr={text}")
    with pytest.raises(ConfigError, match="train.iterations must be an integer"):
        _load("train.iterations=1e3")  # an integer key does not take exponent notation


# --- the layout of mckd 0.1 ----------------------------------------------------------------------------

OLD_DIGITS = """\
task: classification
data: {name: multiview_digits}
model: {name: multiview_mlp, hidden: 32}
method:
  alpha: 0.3
  p: 2
  fusion: hemis
  meta_every: 7
  distill: weighted
  teacher_every: 100
  shared_specific: false
  align_weight: 0.1
  domain_weight: 0.1
"""


def _old(text: str, **method: object) -> dict:
    raw = yaml.safe_load(text)
    raw["method"].update(method)
    return raw


@pytest.mark.parametrize(
    "method,expected,options",
    [
        ({}, "mckd", {"alpha": 0.3, "p": 2, "meta_every": 7}),
        ({"distill": "teacher", "teacher_every": 20, "meta": False}, "lckd", {"alpha": 0.3, "p": 2, "teacher_every": 20}),
        ({"shared_specific": True, "alpha": 0.0, "meta": False, "align_weight": 0.5}, "shaspec", {"align_weight": 0.5}),
    ],
)
def test_a_config_of_mckd_0_1_is_read_as_the_method_its_switches_meant(method, expected, options):
    with pytest.warns(OldConfigLayout):
        config = config_from_dict(_old(OLD_DIGITS, **method))
    assert (config.task.name, config.method.name, config.model.fusion) == ("classification", expected, "hemis")
    assert {k: getattr(config.method.options, k) for k in options} == options
    assert config.model.options.hidden == 32


def test_a_config_of_mckd_0_1_that_no_method_reproduces_is_one_sentence_on_what_to_write():
    with pytest.raises(ConfigError, match="combines ShaSpec .* with MCKD.s distillation"):
        config_from_dict(_old(OLD_DIGITS, shared_specific=True))


def test_the_segmentation_settings_of_an_old_brats_config_move_to_the_task():
    raw = {"task": "segmentation", "data": {"name": "brats", "cache": "x", "head": "labels", "overlap": 0.25,
                                            "et_min_voxels": 500},
           "model": {"name": "unet3d"}, "method": {"alpha": 0.1, "fill": "zero"}}
    with pytest.warns(OldConfigLayout):
        config = config_from_dict(raw)
    assert (config.task.name, config.task.options.head, config.task.options.overlap) == ("segmentation", "labels", 0.25)
    assert config.task.options.et_min_voxels == 500 and config.model.fill == "zero"


def test_every_registered_component_documents_its_options():
    for kind in components.KINDS:
        for name in components.names(kind):
            entry = components.lookup(kind, name)
            assert entry.description and dataclasses.is_dataclass(entry.options), (kind, name)
            clash = {f.name for f in dataclasses.fields(entry.options)} & {"name", "fill", "fusion"}
            assert not clash or kind != "model" and "name" not in clash, (kind, name, clash)
    assert {f.name for f in dataclasses.fields(ModelSection)} == {"name", "options", "fill", "fusion"}
