"""Two processes on one output, for real: the second is refused naming the first, and the first's output is whole.

(An output inside a folder another process replaces, and the other way
round, are in ``test_outputs.py``.)
"""

from __future__ import annotations

import pytest

from hostile.kit import Case, Cases, World, hold, run_case

CASES = Cases()
IN_USE = "is in use by process"


@CASES.process
def resume_while_the_run_trains(w: World) -> Case:
    run = w.copy(w.digits_run, "training")
    ready = w.fresh("ready")
    return Case(["train", "--resume", run], [IN_USE], [run], holder=hold(run, ready, kind="dir"),
                holder_ready=ready.exists)


@CASES.process
def prepare_onto_a_cache_being_prepared(w: World) -> Case:
    cache = w.fresh("busy_cache")
    ready = w.fresh("ready")
    return Case(["prepare", "seg", w.brats_src, cache, "--workers", "1", "--no-progress"], [IN_USE], [cache],
                holder=hold(cache, ready, kind="dir"), holder_ready=ready.exists)


@CASES.process
def predict_onto_a_file_being_written(w: World) -> Case:
    out = w.fresh("busy_seg.nii.gz")
    ready = w.fresh("ready")
    return Case(["predict", w.brats_run, f"flair={w.flair}", "--out", out, "--device", "cpu"], [IN_USE], [out],
                holder=hold(out, ready), holder_ready=ready.exists)


@CASES.process
def benchmark_onto_a_folder_being_written(w: World) -> Case:
    out = w.fresh("busy_benchmark")
    ready = w.fresh("ready")
    return Case(["benchmark", w.digits_yaml, "--methods", "mckd", "--seeds", "0", "--out", out], [IN_USE], [out],
                holder=hold(out, ready, kind="dir"), holder_ready=ready.exists)


@pytest.mark.parametrize("build", CASES.params())
def test_a_second_process_on_one_output_is_refused(build, world):
    problems = run_case(build(world), world)
    assert not problems, "\n".join(problems)
