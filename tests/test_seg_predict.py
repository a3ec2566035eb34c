"""Prediction over folders and evaluation on new labelled cases, as a user runs them, on cases the run never saw.

A tiny run is trained on an MSD-format set (cases with real missing
sequences, one at 2 mm); then folders of held-out cases in MSD, nnU-Net v2
and BraTS formats (with and without a sequence, at 3 and 2 mm) are predicted
and evaluated with ``--data``. Every check is computed here from the files
with numpy: the output grid, the label values, the mask, each case's Dice.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import ROOT
from mckd.cli import main
from mckd.evaluation import OBSERVED
from seg_helpers import REGIONS_BRATS, REGIONS_MSD, seg_cache, seg_folders, seg_run  # noqa: F401 (fixtures)

# format -> (folder key, label values it declares, region values, output name of a case, where its labels are)
FORMATS = {
    "msd": ("held_msd", {0, 1, 2, 3}, REGIONS_MSD, "{case}.nii.gz", "labelsTr/{case}.nii.gz"),
    "nnunet": ("held_nnunet", {0, 1, 2, 3}, REGIONS_MSD, "{case}.nii.gz", "labelsTr/{case}.nii.gz"),
    "brats": ("held_brats", {0, 1, 2, 4}, REGIONS_BRATS, "{case}.nii.gz", "{case}/{case}_seg.nii.gz"),
}
CASES = ("HELD_001", "HELD_002", "HELD_003", "HELD_004")


def _array(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def _inputs(folder: Path, kind: str, case: str) -> list[Path]:
    if kind == "msd":
        return [folder / "imagesTr" / f"{case}.nii.gz"]
    if kind == "nnunet":
        return sorted((folder / "imagesTr").glob(f"{case}_0*.nii.gz"))
    return sorted(p for p in (folder / case).glob("*.nii.gz") if not p.name.endswith("_seg.nii.gz"))


def _mask(paths: list[Path]) -> np.ndarray:
    """Voxels where any sequence differs from its corner (background) value; a 4D file's channels each."""
    mask = None
    for path in paths:
        data = _array(path)
        channels = [data[..., c] for c in range(data.shape[3])] if data.ndim == 4 else [data]
        for channel in channels:
            part = channel != channel[0, 0, 0]
            mask = part if mask is None else mask | part
    return mask


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if a.sum() + b.sum() == 0 else 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def predicted(seg_run: Path, seg_folders, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each held-out folder predicted once with mckd predict (default options)."""
    out = {}
    for kind, (key, *_) in FORMATS.items():
        out[kind] = tmp_path_factory.mktemp(f"pred_{kind}") / "out"
        assert main(["predict", str(seg_run), "--input", str(seg_folders[key]), "--output", str(out[kind]),
                     "--device", "cpu"]) == 0
    return out


@pytest.mark.parametrize("kind", list(FORMATS))
def test_each_output_lies_on_its_inputs_grid_uses_the_declared_labels_and_stays_inside_the_mask(
        kind, predicted, seg_folders):
    key, values, _, name, _ = FORMATS[kind]
    folder = seg_folders[key]
    for case in CASES:
        output = predicted[kind] / name.format(case=case)
        inputs = _inputs(folder, kind, case)
        written, reference = nib.load(str(output)), nib.load(str(inputs[0]))
        assert written.shape == reference.shape[:3] and np.allclose(written.affine, reference.affine)
        labels = np.asanyarray(written.dataobj)
        assert set(np.unique(labels).tolist()) <= values
        assert not labels[~_mask(inputs)].any()
    record = json.loads((predicted[kind] / "predict.json").read_text())
    by_case = {c["case"]: c for c in record["cases"]}
    assert by_case["HELD_002"]["sequences"] == ["flair", "t1", "t1ce"] and by_case["HELD_002"]["missing"] == ["t2"]
    assert by_case["HELD_004"]["resampled"] and by_case["HELD_004"]["spacing"] == [2.0, 2.0, 2.0]
    assert not by_case["HELD_003"]["resampled"]
    assert record["options"]["tta"] == "off" and record["labels"]["written_as"]


@pytest.mark.parametrize("kind", list(FORMATS))
def test_each_cases_dice_from_evaluate_data_matches_the_dice_of_the_written_prediction(
        kind, predicted, seg_run, seg_folders, tmp_path):
    key, _, regions, name, labels_at = FORMATS[kind]
    folder = seg_folders[key]
    out = tmp_path / "eval"
    assert main(["evaluate", str(seg_run), "--data", str(folder), "--subsets", "observed", "--out", str(out),
                 "--device", "cpu"]) == 0
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert [r["case"] for r in rows] == list(CASES) and {r["as_observed"] for r in rows} == {"yes"}
    for row in rows:
        predicted_labels = _array(predicted[kind] / name.format(case=row["case"]))
        truth = _array(folder / labels_at.format(case=row["case"]))
        for region, members in regions.items():
            expected = _dice(np.isin(predicted_labels, members), np.isin(truth, members))
            assert float(row[f"dice_{region}"]) == pytest.approx(expected, abs=1e-6), (row["case"], region)
    record = json.loads((out / "evaluation.json").read_text())
    assert record["grid"].startswith("each case's own")


def test_evaluate_data_gives_every_subset_over_the_cases_that_have_it_and_each_case_as_observed(seg_run, seg_folders,
                                                                                                tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", str(seg_run), "--data", str(seg_folders["held_brats"]), "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    cases = list(csv.DictReader((out / "cases.csv").open()))
    subsets = {r["subset"]: r for r in csv.DictReader((out / "subsets.csv").open())}
    assert len(subsets) == 15
    assert (int(subsets["flair"]["samples"]), int(subsets["t1"]["samples"]), int(subsets["t2"]["samples"])) == (4, 2, 1)
    assert int(subsets["t1+t2"]["samples"]) == 1  # HELD_001 alone has both
    flair = [float(r["dice_wt"]) for r in cases if r["subset"] == "flair"]
    assert float(subsets["flair"]["dice_wt"]) == pytest.approx(np.mean(flair))
    observed = {r["pattern"]: r for r in csv.DictReader((out / "observed.csv").open())}
    assert {p: int(r["samples"]) for p, r in observed.items()} == {
        OBSERVED: 4, "flair+t1ce": 2, "flair+t1+t1ce": 1, "flair+t1+t1ce+t2": 1}
    assert "| ● | ○ | ● | ○ |" in (out / "table.md").read_text()


def test_tta_probabilities_and_post_processing_are_options_stated_in_the_record(seg_run, seg_folders, tmp_path):
    from scipy import ndimage

    out = tmp_path / "out"
    assert main(["predict", str(seg_run), "--input", str(seg_folders["held_brats"]), "--output", str(out),
                 "--tta", "--probabilities", "--largest-component", "--et-min-voxels", "5",
                 "--sequences", "flair,t1ce", "--device", "cpu"]) == 0
    record = json.loads((out / "predict.json").read_text())
    assert record["options"]["tta"].startswith("8 mirrorings") and record["options"]["largest_component"]
    assert record["postprocessing"]["et_min_voxels"] == 5 and record["labels"]["probabilities"] == ["ET", "TC", "WT"]
    for case in CASES:
        labels = _array(out / f"{case}.nii.gz")  # BraTS's submission names
        probabilities = _array(out / f"{case}_probabilities.nii.gz")
        assert probabilities.shape == labels.shape + (3,) and 0 <= probabilities.min() and probabilities.max() <= 1
        assert ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))[1] <= 1
        assert not ((labels > 0) & (probabilities.max(axis=-1) <= 0.5)).any()  # tumour only where a region has p > 0.5
        assert [c for c in record["cases"] if c["case"] == case][0]["sequences"] == ["flair", "t1ce"]


def test_existing_outputs_are_kept_unless_forced_and_continue_predicts_the_rest(seg_run, seg_folders, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["predict", str(seg_run), "--input", str(seg_folders["held_msd"]), "--output", str(out), "--device", "cpu"]
    assert main(args) == 0
    assert "[1/4] HELD_001: flair+t1+t1ce+t2 -> " in capsys.readouterr().out  # a line per case through a pipe
    (out / "HELD_002.nii.gz").unlink()
    assert main(args) == 2
    assert "HELD_001.nii.gz exists (3 of 4 outputs do); pass --force" in capsys.readouterr().err
    assert main(args + ["--continue"]) == 0
    record = json.loads((out / "predict.json").read_text())
    assert [c.get("skipped", "") for c in record["cases"]] == ["its output existed", "", "its output existed",
                                                               "its output existed"]


def test_one_case_at_another_spacing_is_predicted_onto_its_own_grid(seg_run, seg_folders, tmp_path):
    folder = seg_folders["held_brats"] / "HELD_004"
    out = tmp_path / "one.nii.gz"
    assert main(["predict", str(seg_run), f"flair={folder / 'HELD_004_flair.nii.gz'}",
                 f"t1ce={folder / 'HELD_004_t1ce.nii.gz'}", "--out", str(out), "--device", "cpu"]) == 0
    written, reference = nib.load(str(out)), nib.load(str(folder / "HELD_004_flair.nii.gz"))
    assert written.shape == (120, 120, 78) and np.allclose(written.affine, reference.affine)
    assert set(np.unique(np.asanyarray(written.dataobj)).tolist()) <= {0, 1, 2, 3}  # the run's msd_brats values
    again = tmp_path / "again.nii.gz"
    assert main(["predict", str(seg_run), f"flair={folder / 'HELD_004_flair.nii.gz'}", "--out", str(again),
                 "--labels", "brats2018", "--device", "cpu"]) == 0
    assert set(np.unique(_array(again)).tolist()) <= {0, 1, 2, 4}


def test_cases_with_real_missing_sequences_train_and_are_evaluated_as_observed(seg_run: Path):
    observed = {r["pattern"]: r for r in csv.DictReader((seg_run / "eval" / "observed.csv").open())}
    patterns = {r["pattern"]: r for r in csv.DictReader((seg_run / "eval" / "patterns.csv").open())}
    assert "flair+t1ce" in patterns and "flair+t1+t1ce+t2" in patterns  # both kinds of case in the data
    assert int(observed[OBSERVED]["samples"]) == 1


def test_small_components_go_and_the_largest_stays():
    from mckd.seg.segment import remove_small_components

    labels = np.zeros((10, 10, 10), np.uint8)
    labels[0:3, 0:3, 0:3] = 2  # 27 voxels
    labels[6, 6, 6] = 1  # 1 voxel
    labels[8:10, 8:10, 0] = 4  # 4 voxels
    assert (remove_small_components(labels, 5, False) > 0).sum() == 27
    assert (remove_small_components(labels, 2, False) > 0).sum() == 31
    kept = remove_small_components(labels, 0, True)
    assert (kept > 0).sum() == 27 and (kept[0:3, 0:3, 0:3] == 2).all()


def test_upsampling_keeps_the_values_the_model_saw_at_their_voxels():
    from mckd.seg.segment import upsample_strided

    coarse = torch.rand(1, 2, 4, 5, 3)
    fine = upsample_strided(coarse, 2, (8, 10, 5))
    assert fine.shape == (1, 2, 8, 10, 5)
    torch.testing.assert_close(fine[..., ::2, ::2, ::2], coarse)  # voxel j of the view is voxel 2j of the crop
    torch.testing.assert_close(fine[..., 1, 0, 0], (coarse[..., 0, 0, 0] + coarse[..., 1, 0, 0]) / 2)


def test_mirroring_averages_over_the_eight_flips_of_three_axes():
    from mckd.seg.segment import mirrorings

    flips = mirrorings(True)
    assert len(flips) == 8 and len(set(flips)) == 8 and mirrorings(False) == [()]


def test_under_torchrun_the_cases_are_shared_out_between_processes(seg_run, seg_folders, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "mckd.cli",
               "predict", str(seg_run), "--input", str(seg_folders["held_msd"]), "--output", str(out),
               "--device", "cpu", "--no-progress"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[:3000]
    record = json.loads((out / "predict.json").read_text())
    assert record["processes"] == 2
    assert {c["case"]: c["rank"] for c in record["cases"]} == {"HELD_001": 0, "HELD_002": 1, "HELD_003": 0,
                                                               "HELD_004": 1}
    assert all((out / f"{case}.nii.gz").is_file() for case in CASES)


def test_evaluate_data_on_a_cache_scores_it_on_the_runs_grid_and_refuses_another_grid(seg_run, seg_folders, tmp_path,
                                                                                       capsys):
    prepare = ["prepare", "seg", str(seg_folders["held_msd"]), "--allow-missing", "--workers", "1", "--no-progress",
               "--labels", "msd_brats"]
    assert main([*prepare[:3], str(tmp_path / "same"), *prepare[3:], "--spacing", "3", "3", "3"]) == 0
    assert main(["evaluate", str(seg_run), "--data", str(tmp_path / "same"), "--out", str(tmp_path / "eval"),
                 "--device", "cpu"]) == 0
    subsets = {r["subset"]: r for r in csv.DictReader((tmp_path / "eval" / "subsets.csv").open())}
    assert (int(subsets["flair"]["samples"]), int(subsets["t2"]["samples"])) == (4, 1)
    assert main([*prepare[:3], str(tmp_path / "finer"), *prepare[3:], "--spacing", "2", "2", "2"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(seg_run), "--data", str(tmp_path / "finer"), "--device", "cpu"]) == 2
    assert "is on a 2x2x2 mm, RAS orientation grid, the run's on 3x3x3 mm" in capsys.readouterr().err


def test_wrong_requests_end_in_one_line_naming_what_is_wrong(seg_run, seg_folders, tmp_path, capsys):
    afile = tmp_path / "a_file"
    afile.write_text("x")
    cases = [
        (["--input", str(seg_folders["held_msd"]), "--output", str(afile)], "is a file; expected a folder"),
        (["--input", str(seg_folders["held_msd"]), "--output", str(tmp_path / "o"), "--sequences", "dwi"],
         "--sequences dwi: ['dwi'] are not among the model's"),
        (["--input", str(tmp_path), "--output", str(tmp_path / "o")], "holds no case folders and no NIfTI files"),
        (["--input", str(seg_folders["held_msd"])], "--input DIR needs --output DIR"),
        (["--input", str(seg_folders["held_msd"]), "--output", str(tmp_path / "o.csv")], "looks like a file"),
        (["--input", str(seg_folders["held_msd"]), "--output", str(tmp_path / "o"), "--labels", "brats2099"],
         "label convention 'brats2099' is neither"),
    ]
    for extra, message in cases:
        assert main(["predict", str(seg_run), *extra, "--device", "cpu"]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.csv").exists()


def test_a_prediction_or_evaluation_folder_in_use_by_another_process_is_refused_naming_it(seg_run, seg_folders,
                                                                                           tmp_path, capsys):
    from helpers import held_by_another_process

    busy = tmp_path / "busy"
    with held_by_another_process(busy, "dir") as holder:
        for argv in (["predict", seg_run, "--input", seg_folders["held_msd"], "--output", busy],
                     ["evaluate", seg_run, "--data", seg_folders["held_msd"], "--out", busy]):
            capsys.readouterr()
            assert main([str(a) for a in (*argv, "--device", "cpu", "--no-progress")]) == 2
            assert f"in use by process {holder}" in capsys.readouterr().err
        assert not busy.exists()


def test_plot_seg_draws_a_run_of_the_seg_dataset(seg_cache, tmp_path):
    from seg_helpers import TINY_SEG

    from mckd.config import apply_overrides, config_from_dict, load_raw
    from mckd.train import train

    run = tmp_path / "seg_named"
    raw = load_raw(ROOT / "configs" / "brats_small_cpu.yaml")
    train(config_from_dict(apply_overrides(raw, [f"data.cache={seg_cache}", *TINY_SEG, "data.name=seg"])), run)
    case = json.loads((seg_cache / "dataset.json").read_text())["cases"][0]
    sequence = json.loads((seg_cache / "dataset.json").read_text())["modalities"][0]
    out = tmp_path / "case.png"
    assert main(["plot-seg", str(run), "--case", case, "--subset", sequence, "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000


def test_predict_never_writes_over_a_file_an_input_case_reads_even_with_force(seg_run, seg_folders, tmp_path, capsys):
    nnunet = tmp_path / "nnunet"
    shutil.copytree(seg_folders["held_nnunet"], nnunet)
    label = nnunet / "labelsTr" / "HELD_001.nii.gz"
    before = label.read_bytes()
    capsys.readouterr()
    assert main(["predict", str(seg_run), "--input", str(nnunet / "imagesTr"), "--output", str(nnunet / "labelsTr"),
                 "--force", "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"refusing to write {label}: it is case HELD_001's label file (its ground truth)" in err
    assert label.read_bytes() == before
    msd = tmp_path / "msd"
    shutil.copytree(seg_folders["held_msd"], msd)
    assert main(["predict", str(seg_run), "--input", str(msd / "imagesTr"), "--output", str(msd / "imagesTr"),
                 "--force", "--device", "cpu", "--no-progress"]) == 2
    assert "it is case HELD_001's flair image" in capsys.readouterr().err
    flair = seg_folders["held_brats"] / "HELD_001" / "HELD_001_flair.nii.gz"
    assert main(["predict", str(seg_run), f"flair={flair}", "--out", str(flair), "--force", "--device", "cpu"]) == 2
    assert f"refusing to write {flair}: it is the flair image given" in capsys.readouterr().err
    # a BraTS folder written into itself: outputs take BraTS's prediction names, beside the case folders
    brats = tmp_path / "brats"
    shutil.copytree(seg_folders["held_brats"], brats)
    labels = {p: p.read_bytes() for p in brats.glob("*/*_seg.nii.gz")}
    assert main(["predict", str(seg_run), "--input", str(brats), "--output", str(brats), "--force", "--device", "cpu",
                 "--no-progress"]) == 0
    assert all(path.read_bytes() == data for path, data in labels.items())
    assert sorted(p.name for p in brats.glob("*.nii.gz")) == [f"{case}.nii.gz" for case in CASES]


def test_a_brats_folder_whose_cases_lack_flair_is_recognised_from_their_other_files(seg_run, seg_folders, tmp_path,
                                                                                     capsys):
    from mckd.seg.formats import detect_format

    brats = tmp_path / "no_flair"
    shutil.copytree(seg_folders["held_brats"], brats)
    for path in brats.glob("*/*_flair.nii.gz"):
        path.unlink()
    found = detect_format(brats)
    assert found.kind == "brats2018" and all("flair" not in case.images for case in found.cases(labelled=True))
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["predict", str(seg_run), "--input", str(brats), "--output", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    said = capsys.readouterr().out
    # each case's sequences, from its files: the header and the record say those, never the model's
    has = {case: [m for m in ("flair", "t1", "t1ce", "t2") if (brats / case / f"{case}_{m}.nii.gz").is_file()]
           for case in CASES}
    record = json.loads((out / "predict.json").read_text())
    assert {c["case"]: c["sequences"] for c in record["cases"]} == has
    patterns = {}
    for sequences in has.values():
        patterns["+".join(sequences)] = patterns.get("+".join(sequences), 0) + 1
    for pattern, n in patterns.items():
        assert f"{pattern}: {n} case{'s' if n > 1 else ''}" in said, said
    assert "flair+" not in said


def test_an_option_a_command_does_not_have_is_named_with_the_command_once(seg_run, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(seg_run), "--allow-missing"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mckd: error: mckd predict: unrecognized arguments: --allow-missing") and "mckd: mckd" not in err
