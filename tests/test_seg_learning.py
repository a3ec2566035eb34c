"""A model that learns: short training on real cases, then every region predicted on a training case.

The suite's other segmentation tests check that files are right; this one
checks that the small recipe learns. The four real BraTS 2013 cases of the
shared data (FLAIR + T1c) are written at 2 mm (every 2nd voxel, exact) in a
layout of their own that declares BraTS 2023's labels (3 = enhancing), so the
same run also checks that a run keeps the labels of the layout it was trained
from. The small config trains for 120 iterations (the recipe's network and
crop at the recipe's 2 mm grid; about a minute of one CPU thread); a model whose nested regions (ET, TC) did not
learn, as the recipe's did not before its head started at the regions'
priors, fails here. Dice is computed in this file with numpy from the
written prediction and the label file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import ROOT
from mckd.cli import main
from seg_helpers import make_case, seg_folders, to_values  # noqa: F401 (fixture)

CASES = ("brats_2013_pat0003_1", "brats_2013_pat0004_1", "brats_2013_pat0005_1", "brats_2013_pat0006_1")
TRAIN = ("brats_2013_pat0003_1", "brats_2013_pat0005_1")
TO_2023 = {0: 0, 1: 1, 2: 2, 4: 3}  # BraTS 2018 values (as seg_helpers gives them) -> BraTS 2023's
REGIONS_2023 = {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)}
LAYOUT = """sequences:
  flair: "{case}_fl.nii.gz"
  t1ce: "{case}_t1c.nii.gz"
label: "{case}_lab.nii.gz"
mask: "{case}_brain.nii.gz"
labels: brats2023
"""
ITERATIONS = 120


def _array(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _write_case(root: Path, name: str) -> None:
    case = make_case(name, "brats2013", name, stride=2)
    folder = root / name
    folder.mkdir(parents=True)
    for sequence, suffix in (("flair", "fl"), ("t1ce", "t1c")):
        nib.save(nib.Nifti1Image(case.images[sequence], case.affine), str(folder / f"{name}_{suffix}.nii.gz"))
    nib.save(nib.Nifti1Image(to_values(case.labels, TO_2023), case.affine), str(folder / f"{name}_lab.nii.gz"))
    flair = case.images["flair"]
    brain = (flair != flair[0, 0, 0]).astype(np.uint8)
    nib.save(nib.Nifti1Image(brain, case.affine), str(folder / f"{name}_brain.nii.gz"))


@pytest.fixture(scope="module")
def layout_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The four cases in the layout, a folder of the two training cases alone, and the layout file."""
    root = tmp_path_factory.mktemp("layout2023")
    for name in CASES:
        _write_case(root / "all", name)
    for name in TRAIN:
        _write_case(root / "train_cases", name)
    (root / "layout.yaml").write_text(LAYOUT)
    return {"all": root / "all", "train_cases": root / "train_cases", "layout": root / "layout.yaml"}


