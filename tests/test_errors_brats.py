"""BraTS input checks, on tiny synthetic cases: each bad input is a DataError naming the file and the problem.

Complements tests/test_brats_data.py (which runs on the real cases): here
every case is a few hundred voxels made in the test, so each check runs in
milliseconds, including the ones the real data never trigger (Inf voxels,
4D files, non-integer labels, damaged caches, a source that is not there).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from helpers import SEQUENCES, SHAPE, Payload, make_brats_case, save_nifti, synthetic_head  # noqa: E402
from brats_helpers import read_case  # noqa: E402
from mckd.errors import ConfigError, DataError, MckdError  # noqa: E402
from mckd.seg.cache import DATASET_FILE, CachedCase, read_dataset_record  # noqa: E402
from mckd.seg.cases import read_nifti  # noqa: E402
from mckd.seg.dataset import SegOptions, build_seg, split_cases  # noqa: E402
from mckd.seg.formats import detect_format  # noqa: E402
from mckd.seg.labels import convention  # noqa: E402
from mckd.seg.layouts import BUILTIN_LAYOUTS, load_layout  # noqa: E402
from mckd.seg.prepare import prepare_segmentation  # noqa: E402

LAYOUT = BUILTIN_LAYOUTS["brats2018"]
save, head, make_case = save_nifti, synthetic_head, make_brats_case


def prepare_cache(source: Path, out: Path, **kwargs):
    """``mckd prepare seg SRC OUT --format brats2018``, quietly."""
    return prepare_segmentation(source, out, "brats2018", progress=False, say=lambda message: None, **kwargs)


@pytest.fixture
def case(tmp_path: Path) -> Path:
    return make_case(tmp_path / "src", "c0")


def read(case: Path, **kwargs):
    return read_case(case, LAYOUT, **kwargs)


def test_a_good_synthetic_case_reads(case):
    result = read(case)
    assert sorted(result.images) == sorted(SEQUENCES) and result.missing == []
    assert set(np.unique(result.labels)) == {0, 1, 2, 3}  # 4 (enhancing) is internal 3


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_a_case_folder_missing_a_sequence_names_the_case_and_the_sequence(case, sequence):
    (case / f"c0_{sequence}.nii.gz").unlink()
    with pytest.raises(DataError, match=rf"case c0: no '{sequence}' sequence file matching 'c0_{sequence}.nii.gz'"):
        read(case)
    assert read(case, allow_missing=True).missing == [sequence]


def test_a_case_folder_missing_its_label_file_is_named(case):
    (case / "c0_seg.nii.gz").unlink()
    with pytest.raises(DataError, match="case c0: no label file matching 'c0_seg.nii.gz'"):
        read(case)


def test_files_that_match_no_sequence_of_the_layout_are_ignored(case):
    shutil.copy(case / "c0_t1.nii.gz", case / "c0_dwi.nii.gz")  # not a modality of the layout
    assert sorted(read(case).images) == sorted(SEQUENCES)


def test_two_files_matching_one_pattern_are_an_error(tmp_path):
    layout = load_layout(str(_layout_file(tmp_path, "sequences: {flair: '*flair*'}\nlabel: '*seg*'\n")))
    case = make_case(tmp_path / "src", "c0")
    shutil.copy(case / "c0_flair.nii.gz", case / "c0_flair_copy.nii.gz")
    with pytest.raises(DataError, match="2 files match"):
        read_case(case, layout)


@pytest.mark.parametrize("what", ["shape", "affine"])
@pytest.mark.parametrize("which", ["t2", "seg"])
def test_a_file_off_the_case_grid_is_named_with_both_grids(case, what, which):
    path = case / f"c0_{which}.nii.gz"
    array = np.asanyarray(nib.load(str(path)).dataobj)
    affine = np.eye(4)
    if what == "shape":
        array = np.zeros((10, 10, 9), array.dtype)
    else:
        affine[:3, 3] = [0.0, 2.5, 0.0]  # shifted by 2.5 mm
    save(path, array, affine)
    with pytest.raises(DataError, match=rf"c0_{which}.nii.gz has {what} .* but c0_flair.nii.gz has .*one voxel grid"):
        read(case)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_voxels_are_refused(case, bad):
    image = head()
    image[4, 4, 4] = bad
    save(case / "c0_t1ce.nii.gz", image)
    with pytest.raises(DataError, match="c0_t1ce.nii.gz holds 1 NaN or Inf voxels"):
        read(case)


@pytest.mark.parametrize("value", [0.0, 7.5])
def test_a_constant_sequence_is_an_error_or_treated_as_missing_when_allowed(case, value):
    save(case / "c0_t2.nii.gz", np.full(SHAPE, value, np.float32))
    with pytest.raises(DataError, match="is empty: every voxel is .*--allow-missing"):
        read(case)
    result = read(case, allow_missing=True)
    assert result.missing == ["t2"] and "t2" not in result.images
    assert any("treated as missing" in warning for warning in result.warnings)


def test_a_case_with_every_sequence_empty_is_an_error_even_when_missing_is_allowed(case):
    for sequence in SEQUENCES:
        save(case / f"c0_{sequence}.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(DataError, match="none of the sequences .* is present and non-empty"):
        read(case, allow_missing=True)


@pytest.mark.parametrize(
    "value,name",
    [(7, "brats2018"), (3, "brats2018"), (4, "brats2023"), (255, "brats2013"), (-1, "brats2018")],
)
def test_label_values_outside_the_convention_are_named_with_the_convention(value, name):
    labels = np.zeros(SHAPE, np.int16)
    labels[1, 1, 1] = value
    with pytest.raises(DataError, match=rf"label values \[{value}\] \(1 voxels\) are not in the {name} convention"):
        convention(name).to_internal(labels, "seg.nii.gz")


def test_non_integer_labels_are_refused():
    labels = np.zeros(SHAPE, np.float32)
    labels[1, 1, 1] = 1.5
    with pytest.raises(DataError, match=r"non-integer values \[1.5\]"):
        convention("brats2018").to_internal(labels, "seg.nii.gz")


def test_labels_outside_the_convention_in_a_case_name_the_label_file(case):
    labels = np.zeros(SHAPE, np.uint8)
    labels[4, 4, 4] = 3  # BraTS 2023's enhancing label in a 2018-named case
    save(case / "c0_seg.nii.gz", labels)
    with pytest.raises(DataError, match=r"c0_seg.nii.gz: label values \[3\]"):
        read(case)


@pytest.mark.parametrize("damage", ["truncated", "half", "garbage", "empty", "4d", "missing"])
def test_an_unreadable_or_truncated_nifti_is_named(case, damage):
    path = case / "c0_t1.nii.gz"
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:60])
    elif damage == "half":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "4d":
        save(path, np.ones((*SHAPE, 2), np.float32))
    else:
        path.unlink()
        path = case / "c0_t1.nii"  # the reader also tries .nii
        path.write_bytes(data[:100])
    with pytest.raises(DataError, match=r"c0_t1.nii(.gz)? \(t1 sequence of case c0\) (is not a readable NIfTI|has shape)"):
        read(case)


def test_reading_a_nifti_that_does_not_exist_says_so(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_nifti(tmp_path / "nothing.nii.gz")


def test_a_source_folder_that_does_not_exist_or_holds_no_cases_is_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        detect_format(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no case folders"):
        detect_format(tmp_path / "empty")
    with pytest.raises(DataError, match="no case folders matching"):
        prepare_cache(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unrecognised_file_names_ask_for_a_named_format_then_a_layout(tmp_path):
    folder = tmp_path / "src" / "c0"
    folder.mkdir(parents=True)
    save(folder / "scan_a.nii.gz", head())
    with pytest.raises(DataError, match=r"no named format's file names match; .* --format NAME \(nnunet .*brats2023 "
                                        r".*\), else .* --format FILE.yaml"):
        detect_format(tmp_path / "src")


def _layout_file(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "layout.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    "text,message",
    [
        ("sequences: {flair: a.nii.gz}\nlabels: brats2099\n", "labels 'brats2099' is not one of"),
        ("sequences: {flair: a.nii.gz}\nlable: seg.nii.gz\n", r"unknown keys \['lable'\]"),
        ("label: seg.nii.gz\n", "must be a mapping with 'sequences"),
        ("sequences:\n\t- a\n", "is not valid YAML"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff", "is not valid YAML"),
    ],
)
def test_a_bad_layout_file_is_a_one_line_error(tmp_path, text, message):
    with pytest.raises(DataError) as error:
        load_layout(str(_layout_file(tmp_path, text)))
    assert "\n" not in str(error.value)
    assert re.search(message, str(error.value))


def test_an_unknown_layout_name_lists_the_built_in_ones():
    with pytest.raises(DataError, match="neither a named format .*brats2018, brats2023"):
        load_layout("brats2099")


# --- The cache: prepared atomically, refused when damaged ------------------------------------


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    for n in range(4):
        make_case(tmp_path / "src", f"c{n}")
    prepare_cache(tmp_path / "src", tmp_path / "cache")
    return tmp_path / "cache"


def test_prepare_refuses_an_existing_output_unless_forced_and_never_a_foreign_folder(cache, tmp_path):
    before = (cache / DATASET_FILE).read_text()
    with pytest.raises(DataError, match="exists and is not empty; pass --force"):
        prepare_cache(tmp_path / "src", cache)
    assert (cache / DATASET_FILE).read_text() == before
    prepare_cache(tmp_path / "src", cache, force=True)
    foreign = tmp_path / "my_documents"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not an mckd cache .* refusing to replace it even with --force"):
        prepare_cache(tmp_path / "src", foreign, force=True)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_a_prepare_that_fails_midway_leaves_neither_a_cache_nor_its_staging_folder(cache, tmp_path):
    save(tmp_path / "src" / "c3" / "c3_t1.nii.gz", np.full(SHAPE, np.nan, np.float32))  # the last case is bad
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DataError, match="NaN or Inf"):
        prepare_cache(tmp_path / "src", tmp_path / "new_cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no new_cache, no .new_cache.*.tmp
    with pytest.raises(DataError, match="NaN or Inf"):
        prepare_cache(tmp_path / "src", cache, force=True)
    assert read_dataset_record(cache)["cases"] == ["c0", "c1", "c2", "c3"]  # the old cache is intact


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda c: (c / DATASET_FILE).write_text("{not json"), r"dataset.json \(the cache's record\) is damaged"),
        (lambda c: (c / DATASET_FILE).write_text("[1, 2]"), "holds a list, expected a JSON mapping"),
        (lambda c: (c / DATASET_FILE).unlink(), "is not a segmentation cache"),
        (lambda c: (c / DATASET_FILE).write_text('{"format": "mckd-brats-cache", "version": 99}'), "version 99"),
    ],
)
def test_a_damaged_cache_record_is_named(cache, damage, message):
    damage(cache)
    with pytest.raises(DataError, match=message):
        build_seg(SegOptions(cache=str(cache), crop=[8, 8, 8]), 0)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda f: (f / "meta.json").write_text("{"), r"meta.json \(a cached case's record\) is damaged"),
        (lambda f: (f / "meta.json").write_text("{}"), "lacks"),
        (lambda f: (f / "t1.npy").write_bytes((f / "t1.npy").read_bytes()[:100]), "t1.npy is not a readable cached array"),
        (lambda f: np.save(f / "t1.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True),
         "t1.npy is not a readable cached array .*pickled objects, which mckd never loads"),
        (lambda f: np.save(f / "t1.npy", np.zeros((3, 3, 3), np.float16)), "has shape .* but its meta.json says"),
        (lambda f: (f / "label.npy").write_bytes(b"garbage"), "label.npy is not a readable cached array"),
    ],
)
def test_a_damaged_cached_case_is_named_when_read(cache, damage, message):
    damage(cache / "c1")
    with pytest.raises(DataError, match=message):
        case = CachedCase(cache, "c1", SEQUENCES)
        case.image("t1")
        case.labels()


def test_too_few_cases_for_the_splits_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="2 cases are too few"):
        split_cases(["a", "b"], [0.6, 0.2, 0.2], 0)
    with pytest.raises(DataError, match="leaves no training case"):
        split_cases(["a", "b", "c"], [0.0, 0.5, 0.5], 0)


def test_unknown_modality_names_in_the_config_are_refused(cache):
    with pytest.raises(ConfigError, match=r"data.modalities \['flair', 'dwi'\]: must be distinct names from the cache's"):
        build_seg(SegOptions(cache=str(cache), modalities=["flair", "dwi"], crop=[8, 8, 8]), 0)
    with pytest.raises(ConfigError, match="data.test_cases names"):
        build_seg(SegOptions(cache=str(cache), train_cases=["c0"], val_cases=["c1"], test_cases=["c9"], crop=[8, 8, 8]), 0)


def test_predict_refuses_to_overwrite_an_output_before_reading_anything(tmp_path):
    from mckd.seg.predict import predict_files

    out = tmp_path / "seg.nii.gz"
    out.write_bytes(b"an earlier result")
    with pytest.raises(DataError, match="exists; pass --force to overwrite it"):
        predict_files(tmp_path / "no_run", {"flair": tmp_path / "x.nii.gz"}, out)
    assert out.read_bytes() == b"an earlier result"
    with pytest.raises(MckdError, match="must end in .nii.gz or .nii"):
        predict_files(tmp_path / "no_run", {"flair": tmp_path / "x.nii.gz"}, tmp_path / "seg.png")


def test_a_pickle_in_place_of_a_cached_array_is_refused_and_runs_nothing(cache, tmp_path):
    import pickle

    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()  # the payload does run when unpickled
    marker = tmp_path / "code_ran"
    (cache / "c1" / "t1.npy").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(DataError, match="holds pickled objects, which mckd never loads"):
        CachedCase(cache, "c1", SEQUENCES).image("t1")
    assert not marker.exists()
