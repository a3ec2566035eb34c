"""``mckd prepare seg`` and ``mckd prepare avmnist`` given bad sources and numbers; no cache is left half-made."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from hostile.kit import SHAPE, Case, Cases, World, brats_source, idx, msd_dataset, run_case, wav

CASES = Cases()


def _prepare(w: World, source, *more) -> tuple[list, list]:
    out = w.fresh("cache")
    return ["prepare", "seg", source, out, "--workers", "1", "--no-progress", *more], [out]


def _damaged(w: World, name: str, damage) -> object:
    source = w.copy(w.brats_src, name)
    damage(source / "case2")
    return source


@CASES
def workers_beyond_the_cpus_are_capped(w: World) -> Case:
    source = brats_source(w.fresh("two_cases"), np.random.default_rng(1), cases=2)
    argv, outs = _prepare(w, source)
    return Case([*argv[:4], "--workers", "100000", "--no-progress"], [], [], code=0,
                warns=["--workers 100,000 is more than this machine's CPUs"])


for _name, _spacing, _words in [("spacing_nan", ["nan", "nan", "nan"], ["--spacing", "finite number", "nan"]),
                                ("spacing_infinite", ["inf", "1", "1"], ["--spacing", "finite number", "inf"]),
                                ("spacing_zero", ["0", "1", "1"], ["--spacing must be at least 0.001"]),
                                ("spacing_so_small_the_volume_would_not_fit", ["0.01", "0.01", "0.01"],
                                 ["1,440,000,000 voxels", "choose a larger --spacing"])]:
    def _build(w: World, spacing=_spacing, words=_words) -> Case:
        argv, outs = _prepare(w, w.brats_src, "--spacing", *spacing)
        return Case(argv, words, outs)
    _build.__name__ = _name
    CASES(_build)


@CASES
def a_case_missing_a_sequence(w: World) -> Case:
    argv, outs = _prepare(w, _damaged(w, "no_t1ce", lambda case: (case / "case2_t1ce.nii.gz").unlink()))
    return Case(argv, ["case case2", "no 't1ce' sequence file", "--allow-missing"], outs)


@CASES
def a_4d_file_where_a_3d_sequence_belongs(w: World) -> Case:
    def damage(case):
        nib.save(nib.Nifti1Image(np.ones((*SHAPE, 2), np.float32), np.eye(4)), str(case / "case2_t1.nii.gz"))
    argv, outs = _prepare(w, _damaged(w, "four_d", damage))
    return Case(argv, ["case2_t1.nii.gz", "expected a 3D volume"], outs)


@CASES
def a_scale_slope_that_overflows_float32(w: World) -> Case:
    def damage(case):
        image = nib.Nifti1Image((np.ones(SHAPE) * 100).astype(np.int16), np.eye(4))
        image.header.set_slope_inter(1e38, 0)
        nib.save(image, str(case / "case2_t1.nii.gz"))
    argv, outs = _prepare(w, _damaged(w, "slope", damage))
    return Case(argv, ["case2_t1.nii.gz", "beyond what float32 holds", "scl_slope"], outs)


@CASES
def a_complex_valued_sequence(w: World) -> Case:
    def damage(case):
        nib.save(nib.Nifti1Image((np.ones(SHAPE) * (2 + 1j)).astype(np.complex64), np.eye(4)),
                 str(case / "case2_t2.nii.gz"))
    argv, outs = _prepare(w, _damaged(w, "complex", damage))
    return Case(argv, ["case2_t2.nii.gz", "holds complex numbers"], outs)


@CASES
def an_msd_dataset_whose_case_id_is_dot_dot(w: World) -> Case:
    argv, outs = _prepare(w, msd_dataset(w.fresh("msd"), ["BRATS_001", ".."]))
    return Case(argv, ["case id '..'", "'.' or '..'"], outs)


@CASES
def a_4d_nifti_with_a_nan_affine(w: World) -> Case:
    argv, outs = _prepare(w, msd_dataset(w.fresh("msd_nan"), ["BRATS_000", "BRATS_001"], nan_affine="BRATS_001"))
    return Case(argv, ["BRATS_001.nii.gz", "NaN or Inf in its affine"], outs)


@CASES
def a_source_with_a_name_too_long(w: World) -> Case:
    argv, outs = _prepare(w, w.root / ("s" * 300))
    return Case(argv, ["argument SRC", "a name of 300 bytes"], outs)


@CASES
def a_source_that_is_a_file(w: World) -> Case:
    argv, outs = _prepare(w, w.flair)
    return Case(argv, ["case0_flair.nii.gz"], outs)


def _avmnist(w: World, name: str) -> tuple:
    folder = w.fresh(name)
    (folder / "recordings").mkdir(parents=True)
    rng = np.random.default_rng(0)
    (folder / "images.gz").write_bytes(gzip.compress(idx(rng.integers(0, 256, (40, 28, 28)))))
    (folder / "labels.gz").write_bytes(gzip.compress(idx(np.arange(40) % 10)))
    for digit in range(10):
        for index in (0, 20, 21):
            wav(folder / "recordings" / f"{digit}_theo_{index}.wav", rng)
    out = folder / "out.safetensors"
    argv = ["prepare", "avmnist", "--images", folder / "images.gz", "--labels", folder / "labels.gz", "--recordings",
            folder / "recordings", "--speakers", "theo", "--val-per-digit", "1", "--out", out, "--no-progress"]
    return folder, argv, out


@CASES
def avmnist_images_that_are_a_folder(w: World) -> Case:
    folder, argv, out = _avmnist(w, "av_folder")
    (folder / "images.gz").unlink()
    (folder / "images.gz").mkdir()
    return Case(argv, ["images.gz", "is a folder, not a file"], [out])


@CASES
def avmnist_recordings_that_are_a_file(w: World) -> Case:
    folder, argv, out = _avmnist(w, "av_recordings_file")
    shutil.rmtree(folder / "recordings")
    (folder / "recordings").write_text("not a folder")
    return Case(argv, ["recordings", "is a file, not a folder"], [out])


@CASES
def avmnist_images_and_labels_of_different_lengths(w: World) -> Case:
    folder, argv, out = _avmnist(w, "av_lengths")
    (folder / "labels.gz").write_bytes(gzip.compress(idx(np.arange(39) % 10)))
    return Case(argv, ["holds 40 images but", "holds 39 labels"], [out])


@pytest.mark.parametrize("build", CASES.params())
def test_prepare_refuses_bad_input_in_one_line(build, world):
    problems = run_case(build(world), world)
    assert not problems, "\n".join(problems)
