"""Stratified train / meta-validation / test splits."""

from __future__ import annotations

import numpy as np
import pytest

from mckd.data.splits import stratified_split
from mckd.errors import DataError


def _labels() -> np.ndarray:
    return np.repeat(np.arange(10), 200)  # the digits: 10 classes of 200


def test_split_parts_are_disjoint_and_cover_every_sample():
    train, val, test = stratified_split(_labels(), (0.6, 0.1, 0.3), seed=0)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(2000))


def test_split_sizes_follow_the_fractions_within_every_class():
    labels = _labels()
    train, val, test = stratified_split(labels, (0.6, 0.1, 0.3), seed=0)
    assert (len(train), len(val), len(test)) == (1200, 200, 600)
    for part, per_class in ((train, 120), (val, 20), (test, 60)):
        assert np.bincount(labels[part], minlength=10).tolist() == [per_class] * 10


def test_split_is_reproducible_and_depends_on_the_seed():
    labels = _labels()
    a = stratified_split(labels, (0.6, 0.1, 0.3), seed=0)
    b = stratified_split(labels, (0.6, 0.1, 0.3), seed=0)
    c = stratified_split(labels, (0.6, 0.1, 0.3), seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_split_refuses_fractions_that_do_not_sum_to_one():
    with pytest.raises(DataError, match="summing to 1"):
        stratified_split(_labels(), (0.6, 0.2, 0.3), seed=0)


def test_split_refuses_too_few_samples_for_a_non_empty_part():
    with pytest.raises(DataError, match="val split is empty"):
        stratified_split(np.array([0, 0, 1, 1]), (0.6, 0.1, 0.3), seed=0)


def test_the_same_classes_named_by_integers_or_by_text_get_the_same_drawn_split():
    from mckd.data.samples import draw_split, encode_labels

    numbers = np.random.default_rng(5).integers(1, 13, size=300)  # classes 1..12: 2 < 10 as numbers, "10" < "2" as text
    by_number, _ = encode_labels(numbers.tolist(), [], "labels")
    by_name, names = encode_labels([f"grade {n}" for n in numbers], [], "labels")
    assert names[:3] == ["grade 1", "grade 10", "grade 11"]  # the codes differ ...
    assert not np.array_equal(by_number, by_name)
    assert np.array_equal(draw_split(by_number, (0.6, 0.1, 0.3), 0), draw_split(by_name, (0.6, 0.1, 0.3), 0))  # ... the split does not


def test_classes_written_as_yaml_numbers_are_the_labels_text():
    from mckd.config import config_from_dict

    raw = {"data": {"name": "files", "modalities": {"a": {"path": "a.npy"}}, "classes": [0, 1, "two"]},
           "model": {"name": "by_shape"}}
    assert config_from_dict(raw).data.options.classes == ["0", "1", "two"]
