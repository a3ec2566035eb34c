"""A short real training run on the multi-view digits, and what it leaves in the run directory."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from mckd.build import build_data
from mckd.config import TrainConfig, config_from_dict, load_config
from mckd.evaluation import OBSERVED
from mckd.runs import evaluate_run
from mckd.method.weights import ImportanceWeights
from mckd.runs import RunDir
from mckd.train import lr_factor, train

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "multiview_digits.yaml"
SHORT = ["train.iterations=40", "train.batch_size=64", "train.log_every=10", "train.progress=false",
         "method.meta_every=5"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(csv_dir: Path, *overrides: str):
    return load_config(DIGITS, [*SHORT, f"data.csv_dir={csv_dir}", "train.device=cpu", *overrides])


def _records(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("kind") == kind]


def _initial_raw(seed: int, modalities: int = 6) -> torch.Tensor:
    return ImportanceWeights([str(i) for i in range(modalities)], generator=torch.Generator().manual_seed(seed)).raw


@pytest.fixture(scope="module")
def mckd_run(digits_csv_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mckd_run")
    experiment = train(_config(digits_csv_dir), run_dir)
    return run_dir, experiment


def test_a_short_mckd_run_learns_the_digits(mckd_run):
    run_dir, _ = mckd_run
    records = _records(run_dir, "train")
    assert [r["iteration"] for r in records] == [10, 20, 30, 40]
    assert records[-1]["task_loss"] < 0.8 * records[0]["task_loss"]
    assert all(r["ckd_loss"] > 0 for r in records)
    result = evaluate_run(run_dir, "cpu")
    rows = result.subsets
    assert len(rows) == 63 and all(r["samples"] == 600 for r in rows)
    assert result.observed[0]["pattern"] == OBSERVED and result.observed[0]["accuracy"] == rows[-1]["accuracy"]
    full = rows[-1]
    assert full["subset"] == "fou+fac+kar+pix+zer+mor" and full["accuracy"] > 0.8
    assert sum(r["accuracy"] for r in rows) / 63 > 0.5  # chance is 0.1
    assert (run_dir / "eval" / "subsets.csv").is_file() and (run_dir / "eval" / "subsets.md").is_file()


def test_metrics_record_losses_lr_and_the_normalised_weights_at_each_meta_step(mckd_run):
    run_dir, _ = mckd_run
    weights = _records(run_dir, "weights")
    assert [r["iteration"] for r in weights] == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    for record in weights:
        assert list(record["weights"]) == ["fou", "fac", "kar", "pix", "zer", "mor"]
        assert sum(record["weights"].values()) == pytest.approx(1.0, abs=1e-5)  # softmax
    assert weights[-1]["weights"] != weights[0]["weights"]  # the meta steps moved w
    lrs = [r["lr"] for r in _records(run_dir, "train")]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 1e-3  # cosine decay from train.lr


def test_the_run_directory_holds_the_resolved_config_and_a_tensors_only_checkpoint(mckd_run):
    run_dir, experiment = mckd_run
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config_from_dict(saved).to_dict() == experiment.config.to_dict()
    assert saved["method"]["name"] == "mckd" and saved["method"]["meta_every"] == 5 and saved["train"]["iterations"] == 40
    with safe_open(str(run_dir / "checkpoint.safetensors"), framework="pt") as handle:  # never unpickles
        keys = set(handle.keys())
        torch.testing.assert_close(handle.get_tensor("method.weights.raw"), experiment.method.weights.raw.detach())
    assert "method.weights.raw" in keys and any(k.startswith("model.encoders.fac.") for k in keys)


def test_without_meta_steps_training_never_moves_w_even_with_distillation_on(digits_csv_dir, tmp_path):
    experiment = train(_config(digits_csv_dir, "method.meta=false", "train.iterations=10", "seed=3"), tmp_path)
    assert torch.equal(experiment.method.weights.raw.detach(), _initial_raw(3))
    assert all(r["ckd_loss"] > 0 for r in _records(tmp_path, "train"))
    assert [r["iteration"] for r in _records(tmp_path, "weights")] == [0]


def test_the_baseline_has_no_distillation_term_and_logs_no_weights(digits_csv_dir, tmp_path):
    train(_config(digits_csv_dir, "method.alpha=0", "method.meta=false", "train.iterations=10"), tmp_path)
    assert all("ckd_loss" not in r and r["task_loss"] > 0 for r in _records(tmp_path, "train"))
    assert _records(tmp_path, "weights") == []  # its random start weighs nothing: not logged, no weights CSV


def test_a_fixed_single_modality_policy_leaves_no_pair_to_distil(digits_csv_dir, tmp_path):
    config = _config(digits_csv_dir, "missing.policy=fixed", "missing.subset=[fac]", "method.meta=false",
                     "train.iterations=10")
    train(config, tmp_path)
    assert all(r["ckd_loss"] == 0.0 for r in _records(tmp_path, "train"))


def test_availability_rates_mask_only_the_training_split(digits_csv_dir):
    config = _config(digits_csv_dir, "missing.policy=rates", "missing.rates={mor: 0.1, fou: 0.5}")
    bundle = build_data(config)
    counts = bundle.train.present.sum(dim=0).tolist()
    assert counts == [600, 1200, 1200, 1200, 1200, 120]
    assert bool(bundle.val.present.all()) and bool(bundle.test.present.all())


def test_a_dataset_with_an_empty_split_is_refused_before_training(monkeypatch):
    from mckd import components, registry
    from mckd.data.bundle import DataBundle, MultiModalTensorDataset
    from mckd.errors import DataError

    def tiny(options, seed):
        def part(size):
            return MultiModalTensorDataset([torch.zeros(size, 3), torch.zeros(size, 2)], torch.zeros(size, dtype=torch.long))

        return DataBundle(("a", "b"), part(8), part(0), part(4), 2, {"a": (3,), "b": (2,)})

    entry = components.lookup("data", "multiview_digits")
    components.entries("data")  # the built-ins are loaded before one is replaced
    monkeypatch.setitem(registry.ENTRIES["data"], "multiview_digits", registry.Entry(entry.name, entry.options, tiny, ""))
    with pytest.raises(DataError, match="the val split has no samples"):
        build_data(load_config(DIGITS))


def test_learning_rate_schedules_follow_their_formulas():
    settings = TrainConfig(schedule="cosine")
    assert [lr_factor(i, 100, 10, settings) for i in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    settings = TrainConfig(schedule="step", step_epochs=2, gamma=0.5)
    assert [lr_factor(i, 100, 10, settings) for i in (0, 19, 20, 45)] == [1.0, 1.0, 0.5, 0.25]
    settings = TrainConfig(schedule="poly", poly_power=0.9)
    assert lr_factor(25, 100, 10, settings) == pytest.approx(math.pow(0.75, 0.9))
    assert lr_factor(7, 100, 10, TrainConfig(schedule="none")) == 1.0


def test_the_step_time_benchmark_prints_mckd_over_baseline_as_a_ratio(digits_csv_dir):
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_time.py"), "--iterations", "10", "--warmup",
                           "2", "--block", "10", "--batch-size", "16", "--set", f"data.csv_dir={digits_csv_dir}"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"MCKD step / baseline step: \d+\.\d{3}x", out), out
    assert "| baseline |" in out and "| mckd |" in out and "meta step:" in out


def test_loader_workers_are_stopped_when_training_ends(digits_csv_dir, tmp_path):
    """Workers ignore SIGTERM, so one left alive would make Python's exit (terminate, then join) wait forever."""
    import multiprocessing

    experiment = train(_config(digits_csv_dir, "train.iterations=4", "train.num_workers=1"), tmp_path)
    assert experiment is not None  # the experiment (and its streams) still held, as a caller may
    assert multiprocessing.active_children() == []
