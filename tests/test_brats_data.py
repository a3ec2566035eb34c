"""BraTS readers, label conventions, input checks and the prepared cache, on the real shared cases."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brats_helpers import LAYOUT_2013, brats_regions, cache2013, cache4, read_case  # noqa: F401 (fixtures)
from conftest import shared_path
from mckd.errors import DataError
from mckd.seg.cache import CachedCase, read_dataset_record
from mckd.seg.formats import detect_format
from mckd.seg.labels import convention
from mckd.seg.layouts import BUILTIN_LAYOUTS, load_layout
from mckd.seg.predict import write_nifti
from mckd.seg.prepare import prepare_segmentation


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def small_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40^3 piece around the tumour of the real BraTS 2018 case, in its own naming, as uncompressed .nii."""
    source = shared_path("brats4", "Brats18_2013_21_1")
    folder = tmp_path_factory.mktemp("small") / "Small_1"
    folder.mkdir()
    seg = _load(source / "Brats18_2013_21_1_seg.nii.gz")
    centre = np.argwhere(seg == 4).mean(axis=0).astype(int)
    box = tuple(slice(c - 20, c + 20) for c in centre)
    for name in ("flair", "t1", "t1ce", "t2", "seg"):
        image = nib.load(str(source / f"Brats18_2013_21_1_{name}.nii.gz"))
        piece = np.asanyarray(image.dataobj)[box]
        nib.save(nib.Nifti1Image(piece, image.affine, image.header), str(folder / f"Small_1_{name}.nii"))
    return folder


def _copy_case(small_case: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "src" / "Small_1"
    shutil.copytree(small_case, folder)
    return folder


# --- readers ---------------------------------------------------------------------------------


def test_brats2018_layout_reads_four_sequences_and_the_2018_labels():
    case = shared_path("brats4", "Brats18_2013_21_1")
    read = read_case(case, BUILTIN_LAYOUTS["brats2018"])
    seg = _load(case / "Brats18_2013_21_1_seg.nii.gz")
    assert list(read.images) == ["flair", "t1", "t1ce", "t2"] and read.missing == []
    assert read.images["t1ce"].shape == (240, 240, 155)
    et, tc, wt = brats_regions(read.labels)
    assert np.array_equal(et, seg == 4)
    assert np.array_equal(tc, np.isin(seg, [1, 4]))
    assert np.array_equal(wt, seg > 0)


def test_auto_layout_recognises_brats2021_names():
    source = shared_path("brats4")
    layout = detect_format(source).layout
    assert layout.name == "brats2018"
    read = read_case(source / "BraTS2021_00006", layout)
    seg = _load(source / "BraTS2021_00006" / "BraTS2021_00006_seg.nii.gz")
    assert np.array_equal(brats_regions(read.labels)[0], seg == 4)


def test_uncompressed_nii_files_are_read_by_the_gz_pattern(small_case: Path):
    read = read_case(small_case, BUILTIN_LAYOUTS["brats2018"])
    assert read.files["flair"].endswith("Small_1_flair.nii")
    assert read.labels.shape == (40, 40, 40)


def test_brats2023_layout_maps_its_sequence_names_and_label_3_to_enhancing(small_case: Path, tmp_path: Path):
    folder = tmp_path / "BraTS-GLI-00001-000"
    folder.mkdir()
    renames = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}
    for old, new in renames.items():
        image = nib.load(str(small_case / f"Small_1_{old}.nii"))
        data = np.asanyarray(image.dataobj)
        if old == "seg":
            data = np.where(data == 4, 3, data).astype(np.uint8)  # 2023: enhancing is 3
        nib.save(nib.Nifti1Image(data, image.affine), str(folder / f"{folder.name}-{new}.nii.gz"))
    assert detect_format(tmp_path).kind == "brats2023"
    read = read_case(folder, BUILTIN_LAYOUTS["brats2023"])
    reference = read_case(small_case, BUILTIN_LAYOUTS["brats2018"])
    assert np.array_equal(read.labels, reference.labels)
    assert np.array_equal(read.images["flair"], reference.images["flair"])


