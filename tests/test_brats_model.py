"""The 3D network, the segmentation task, training, evaluation, predict and plots on the real BraTS cases.

Everything runs at a quarter of the resolution (``downsample: 4``), 16^3 crops
and a 3-level U-Net a few channels wide, so the whole file takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brats_helpers import brats_regions, cache2013, cache4  # noqa: F401 (fixtures)
from conftest import ROOT, shared_path
from mckd.config import apply_overrides, config_from_dict, load_raw
from mckd.evaluation import all_subsets, evaluate_subsets
from mckd.report import table1
from mckd.seg.dataset import CaseDataset, SegCases
from mckd.seg.labels import convention
from mckd.tasks.segmentation import HD95_ONE_EMPTY, SegmentationTask, decode_regions, relabel_small_region

TINY = [
    "data.downsample=4", "data.crop=[16,16,16]", "data.val_crops=2", "data.crops_per_epoch=4",
    "task.overlap=0.0", "task.sw_batch_size=4",
    "model.widths=[4,8,16]", "train.iterations=4", "method.meta_every=2",
    "train.progress=false", "train.device=cpu", "train.log_every=2",
]


def tiny_config(cache: Path, *extra: str):
    raw = load_raw(ROOT / "configs" / "brats_small_cpu.yaml")
    return config_from_dict(apply_overrides(raw, [f"data.cache={cache}", *TINY, *extra]))


@pytest.fixture(scope="module")
def trained_run(cache2013: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mckd.runs import evaluate_run
    from mckd.train import train

    run = tmp_path_factory.mktemp("run") / "brats_tiny"
    train(tiny_config(cache2013), run)
    evaluate_run(run, "cpu")
    return run


def test_the_small_and_paper_configs_load():
    for name in ("brats_small_cpu.yaml", "brats_paper_gpu.yaml"):
        config = config_from_dict(load_raw(ROOT / "configs" / name))
        assert config.task.name == "segmentation" and config.data.name == "brats"
    paper = config_from_dict(load_raw(ROOT / "configs" / "brats_paper_gpu.yaml"))
    assert (paper.train.iterations, paper.train.batch_size, paper.train.lr, paper.train.momentum) == (115000, 2, 0.01, 0.99)
    assert paper.train.nesterov and paper.train.schedule == "cosine" and paper.train.optimizer == "sgd"
    assert (paper.method.options.meta_every, paper.method.options.meta_lr, paper.method.options.meta_weight_decay) == (100, 0.01, 5e-5)
    assert (paper.method.options.alpha, paper.method.options.p, sorted(paper.data.options.crop)) == (0.1, 1, [80, 160, 160])


def test_fifteen_subsets_of_four_sequences_are_evaluated(cache4: Path):
    assert len(all_subsets(["flair", "t1", "t1ce", "t2"])) == 15
    cases = SegCases(cache4, ["BraTS2021_00006"], ["flair", "t1", "t1ce", "t2"], downsample=8)
    config = tiny_config(cache4)
    from mckd.build import build_method, build_model

    modalities = ("flair", "t1", "t1ce", "t2")
    model = build_model(config, modalities, {m: (1, 16, 16, 16) for m in modalities}, 3,
                        build_method(config, modalities))
    task = SegmentationTask(3, roi=[16, 16, 16], overlap=0.0, sw_batch_size=8, spacing=[8, 8, 8])
    rows = evaluate_subsets(model, task, CaseDataset(cases), 1, torch.device("cpu"))
    assert len(rows) == 15 and rows[-1]["subset"] == "flair+t1+t1ce+t2"
    assert all(0 <= r["dice_et"] <= 1 and r["hd95_wt"] >= 0 for r in rows)


def test_the_encoder_runs_only_on_present_sequences(cache2013: Path):
    from mckd.build import build_experiment

    experiment = build_experiment(tiny_config(cache2013))
    seen = []
    experiment.model.shared_encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    inputs = [torch.randn(2, 1, 16, 16, 16) for _ in range(2)]
    present = torch.tensor([[True, False], [True, True]])
    output = experiment.model(inputs, present)
    assert seen == [3]  # three present (sample, sequence) pairs, not four
    assert output.prediction.shape == (2, 3, 16, 16, 16)
    assert output.features.shape == (2, 2, 16, 4, 4, 4)  # CKD at the bottleneck


def test_training_crops_oversample_tumour_and_flip(cache2013: Path):
    from mckd.build import build_experiment

    torch.manual_seed(0)
    bundle = build_experiment(tiny_config(cache2013, "data.foreground_prob=1.0")).bundle
    sample = bundle.train[0]
    assert [tuple(x.shape) for x in sample["inputs"]] == [(1, 16, 16, 16)] * 2
    assert sample["target"].dtype == torch.uint8 and bool((sample["target"] > 0).any())
    val = bundle.val[0]
    assert bool(val["present"].all())


def test_a_few_training_iterations_then_the_table(trained_run: Path):
    from mckd.report import read_table

    rows = read_table(trained_run / "eval" / "subsets.csv")
    assert [r["subset"] for r in rows] == ["flair", "t1ce", "flair+t1ce"]
    assert all(0.0 <= r["dice_mean"] <= 1.0 for r in rows)
    table = (trained_run / "eval" / "table.md").read_text()
    assert "| flair | t1ce | Dice ET |" in table and "**average**" in table
    weights = [line for line in (trained_run / "metrics.jsonl").read_text().splitlines() if '"weights"' in line]
    assert len(weights) >= 3  # the start and two meta steps


def test_softmax_head_trains_with_dice_ce(cache2013: Path, tmp_path: Path):
    from mckd.train import train

    experiment = train(tiny_config(cache2013, "task.head=labels", "train.iterations=1", "method.meta=false"), tmp_path)
    assert experiment.task.head == "labels"
    assert experiment.model.decoder.out.conv.conv.out_channels == 4


def test_predict_end_to_end_on_a_case_it_never_trained_on(trained_run: Path, tmp_path: Path):
    import json

    from mckd.cli import main

    test_case = json.loads((trained_run / "data.json").read_text())["cases"]["test"][0]
    folder = shared_path("brats2013", test_case)
    flair = folder / "Flair_subtrMeanDivStd.nii.gz"
    out = tmp_path / "pred.nii.gz"
    args = ["predict", str(trained_run), f"flair={flair}", "--out", str(out), "--mask", str(folder / "brainmask.nii.gz"),
            "--device", "cpu"]
    assert main(args) == 0
    written, reference = nib.load(str(out)), nib.load(str(flair))
    assert written.shape == reference.shape and np.allclose(written.affine, reference.affine)
    assert set(np.unique(np.asanyarray(written.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert main(args) == 2  # refuses to overwrite
    both = [*args[:3], "t1ce=" + str(folder / "T1c_subtrMeanDivStd.nii.gz"), *args[3:], "--force"]
    assert main(both) == 0
    assert main(["predict", str(trained_run), f"t2={flair}", "--out", str(tmp_path / "x.nii.gz")]) == 2


def test_plot_of_a_case_and_subset(trained_run: Path, cache2013: Path, tmp_path: Path):
    from mckd.cli import main

    out = tmp_path / "case.png"
    assert main(["plot-seg", str(trained_run), "--case", "brats_2013_pat0003_1", "--subset", "t1ce", "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000


# --- metrics and conventions -----------------------------------------------------------------


def _logits(labels: torch.Tensor) -> torch.Tensor:
    """Region logits (+10 inside, -10 outside) that decode to ``labels`` ``[B, *S]``."""
    return torch.from_numpy(brats_regions(labels.numpy())).float().movedim(0, 1) * 20 - 10


def test_dice_and_hd95_on_a_hand_made_prediction(cache2013: Path):
    truth = torch.from_numpy(np.asarray(SegCases(cache2013, ["brats_2013_pat0004_1"], ["flair"], 2).read(0)["target"]))
    truth = truth.long()[None]  # (1, X, Y, Z)
    prediction = truth.clone()
    enhancing = (truth == 3).nonzero()
    removed = enhancing[: len(enhancing) // 4]  # a quarter of the ET voxels predicted as oedema instead
    prediction[tuple(removed.T)] = 2
    task = SegmentationTask(3, roi=[16, 16, 16], spacing=[2, 2, 2])
    metrics = task.sample_metrics(_logits(prediction), truth[:, None])
    a, b = int((truth == 3).sum()), int((prediction == 3).sum())
    expected_et = 2 * b / (a + b)  # prediction's ET is a subset of the truth's
    tc_a, tc_b = int(((truth == 1) | (truth == 3)).sum()), int(((prediction == 1) | (prediction == 3)).sum())
    assert metrics["dice_et"].item() == pytest.approx(expected_et, abs=1e-6)
    assert metrics["dice_tc"].item() == pytest.approx(2 * tc_b / (tc_a + tc_b), abs=1e-6)
    assert metrics["dice_wt"].item() == pytest.approx(1.0)
    assert metrics["hd95_wt"].item() == 0.0
    assert metrics["dice_mean"].item() == pytest.approx((metrics["dice_et"] + metrics["dice_tc"] + 1).item() / 3)


def test_empty_region_convention():
    task = SegmentationTask(3, roi=[8, 8, 8])
    truth = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    truth[:, 0, 2:5, 2:5, 2:5] = 2  # oedema only: ET and TC empty in the truth
    prediction = truth[:, 0].clone()
    prediction[1, 6, 6, 6] = 3  # sample 1 predicts one ET voxel where there is none
    metrics = task.sample_metrics(_logits(prediction), truth)
    assert metrics["dice_et"].tolist() == [1.0, 0.0]  # both empty: 1; prediction only: 0
    assert metrics["hd95_et"].tolist() == [0.0, pytest.approx(HD95_ONE_EMPTY)]
    truth_et = truth.clone()
    truth_et[0, 0, 3, 3, 3] = 3
    metrics = task.sample_metrics(_logits(truth[:, 0]), truth_et)  # ET in the truth, none predicted
    assert metrics["dice_et"][0].item() == 0.0 and metrics["hd95_et"][0].item() == pytest.approx(HD95_ONE_EMPTY)


def test_small_enhancing_tumour_is_relabelled_as_core():
    labels = torch.zeros(2, 10, 10, 10, dtype=torch.uint8)
    labels[0, :2, :2, :2] = 3  # 8 voxels
    labels[1, :5, :5, :5] = 3  # 125 voxels
    out = relabel_small_region(labels, (3,), 1, 100)  # BraTS: enhancing -> core
    assert int((out[0] == 3).sum()) == 0 and int((out[0] == 1).sum()) == 8
    assert int((out[1] == 3).sum()) == 125
    task = SegmentationTask(3, roi=[8, 8, 8], et_min_voxels=100)
    assert int((task.to_labels(_logits(labels.long()))[0] == 3).sum()) == 0


def test_region_channels_decode_nested():
    regions = torch.zeros(1, 3, 4, 4, 4, dtype=torch.bool)
    regions[0, 2, :2] = True  # WT
    regions[0, 1, :1] = True  # TC
    regions[0, 0, 0, 0] = True  # ET
    labels = decode_regions(regions, convention("brats2023"))
    assert labels[0, 0, 0, 0] == 3 and labels[0, 0, 1, 0] == 1 and labels[0, 1, 0, 0] == 2 and labels[0, 3, 0, 0] == 0


def test_table1_has_marks_and_an_average_row():
    rows = [{"subset": "flair", "dice_et": 0.5, "dice_tc": 0.6, "dice_wt": 0.7, "hd95_et": 1.0, "hd95_tc": 2.0, "hd95_wt": 3.0},
            {"subset": "flair+t1ce", "dice_et": 0.7, "dice_tc": 0.8, "dice_wt": 0.9, "hd95_et": 3.0, "hd95_tc": 2.0, "hd95_wt": 1.0}]
    text = table1(rows, ["flair", "t1ce"])
    assert "| ● | ○ | 50.00 | 60.00 | 70.00 | 60.00 |" in text
    assert "**60.00** | **70.00** | **80.00** | **70.00** | **2.00**" in text
