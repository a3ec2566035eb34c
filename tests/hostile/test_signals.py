"""Signals at every phase, real processes: SIGTERM, Ctrl-C and SIGHUP (a closed terminal) stop mckd cleanly.

Training checkpoints and exits 130 with one line saying how to resume, and
then resumes to the end; a stop before the first checkpoint leaves nothing;
no staging folder, temporary file or worker process is left behind.
"""

from __future__ import annotations

import signal

import numpy as np
import pytest

from hostile.kit import Case, Cases, World, lines_of, mckd, run_case, staging_folders

CASES = Cases()
LONG = ["--set", "train.iterations=100000", "--set", "train.log_every=5"]


def _resumes(w: World, run) -> "object":
    def check() -> list[str]:
        leftovers = [p.name for p in run.parent.glob(f".{run.name}.*.tmp")]
        if leftovers:
            return [f"staging folders left: {leftovers}"]
        if not run.exists():
            return []
        from mckd.checkpoint import load_checkpoint

        stopped_at = load_checkpoint(run / "checkpoint.safetensors")[1]["iteration"]
        done = mckd(w.root, "train", "--resume", run, "--set", f"train.iterations={stopped_at + 4}")
        return [] if done.returncode == 0 else [f"mckd train --resume failed after the stop: {done.stderr[-300:]}"]
    return check


def _mid_run(w: World, name: str, sent: int, words: list[str]) -> Case:
    run = w.fresh(name)
    run.parent.mkdir(parents=True, exist_ok=True)
    return Case(["train", w.digits_yaml, "--out", run, *LONG], words, code=130, signal=sent,
                signal_when=lambda: any(lines_of(p / "metrics.jsonl") > 6 for p in staging_folders(run.parent, run.name)),
                after=_resumes(w, run))


@CASES
def sighup_in_this_process_mid_training_checkpoints_then_resumes(w: World) -> Case:
    """The fast form of the case below (the suite's default run): SIGHUP sent from a training callback."""
    import os

    from mckd.config import load_config
    from mckd.train import Callback, train

    class HangUp(Callback):
        name = "hang_up"

        def on_iteration_end(self, iteration, experiment):
            if iteration == 2:
                os.kill(os.getpid(), signal.SIGHUP)

    run = w.fresh("hup_here")
    config = load_config(w.digits_yaml, ["train.iterations=6"])
    return Case([], ["SIGHUP stopped training at iteration", "--resume"], code=2,
                api=lambda: train(config, run, callbacks=[HangUp()]), after=_resumes(w, run))


@CASES.process
def sighup_mid_training_checkpoints_then_resumes(w: World) -> Case:
    return _mid_run(w, "hup_mid", signal.SIGHUP, ["SIGHUP stopped training", "--resume"])


@CASES.process
def sigterm_mid_training_checkpoints_then_resumes(w: World) -> Case:
    return _mid_run(w, "term_mid", signal.SIGTERM, ["SIGTERM stopped training", "--resume"])


@CASES.process
def ctrl_c_mid_training_checkpoints_then_resumes(w: World) -> Case:
    return _mid_run(w, "int_mid", signal.SIGINT, ["SIGINT", "--resume"])


@CASES.process
def sighup_during_set_up(w: World) -> Case:
    run = w.fresh("hup_setup")
    run.parent.mkdir(parents=True, exist_ok=True)
    return Case(["train", w.digits_yaml, "--out", run, *LONG], ["SIGHUP"], code=130, signal=signal.SIGHUP,
                signal_when=lambda: any((p / "config.yaml").exists() for p in staging_folders(run.parent, run.name)),
                after=_resumes(w, run))


@CASES.process
def sighup_while_checkpointing_every_iteration(w: World) -> Case:
    run = w.fresh("hup_checkpoint")
    run.parent.mkdir(parents=True, exist_ok=True)
    return Case(["train", w.digits_yaml, "--out", run, *LONG, "--set", "train.checkpoint_every=1"],
                ["SIGHUP", "--resume"], code=130, signal=signal.SIGHUP,
                signal_when=lambda: lines_of(run / "metrics.jsonl") > 8, after=_resumes(w, run))


@CASES.process
def sighup_to_prepare_with_two_workers(w: World) -> Case:
    source = w.fresh("many_cases")
    rng = np.random.default_rng(3)
    from hostile.kit import SEQUENCES, nifti

    for n in range(16):  # big enough that prepare takes a while
        case = source / f"case{n:02d}"
        case.mkdir(parents=True)
        head = np.zeros((64, 64, 48), np.float32)
        head[8:-8, 8:-8, 8:-8] = rng.uniform(1, 2, (48, 48, 32))
        for sequence in SEQUENCES:
            nifti(case / f"case{n:02d}_{sequence}.nii.gz", head)
        labels = np.zeros(head.shape, np.uint8)
        labels[30:40, 30:40, 20:26] = 2
        nifti(case / f"case{n:02d}_seg.nii.gz", labels)
    cache = w.fresh("hup_cache")
    return Case(["prepare", "seg", source, cache, "--workers", "2", "--no-progress"], ["SIGHUP"], [cache], code=130,
                signal=signal.SIGHUP, signal_when=lambda: any(any(s.iterdir()) for s in staging_folders(cache.parent,
                                                                                                      cache.name)))


@CASES.process
def sighup_during_predict(w: World) -> Case:
    out = w.fresh("hup_seg.nii.gz")
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.lock"
    return Case(["predict", w.brats_run, f"flair={w.flair}", "--out", out, "--device", "cpu"], ["SIGHUP"],
                code=(130, 0), signal=signal.SIGHUP, signal_when=lock.exists)


@CASES.process
def a_bad_input_as_a_real_process_is_one_line_on_stderr(w: World) -> Case:
    out = w.fresh("run")
    return Case(["train", w.digits_yaml, "--out", out, "--set", "train.device=meta"], ["train.device 'meta'"], [out],
                process=True)


@pytest.mark.parametrize("build", CASES.params())
def test_signals_stop_mckd_cleanly(build, world):
    problems = run_case(build(world), world)
    assert not problems, "\n".join(problems)
