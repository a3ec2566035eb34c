"""SIGKILL while checkpointing: what is on disk still loads, and training resumes from it.

A process killed with SIGKILL gets no chance to clean up, so only the write
order protects the checkpoint: the new version goes to a temporary file that
is renamed over the old one. Two tests:

- a process that does nothing but write checkpoints in a loop (so a kill
  almost always lands inside a write) is killed; the checkpoint on disk is a
  complete earlier version, its tensors matching its metadata;
- ``mckd train`` saving every iteration is killed; the checkpoint loads and
  ``mckd train --resume`` finishes the run from it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mckd.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

WRITER = """
import sys, torch
from mckd.checkpoint import save_checkpoint
path = sys.argv[1]
version = 0
while True:
    # 4 MB per version: most of the loop's time is spent writing
    save_checkpoint(path, {"values": torch.full((1_000_000,), float(version))}, {"version": version})
    print(version, flush=True)
    version += 1
"""


def _wait_for_line(process: subprocess.Popen, minimum: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if int(line) >= minimum:
            return int(line)
    process.kill()
    raise AssertionError(f"the writer did not reach version {minimum}: {process.stderr.read() if process.stderr else ''}")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",  # a short job: threads would only contend
            "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.parametrize("delay", [0.0, 0.003])
def test_a_process_killed_while_writing_checkpoints_leaves_a_complete_earlier_version(tmp_path, delay):
    path = tmp_path / "checkpoint.safetensors"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_env())
    reached = _wait_for_line(process, 3)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    tensors, metadata = load_checkpoint(path)
    version = metadata["version"]
    assert version >= reached  # nothing older than what was reported complete
    assert torch.equal(tensors["values"], torch.full((1_000_000,), float(version)))  # the tensors match the metadata
    # A kill mid-write can leave only hidden temporary files of the unfinished version (atomic_write's
    # .checkpoint.safetensors.*.tmp, and safetensors' own .tmp* inside it in recent versions).
    others = [p.name for p in tmp_path.iterdir() if p != path]
    assert all(name.startswith(".") and "tmp" in name for name in others), others


def test_training_killed_while_checkpointing_resumes_from_what_is_on_disk(tmp_path, digits_csv_dir, capsys):
    from mckd.cli import main

    run = tmp_path / "run"
    total = 40
    command = [
        sys.executable, "-m", "mckd.cli", "train", str(ROOT / "configs" / "multiview_digits.yaml"), "--out", str(run),
        "--set", "data.views=[fou, mor]", "--set", f"train.iterations={total}", "--set", "train.batch_size=16",
        "--set", "train.checkpoint_every=1", "--set", "train.progress=false", "--set", "train.device=cpu",
        "--set", "train.precision=fp32", "--set", "method.meta_every=2",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    checkpoint = run / "checkpoint.safetensors"
    deadline = time.monotonic() + 180
    iteration = 0
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.is_file():
            iteration = load_checkpoint(checkpoint)[1]["iteration"]  # loads at any moment: the file is replaced whole
            if iteration >= 5:
                break
        time.sleep(0.02)
    assert process.poll() is None, process.stderr.read() if process.stderr else ""
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)

    tensors, metadata = load_checkpoint(checkpoint)
    stopped_at = metadata["iteration"]
    assert iteration <= stopped_at < total and metadata["complete"] is False
    assert not (run / "eval").exists()

    assert main(["train", "--resume", str(run), "--set", "train.checkpoint_every=0"]) == 0  # the rest in one go
    capsys.readouterr()
    tensors, metadata = load_checkpoint(checkpoint)
    assert metadata["iteration"] == total and metadata["complete"] is True
    assert (run / "eval" / "subsets.csv").is_file()
    iterations = [int(line.split('"iteration": ')[1].split(",")[0].rstrip("}"))
                  for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert iterations == sorted(iterations)  # the resumed log continues the killed one without repeats
