"""Reliability, second pass (issue 14): no lost runs, no tracebacks on full or read-only disks, no silent divergence.

One test per defect the hostile run found; each failed on the code before the fix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import AtIteration, held_by_another_process, make_brats_case
from hostile.kit import alive, can_mount, children_of
from mckd.cli import main
from mckd.errors import DataError, MckdError, TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def digits_yaml(tmp_path, digits_csv_dir) -> Path:
    """A two-view digits config that trains in well under a second."""
    path = tmp_path / "digits.yaml"
    path.write_text(textwrap.dedent(f"""\
        data:
          name: multiview_digits
          csv_dir: {digits_csv_dir}
          views: [fou, mor]
        model:
          name: multiview_mlp
          hidden: 16
          feature_dim: 8
          decoder_hidden: 16
        method:
          name: mckd
          meta_every: 2
        train:
          iterations: 6
          batch_size: 32
          log_every: 2
          eval_every: 3
          device: cpu
          progress: false
        """))
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``mckd ARGV`` in this process: (exit status, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mckd: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- 1, 2: an existing run, --force, two processes on one run directory -----------------------------------


def test_train_refuses_an_existing_run_directory_and_leaves_it_as_it_was(digits_yaml, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", digits_yaml, "--out", run], capsys)[0] == 0
    before = snapshot(run)
    code, err = run_cli(["train", digits_yaml, "--out", run, "--set", "seed=5"], capsys)
    assert code == 2
    line = one_error_line(err)
    assert "run directory" in line and "exists" in line and "--force" in line and "--resume" in line
    assert snapshot(run) == before


def test_train_force_replaces_the_old_run_only_once_the_new_one_has_a_checkpoint(digits_yaml, tmp_path, capsys):
    from mckd.config import load_config
    from mckd.train import train

    run = tmp_path / "run"
    assert run_cli(["train", digits_yaml, "--out", run], capsys)[0] == 0
    old = snapshot(run)
    seen_during_training = {}

    def look() -> None:  # mid-run, before the new run's first checkpoint: the old run is whole, in place
        seen_during_training["old"] = snapshot(run)

    train(load_config(digits_yaml, ["seed=7"]), run, force=True, callbacks=[AtIteration(3, look)])
    assert seen_during_training["old"] == old
    assert "seed: 7" in (run / "config.yaml").read_text()
    assert (run / "checkpoint.safetensors").read_bytes() != old["checkpoint.safetensors"]
    assert hidden_leftovers(tmp_path) == []


def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(digits_yaml, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = run_cli(["train", digits_yaml, "--out", run, "--set", "train.lr=1e30"], capsys)
    assert code == 2 and "diverged" in one_error_line(err)
    assert not run.exists() and hidden_leftovers(tmp_path) == []


def test_a_second_process_on_one_run_directory_is_refused_naming_the_first(digits_yaml, tmp_path, capsys):
    run = tmp_path / "run"
    with held_by_another_process(run, "dir") as holder:
        for argv in (["train", digits_yaml, "--out", run], ["train", digits_yaml, "--out", run, "--force"],
                     ["evaluate", run]):
            code, err = run_cli(argv, capsys)
            line = one_error_line(err)
            assert code == 2 and f"in use by process {holder}" in line, line
        assert not run.exists()
    assert run_cli(["train", digits_yaml, "--out", run], capsys)[0] == 0  # the kernel released the dead holder's lock


def test_prepare_avmnist_onto_an_output_in_use_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "avmnist.safetensors"
    with held_by_another_process(out) as holder:
        code, err = run_cli(["prepare", "avmnist", "--out", out, "--no-progress"], capsys)
        assert code == 2 and f"in use by process {holder}" in one_error_line(err) and not out.exists()


def test_two_trainings_started_together_on_one_directory_leave_one_consistent_run(digits_yaml, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [PYTHON, "-m", "mckd.cli", "train", str(digits_yaml), "--out", str(run), "--set", "train.iterations=300"]
    first = subprocess.Popen([*argv, "--set", "seed=1"], env=env, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen([*argv, "--set", "seed=2"], env=env, stderr=subprocess.PIPE, text=True)
    results = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]
    assert sorted(code for code, _ in results) == [0, 2], results
    winner = 1 if results[0][0] == 0 else 2
    loser_error = next(err for code, err in results if code == 2)
    assert "in use by process" in loser_error or "exists" in loser_error
    from mckd.checkpoint import load_checkpoint

    _, metadata = load_checkpoint(run / "checkpoint.safetensors")
    assert metadata["config"]["seed"] == winner
    assert f"seed: {winner}" in (run / "config.yaml").read_text()
    assert json.loads((run / "run.json").read_text())["sessions"][0]["command"].endswith(f"seed={winner}")


# --- 3: full disks, read-only places --------------------------------------------------------------------


def test_a_checkpoint_write_that_safetensors_fails_is_one_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import torch
    from safetensors import SafetensorError

    import mckd.checkpoint as checkpoint_module

    path = tmp_path / "checkpoint.safetensors"
    checkpoint_module.save_checkpoint(path, {"w": torch.ones(2)}, {"iteration": 1})
    before = path.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint_module, "save_file", disk_full)
    with pytest.raises(MckdError, match=r"cannot write .*checkpoint.safetensors.*No space left on device.*intact"):
        checkpoint_module.save_checkpoint(path, {"w": torch.zeros(2)}, {"iteration": 2})
    assert path.read_bytes() == before and hidden_leftovers(tmp_path) == []


needs_mount = pytest.mark.skipif(not can_mount(), reason="cannot make a small tmpfs here (needs unshare and "
                                                           "user namespaces or root)")


def _mckd_in_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a shell ``script`` in a private mount namespace; ``$MCKD`` runs mckd."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MCKD": f"{PYTHON} -m mckd.cli"}
    return subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@needs_mount
def test_training_onto_a_full_disk_is_one_error_line(digits_yaml, tmp_path):
    done = _mckd_in_namespace(f"mkdir -p full && mount -t tmpfs -o size=48k tmpfs full && "
                              f"$MCKD train {digits_yaml} --out full/run; echo rc=$?; ls -a full", tmp_path)
    assert "rc=2" in done.stdout, done.stderr
    line = one_error_line(done.stderr)
    assert "No space left on device" in line
    assert "run" not in done.stdout.split("rc=2")[1].split(), done.stdout  # nothing half-written at the target


@needs_mount
def test_commands_writing_into_a_read_only_place_are_one_error_line(digits_yaml, tmp_path, capsys):
    run = tmp_path / "ro" / "run"
    assert run_cli(["train", digits_yaml, "--out", run], capsys)[0] == 0
    other = tmp_path / "other"
    assert run_cli(["train", digits_yaml, "--out", other, "--set", "seed=3"], capsys)[0] == 0
    before = snapshot(run)
    for command in ("$MCKD compare ro/run other", "$MCKD evaluate ro/run",
                    f"$MCKD train {digits_yaml} --out ro/new"):
        done = _mckd_in_namespace(f"mount --bind -o ro ro ro && {command}", tmp_path)
        assert done.returncode == 2, (command, done.stderr)
        assert "Read-only file system" in one_error_line(done.stderr), command
    assert snapshot(run) == before


# --- 4: prepare with workers: SIGTERM, orphans, stale staging folders -------------------------------------


def test_sigterm_to_prepare_with_two_workers_stops_them_and_removes_the_staging_folder(tmp_path):
    source = tmp_path / "src"
    for n in range(60):
        make_brats_case(source, f"case{n:02d}")
    out = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([PYTHON, "-m", "mckd.cli", "prepare", "brats", str(source), str(out), "--workers", "2",
                                "--no-progress"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    workers: list[int] = []
    while time.time() < deadline and not (len(workers) >= 2 and any(p.name.startswith(".cache.") and p.is_dir()
                                                                      for p in tmp_path.iterdir())):
        workers = children_of(process.pid)
        time.sleep(0.05)
    assert len(workers) >= 2, "the workers never started"
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    stderr = process.stderr.read()
    assert code == 130 and "SIGTERM" in stderr and "Traceback" not in stderr, stderr
    time.sleep(0.5)
    assert [pid for pid in workers if alive(pid)] == []
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_staging_folder_left_by_a_killed_prepare_is_removed_by_the_next_one(tmp_path, capsys):
    source = tmp_path / "src"
    for n in range(3):
        make_brats_case(source, f"case{n}")
    dead = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".cache.{int(dead.stdout)}.stage-0a1b2c3d.tmp"
    (stale / "case0").mkdir(parents=True)
    (stale / "case0" / "flair.npy").write_bytes(bytes(1000))
    code, _ = run_cli(["prepare", "brats", source, tmp_path / "cache", "--workers", "1", "--no-progress"], capsys)
    assert code == 0 and not stale.exists() and (tmp_path / "cache" / "dataset.json").is_file()


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_prepare_refuses_workers_below_one(tmp_path, capsys, workers):
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "brats", str(tmp_path), str(tmp_path / "out"), "--workers", workers])
    assert exit_.value.code == 2
    assert "--workers" in one_error_line(capsys.readouterr().err)


# --- 5: divergence ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override", ["train.lr=.inf", "method.meta_lr=.inf", "train.lr=.nan"])
def test_a_non_finite_number_in_a_config_is_refused(digits_yaml, tmp_path, capsys, override):
    code, err = run_cli(["train", digits_yaml, "--out", tmp_path / "run", "--set", override], capsys)
    assert code == 2 and "must be a finite number" in one_error_line(err)
    yaml_file = tmp_path / "inf.yaml"
    yaml_file.write_text(digits_yaml.read_text().replace("  batch_size: 32", "  batch_size: 32\n  lr: .inf"))
    code, err = run_cli(["train", yaml_file, "--out", tmp_path / "run"], capsys)
    assert code == 2 and "train.lr must be a finite number, got inf" in one_error_line(err)


def test_divergence_stops_naming_the_iteration_and_keeps_the_last_finite_checkpoint(digits_yaml, tmp_path):
    import torch

    from mckd.checkpoint import load_checkpoint
    from mckd.config import load_config
    from mckd.train import train

    config = load_config(digits_yaml, ["train.iterations=20", "train.checkpoint_every=5", "train.log_every=4",
                                       "train.eval_every=0"])
    run = tmp_path / "run"
    holder = {}

    class Poison(AtIteration):
        def on_iteration_end(self, iteration, experiment):
            if iteration == 7:
                with torch.no_grad():
                    next(experiment.model.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDiverged) as diverged:
        train(config, run, callbacks=[Poison(7, lambda: None)])
    message = str(diverged.value)
    assert "by iteration 8 of 20" in message and "--resume" in message and "task" in message
    tensors, metadata = load_checkpoint(run / "checkpoint.safetensors")
    assert metadata["iteration"] == 5 and all(bool(t.isfinite().all()) for t in tensors.values() if t.is_floating_point())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["iteration"] <= 7 for r in records)  # the diverged interval was not logged
    assert json.loads((run / "run.json").read_text())["status"] == "diverged"
    del holder


def test_metrics_jsonl_writes_non_finite_values_as_null(tmp_path):
    from mckd.loggers import JsonlLogger

    logger = JsonlLogger(tmp_path / "metrics.jsonl")
    logger.write({"iteration": 1, "kind": "val", "dice": float("nan"), "hd95": float("inf"), "w": {"a": float("-inf")}})
    logger.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == {"iteration": 1, "kind": "val", "dice": None, "hd95": None, "w": {"a": None}}
    assert "NaN" not in line and "Infinity" not in line


# --- 6: tracebacks that are now one line ---------------------------------------------------------------------


def test_a_seed_beyond_64_bits_is_one_error_line(digits_yaml, tmp_path, capsys):
    code, err = run_cli(["train", digits_yaml, "--out", tmp_path / "r", "--set", "seed=18446744073709551616"], capsys)
    assert code == 2 and "seed must be an integer of at most 64 bits" in one_error_line(err)
    code, err = run_cli(["train", digits_yaml, "--out", tmp_path / "r", "--set", "seed=-1"], capsys)
    assert code == 2 and "seed must be in [0, 4294967295]" in one_error_line(err)


def test_setting_a_section_to_a_name_is_that_entry_without_an_old_layout_warning(digits_yaml, tmp_path, capsys):
    code, err = run_cli(["train", digits_yaml, "--out", tmp_path / "r", "--set", "task=segmentation"], capsys)
    assert code == 2 and "task.name 'segmentation'" in one_error_line(err)


@pytest.mark.parametrize("damage", [b"\x00\x9f\xff binary\n", b'{"iteration": 1, "kind": "train"}\nnot json\n{}\n'])
def test_a_damaged_metrics_log_on_resume_is_one_error_line(digits_yaml, tmp_path, capsys, damage):
    run = tmp_path / "run"
    from mckd.config import load_config
    from mckd.train import TrainingInterrupted, train

    config = load_config(digits_yaml, ["train.iterations=8"])
    with pytest.raises(TrainingInterrupted):
        train(config, run, callbacks=[AtIteration(3, lambda: os.kill(os.getpid(), signal.SIGTERM))])
    (run / "metrics.jsonl").write_bytes(damage)
    checkpoint = (run / "checkpoint.safetensors").read_bytes()
    code, err = run_cli(["train", "--resume", run], capsys)
    line = one_error_line(err)
    assert code == 2 and "metrics.jsonl" in line and "damaged" in line
    assert (run / "checkpoint.safetensors").read_bytes() == checkpoint


def test_a_torn_last_line_of_the_metrics_log_is_dropped_on_resume(digits_yaml, tmp_path, capsys):
    from mckd.config import load_config
    from mckd.train import TrainingInterrupted, train

    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(load_config(digits_yaml, ["train.iterations=8"]), run,
              callbacks=[AtIteration(3, lambda: os.kill(os.getpid(), signal.SIGTERM))])
    with (run / "metrics.jsonl").open("a") as stream:
        stream.write('{"iteration": 4, "kind": "tr')  # a SIGKILL in the middle of a record
    assert run_cli(["train", "--resume", run], capsys)[0] == 0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


def test_plot_seg_of_a_classification_run_is_one_error_line(digits_yaml, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", digits_yaml, "--out", run], capsys)[0] == 0
    code, err = run_cli(["plot-seg", run, "--case", "x", "--subset", "fou", "--out", tmp_path / "x.png"], capsys)
    assert code == 2 and "is a classification run" in one_error_line(err)


def test_analyse_values_that_are_not_numbers_are_one_error_line(digits_yaml, tmp_path, capsys):
    code, err = run_cli(["analyse", "alpha", digits_yaml, "--values", "abc", "--out", tmp_path / "a"], capsys)
    assert code == 2 and "'abc' is not a number" in one_error_line(err)
    assert not (tmp_path / "a").exists()


def test_a_wav_declaring_sample_rate_zero_is_a_data_error(tmp_path):
    import wave

    from mckd.data.audio import read_wav

    path = tmp_path / "0_theo_0.wav"
    with wave.open(str(path), "wb") as stream:
        stream.setnchannels(1)
        stream.setsampwidth(2)
        stream.setframerate(8000)
        stream.writeframes(bytes(400))
    data = bytearray(path.read_bytes())
    data[24:28] = (0).to_bytes(4, "little")  # the fmt chunk's sample rate
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sample rate of 0 Hz"):
        read_wav(path)


# --- 7, 10: YAML alias bombs and duplicate keys --------------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_quickly_with_a_short_message(digits_yaml, tmp_path, capsys):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8))
    path = tmp_path / "bomb.yaml"
    path.write_text(digits_yaml.read_text().replace("  hidden: 16", "  hidden: 16\n  extra: *i") .replace(
        "data:\n", bomb + "data:\n", 1))
    start = time.perf_counter()
    code, err = run_cli(["train", path, "--out", tmp_path / "r"], capsys)
    assert code == 2 and "alias bomb" in one_error_line(err) and len(err) < 400
    assert time.perf_counter() - start < 10


def test_an_error_about_a_huge_value_shows_only_its_beginning(digits_yaml, tmp_path, capsys):
    code, err = run_cli(["train", digits_yaml, "--out", tmp_path / "r", "--set", f"train.lr=[{'1, ' * 20000}1]"], capsys)
    line = one_error_line(err)
    assert code == 2 and "train.lr must be a number" in line and len(line) < 300 and "characters)" in line


def test_a_key_given_twice_in_a_config_is_refused_naming_both_lines(digits_yaml, tmp_path, capsys):
    path = tmp_path / "twice.yaml"
    path.write_text(digits_yaml.read_text().replace("  batch_size: 32\n", "  batch_size: 32\n  lr: 0.1\n  lr: 0.2\n"))
    code, err = run_cli(["train", path, "--out", tmp_path / "r"], capsys)
    line = one_error_line(err)
    assert code == 2 and "key 'lr' appears twice" in line and "twice.yaml" in line and "line" in line


# --- 8: seeds and methods given twice, a run compared with itself -------------------------------------------


def test_a_seed_or_method_given_twice_and_a_run_compared_with_itself_are_refused(digits_yaml, tmp_path, capsys):
    code, err = run_cli(["train", digits_yaml, "--seeds", "0", "0", "--out", tmp_path / "s"], capsys)
    assert code == 2 and "--seeds: 0 given more than once" in one_error_line(err)
    code, err = run_cli(["benchmark", digits_yaml, "--methods", "mckd", "mckd", "--seeds", "0", "--out",
                         tmp_path / "b"], capsys)
    assert code == 2 and "--methods: mckd given more than once" in one_error_line(err)
    run = tmp_path / "run"
    assert run_cli(["train", digits_yaml, "--out", run], capsys)[0] == 0
    code, err = run_cli(["compare", run, str(run) + "/"], capsys)
    assert code == 2 and "are the same run" in one_error_line(err)
    other = tmp_path / "other"
    assert run_cli(["train", digits_yaml, "--out", other, "--set", "seed=1"], capsys)[0] == 0
    code, err = run_cli(["compare", run, other, "--names", "a", "a"], capsys)
    assert code == 2 and "give the two runs different names" in one_error_line(err)


def test_compare_warns_when_the_runs_were_tested_on_different_samples(digits_yaml, tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert run_cli(["train", digits_yaml, "--out", a], capsys)[0] == 0
    assert run_cli(["train", digits_yaml, "--out", b, "--set", "seed=1"], capsys)[0] == 0
    assert run_cli(["train", digits_yaml, "--out", c, "--set", "data.split_seed=1"], capsys)[0] == 0
    code, err = run_cli(["compare", a, b, "--out", tmp_path / "ab"], capsys)
    assert code == 0 and "warning" not in err
    code, err = run_cli(["compare", a, c, "--out", tmp_path / "ac"], capsys)
    assert code == 0 and "warning: the runs were tested on different samples" in err


# --- 9: SIGTERM at set-up and during the final evaluation -----------------------------------------------------


def test_sigterm_during_set_up_leaves_a_run_that_resumes(digits_yaml, tmp_path, capsys, monkeypatch):
    import mckd.train.loop as train_module

    real = train_module.build_experiment

    def build_then_signal(config):
        experiment = real(config)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives after config.yaml, before the first iteration
        return experiment

    monkeypatch.setattr(train_module, "build_experiment", build_then_signal)
    run = tmp_path / "run"
    code, err = run_cli(["train", digits_yaml, "--out", run], capsys)
    assert code == 130 and "before the first iteration" in err and f"--resume {run}" in err
    monkeypatch.setattr(train_module, "build_experiment", real)
    assert run_cli(["train", "--resume", run], capsys)[0] == 0
    assert (run / "eval" / "subsets.csv").is_file()


def test_sigterm_during_the_final_evaluation_says_how_to_evaluate(digits_yaml, tmp_path, capsys, monkeypatch):
    import mckd.experiment as experiment_module

    real = experiment_module.evaluate_experiment

    def signal_then_evaluate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(experiment_module, "evaluate_experiment", signal_then_evaluate)
    run = tmp_path / "run"
    code, err = run_cli(["train", digits_yaml, "--out", run], capsys)
    assert code == 130 and "stopped the evaluation" in err and f"mckd evaluate {run}" in err
    assert (run / "checkpoint.safetensors").is_file() and not (run / "eval").exists()


# --- 11: messages that said the wrong thing ---------------------------------------------------------------


def test_a_folder_a_device_or_a_fifo_given_as_a_config_says_what_it_is(tmp_path, capsys):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path, words in ((tmp_path, "is a folder, not a file"), (Path("/dev/zero"), "is a device"),
                        (fifo, "named pipe")):
        code, err = run_cli(["train", path, "--out", tmp_path / "r"], capsys)
        assert code == 2 and words in one_error_line(err)


def test_an_empty_nifti_and_a_nan_affine_are_named_for_what_they_are(tmp_path):
    import nibabel as nib

    from mckd.seg.cases import read_nifti

    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((0, 12, 10), np.float32), np.eye(4)), str(empty))
    with pytest.raises(DataError, match=r"shape \(0, 12, 10\): an empty volume"):
        read_nifti(empty)
    folder = make_brats_case(tmp_path, "case")
    flair = folder / "case_flair.nii.gz"
    image = nib.load(str(flair))
    header = image.header.copy()
    header.set_qform(None, code=0)
    header["srow_x"] = [np.nan, 0, 0, 0]
    header["sform_code"] = 1
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), None, header), str(tmp_path / "nan.nii.gz"))
    with pytest.raises(DataError, match="NaN or Inf in its affine"):
        read_nifti(tmp_path / "nan.nii.gz")
    with pytest.raises(DataError, match="is a folder, not a file"):
        read_nifti(folder)


def test_an_invalid_config_in_a_run_being_resumed_names_the_run(digits_yaml, tmp_path, capsys):
    from mckd.config import load_config
    from mckd.train import TrainingInterrupted, train

    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(load_config(digits_yaml, ["train.iterations=8"]), run,
              callbacks=[AtIteration(3, lambda: os.kill(os.getpid(), signal.SIGTERM))])
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("hidden: 16", "hidden: many"))
    code, err = run_cli(["train", "--resume", run], capsys)
    line = one_error_line(err)
    assert code == 2 and "config.yaml" in line and "model.hidden must be an integer" in line


# --- 12, 13: names that become paths; duplicate sequences --------------------------------------------------------


@pytest.mark.parametrize("name", ["/../../X", "../up", ".hidden", "a/b"])
def test_compare_names_cannot_write_outside_the_run(digits_yaml, tmp_path, capsys, name):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(["train", digits_yaml, "--out", a], capsys)[0] == 0
    assert run_cli(["train", digits_yaml, "--out", b, "--set", "seed=1"], capsys)[0] == 0
    before = sorted(p.name for p in tmp_path.parent.iterdir())
    code, err = run_cli(["compare", a, b, "--names", "x", name], capsys)
    assert code == 2 and "is not a plain name" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.parent.iterdir()) == before


def test_plot_seg_refuses_a_sequence_given_twice(tmp_path, capsys):
    code, err = run_cli(["plot-seg", tmp_path, "--case", "c", "--subset", "flair+flair", "--out", tmp_path / "x.png"],
                        capsys)
    assert code == 2 and "flair given more than once" in one_error_line(err)


def test_a_benchmark_takes_its_methods_from_methods_and_each_peers_keys_from_set(digits_yaml, tmp_path, capsys):
    for override in ("method=gan", "method.name=gan"):
        code, err = run_cli(["benchmark", digits_yaml, "--methods", "mckd", "smil", "--seeds", "0", "--set", override,
                             "--out", tmp_path / "named"], capsys)
        assert code == 2 and "name the method there, not in --set" in one_error_line(err)
    out = tmp_path / "peer_key"
    code, err = run_cli(["benchmark", digits_yaml, "--methods", "mckd", "autoencoder", "--seeds", "0", "--set",
                         "method.recon_weight=2", "--out", out], capsys)
    assert code == 0, err
    assert "recon_weight: 2" in (out / "autoencoder" / "seed_0" / "config.yaml").read_text()
    assert "recon_weight" not in (out / "mckd" / "seed_0" / "config.yaml").read_text()


def test_compare_writes_again_over_its_own_comparison_and_never_over_a_users_files(digits_yaml, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(["train", digits_yaml, "--out", a], capsys)[0] == 0
    assert run_cli(["train", digits_yaml, "--out", b, "--set", "seed=1"], capsys)[0] == 0
    out = tmp_path / "cmp"
    assert run_cli(["compare", a, b, "--out", out], capsys)[0] == 0
    assert run_cli(["compare", a, b, "--out", out, "--names", "first", "second"], capsys)[0] == 0
    assert "first vs second" in (out / "comparison.md").read_text()
    for files in ({"thesis.tex": "mine", "comparison.md": "keep"}, {"comparison.md": "my own notes"},
                  {"comparison.csv": "my,own\n1,2\n"}, {"comparison.png": "not a plot of mckd's"}):
        users = tmp_path / f"users_{'_'.join(sorted(files)).replace('.', '')}"
        users.mkdir()
        for name, text in files.items():
            (users / name).write_text(text)
        code, err = run_cli(["compare", a, b, "--out", users], capsys)
        assert code == 2 and "holds files mckd compare did not write" in one_error_line(err)
        assert {p.name: p.read_text() for p in users.iterdir()} == files


def test_a_fusion_made_for_3d_maps_on_a_vector_network_is_one_error_line(digits_yaml, tmp_path, capsys):
    code, err = run_cli(["train", digits_yaml, "--set", "model.fusion=gated", "--out", tmp_path / "run"], capsys)
    line = one_error_line(err)
    assert code == 2 and "fusion 'gated' cannot fuse this network's features" in line and "conv3d" in line
    assert not (tmp_path / "run").exists()


def test_missing_rates_or_subset_that_the_policy_does_not_read_warn_naming_unknown_modalities(digits_yaml, tmp_path,
                                                                                            capsys):
    for override, policy, message in (("missing.rates={pxx: 0.5}", "random_subset", "it also names ['pxx']"),
                                      ("missing.subset=[fou]", "rates", "missing.subset is set")):
        settings = ["--set", override] + (["--set", "missing.policy=rates", "--set", "missing.rates={fou: 0.5}"]
                                          if policy == "rates" else [])
        with pytest.warns(UserWarning, match=f"policy is '{policy}', which does not read it") as caught:
            code, _ = run_cli(["train", digits_yaml, *settings, "--out", tmp_path / policy], capsys)
        assert code == 0 and message in str(caught[0].message)
    code, err = run_cli(["train", digits_yaml, "--set", "missing.policy=rates", "--set", "missing.rates={pxx: 0.5}",
                         "--out", tmp_path / "read"], capsys)
    assert code == 2 and "missing.rates names ['pxx']" in one_error_line(err)


def test_evaluate_refuses_options_of_an_evaluation_of_other_data_without_data(digits_yaml, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", digits_yaml, "--out", run], capsys)[0] == 0
    for extra in (["--subsets", "fou+zz"], ["--out", str(tmp_path / "elsewhere")]):
        code, err = run_cli(["evaluate", run, *extra], capsys)
        assert code == 2 and f"{extra[0]} applies with --data DIR" in one_error_line(err)
    assert not (tmp_path / "elsewhere").exists()


def test_benchmark_with_force_never_writes_into_a_folder_of_the_users_files(digits_yaml, tmp_path, capsys):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "summary.md").write_text("MY OWN SUMMARY")
    code, err = run_cli(["benchmark", digits_yaml, "--methods", "mckd", "baseline", "--seeds", "0", "--out", users,
                         "--force"], capsys)
    assert code == 2 and "holds files mckd did not write (summary.md)" in one_error_line(err)
    assert [p.name for p in users.iterdir()] == ["summary.md"] and (users / "summary.md").read_text() == "MY OWN SUMMARY"
    bench = tmp_path / "bench"
    assert run_cli(["benchmark", digits_yaml, "--methods", "mckd", "baseline", "--seeds", "0", "--out", bench],
                   capsys)[0] == 0
    assert run_cli(["benchmark", digits_yaml, "--methods", "mckd", "baseline", "--seeds", "0", "--out", bench,
                    "--force"], capsys)[0] == 0  # an earlier benchmark is its own


def test_train_force_keeps_a_run_directory_that_holds_the_users_files(digits_yaml, tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(["train", digits_yaml, "--out", run], capsys)[0] == 0
    (run / "thesis.tex").write_text("my thesis")
    before = sorted(p.name for p in run.iterdir())
    code, err = run_cli(["train", digits_yaml, "--out", run, "--force"], capsys)
    assert code == 2 and "also holds files mckd did not write (thesis.tex)" in one_error_line(err)
    assert sorted(p.name for p in run.iterdir()) == before and (run / "thesis.tex").read_text() == "my thesis"
    (run / "thesis.tex").unlink()
    assert run_cli(["train", digits_yaml, "--out", run, "--force"], capsys)[0] == 0
