"""The Python API (``mckd.api``) given bad arrays, flags and modules: one :class:`MckdError` naming the argument."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from hostile.kit import Case, Cases, World, run_case

CASES = Cases()
SETTINGS = {"train.iterations": 2, "train.progress": False, "train.device": "cpu", "train.precision": "fp32"}


def _arrays(rows: int = 60) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"a": rng.normal(size=(rows, 4)).astype(np.float32), "b": rng.normal(size=(rows, 3)).astype(np.float32)}


def _labels(rows: int = 60) -> np.ndarray:
    return np.arange(rows) % 3


def _bundle_error(words: list[str], **kwargs) -> Case:
    from mckd.api import arrays_bundle

    arguments = {"modalities": _arrays(), "labels": _labels(), **kwargs}
    return Case([], words, api=lambda: arrays_bundle(**arguments))


def _fit(w: World, encoders, head, words: list[str]) -> Case:
    from mckd.api import arrays_bundle, fit

    bundle = arrays_bundle(_arrays(), _labels())
    out = w.fresh("fit")
    return Case([], words, [out], api=lambda: fit(bundle, encoders, head, out, settings=SETTINGS))


@CASES
def present_naming_no_modality(w: World) -> Case:
    return _bundle_error(["present names ['c']", "not modalities"], present={"c": np.ones(60, bool)})


@CASES
def present_flags_as_text_that_are_neither(w: World) -> Case:
    return _bundle_error(["presence flags", "'maybe'"], present={"b": np.array(["1", "maybe"] * 30)})


@CASES
def present_flags_as_numbers_other_than_zero_and_one(w: World) -> Case:
    return _bundle_error(["presence flags", "'2'"], present={"b": np.array([1, 2] * 30)})


@CASES
def present_flags_of_the_wrong_length(w: World) -> Case:
    return _bundle_error(["presence flags", "shape (59,)", "60"], present={"b": np.ones(59, bool)})


@CASES
def a_modality_name_with_a_slash(w: World) -> Case:
    arrays = _arrays()
    return _bundle_error(["modality name 'a/x'", "'/'"], modalities={"a/x": arrays["a"], "b": arrays["b"]})


@CASES
def a_complex_modality(w: World) -> Case:
    arrays = _arrays()
    return _bundle_error(["array 'b'", "complex numbers"], modalities={"a": arrays["a"],
                                                                       "b": arrays["b"].astype(np.complex64)})


@CASES
def a_zero_width_modality(w: World) -> Case:
    return _bundle_error(["array 'b'", "holds no values"], modalities={"a": _arrays()["a"],
                                                                       "b": np.ones((60, 0), np.float32)})


@CASES
def a_head_with_the_wrong_number_of_classes(w: World) -> Case:
    return _fit(w, {"a": nn.Linear(4, 8), "b": nn.Linear(3, 8)}, nn.Linear(16, 5), ["returns (2, 5)", "[batch, 3]"])


@CASES
def a_head_that_is_not_a_module(w: World) -> Case:
    return _fit(w, {"a": nn.Linear(4, 8), "b": nn.Linear(3, 8)}, lambda t: t, ["head", "must be a torch.nn.Module"])


@CASES
def an_encoder_for_another_input_width(w: World) -> Case:
    return _fit(w, {"a": nn.Linear(5, 8), "b": nn.Linear(3, 8)}, nn.Linear(16, 3),
                ["the encoder of 'a' fails on its input of shape (2, 4)", "mat1 and mat2"])


@CASES
def encoders_that_miss_a_modality(w: World) -> Case:
    return _fit(w, {"a": nn.Linear(4, 8)}, nn.Linear(16, 3), ["names ['a']", "['a', 'b']"])


@CASES
def a_head_for_another_feature_width(w: World) -> Case:
    return _fit(w, {"a": nn.Linear(4, 8), "b": nn.Linear(3, 8)}, nn.Linear(10, 3), ["fit(head=...)", "fused features"])


@pytest.mark.parametrize("build", CASES.params())
def test_the_api_refuses_bad_arguments_naming_them(build, world):
    problems = run_case(build(world), world)
    assert not problems, "\n".join(problems)
