"""``mckd evaluate`` given damaged runs, lying checkpoints and bad options; the tables stay as they were."""

from __future__ import annotations

import pytest
import torch

from hostile.kit import Case, Cases, World, msd_dataset, pickled_payload, run_case

CASES = Cases()
LONG = "r" * 300


def _run(w: World, name: str, source=None):
    return w.copy(source or w.digits_run, name)


def _edited(w: World, name: str, edit, source=None):
    from mckd.checkpoint import load_checkpoint, save_checkpoint

    run = _run(w, name, source)
    tensors, metadata = load_checkpoint(run / "checkpoint.safetensors")
    edit(tensors, metadata)
    save_checkpoint(run / "checkpoint.safetensors", tensors, metadata)
    return run


def _every_weight(value):
    def edit(tensors, metadata):
        for key in tensors:
            if key.startswith("model.") and tensors[key].is_floating_point():
                tensors[key] = torch.full_like(tensors[key], value)
    return edit


@CASES
def a_run_name_too_long_for_the_file_system(w: World) -> Case:
    return Case(["evaluate", w.root / LONG], ["argument run_dir", "a name of 300 bytes"], [])


@CASES
def a_run_that_is_a_file(w: World) -> Case:
    return Case(["evaluate", w.digits_yaml], ["is a file, not a folder"], [w.digits_yaml])


@CASES
def a_checkpoint_of_nan_weights(w: World) -> Case:
    run = _edited(w, "nan_weights", _every_weight(float("nan")))
    return Case(["evaluate", run], ["holds NaN or infinite values", "model."], [run])


@CASES
def a_checkpoint_of_infinite_weights(w: World) -> Case:
    run = _edited(w, "inf_weights", _every_weight(float("inf")))
    return Case(["evaluate", run], ["holds NaN or infinite values"], [run])


@CASES
def a_checkpoint_of_integer_weights(w: World) -> Case:
    def edit(tensors, metadata):
        for key in tensors:
            if key.startswith("model.") and tensors[key].is_floating_point():
                tensors[key] = tensors[key].round().to(torch.int64)
    run = _edited(w, "int_weights", edit)
    return Case(["evaluate", run], ["as torch.int64", "the model's is torch.float32"], [run])


@CASES
def a_checkpoint_whose_iteration_is_text(w: World) -> Case:
    run = _edited(w, "text_iteration", lambda t, m: m.update(iteration="x"))
    return Case(["evaluate", run], ["iteration 'x'", "whole number"], [run])


@CASES
def a_checkpoint_whose_complete_flag_is_not_a_boolean(w: World) -> Case:
    run = _edited(w, "complete_text", lambda t, m: m.update(complete="yes"))
    return Case(["evaluate", run], ["complete 'yes'", "true or false"], [run])


def _nested_metadata(w: World, name: str, levels: int):
    """A copy of the digits run whose checkpoint's metadata nests ``levels`` deep."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = _run(w, name)
    path = run / "checkpoint.safetensors"
    tensors = load_file(path)
    with safe_open(path, framework="pt") as handle:
        meta = handle.metadata()
    meta["mckd"] = meta["mckd"][:-1] + ', "x": ' + '{"a": ' * levels + "1" + "}" * levels + "}"
    save_file(tensors, path, metadata=meta)
    return run


@CASES
def a_checkpoint_with_metadata_nested_hundreds_deep(w: World) -> Case:
    run = _nested_metadata(w, "deep_metadata", 300)
    return Case(["evaluate", run], ["nested more than 100 levels deep"], [run])


@CASES
def a_checkpoint_with_metadata_nested_thousands_deep(w: World) -> Case:
    run = _nested_metadata(w, "deeper_metadata", 5000)
    return Case(["evaluate", run], ["corrupt metadata"], [run])


@CASES
def a_pickle_named_checkpoint(w: World) -> Case:
    run = _run(w, "pickle")
    (run / "checkpoint.safetensors").write_bytes(pickled_payload(w.marker, protocol=2))
    return Case(["evaluate", run], ["Python pickle", "refuses"], [run])


@CASES
def a_device_that_is_not_cpu_or_cuda(w: World) -> Case:
    return Case(["evaluate", w.digits_run, "--device", "meta"], ["'meta'", "cpu or cuda"], [w.digits_run / "eval"])


@CASES
def subsets_naming_a_sequence_the_run_does_not_take(w: World) -> Case:
    out = w.fresh("eval")
    return Case(["evaluate", w.brats_run, "--data", w.brats_src, "--subsets", "flair+dwi", "--out", out, "--device",
                 "cpu", "--no-progress"], ["--subsets names ['dwi']", "flair, t1, t1ce, t2"], [out])


@CASES
def subsets_naming_a_sequence_twice(w: World) -> Case:
    out = w.fresh("eval")
    return Case(["evaluate", w.brats_run, "--data", w.brats_src, "--subsets", "flair+flair", "--out", out],
                ["--subsets (flair+flair): flair given more than once"], [out])


@CASES
def subsets_that_are_empty(w: World) -> Case:
    out = w.fresh("eval")
    return Case(["evaluate", w.brats_run, "--data", w.brats_src, "--subsets", ",", "--out", out],
                ["--subsets ','", "joined by +"], [out])


@CASES
def a_component_threshold_beyond_any_volume(w: World) -> Case:
    out = w.fresh("eval")
    return Case(["evaluate", w.brats_run, "--data", w.brats_src, "--min-component-voxels", "99999999999999999999",
                 "--out", out], ["--min-component-voxels", "at most 1,073,741,824"], [out])


@CASES
def data_of_a_4d_nifti_with_a_nan_affine(w: World) -> Case:
    folder = msd_dataset(w.fresh("msd_nan"), ["BRATS_000", "BRATS_001"], nan_affine="BRATS_001")
    out = w.fresh("eval")
    return Case(["evaluate", w.brats_run, "--data", folder, "--out", out, "--device", "cpu", "--no-progress"],
                ["BRATS_001.nii.gz", "NaN or Inf in its affine"], [out])


@CASES
def data_whose_case_id_is_dot_dot(w: World) -> Case:
    folder = msd_dataset(w.fresh("msd_dotdot"), [".."])
    out = w.fresh("eval")
    return Case(["evaluate", w.brats_run, "--data", folder, "--out", out, "--device", "cpu", "--no-progress"],
                ["case id '..'", "'.' or '..'"], [out])


@CASES
def a_run_that_does_not_exist(w: World) -> Case:
    run = w.fresh("nothing")
    return Case(["evaluate", run], ["run directory", "does not exist"], [run])


@CASES
def a_run_whose_data_is_gone(w: World) -> Case:
    run = _edited(w, "data_gone", lambda t, m: m["config"]["data"].update(csv_dir=str(w.root / "gone")))
    return Case(["evaluate", run], ["gone/mfeat-fou.csv does not exist"], [run / "eval"])


@pytest.mark.parametrize("build", CASES.params())
def test_evaluate_refuses_bad_input_in_one_line(build, world):
    problems = run_case(build(world), world)
    assert not problems, "\n".join(problems)
