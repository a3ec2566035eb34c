"""Everyday use (issue 13): CPU threads, validation while training, loggers, progress, run records, plots."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from mckd.cli import main
from mckd.config import load_config
from mckd.runs import RunDir, load_model
from mckd.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def digits_yaml(tmp_path, digits_csv_dir) -> Path:
    path = tmp_path / "digits.yaml"
    path.write_text(textwrap.dedent(f"""\
        data:
          name: multiview_digits
          csv_dir: {digits_csv_dir}
          views: [fou, mor, kar]
        model:
          name: multiview_mlp
          hidden: 16
          feature_dim: 8
          decoder_hidden: 16
        method:
          name: mckd
          meta_every: 2
        train:
          iterations: 12
          batch_size: 32
          log_every: 3
          eval_every: 4
          device: cpu
          progress: false
          deterministic: true
        """))
    return path


def records(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


# --- 1. CPU threads -----------------------------------------------------------------------------------------


def test_auto_threads_is_one_unless_the_user_chose(monkeypatch):
    from mckd import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_AT_IMPORT", torch.get_num_threads())
    monkeypatch.setattr(threads, "_SET_BY_MCKD", {torch.get_num_threads()})
    assert threads.apply_threads(0) == 1 and torch.get_num_threads() == 1
    assert threads.apply_threads(2) == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.apply_threads(0) == 2 and torch.get_num_threads() == 2  # the environment wins over auto
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(3)  # the user, from Python
    assert threads.chosen_by_user() == "torch.set_num_threads(3)"
    assert threads.apply_threads(0) == 3
    assert threads.apply_threads(1) == 1  # an explicit train.threads is used as given


def test_training_and_evaluation_use_train_threads(digits_yaml, tmp_path):
    from mckd.runs import load_run

    run = tmp_path / "run"
    train(load_config(digits_yaml, ["train.threads=2"]), run)
    assert torch.get_num_threads() == 2
    assert json.loads((run / "run.json").read_text())["sessions"][0]["cpu_threads"] == 2
    torch.set_num_threads(1)
    load_run(run)
    assert torch.get_num_threads() == 2


# --- 2. validation while training ---------------------------------------------------------------------------


def test_validation_scores_every_eval_every_iterations_all_and_each_single_modality(digits_yaml, tmp_path):
    run = tmp_path / "run"
    train(load_config(digits_yaml), run)
    val = records(run, "val")
    assert [r["iteration"] for r in val] == [4, 8, 12]
    for r in val:
        assert set(r) >= {"accuracy_all", "accuracy_fou", "accuracy_mor", "accuracy_kar", "score", "best"}
        singles = [r["accuracy_fou"], r["accuracy_mor"], r["accuracy_kar"]]
        assert r["score"] == pytest.approx((r["accuracy_all"] + sum(singles)) / 4)
    assert not RunDir(run).best_checkpoint.exists()  # only with train.save_best


def test_validation_does_not_change_the_training_trajectory(digits_yaml, tmp_path):
    from mckd.checkpoint import load_checkpoint

    train(load_config(digits_yaml, ["train.eval_every=0"]), tmp_path / "without")
    train(load_config(digits_yaml, ["train.eval_every=2"]), tmp_path / "with")
    a, _ = load_checkpoint(tmp_path / "without" / "checkpoint.safetensors")
    b, _ = load_checkpoint(tmp_path / "with" / "checkpoint.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("model."))


def test_the_best_on_validation_checkpoint_is_the_model_of_the_best_validation_score(digits_yaml, tmp_path):
    from mckd.checkpoint import load_checkpoint

    run = tmp_path / "run"
    train(load_config(digits_yaml, ["train.save_best=true", "train.eval_every=2"]), run)
    val = records(run, "val")
    best = max(val, key=lambda r: r["score"])
    first_best = next(r for r in val if r["score"] == best["score"])
    _, metadata = load_checkpoint(RunDir(run).best_checkpoint)
    assert metadata["iteration"] == first_best["iteration"] and metadata["selected_on"] == "validation"
    assert load_model(RunDir(run).best_checkpoint, torch.device("cpu")).model is not None


def test_save_best_without_validation_is_a_config_error(digits_yaml):
    from mckd.errors import ConfigError

    with pytest.raises(ConfigError, match="save_best needs validation scores"):
        load_config(digits_yaml, ["train.save_best=true", "train.eval_every=0"])


# --- 3. loggers ----------------------------------------------------------------------------------------------


def test_csv_logs_hold_one_row_per_record_of_each_kind(digits_yaml, tmp_path):
    run = tmp_path / "run"
    train(load_config(digits_yaml), run)
    for kind in ("train", "weights", "val"):
        with RunDir(run).csv_log(kind).open() as stream:
            rows = list(csv.DictReader(stream))
        assert [int(r["iteration"]) for r in rows] == [r["iteration"] for r in records(run, kind)]
    with RunDir(run).csv_log("train").open() as stream:
        assert {"task_loss", "ckd_loss", "lr", "iterations_per_s"} <= set(next(csv.DictReader(stream)))


def test_tensorboard_event_files_hold_losses_weights_lr_and_validation(digits_yaml, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(load_config(digits_yaml, ["train.loggers=[csv, tensorboard]"]), run)
    events = EventAccumulator(str(RunDir(run).tensorboard))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/task_loss", "train/ckd_loss", "train/lr", "weights/weights_fou", "val/accuracy_all",
            "val/accuracy_kar"} <= tags
    assert [e.step for e in events.Scalars("val/accuracy_all")] == [4, 8, 12]


def test_a_resumed_run_rebuilds_its_csv_logs_to_the_checkpoint(digits_yaml, tmp_path):
    import signal

    from helpers import AtIteration
    from mckd.train import TrainingInterrupted

    config = load_config(digits_yaml)
    train(config, tmp_path / "straight")
    with pytest.raises(TrainingInterrupted):
        train(config, tmp_path / "stopped", callbacks=[AtIteration(5, lambda: os.kill(os.getpid(), signal.SIGTERM))])
    train(config, tmp_path / "stopped", resume=True)
    for kind in ("train", "val", "weights"):
        def iterations(run):
            with RunDir(run).csv_log(kind).open() as stream:
                return [r["iteration"] for r in csv.DictReader(stream)]
        assert iterations(tmp_path / "stopped") == iterations(tmp_path / "straight"), kind


# --- 4. progress --------------------------------------------------------------------------------------------


def test_progress_in_a_log_is_plain_short_lines(monkeypatch):
    from mckd import progress as progress_module

    clock = iter(range(0, 10_000, 1))
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: float(next(clock)))
    stream = io.StringIO()
    bar = progress_module.Progress(1000, "train seed 0", stream=stream)
    for _ in range(1000):
        bar.update()
        bar.set_postfix({"task_loss": 0.5})
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and 9 <= len(lines) <= 20 and max(map(len, lines)) < 160
    assert lines[-1].startswith("train seed 0: 1000/1000 (100%)") and "done in" in lines[-1]
    assert "task_loss 0.5" in lines[3] and "left" in lines[3]


def test_progress_on_a_terminal_is_a_bar():
    from mckd.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    bar = Progress(50, "evaluate", stream=stream)
    for _ in range(50):
        bar.update()
    bar.close()
    assert "\r" in stream.getvalue() and "50/50" in stream.getvalue()


# --- 5. run records -----------------------------------------------------------------------------------------


def test_a_run_records_versions_commit_command_device_and_times(digits_yaml, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(digits_yaml), "--out", str(run)]) == 0
    record = json.loads((run / "run.json").read_text())
    session = record["sessions"][0]
    for key in ("mckd", "git_commit", "command", "python", "torch", "monai", "cuda", "device", "started", "ended"):
        assert key in session
    assert session["command"].startswith("mckd train") or "train" in session["command"]
    assert session["device"] == "cpu" and record["status"] == "trained" and session["ended"] >= session["started"]


def test_mckd_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("mckd ") and "torch" in out and "Python" in out


def test_a_run_with_relative_data_paths_evaluates_after_it_is_moved(digits_yaml, digits_csv_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    for view in ("fou", "mor", "kar"):
        shutil.copy(digits_csv_dir / f"mfeat-{view}.csv", work / "data")
    (work / "c.yaml").write_text(digits_yaml.read_text().replace(f"csv_dir: {digits_csv_dir}", "csv_dir: data"))
    monkeypatch.chdir(work)
    assert main(["train", "c.yaml", "--out", "runs/one"]) == 0
    assert "csv_dir: " + str(work / "data") in (work / "runs" / "one" / "config.yaml").read_text()
    shutil.move(str(work / "runs" / "one"), str(tmp_path / "moved"))
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "moved"]) == 0


# --- 6. plots and summaries -----------------------------------------------------------------------------------


def test_summary_gives_p_in_scientific_notation_one_spread_and_losses_only_where_negative(tmp_path):
    from mckd.experiment import test_sentence, write_summary

    rows_a = [{"subset": s, "size": 1, "acc": v, "acc_std": 0.01} for s, v in (("a", 0.9), ("b", 0.8), ("c", 0.7))]
    rows_b = [{"subset": s, "size": 1, "acc": v, "acc_std": 0.01} for s, v in (("a", 0.85), ("b", 0.79), ("c", 0.69))]
    from mckd.report import compare_tables

    _, summary = compare_tables(rows_a, rows_b, "acc", "m", "b")
    summary["p_one_tailed"] = 1.23e-7
    text = write_summary(tmp_path, "c.yaml", ["m", "b"], [0, 1], {"m": rows_a, "b": rows_b}, {"b": summary},
                         {}, "acc", {"m": [0.8, 0.81], "b": [0.77, 0.78]})
    assert "p = 1.2e-07" in text and "0.0000" not in text
    assert text.count("std over seeds") >= 1 and "mean std over seeds" not in text
    assert "Largest losses: none" in text
    assert "t = " not in test_sentence({**summary, "t": float("nan"), "wins": 0, "losses": 0}, "m", "b")


def test_the_comparison_plot_has_a_sorted_difference_panel_with_the_spread(tmp_path, monkeypatch):
    import mckd.report as report

    figures = []
    monkeypatch.setattr(report, "_save_figure", lambda fig, out: figures.append(fig))
    rows = [{"subset": f"s{i}", "size": 1, "x": 0.9 + i / 1000, "y": 0.9, "difference": i / 1000,
             "x_std": 0.001, "y_std": 0.001} for i in (3, -2, 1)]
    report.plot_subset_comparison(rows, "x", "y", "acc", tmp_path / "p.png",
                                  difference_std={"s3": 0.001, "s-2": 0.002, "s1": 0.0005}, seeds=3)
    left, right = figures[0].axes
    assert [t.get_text() for t in left.get_yticklabels()] == ["s-2", "s1", "s3"]  # sorted by difference
    assert "difference x − y" in right.get_xlabel() and "acc" in left.get_xlabel()
    assert [round(p.get_width(), 4) for p in right.patches] == [-0.002, 0.001, 0.003]


def test_a_run_without_meta_steps_gets_no_weights_plot(digits_yaml, tmp_path):
    from mckd.config import load_raw
    from mckd.experiment import train_seeds

    train_seeds(load_raw(digits_yaml), ["method.meta=false", "method.alpha=0"], [0], tmp_path / "baseline")
    assert not (tmp_path / "baseline" / "weights.png").exists()
    train_seeds(load_raw(digits_yaml), [], [0], tmp_path / "mckd")
    assert (tmp_path / "mckd" / "weights.png").read_bytes()[:4] == b"\x89PNG"


def test_csv_logs_follow_a_run_moved_into_place_at_its_first_checkpoint(digits_yaml, tmp_path):
    run = tmp_path / "run"
    train(load_config(digits_yaml, ["train.checkpoint_every=2"]), run)
    with RunDir(run).csv_log("train").open() as stream:
        assert [int(r["iteration"]) for r in csv.DictReader(stream)] == [3, 6, 9, 12]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
