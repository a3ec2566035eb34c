"""What mckd may delete or replace: only its own outputs (the ownership rule of the output guard).

``--force`` replaces an mckd output of the same kind, a real folder (never
through a symbolic link), none of whose files this command reads; nothing is
written inside a folder another process is replacing, nor replaced while
another process writes inside it; and nothing but a regular file is ever
written over (a device, a FIFO).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from hostile.kit import Case, Cases, World, hold, run_case

CASES = Cases()


def _thesis(w: World) -> Path:
    """A folder of a user's files (not mckd's): thesis.tex and data.csv."""
    folder = w.fresh("thesis")
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\documentclass{book}\n")
    (folder / "data.csv").write_text("a,b\n1,2\n")
    return folder


@CASES
def train_force_onto_a_folder_of_other_files(w: World) -> Case:
    folder = _thesis(w)
    return Case(["train", w.digits_yaml, "--out", folder, "--force"],
                ["holds files mckd did not write", "thesis.tex", "even with --force"], [folder])


@CASES
def train_without_force_onto_a_folder_of_other_files_says_force_would_not_help(w: World) -> Case:
    folder = _thesis(w)
    return Case(["train", w.digits_yaml, "--out", folder], ["holds files mckd did not write", "even with --force"],
                [folder])


@CASES
def train_seeds_force_onto_a_folder_of_other_files(w: World) -> Case:
    folder = _thesis(w)
    (folder / "seed_0").mkdir()
    (folder / "seed_0" / "notes.txt").write_text("mine\n")
    return Case(["train", w.digits_yaml, "--seeds", "0", "--out", folder, "--force"],
                ["seed_0", "holds files mckd did not write"], [folder])


@CASES
def train_force_through_a_symbolic_link_to_a_run(w: World) -> Case:
    run = w.copy(w.digits_run, "linked_run")
    link = w.fresh("link")
    link.symlink_to(run)
    return Case(["train", w.digits_yaml, "--out", link, "--force"], ["is a symbolic link", "pass the folder itself"],
                [link, run])


@CASES
def train_force_onto_a_cache(w: World) -> Case:
    cache = w.copy(w.cache, "cache")
    return Case(["train", w.digits_yaml, "--out", cache, "--force"], ["is a cache, not a run directory"], [cache])


@CASES
def train_force_onto_a_run_that_holds_its_own_data(w: World) -> Case:
    import shutil

    run = w.copy(w.digits_run, "run_with_data")
    csv = run / "csv"
    shutil.copytree(w.csv, csv)
    config = w.fresh("inside.yaml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(w.digits_yaml.read_text().replace(str(w.csv), str(csv)))
    return Case(["train", config, "--out", run, "--force"], ["would destroy", "which this command reads"], [run])


@CASES
def api_fit_force_onto_a_folder_of_other_files(w: World) -> Case:
    from torch import nn

    from mckd.api import arrays_bundle, fit

    folder = _thesis(w)
    rng = np.random.default_rng(0)
    bundle = arrays_bundle({"a": rng.normal(size=(60, 4)), "b": rng.normal(size=(60, 3))}, np.arange(60) % 3)
    return Case([], ["holds files mckd did not write"], [folder],
                api=lambda: fit(bundle, {"a": nn.Linear(4, 8), "b": nn.Linear(3, 8)}, nn.Linear(16, 3), folder,
                                settings={"train.iterations": 2, "train.progress": False, "train.device": "cpu"},
                                force=True))


@CASES
def prepare_force_onto_its_own_source(w: World) -> Case:
    source = w.copy(w.brats_src, "source")
    return Case(["prepare", "seg", source, source, "--force", "--workers", "1", "--no-progress"],
                ["is not an mckd cache", "even with --force"], [source])


@CASES
def prepare_force_onto_a_cache_that_holds_the_source(w: World) -> Case:
    cache = w.copy(w.cache, "cache_with_source")
    import shutil

    shutil.copytree(w.brats_src, cache / "raw")
    return Case(["prepare", "seg", cache / "raw", cache, "--force", "--workers", "1", "--no-progress"],
                ["would destroy", "raw"], [cache])


@CASES
def prepare_force_through_a_symbolic_link_to_a_cache(w: World) -> Case:
    cache = w.copy(w.cache, "linked_cache")
    link = w.fresh("cache_link")
    link.symlink_to(cache)
    return Case(["prepare", "seg", w.brats_src, link, "--force", "--workers", "1", "--no-progress"],
                ["is a symbolic link"], [link, cache])


@CASES
def prepare_avmnist_force_onto_its_own_images(w: World) -> Case:
    import gzip

    from hostile.kit import idx

    folder = w.fresh("avmnist")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = folder / "images.gz"
    images.write_bytes(gzip.compress(idx(rng.integers(0, 256, (40, 28, 28)))))
    labels = folder / "labels.gz"
    labels.write_bytes(gzip.compress(idx(np.arange(40) % 10)))
    return Case(["prepare", "avmnist", "--images", images, "--labels", labels, "--recordings", folder, "--out", images,
                 "--force", "--no-progress"], ["would destroy", "images.gz", "which this command reads"], [images])


@CASES
def plot_seg_onto_a_named_pipe(w: World) -> Case:
    fifo = w.fresh("figure.png")
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    return Case(["plot-seg", w.brats_run, "--case", "case0", "--subset", "flair", "--out", fifo],
                ["named pipe", "mckd writes only regular files"], [fifo])


@CASES
def predict_force_onto_a_named_pipe(w: World) -> Case:
    fifo = w.fresh("segmentation.nii.gz")
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    return Case(["predict", w.brats_run, f"flair={w.flair}", "--out", fifo, "--force", "--device", "cpu"],
                ["named pipe", "regular files"], [fifo])


@CASES.process
def an_output_inside_a_run_another_process_replaces(w: World) -> Case:
    run = w.copy(w.digits_run, "being_replaced")
    ready = w.fresh("ready")
    inside = run / "comparison"
    return Case(["compare", w.digits_run, w.other_run, "--out", inside], ["is inside", "is replacing"], [run],
                holder=hold(run, ready, kind="dir", replaces=True), holder_ready=ready.exists)


@CASES.process
def a_prediction_inside_a_run_another_process_replaces(w: World) -> Case:
    run = w.copy(w.brats_run, "being_replaced_seg")
    ready = w.fresh("ready")
    return Case(["predict", w.brats_run, f"flair={w.flair}", "--out", run / "seg.nii.gz", "--device", "cpu"],
                ["is inside", "is replacing"], [run], holder=hold(run, ready, kind="dir", replaces=True),
                holder_ready=ready.exists)


@CASES.process
def replacing_a_run_while_another_process_writes_inside_it(w: World) -> Case:
    run = w.copy(w.digits_run, "written_inside")
    ready = w.fresh("ready")
    return Case(["train", w.digits_yaml, "--out", run, "--force"], ["inside the run directory", "is in use by process"],
                [run], holder=hold(run / "comparison", ready, kind="dir"), holder_ready=ready.exists)


@CASES.process
def an_output_inside_a_run_another_process_evaluates_is_allowed(w: World) -> Case:
    run = w.copy(w.digits_run, "being_evaluated")
    ready = w.fresh("ready")
    return Case(["compare", w.digits_run, w.other_run, "--out", run / "comparison"], [], [], code=0,
                holder=hold(run, ready, kind="dir"), holder_ready=ready.exists)


@pytest.mark.parametrize("build", CASES.params())
def test_mckd_replaces_only_its_own_outputs(build, world):
    problems = run_case(build(world), world)
    assert not problems, "\n".join(problems)
