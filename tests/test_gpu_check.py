"""The GPU check script runs (on the CPU, at a tiny crop), so it is ready when a GPU is."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("monai") is None, reason="the BraTS network needs monai")


def test_the_gpu_check_runs_the_brats_network_from_the_registry_at_a_tiny_crop(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--precisions", "fp32",
                           "--iterations", "2", "--warmup", "1", "--json", str(tmp_path / "results.json")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "unet3d" in done.stdout and "fp32: CKD step / baseline" in done.stdout
    assert (tmp_path / "results.json").read_text().count('"variant"') == 3
