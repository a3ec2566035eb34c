"""A trained classification run on new samples: ``mckd predict RUN --data ... --output FILE.csv`` and ``mckd.api.load``."""

from __future__ import annotations

import csv
import shutil
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mckd.api import load
from mckd.cli import main
from mckd.evaluation import OBSERVED
from mckd.errors import DataError, MckdError
from mckd.runs import RunDir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def python_run(tmp_path_factory, digits_csv_dir):
    """A run of mckd.api.fit on two digit views, each missing for a third of the samples, and its raw arrays."""
    from mckd.api import arrays_bundle, fit
    from mckd.data.multiview import read_view

    (pix, labels), (fou, _) = read_view(digits_csv_dir, "pix"), read_view(digits_csv_dir, "fou")
    draw = np.random.default_rng(0).random(len(labels))
    pix[draw < 0.3] = np.nan
    fou[draw > 0.7] = np.nan
    names = np.array([f"digit {d}" for d in labels])  # class names, not numbers
    bundle = arrays_bundle({"pix": pix, "fou": fou}, names)
    out = tmp_path_factory.mktemp("predict") / "run"
    result = fit(bundle, *modules(), out,
                 settings={"train.iterations": 40, "train.progress": False, "method.meta_every": 5})
    return out, result, {"pix": pix, "fou": fou}, names


def modules() -> tuple[dict[str, torch.nn.Module], torch.nn.Module]:
    """Encoders and head of the run, built afresh (as a later process would)."""
    return ({"pix": torch.nn.Sequential(torch.nn.Linear(240, 16), torch.nn.ReLU()),
             "fou": torch.nn.Sequential(torch.nn.Linear(76, 16), torch.nn.ReLU())}, torch.nn.Linear(32, 10))


def load_run(run: Path):
    return load(run, *modules())


def _test_rows(run: Path) -> tuple[np.ndarray, list[str]]:
    split = json.loads(RunDir(run).data.read_text())
    return np.array([int(i) for i in split["split_ids"]["test"]]), split["split_labels"]["test"]


def test_loaded_predictor_scores_the_test_split_as_the_evaluation_did(python_run):
    run, result, arrays, _ = python_run
    rows, truth = _test_rows(run)
    predictor = load_run(run)
    predicted = predictor.predict({name: values[rows] for name, values in arrays.items()})  # raw, NaN rows missing
    accuracy = np.mean([p == t for p, t in zip(predicted, truth)])
    assert accuracy == pytest.approx(result.observed[0]["accuracy"], abs=1e-9)
    assert set(predicted) <= {f"digit {d}" for d in range(10)}


def test_the_result_of_fit_predicts_as_the_run_loaded_later(python_run):
    run, result, arrays, _ = python_run
    rows = np.arange(0, 2000, 37)
    new = {name: values[rows] for name, values in arrays.items()}
    assert np.allclose(result.predictor().probabilities(new), load_run(run).probabilities(new), atol=1e-6)


def test_a_modality_left_out_is_missing_for_every_sample(python_run):
    run, result, arrays, _ = python_run
    rows, truth = _test_rows(run)
    predictor = load_run(run)
    pix_only = {"pix": arrays["pix"][rows], "fou": np.full_like(arrays["fou"][rows], np.nan)}
    has_pix = ~np.isnan(arrays["pix"][rows]).all(axis=1)
    left_out = predictor.probabilities({"pix": arrays["pix"][rows][has_pix]})
    assert np.allclose(left_out, predictor.probabilities({k: v[has_pix] for k, v in pix_only.items()}))
    accuracy = np.mean([predictor.classes[c] == t for c, t in zip(left_out.argmax(1), np.array(truth)[has_pix])])
    assert accuracy == pytest.approx(next(r for r in result.subsets if r["subset"] == "pix")["accuracy"], abs=1e-9)


def test_an_unknown_modality_another_shape_or_a_half_missing_row_is_one_error(python_run):
    run, _, arrays, _ = python_run
    predictor = load_run(run)
    with pytest.raises(DataError, match=r"modality 'zer' is not one of the run's \(pix, fou\)"):
        predictor.predict({"pix": arrays["pix"][:5], "zer": np.zeros((5, 47))})
    with pytest.raises(DataError, match=r"shape \(75,\); the run was trained on \(76,\)"):
        predictor.predict({"fou": arrays["fou"][:5, :75]})
    half = arrays["fou"][:5].copy()
    half[np.isfinite(half).all(axis=1).argmax(), 3] = np.nan
    with pytest.raises(DataError, match="present rows hold NaN"):
        predictor.predict({"fou": half})
    with pytest.raises(DataError, match=r"samples \['0', '1'\] \(2\) have none of the modalities"):
        predictor.predict({"pix": np.full((2, 240), np.nan)})