def test_mapping_layout_reads_brats2013_with_its_old_label_convention():
    case = shared_path("brats2013", "brats_2013_pat0004_1")
    read = read_case(case, load_layout(LAYOUT_2013))
    assert list(read.images) == ["flair", "t1ce"]
    raw = _load(case / "OTMultiClass.nii.gz")
    et, tc, wt = brats_regions(read.labels)
    assert np.array_equal(et, raw == 4)
    assert np.array_equal(tc, np.isin(raw, [1, 3, 4]))
    assert np.array_equal(wt, raw > 0)
    assert read.brain.sum() == (_load(case / "brainmask.nii.gz") > 0.5).sum()


def test_both_label_conventions_give_the_same_regions_for_the_same_patient():
    # Brats18_2013_21_1 and brats_2013_pat0004_1 are one patient (data README).
    old = read_case(shared_path("brats2013", "brats_2013_pat0004_1"), load_layout(LAYOUT_2013)).labels
    new = read_case(shared_path("brats4", "Brats18_2013_21_1"), BUILTIN_LAYOUTS["brats2018"]).labels
    assert np.array_equal(brats_regions(old), brats_regions(new))


def test_internal_labels_go_back_to_each_convention():
    internal = np.array([0, 1, 2, 3], dtype=np.uint8)
    assert convention("brats2018").to_file_values(internal).tolist() == [0, 1, 2, 4]
    assert convention("brats2023").to_file_values(internal).tolist() == [0, 1, 2, 3]
    assert convention("brats2013").to_internal(np.array([0, 1, 2, 3, 4])).tolist() == [0, 1, 2, 1, 3]


# --- input checks ----------------------------------------------------------------------------


def _rewrite(path: Path, change) -> None:
    image = nib.load(str(path))
    data, affine = change(np.asanyarray(image.dataobj).copy(), image.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), str(path))  # header from the data: keeps float NaNs


def test_a_missing_sequence_file_is_named(small_case: Path, tmp_path: Path):
    folder = _copy_case(small_case, tmp_path)
    (folder / "Small_1_t2.nii").unlink()
    with pytest.raises(DataError, match=r"no 't2' sequence file matching 'Small_1_t2.nii.gz'"):
        read_case(folder, BUILTIN_LAYOUTS["brats2018"])
    read = read_case(folder, BUILTIN_LAYOUTS["brats2018"], allow_missing=True)
    assert read.missing == ["t2"] and "treated as missing" in read.warnings[0]


def test_a_missing_label_file_is_named(small_case: Path, tmp_path: Path):
    folder = _copy_case(small_case, tmp_path)
    (folder / "Small_1_seg.nii").unlink()
    with pytest.raises(DataError, match=r"no label file matching 'Small_1_seg.nii.gz'"):
        read_case(folder, BUILTIN_LAYOUTS["brats2018"])


def test_shape_and_affine_mismatch_within_a_case(small_case: Path, tmp_path: Path):
    folder = _copy_case(small_case, tmp_path)
    _rewrite(folder / "Small_1_t1.nii", lambda d, a: (d[:-1], a))
    with pytest.raises(DataError, match=r"Small_1_t1.nii has shape \(39, 40, 40\) but Small_1_flair.nii has"):
        read_case(folder, BUILTIN_LAYOUTS["brats2018"])
    folder = _copy_case(small_case, tmp_path / "b")
    _rewrite(folder / "Small_1_seg.nii", lambda d, a: (d, a + np.diag([0, 0, 0.5, 0])))
    with pytest.raises(DataError, match=r"Small_1_seg.nii has affine .* one voxel grid"):
        read_case(folder, BUILTIN_LAYOUTS["brats2018"])


def test_nan_voxels_are_refused(small_case: Path, tmp_path: Path):
    folder = _copy_case(small_case, tmp_path)

    def poison(d, a):
        d = d.astype(np.float32)
        d[0, 0, :3] = [np.nan, np.inf, 1]
        return d, a

    _rewrite(folder / "Small_1_t1ce.nii", poison)
    with pytest.raises(DataError, match=r"Small_1_t1ce.nii holds 2 NaN or Inf voxels"):
        read_case(folder, BUILTIN_LAYOUTS["brats2018"])


def test_an_all_zero_sequence_is_an_error_or_missing(small_case: Path, tmp_path: Path):
    folder = _copy_case(small_case, tmp_path)
    _rewrite(folder / "Small_1_flair.nii", lambda d, a: (np.zeros_like(d), a))
    with pytest.raises(DataError, match=r"Small_1_flair.nii \(flair\) is empty: every voxel is 0.*--allow-missing"):
        read_case(folder, BUILTIN_LAYOUTS["brats2018"])
    read = read_case(folder, BUILTIN_LAYOUTS["brats2018"], allow_missing=True)
    assert "flair" in read.missing and "flair" not in read.images


