"""Runs written by mckd 0.1 (checkpoint format 2, the old config layout) still evaluate and predict.

The run directories in ``tests/data`` were written by that version's code
(see ``tests/data/README.md``), with its own evaluation beside them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from brats_helpers import cache2013  # noqa: F401 (fixture)
from conftest import shared_path
from mckd.cli import main
from mckd.config_upgrade import OldConfigLayout
from mckd.errors import CheckpointError
from mckd.report import read_table
from mckd.runs import evaluate_run

DATA = Path(__file__).resolve().parent / "data"


def copy_run(name: str, tmp_path: Path) -> Path:
    run = tmp_path / name
    shutil.copytree(DATA / name, run)
    return run


def test_an_old_digits_run_evaluates_to_the_numbers_its_own_version_wrote(tmp_path, digits_csv_dir):
    run = copy_run("old_digits_run", tmp_path)
    expected = read_table(run / "eval" / "subsets.csv")
    shutil.rmtree(run / "eval")
    with pytest.warns(OldConfigLayout):
        rows = evaluate_run(run, "cpu").subsets
    assert [(r["subset"], r["accuracy"]) for r in rows] == [(r["subset"], r["accuracy"]) for r in expected]


def test_an_old_run_cannot_be_resumed_and_says_how_to_go_on(tmp_path, digits_csv_dir):
    from mckd.config import load_config
    from mckd.train import train

    run = copy_run("old_digits_run", tmp_path)
    with pytest.warns(OldConfigLayout):
        config = load_config(run / "config.yaml")
    with pytest.raises(CheckpointError, match=r"written by an older mckd \(format 2\) and cannot be resumed; evaluate it"):
        train(config, run, resume=True)


def test_an_old_brats_run_predicts_a_case_without_reading_its_cache(tmp_path, capsys):
    run = copy_run("old_brats_run", tmp_path)
    folder = shared_path("brats2013", "brats_2013_pat0006_1")
    out = tmp_path / "seg.nii.gz"
    with pytest.warns(OldConfigLayout):
        code = main(["predict", str(run), f"flair={folder / 'Flair_subtrMeanDivStd.nii.gz'}",
                     "--mask", str(folder / "brainmask.nii.gz"), "--out", str(out), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    import nibabel as nib
    import numpy as np

    labels = np.asarray(nib.load(str(out)).dataobj)
    assert labels.shape == (240, 240, 155) and set(np.unique(labels)) <= {0, 1, 2, 4}