@pytest.fixture(scope="module")
def files_run(tmp_path_factory, python_run):
    """A run of mckd train on the same two views as files (pix.npz with NaN rows, fou.csv without some rows)."""
    _, _, arrays, names = python_run
    folder = tmp_path_factory.mktemp("files")
    ids = np.array([f"d{r:04d}" for r in range(len(names))])
    write_sources(folder, ids, arrays)
    pd.DataFrame({"id": ids, "label": names}).to_csv(folder / "labels.csv", index=False)
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"name": "files", "root": str(folder), "labels": "labels.csv",
                 "modalities": {"pix": {"path": "pix.npz"}, "fou": {"path": "fou.csv", "columns": ["f*"]}}},
        "model": {"name": "by_shape", "feature_dim": 16, "vector_hidden": [32], "head_hidden": 32},
        "task": {"name": "classification"}, "method": {"name": "mckd"}}, sort_keys=False))
    out = folder / "run"
    assert main(["train", str(config), "--out", str(out), "--set", "train.iterations=30", "--set",
                 "train.progress=false", "--set", "method.meta_every=5", "--set", "train.device=cpu"]) == 0
    return out, config


def write_sources(folder: Path, ids: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
    """pix.npz (``id``, ``data``, NaN rows missing) and fou.csv (``id``, ``f0..``), its missing rows left out."""
    np.savez(folder / "pix.npz", id=ids, data=arrays["pix"])
    has = ~np.isnan(arrays["fou"]).all(axis=1)
    table = pd.DataFrame(arrays["fou"][has][::-1], columns=[f"f{k}" for k in range(76)])
    table.insert(0, "id", ids[has][::-1])  # another order than pix.npz: samples are matched by id
    table.to_csv(folder / "fou.csv", index=False)


def test_cli_scores_new_files_each_sample_from_what_it_has_as_the_predictor_does(files_run, python_run, tmp_path):
    from mckd.api import load

    run, _ = files_run
    _, _, arrays, _ = python_run
    rows = np.arange(100, 160)
    new = {name: values[rows] for name, values in arrays.items()}
    ids = np.array([f"new{r:03d}" for r in rows])
    write_sources(tmp_path, ids, new)
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(run), "--data", f"pix={tmp_path / 'pix.npz'}", f"fou={tmp_path / 'fou.csv'}",
                 "--output", str(out)]) == 0
    written = list(csv.DictReader(out.open()))
    predictor = load(run)
    expected = predictor.probabilities(new)
    assert [r["id"] for r in written] == list(ids)
    got = np.array([[float(r[f"p_{c}"]) for c in predictor.classes] for r in written])
    assert np.allclose(got, expected, atol=1e-6)
    assert [r["predicted"] for r in written] == [predictor.classes[c] for c in expected.argmax(1)]
    had = [[m for m in predictor.modalities if not np.isnan(new[m][r]).all()] for r in range(len(rows))]
    assert [r["modalities"] for r in written] == ["+".join(h) for h in had]


def test_a_tables_columns_are_read_by_name_in_any_order_and_a_missing_one_is_named(files_run, tmp_path, capsys):
    run, config = files_run
    table = pd.read_csv(config.parent / "fou.csv", dtype={"id": str})
    pix = f"pix={config.parent / 'pix.npz'}"
    out = {}
    for name, columns in (("as_trained", list(table.columns)),
                          ("reversed", ["id", *reversed(table.columns[1:])]),
                          ("with_extra", [*table.columns, "f_extra"])):
        shuffled = table.assign(f_extra=1.0)[columns]
        shuffled.to_csv(tmp_path / f"{name}.csv", index=False)
        out[name] = tmp_path / f"{name}_predictions.csv"
        assert main(["predict", str(run), "--data", pix, f"fou={tmp_path / f'{name}.csv'}", "--output",
                     str(out[name])]) == 0
    assert out["reversed"].read_text() == out["as_trained"].read_text() == out["with_extra"].read_text()
    table.drop(columns=["f3"]).to_csv(tmp_path / "lacking.csv", index=False)
    assert main(["predict", str(run), "--data", pix, f"fou={tmp_path / 'lacking.csv'}", "--output",
                 str(tmp_path / "x.csv")]) == 2
    assert "are not in this table (e.g. f3)" in capsys.readouterr().err


def test_cli_with_the_training_config_reproduces_the_evaluation_on_the_test_split(files_run, tmp_path):
    run, config = files_run
    out = tmp_path / "all.csv"
    assert main(["predict", str(run), "--data", str(config), "--output", str(out)]) == 0
    predicted = {r["id"]: r["predicted"] for r in csv.DictReader(out.open())}
    split = json.loads(RunDir(run).data.read_text())
    test = zip(split["split_ids"]["test"], split["split_labels"]["test"])
    accuracy = np.mean([predicted[i] == label for i, label in test])
    observed = pd.read_csv(RunDir(run).observed.with_suffix(".csv"))
    assert accuracy == pytest.approx(observed.loc[observed["pattern"] == OBSERVED, "accuracy"].item(), abs=1e-9)