def test_labels_outside_the_convention_are_refused(small_case: Path, tmp_path: Path):
    folder = _copy_case(small_case, tmp_path)
    _rewrite(folder / "Small_1_seg.nii", lambda d, a: (np.where(d == 4, 3, d).astype(d.dtype), a))
    with pytest.raises(DataError, match=r"label values \[3\] .* not in the brats2018 convention"):
        read_case(folder, BUILTIN_LAYOUTS["brats2018"])


def test_a_truncated_nifti_is_reported_as_unreadable(small_case: Path, tmp_path: Path):
    folder = _copy_case(small_case, tmp_path)
    raw = (folder / "Small_1_t1.nii").read_bytes()
    (folder / "Small_1_t1.nii").unlink()
    (folder / "Small_1_t1.nii.gz").write_bytes(gzip.compress(raw)[:2000])
    with pytest.raises(DataError, match=r"Small_1_t1.nii.gz .* is not a readable NIfTI file"):
        read_case(folder, BUILTIN_LAYOUTS["brats2018"])


# --- the cache -------------------------------------------------------------------------------


def test_cache_records_every_case_and_memory_maps(cache2013: Path, cache4: Path):
    record = read_dataset_record(cache2013)
    assert record["modalities"] == ["flair", "t1ce"] and len(record["cases"]) == 4
    assert read_dataset_record(cache4)["modalities"] == ["flair", "t1", "t1ce", "t2"]
    case = CachedCase(cache2013, record["cases"][0], record["modalities"])
    assert case.image("flair").dtype == np.float16 and isinstance(case.image("flair"), np.memmap)
    assert case.labels().dtype == np.uint8
    np.load(cache2013 / record["cases"][0] / "t1ce.npy", mmap_mode="r", allow_pickle=False)


def test_cache_zscores_inside_the_brain(cache4: Path):
    case = CachedCase(cache4, "BraTS2021_00006", ["flair", "t1", "t1ce", "t2"])
    raw = _load(shared_path("brats4", "BraTS2021_00006", "BraTS2021_00006_t2.nii.gz")).astype(np.float64)
    box = case.meta["crop_box"]
    brain = raw[tuple(slice(a, b) for a, b in box)]
    cached = np.asarray(case.image("t2"), dtype=np.float64)
    inside = cached != 0
    assert abs(cached[inside].mean()) < 0.01 and abs(cached[inside].std() - 1) < 0.01
    expected = (brain - case.meta["zscore"]["t2"]["mean"]) / case.meta["zscore"]["t2"]["std"]
    assert np.allclose(cached[inside], expected[inside], atol=2e-2)


def test_a_prediction_written_back_lands_on_the_original_grid(cache4: Path, tmp_path: Path):
    source = shared_path("brats4", "Brats18_2013_21_1")
    case = CachedCase(cache4, "Brats18_2013_21_1", ["flair", "t1", "t1ce", "t2"])
    prediction = np.asarray(case.labels())  # a perfect "prediction" on the cached grid
    restored = case.restore(prediction)
    flair = source / "Brats18_2013_21_1_flair.nii.gz"
    out = write_nifti(convention("brats2018").to_file_values(restored), flair, tmp_path / "pred.nii.gz",
                      nib.load(str(flair)).affine)
    written, original = nib.load(str(out)), nib.load(str(source / "Brats18_2013_21_1_seg.nii.gz"))
    assert written.shape == original.shape
    assert np.allclose(written.affine, original.affine)
    assert np.array_equal(np.asanyarray(written.dataobj), np.asanyarray(original.dataobj))


def test_prepare_refuses_to_overwrite_without_force(cache2013: Path, tmp_path: Path):
    from mckd.cli import main

    out = tmp_path / "c"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="not empty; pass --force"):
        prepare_segmentation(shared_path("brats2013"), out, LAYOUT_2013, progress=False)
    with pytest.raises(DataError, match="not an mckd cache"):
        prepare_segmentation(shared_path("brats2013"), out, LAYOUT_2013, force=True, progress=False)
    assert main(["prepare", "brats", str(shared_path("brats2013")), str(cache2013), "--layout", LAYOUT_2013,
                 "--no-progress"]) == 2