@pytest.fixture(scope="module")
def learned_run(layout_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small recipe, ITERATIONS iterations, on the 2 mm layout cases (recipe's split: 2 train, 1 val, 1 test)."""
    work = tmp_path_factory.mktemp("learned")
    assert main(["prepare", "seg", str(layout_data["all"]), str(work / "cache"), "--format", str(layout_data["layout"]),
                 "--workers", "1", "--no-progress"]) == 0
    run = work / "run"
    assert main(["train", str(ROOT / "configs" / "brats_small_cpu.yaml"), "--out", str(run),
                 "--set", f"data.cache={work / 'cache'}", "--set", "data.downsample=1",
                 "--set", f"train.iterations={ITERATIONS}", "--set", "train.eval_every=0",
                 "--set", "train.progress=false", "--set", "train.loggers=[]",
                 "--set", f"data.train_cases=[{','.join(TRAIN)}]", "--set", "data.val_cases=[brats_2013_pat0004_1]",
                 "--set", "data.test_cases=[brats_2013_pat0006_1]"]) == 0
    return run


@pytest.fixture(scope="module")
def predicted(learned_run: Path, layout_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The training cases' folder predicted without --format (the run's own layout) and with it."""
    out = tmp_path_factory.mktemp("pred")
    auto, named = out / "auto", out / "named"
    assert main(["predict", str(learned_run), "--input", str(layout_data["train_cases"]), "--output", str(auto),
                 "--device", "cpu", "--no-progress"]) == 0
    assert main(["predict", str(learned_run), "--input", str(layout_data["train_cases"]), "--output", str(named),
                 "--format", str(layout_data["layout"]), "--device", "cpu", "--no-progress"]) == 0
    return {"auto": auto, "named": named}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if a.sum() + b.sum() == 0 else 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_the_learned_model_predicts_every_region_of_a_training_case(predicted, layout_data):
    scores = {}
    for name in TRAIN:
        prediction = _array(predicted["auto"] / f"{name}.nii.gz")
        truth = _array(layout_data["train_cases"] / name / f"{name}_lab.nii.gz")
        scores[name] = {region: _dice(np.isin(prediction, values), np.isin(truth, values))
                        for region, values in REGIONS_2023.items()}
    best = max(scores.values(), key=lambda s: min(s.values()))  # the training case the model fits best
    # measured: 0.78 and 0.38 (the two cases' lowest region); with the head starting at p = 0.5, 0.41 and 0.19
    assert min(best.values()) > 0.6, scores
    assert all(min(s.values()) > 0.25 for s in scores.values()), scores


def test_a_run_trained_from_a_layout_writes_and_reads_its_declared_labels(predicted, learned_run, layout_data,
                                                                         tmp_path):
    for kind in ("auto", "named"):
        record = json.loads((predicted[kind] / "predict.json").read_text())
        assert record["labels"]["written_as"] == "brats2023", kind
        for name in TRAIN:
            values = set(np.unique(_array(predicted[kind] / f"{name}.nii.gz")).tolist())
            assert 3 in values and values <= {0, 1, 2, 3}, (kind, values)  # enhancing is 3, never 4
    for name in TRAIN:
        assert np.array_equal(_array(predicted["auto"] / f"{name}.nii.gz"), _array(predicted["named"] / f"{name}.nii.gz"))
    # evaluate reads the folder's labels as the layout declares them; its Dice is the written file's
    out = tmp_path / "eval"
    assert main(["evaluate", str(learned_run), "--data", str(layout_data["train_cases"]), "--out", str(out),
                 "--subsets", "observed", "--device", "cpu", "--no-progress"]) == 0
    rows = {r["case"]: r for r in csv.DictReader((out / "cases.csv").open())}
    for name in TRAIN:
        prediction = _array(predicted["auto"] / f"{name}.nii.gz")
        truth = _array(layout_data["train_cases"] / name / f"{name}_lab.nii.gz")
        assert float(rows[name]["dice_et"]) == pytest.approx(_dice(prediction == 3, truth == 3), abs=1e-4)


def test_a_run_from_a_layout_with_a_mask_reads_plain_brats_folders_and_leaves_out_sequences_it_lacks(
        learned_run, seg_folders, tmp_path, capsys):
    out = tmp_path / "brats"
    capsys.readouterr()
    assert main(["predict", str(learned_run), "--input", str(seg_folders["held_brats"]), "--output", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "found BraTS 2017-2021 layout" in said  # not the run's layout, which would demand its mask file
    assert "the model does not take t1, t2: not used (it takes flair, t1ce)" in said
    assert "(flair+t1ce: 4 cases)" in said
    record = json.loads((out / "predict.json").read_text())
    assert record["labels"]["written_as"] == "brats2018"  # the folder's own convention
    assert all(case["sequences"] == ["flair", "t1ce"] for case in record["cases"])
    # one case from its files, the same rule: a sequence the model does not take is left out, and said so
    folder = seg_folders["held_brats"] / "HELD_001"
    assert main(["predict", str(learned_run), f"flair={folder / 'HELD_001_flair.nii.gz'}",
                 f"t2={folder / 'HELD_001_t2.nii.gz'}", "--out", str(tmp_path / "one.nii.gz"), "--device", "cpu"]) == 0
    assert "the model does not take t2: not used (it takes flair, t1ce)" in capsys.readouterr().out
    assert (tmp_path / "one.nii.gz").is_file()