def test_a_run_without_its_scaling_file_is_scaled_by_its_rebuilt_dataset(files_run):
    from mckd.api import load
    from mckd.data.scaling import read_scaling

    run, _ = files_run
    saved = read_scaling(RunDir(run).scaling)
    RunDir(run).scaling.rename(run / "kept.safetensors")
    try:
        rebuilt = load(run).scaling
    finally:
        (run / "kept.safetensors").rename(RunDir(run).scaling)
    assert set(rebuilt) == set(saved) == {"pix", "fou"}
    assert all(np.allclose(rebuilt[m][k], saved[m][k]) for m in saved for k in (0, 1))


def test_cli_names_a_modality_the_run_does_not_know_and_a_segmentation_style_call(files_run, tmp_path, capsys):
    run, _ = files_run
    np.save(tmp_path / "zer.npy", np.zeros((4, 47)))
    assert main(["predict", str(run), "--data", f"zer={tmp_path / 'zer.npy'}", "--output", str(tmp_path / "p.csv")]) == 2
    assert "modality 'zer' is not one of the run's (pix, fou)" in capsys.readouterr().err
    assert main(["predict", str(run), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "mckd predict RUN --data CONFIG.yaml" in capsys.readouterr().err
    for option in (["--sequences", "pix"], ["--tta"], ["--continue"]):
        assert main(["predict", str(run), "--data", f"zer={tmp_path / 'zer.npy'}", "--output",
                     str(tmp_path / "p.csv"), *option]) == 2
        assert f"{option[0]} is an option of segmentation prediction" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()


def test_a_run_of_fit_needs_its_modules_to_be_loaded(python_run):
    from mckd.api import load

    with pytest.raises(MckdError, match=r"load\(run, encoders=..., head=...\)"):
        load(python_run[0])


def test_a_checkpoint_file_of_the_run_predicts_as_the_run_directory(files_run, python_run):
    run, _ = files_run
    arrays = {name: values[:20] for name, values in python_run[2].items()}
    by_file = load(RunDir(run).checkpoint).probabilities(arrays)
    assert np.array_equal(by_file, load(run).probabilities(arrays))


def test_predictions_never_replace_a_file_the_prediction_reads_even_with_force(files_run, tmp_path, capsys):
    run, config = files_run
    folder = tmp_path / "copy"
    shutil.copytree(config.parent, folder, ignore=shutil.ignore_patterns("run"))
    own = yaml.safe_load(config.read_text())
    own["data"]["root"] = str(folder)
    (folder / "config.yaml").write_text(yaml.safe_dump(own))
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    for target, data in [(folder / "fou.csv", [f"pix={folder / 'pix.npz'}", f"fou={folder / 'fou.csv'}"]),
                         (folder / "labels.csv", [str(folder / "config.yaml")])]:
        assert main(["predict", str(run), "--data", *data, "--output", str(target), "--force"]) == 2
        assert "which this command reads" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_force_replaces_an_earlier_prediction_but_no_other_file(files_run, tmp_path, capsys):
    run, config = files_run
    records = sorted(p for p in run.rglob("*.csv"))  # the run's own tables and logs
    notes = tmp_path / "notes.csv"
    notes.write_text("id,remark\n1,keep me\n")
    for target in (*records[:2], notes):
        before = target.read_bytes()
        assert main(["predict", str(run), "--data", str(config), "--output", str(target), "--force"]) == 2
        assert "is not a table of predictions mckd wrote" in capsys.readouterr().err
        assert target.read_bytes() == before
    earlier = tmp_path / "predictions.csv"
    assert main(["predict", str(run), "--data", str(config), "--output", str(earlier)]) == 0
    assert main(["predict", str(run), "--data", str(config), "--output", str(earlier), "--force"]) == 0


def test_inputs_without_a_single_row_are_one_error(python_run):
    from mckd.errors import DataError

    predictor = load_run(python_run[0])
    with pytest.raises(DataError, match="no samples: .* have no rows"):
        predictor.predict({name: np.zeros((0, size)) for name, size in zip(predictor.modalities, (240, 76))})


def test_predicting_warns_when_column_order_or_ids_cannot_be_checked(files_run, tmp_path):
    run, config = files_run
    old = tmp_path / "old_run"
    shutil.copytree(run, old)
    record = json.loads((old / "data.json").read_text())
    del record["columns"]  # as a run of an mckd that recorded no column names
    (old / "data.json").write_text(json.dumps(record))
    fou = f"fou={config.parent / 'fou.csv'}"
    with pytest.warns(UserWarning, match="recorded no column names for this modality"):
        assert main(["predict", str(old), "--data", fou, "--output", str(tmp_path / "old.csv")]) == 0
    table = pd.read_csv(config.parent / "fou.csv", dtype={"id": str})
    np.savez(tmp_path / "pix.npz", id=np.array([f"other{r}" for r in range(len(table))]),
             data=np.zeros((len(table), 240), dtype=np.float32))
    with pytest.warns(UserWarning, match="no sample id appears in more than one of the sources"):
        assert main(["predict", str(run), "--data", f"pix={tmp_path / 'pix.npz'}", fou, "--output",
                     str(tmp_path / "disjoint.csv")]) == 0
