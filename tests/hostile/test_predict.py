"""``mckd predict`` (one case, and a folder) and ``mckd plot-seg`` given bad inputs, options and checkpoints."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from hostile.kit import SHAPE, Case, Cases, World, nifti, pickled_payload, run_case

CASES = Cases()


def _predict(w: World, *items, run=None) -> tuple[list, list]:
    out = w.fresh("seg.nii.gz")
    return ["predict", run or w.brats_run, *items, "--out", out, "--device", "cpu"], [out]


def _input(w: World, name: str, array: np.ndarray, affine=None):
    path = w.fresh(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return nifti(path, array, affine)


@CASES
def an_input_whose_scale_slope_overflows_float32(w: World) -> Case:
    path = w.fresh("slope.nii.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image((np.ones(SHAPE) * 100).astype(np.int16), np.eye(4))
    image.header.set_slope_inter(1e38, 0)
    nib.save(image, str(path))
    argv, outs = _predict(w, f"flair={path}")
    return Case(argv, ["slope.nii.gz", "beyond what float32 holds", "scl_slope is 1e+38"], outs)


@CASES
def a_complex_valued_input(w: World) -> Case:
    path = _input(w, "complex.nii.gz", (np.ones(SHAPE) * (1 + 1j)).astype(np.complex64))
    argv, outs = _predict(w, f"flair={path}")
    return Case(argv, ["complex.nii.gz", "holds complex numbers"], outs)


@CASES
def an_input_whose_header_claims_a_huge_volume(w: World) -> Case:
    path = w.fresh("huge.nii")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4))
    image.header.set_data_shape((4096, 4096, 4096))
    with path.open("wb") as stream:
        stream.write(image.header.binaryblock)
        stream.write(b"\0" * (352 - len(image.header.binaryblock)) + np.ones(8, np.float32).tobytes())
    argv, outs = _predict(w, f"flair={path}")
    return Case(argv, ["huge.nii", "68,719,476,736 voxels"], outs)


@CASES
def an_input_given_twice_under_one_name(w: World) -> Case:
    argv, outs = _predict(w, f"flair={w.flair}", f"flair={w.flair}")
    return Case(argv, ["sequence 'flair' is given twice"], outs)


@CASES
def an_input_path_with_a_name_too_long(w: World) -> Case:
    argv, outs = _predict(w, "flair=" + "f" * 300 + ".nii.gz")
    return Case(argv, ["input flair", "a name of 307 bytes"], outs)


@CASES
def an_input_that_is_a_folder(w: World) -> Case:
    argv, outs = _predict(w, f"flair={w.brats_src}")
    return Case(argv, ["is a folder, not a file"], outs)


@CASES
def a_checkpoint_of_nan_weights(w: World) -> Case:
    from mckd.checkpoint import load_checkpoint, save_checkpoint

    run = w.copy(w.brats_run, "nan_seg")
    tensors, metadata = load_checkpoint(run / "checkpoint.safetensors")
    for key in tensors:
        if key.startswith("model.") and tensors[key].is_floating_point():
            tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_checkpoint(run / "checkpoint.safetensors", tensors, metadata)
    argv, outs = _predict(w, f"flair={w.flair}", run=run)
    return Case(argv, ["holds NaN or infinite values"], outs)


@CASES
def a_pickle_named_checkpoint(w: World) -> Case:
    run = w.fresh("pickled_run")
    run.mkdir(parents=True)
    (run / "checkpoint.safetensors").write_bytes(pickled_payload(w.marker))
    argv, outs = _predict(w, f"flair={w.flair}", run=run)
    return Case(argv, ["Python pickle", "refuses"], outs)


@CASES
def a_sequence_the_run_does_not_take(w: World) -> Case:
    argv, outs = _predict(w, f"dwi={w.flair}")
    return Case(argv, ["has none of the sequences the model takes", "it has dwi"], outs)


@CASES
def a_classification_run(w: World) -> Case:
    argv, outs = _predict(w, f"flair={w.flair}", run=w.digits_run)
    return Case(argv, ["is a classification model", "segmentation run"], outs)


@CASES
def an_all_zero_brain_mask(w: World) -> Case:
    mask = _input(w, "zero_mask.nii.gz", np.zeros(SHAPE, np.float32))
    argv, outs = _predict(w, f"flair={w.flair}")
    return Case([*argv, "--mask", mask], ["zero_mask.nii.gz (brain mask) is empty"], outs)


@CASES
def force_with_continue(w: World) -> Case:
    out = w.fresh("predictions")
    return Case(["predict", w.brats_run, "--input", w.brats_src, "--output", out, "--force", "--continue"],
                ["--force", "--continue", "give one of them"], [out])


@CASES
def a_device_that_is_not_cpu_or_cuda(w: World) -> Case:
    argv, outs = _predict(w, f"flair={w.flair}")
    return Case([*argv[:-2], "--device", "meta"], ["'meta'", "cpu or cuda"], outs)


@CASES
def a_component_threshold_below_zero(w: World) -> Case:
    argv, outs = _predict(w, f"flair={w.flair}")
    return Case([*argv, "--et-min-voxels", "-1"], ["--et-min-voxels", "at least 0"], outs)


@CASES
def plot_seg_to_a_file_that_is_not_a_figure(w: World) -> Case:
    out = w.fresh("figure.txt")
    return Case(["plot-seg", w.brats_run, "--case", "case0", "--subset", "flair", "--out", out],
                ["--out", "figure.txt", "must end in .png"], [out])


@CASES
def plot_seg_of_a_case_outside_the_cache(w: World) -> Case:
    out = w.fresh("figure.png")
    return Case(["plot-seg", w.brats_run, "--case", "../case0", "--subset", "flair", "--out", out],
                ["case '../case0' is not in the cache"], [out])


@pytest.mark.parametrize("build", CASES.params())
def test_predict_refuses_bad_input_in_one_line(build, world):
    problems = run_case(build(world), world)
    assert not problems, "\n".join(problems)
