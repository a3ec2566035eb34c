"""The malformed-input run of ``benchmarks/malformed_inputs.py``, as a test.

Every case (a malformed file or config through ``mckd prepare``, ``train``,
``evaluate``, ``predict`` or ``compare``) must exit with status 2 and one
``mckd: error:`` line naming the problem, no traceback, and leave its outputs
absent or unchanged. The script runs every case in one process through
``mckd.cli.main`` (fast; the cases that need real processes, a mount
namespace or a signal are skipped there and covered by
``tests/test_reliability.py``); two of them also run as real ``mckd``
processes, so the stderr a user sees is checked too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "malformed_inputs.py"


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=900)


def test_the_run_covers_every_command_and_every_listed_check():
    names = [line for line in run("--list").stdout.splitlines()[1:] if "/" in line]
    assert {name.split("/")[0] for name in names} == {"prepare-brats", "prepare-avmnist", "train", "evaluate",
                                                       "predict", "compare", "full-disk", "read-only", "concurrent",
                                                       "signal", "divergence", "runs", "options", "files"}
    for check in ["missing-sequence", "missing-label", "unknown-modality", "shape-mismatch", "affine-mismatch",
                  "nan-voxels", "all-zero-sequence", "labels-outside-convention", "truncated-nifti", "wav-truncated",
                  "idx-truncated", "idx-header-vs-size", "images-labels-length", "source-empty", "split-too-small",
                  "config-unknown-nested-key", "config-wrong-type",
                  "config-alpha-negative", "config-rate-above-one", "pickle-checkpoint", "other-model-configuration",
                  "output-exists",
                  # the hostile classes: disks, two processes, signals at every phase, divergence
                  "full-disk/train", "full-disk/predict", "full-disk/prepare-brats", "read-only/compare-default-output",
                  "concurrent/train-same-out", "signal/train-set-up", "signal/train-mid-run",
                  "signal/train-while-checkpointing", "signal/final-evaluation", "signal/prepare-with-two-workers",
                  "divergence/lr-1e30", "options/yaml-alias-bomb", "options/yaml-duplicate-key"]:
        assert any(name.endswith("/" + check) or name == check for name in names), check


def test_every_malformed_input_ends_with_one_clear_error_and_nothing_half_written():
    done = run("--in-process")
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, "\n".join(line for line in done.stdout.splitlines() if not line.startswith("ok"))
    count = int(summary.split(" of ")[0])
    assert summary == f"{count} of {count} cases end with one clear error, no traceback, nothing half-written"


def test_as_real_processes_the_user_sees_one_line_and_no_traceback():
    done = run("--case", "prepare-brats/labels-outside-convention", "--case", "evaluate/pickle-checkpoint")
    assert done.returncode == 0 and "2 of 2 cases" in done.stdout, done.stdout + done.stderr
