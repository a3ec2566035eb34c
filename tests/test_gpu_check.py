"""The GPU check script runs (on the CPU, at a tiny crop), so it is ready when a GPU is."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("monai") is None, reason="the BraTS network needs monai")


def load_gpu_check():
    if "mckd_gpu_check" not in sys.modules:  # it registers a dataset: load it once per process
        spec = importlib.util.spec_from_file_location("mckd_gpu_check", ROOT / "benchmarks" / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["mckd_gpu_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["mckd_gpu_check"]


def test_the_gpu_check_runs_the_brats_network_from_the_registry_at_a_tiny_crop(capsys, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = load_gpu_check().main(["--tiny", "--precisions", "fp32", "--iterations", "2", "--warmup", "1",
                                      "--json", str(tmp_path / "results.json")])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0
    assert "unet3d" in out and "fp32: CKD step / baseline" in out
    assert (tmp_path / "results.json").read_text().count('"variant"') == 3
