"""Your own data: every file kind, real missingness end to end, encoders by shape, the Python route.

Real files throughout: the UCI digits written as a user's files by
``examples/digits_as_files.py``, MNIST images as PNG files, FSDD recordings as
sequences, BraTS crops as NIfTI volumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, shared_path
from mckd.build import build_experiment
from mckd.cli import main
from mckd.config import config_from_dict, load_config, load_raw
from mckd.data.files import FilesOptions, ModalitySource, build_files
from mckd.evaluation import OBSERVED
from mckd.errors import ConfigError, DataError
from mckd.runs import RunDir
from mckd.train import train

OWN = ROOT / "configs" / "own_data.yaml"
TINY = ["train.iterations=12", "train.log_every=6", "train.progress=false", "train.device=cpu",
        "method.meta_every=3", "eval.batch_size=256"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory, digits_csv_dir) -> Path:
    """The digits as six sources of five kinds with real missingness (the README's example)."""
    out = tmp_path_factory.mktemp("digits_files")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "digits_as_files.py"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return out


def own_config(files: Path, *overrides: str):
    return load_config(OWN, [f"data.root={files}", *TINY, *overrides])


def presence_of(bundle) -> tuple[list[str], np.ndarray]:
    ids = [i for split in ("train", "val", "test") for i in bundle.info["split_ids"][split]]
    present = torch.cat([bundle.train.present, bundle.val.present, bundle.test.present]).numpy()
    return ids, present


def test_the_example_files_load_with_the_missingness_each_file_states(digits_files):
    bundle = build_experiment(own_config(digits_files)).bundle
    assert bundle.modalities == ("pix", "fac", "fou", "kar", "mor", "zer")  # the config's order
    assert bundle.input_shapes == {"pix": (240,), "fac": (216,), "fou": (76,), "kar": (64,), "mor": (6,), "zer": (47,)}
    ids, present = presence_of(bundle)
    has = dict(zip(bundle.modalities, present.T))
    pix_ids = set((digits_files / "pix_ids.txt").read_text().split())
    fac = np.load(digits_files / "fac.npz")
    fac_ids = {str(i) for i, row in zip(fac["id"], fac["data"]) if not np.isnan(row).all()}
    zer_ids = {p.stem for p in (digits_files / "zer").glob("*.npy")}
    import pandas as pd

    records = pd.read_csv(digits_files / "records.csv", dtype={"id": str}).set_index("id")
    kar_ids = set(records.index[records["kar_measured"] == 1])
    fou_ids = set(records.index[records.filter(like="fou_").notna().any(axis=1)])
    for name, expected in (("pix", pix_ids), ("fac", fac_ids), ("zer", zer_ids), ("kar", kar_ids), ("fou", fou_ids)):
        assert {i for i, h in zip(ids, has[name]) if h} == expected, name
    assert has["mor"].all() and 0 < present.all(axis=1).sum() < len(ids)
    assert {k: len(v) for k, v in bundle.info["split_ids"].items()} == {"train": 1200, "val": 200, "test": 600}


def _source(kind: str, folder: Path, ids: list[str], values: np.ndarray) -> ModalitySource:
    """Write ``values`` ``[S, D]`` under ``ids`` as a file of ``kind``; return its source."""
    if kind == "npy":
        np.save(folder / "m.npy", values)
        (folder / "m_ids.txt").write_text("\n".join(ids))
        return ModalitySource(path=str(folder / "m.npy"), ids=str(folder / "m_ids.txt"))
    if kind == "npz":
        np.savez(folder / "m.npz", id=np.array(ids), data=values)
        return ModalitySource(path=str(folder / "m.npz"))
    if kind == "folder":
        (folder / "m").mkdir()
        for i, row in zip(ids, values):
            np.save(folder / "m" / f"{i}.npy", row)
        return ModalitySource(path=str(folder / "m"))
    import pandas as pd

    table = pd.DataFrame(values, columns=[f"v{k}" for k in range(values.shape[1])]).assign(id=ids)
    path = folder / f"m.{kind}"
    if kind == "parquet":
        table.to_parquet(path)
    else:
        table.to_csv(path, sep="\t" if kind == "tsv" else ",", index=False)
    return ModalitySource(path=str(path), columns=["v*"])


@pytest.mark.parametrize("kind", ["npy", "npz", "csv", "tsv", "parquet", "folder"])
def test_every_file_kind_gives_the_same_samples_matched_by_id(tmp_path, digits_csv_dir, kind):
    from mckd.data.multiview import read_view

    values, labels = read_view(digits_csv_dir, "mor")
    values, labels = values[::10], labels[::10]  # 200 samples, 20 of each digit
    ids = [f"s{i}" for i in range(200)]
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"{i},{l}\n" for i, l in zip(ids, labels)))
    order = np.random.default_rng(1).permutation(200)[:150]  # a shuffled subset: 50 samples lack it
    other = np.random.default_rng(2).normal(size=(200, 3)).astype(np.float32)  # a complete second modality
    np.savez(tmp_path / "other.npz", id=np.array(ids), data=other)
    options = FilesOptions(modalities={"m": _source(kind, tmp_path, [ids[r] for r in order], values[order]),
                                       "other": ModalitySource(path=str(tmp_path / "other.npz"))},
                           labels=str(tmp_path / "labels.csv"), standardise=False)
    bundle = build_files(options, seed=0)
    got_ids, present = presence_of(bundle)
    inputs = torch.cat([bundle.train.inputs[0], bundle.val.inputs[0], bundle.test.inputs[0]]).numpy()
    row_of = {i: r for r, i in enumerate(got_ids)}
    for r in order:
        np.testing.assert_allclose(inputs[row_of[ids[r]]], values[r], rtol=1e-6)
    assert present[:, 0].sum() == 150 and present[:, 1].all()
    missing = [row_of[i] for i in set(ids) - {ids[r] for r in order}]
    assert not present[missing, 0].any() and (inputs[missing] == 0).all()  # missing entries are zeros, never read


def _labels_and_table(tmp_path: Path, rows: list[str],
                      labels: str = "id,label,split\na,0,train\nb,1,train\nc,0,val\nd,1,test\n") -> FilesOptions:
    (tmp_path / "labels.csv").write_text(labels)
    (tmp_path / "t.csv").write_text("id,x,y,flag\n" + "\n".join(rows) + "\n")
    np.savez(tmp_path / "other.npz", id=np.array(["a", "b", "c", "d"]), data=np.ones((4, 2), np.float32))
    return FilesOptions(modalities={"t": ModalitySource(path=str(tmp_path / "t.csv"), columns=["x", "y"]),
                                    "other": ModalitySource(path=str(tmp_path / "other.npz"))},
                        labels=str(tmp_path / "labels.csv"), split_column="split", standardise=False)


@pytest.mark.parametrize(
    "rows,present",
    [
        (["a,1,2,1", "b,3,4,1", "c,5,6,1", "d,7,8,1"], [True, True, True, True]),
        (["a,1,2,1", "b,,,1", "c,5,6,1", "d,7,8,1"], [True, False, True, True]),  # an all-NaN row: missing
        (["a,1,2,1", "c,5,6,1", "d,7,8,1"], [True, False, True, True]),  # an absent row: missing
        (["a,1,2,0", "b,3,4,1", "c,nan,nan,0", "d,7,8,1"], [False, True, False, True]),  # flagged off: missing
    ],
)
def test_a_modality_is_missing_when_its_row_is_absent_all_nan_or_flagged(tmp_path, rows, present):
    options = _labels_and_table(tmp_path, rows)
    options.modalities["t"].presence_column = "flag"
    bundle = build_files(options, seed=0)
    ids, has = presence_of(bundle)
    assert [bool(has[ids.index(i), 0]) for i in "abcd"] == present


@pytest.mark.parametrize(
    "rows,labels,change,message",
    [
        (["a,1,2,1", "b,3,,1", "c,5,6,1", "d,7,8,1"], None, None, r"present rows hold NaN or infinite values, sample ids \['b'\]"),
        (["a,1,2,1", "b,inf,4,1", "c,5,6,1", "d,7,8,1"], None, None, r"NaN or infinite values, sample ids \['b'\]"),
        (["a,1,2,1", "a,3,4,1", "c,5,6,1", "d,7,8,1"], None, None, r"sample ids occur twice: \['a'\]"),
        (["a,1,2,1", "b,3,4,1", "c,5,6,1", "e,7,8,1"], None, None, r"sample ids \['e'\] \(1\) have no label"),
        (["a,1,2,1", "b,3,4,1", "c,5,6,1", "d,x,8,1"], None, None, r"column 'x' holds 'x', not a number"),
        (["a,,,1", "b,,,1", "c,,,1", "d,,,1"], None, None, "no sample has this modality"),
        (["a,1,2,1", "b,3,4,1", "c,5,6,1", "d,7,8,2"], None, "flag", r"presence column 'flag' holds \['2'\]"),
        (["a,1,2,1", "b,3,4,1", "c,5,6,1", "d,7,8,1"], "id,label,split\na,0,train\nb,1,train\nc,0,val\nd,,test\n",
         None, "a sample has no label"),
        (["a,1,2,1", "b,3,4,1", "c,5,6,1", "d,7,8,1"], "id,label,split\na,0,train\nb,1,train\nc,0,val\nd,7,test\n",
         "classes", r"labels \['7'\] are not among data.classes"),
        (["a,1,2,1", "b,3,4,1", "c,5,6,1", "d,7,8,1"], "id,label,split\na,0,train\nb,1,train\nb,0,val\nd,1,test\n",
         None, "sample ids occur twice among the labels"),
        (["a,1,2,1", "b,3,4,1", "c,5,6,1", "d,7,8,1"], "id,label,split\na,0,train\nb,1,train\nc,0,dev\nd,1,test\n",
         None, "split value 'dev' is not train, val or test"),
        (["a,1,2,1", "b,3,4,1", "c,5,6,1", "d,7,8,1"], None, "id_column", "has no id column 'key'"),
    ],
)
def test_bad_inputs_are_one_clear_error_naming_the_file_the_ids_and_the_modality(tmp_path, rows, labels, change, message):
    options = _labels_and_table(tmp_path, rows, *([labels] if labels else []))
    if change == "flag":
        options.modalities["t"].presence_column = "flag"
    if change == "classes":
        options.classes = ["0", "1"]
    if change == "id_column":
        options.id_column = "key"
    with pytest.raises(DataError, match=message) as error:
        build_files(options, seed=0)
    assert "\n" not in str(error.value)


def test_samples_of_different_shapes_in_a_folder_and_a_sample_with_nothing_are_errors(tmp_path):
    (tmp_path / "labels.csv").write_text("id,label,split\na,0,train\nb,1,train\nc,0,val\nd,1,test\n")
    (tmp_path / "f").mkdir()
    np.save(tmp_path / "f" / "a.npy", np.ones((3, 4), np.float32))
    np.save(tmp_path / "f" / "b.npy", np.ones((3, 5), np.float32))
    options = FilesOptions(modalities={"f": ModalitySource(path=str(tmp_path / "f"))}, labels=str(tmp_path / "labels.csv"),
                           split_column="split")
    with pytest.raises(DataError, match=r"b.npy \(f\) has shape \(3, 5\) but a.npy has \(3, 4\)"):
        build_files(options, seed=0)
    np.save(tmp_path / "f" / "b.npy", np.ones((3, 4), np.float32))
    with pytest.raises(DataError, match=r"samples \['c', 'd'\] \(2\) have none of the modalities"):
        build_files(options, seed=0)


def test_a_meta_validation_split_without_a_complete_sample_is_refused_before_training(tmp_path, digits_files):
    import pandas as pd

    labels = pd.read_csv(digits_files / "labels.csv", dtype={"id": str})
    ids = set((digits_files / "pix_ids.txt").read_text().split())
    labels["split"] = ["val" if i not in ids and k % 3 == 0 else ("test" if k % 3 == 1 else "train")
                       for k, i in enumerate(labels["id"])]  # every val sample lacks pix
    labels.to_csv(tmp_path / "labels.csv", index=False)
    config = own_config(digits_files, f"data.labels={tmp_path / 'labels.csv'}", "data.split_column=split")
    with pytest.raises(DataError, match="the meta-validation split has no sample with every modality"):
        train(config, tmp_path / "run")
    assert not RunDir(tmp_path / "run").checkpoint.exists()


def test_training_and_evaluation_with_real_missingness_on_the_example_files(digits_files, tmp_path):
    config = own_config(digits_files)
    assert main(["train", str(OWN), "--out", str(tmp_path / "run"), "--set", f"data.root={digits_files}",
                 *[a for o in TINY for a in ("--set", o)]]) == 0
    run = RunDir(tmp_path / "run")
    observed = (run.observed.with_suffix(".csv")).read_text()
    assert observed.splitlines()[1].startswith(f'"{OBSERVED}",,600,')  # the summary row's comma is quoted
    for path in run.eval_dir.glob("*.*"):
        assert "nan" not in path.read_text().lower(), path
    split = json.loads(run.data.read_text())["split_ids"]
    assert sorted(split["test"]) == sorted(build_experiment(config).bundle.info["split_ids"]["test"])


def test_benchmark_compares_methods_on_the_rows_of_real_missingness(digits_files, tmp_path):
    out = tmp_path / "bench"
    assert main(["benchmark", str(OWN), "--methods", "mckd", "baseline", "lckd", "shaspec", "--seeds", "0", "--out",
                 str(out), "--set", f"data.root={digits_files}", *[a for o in TINY for a in ("--set", o)]]) == 0
    summary = (out / "summary.md").read_text()
    assert "## As observed (balanced_accuracy)" in summary and "nan" not in summary.lower()
    for name in ("mckd", "baseline", "lckd", "shaspec"):
        assert (out / name / "observed.csv").is_file() and (out / name / "subsets.csv").is_file()
    assert main(["compare", str(out / "mckd"), str(out / "baseline"), "--table", "observed", "--out",
                 str(tmp_path / "compared")]) == 0
    compared = (tmp_path / "compared" / "comparison.csv").read_text().splitlines()
    assert compared[0].startswith("pattern,size,samples,mckd,baseline,difference")
    assert compared[1].startswith(f'"{OBSERVED}",')  # the summary row's comma is quoted, as CSV does


@pytest.fixture(scope="module")
def heterogeneous(tmp_path_factory) -> Path:
    """MNIST images (PNG files) paired by digit with FSDD recordings (sequences), 40% of the audio absent."""
    from PIL import Image

    from mckd.data.audio import list_fsdd, read_wav
    from mckd.data.idx import read_mnist

    root = tmp_path_factory.mktemp("hetero")
    images, image_labels = read_mnist(shared_path("mnist", "mnist-part-a-images-idx3-ubyte.gz"),
                                      shared_path("mnist", "mnist-part-a-labels-idx1-ubyte.gz"))
    recordings = list_fsdd(shared_path("fsdd", "recordings"))[::15][:100]
    (root / "image").mkdir()
    ids, waves, rows = [], [], []
    rng = np.random.default_rng(0)
    for k, recording in enumerate(recordings):
        sample = f"r{k:03d}"
        index = int(np.flatnonzero(image_labels == recording.digit)[k])
        Image.fromarray(images[index]).save(root / "image" / f"{sample}.png")
        wave, _ = read_wav(recording.path)
        ids.append(sample)
        rows.append(f"{sample},{recording.digit}")
        if rng.random() > 0.4:
            waves.append((sample, np.pad(wave[:2000], (0, max(0, 2000 - len(wave))))[None].astype(np.float32)))
    np.savez(root / "audio.npz", id=np.array([s for s, _ in waves]), data=np.stack([w for _, w in waves]))
    (root / "labels.csv").write_text("id,label\n" + "\n".join(rows) + "\n")
    return root


def test_images_and_sequences_get_cnn_encoders_by_shape_and_train_together(heterogeneous, tmp_path):
    raw = load_raw(OWN)
    raw["data"] = {"name": "files", "root": str(heterogeneous), "labels": "labels.csv",
                   "modalities": {"image": {"path": "image"}, "audio": {"path": "audio.npz"}},
                   "split": [0.6, 0.2, 0.2]}
    raw["model"]["image_channels"] = [4, 8]
    raw["model"]["sequence_channels"] = [4, 8]
    raw["train"].update({"iterations": 6, "batch_size": 16, "progress": False, "device": "cpu", "log_every": 3})
    raw["method"]["meta_every"] = 2
    config = config_from_dict(raw)
    experiment = train(config, tmp_path / "run")
    assert experiment.bundle.input_shapes == {"image": (1, 28, 28), "audio": (1, 2000)}
    encoders = experiment.model.encoders
    assert isinstance(encoders["image"][0], torch.nn.Conv2d) and isinstance(encoders["audio"][0], torch.nn.Conv1d)
    present = torch.cat([experiment.bundle.train.present, experiment.bundle.val.present, experiment.bundle.test.present])
    assert present[:, 0].all() and 0 < present[:, 1].sum() < len(present)


def test_volumes_read_from_nifti_files_get_a_3d_cnn_and_a_gru_serves_sequences(tmp_path):
    from mckd.nets.base import NetworkSpec
    from mckd.nets.by_shape import ByShapeOptions, GRUEncoder, build_by_shape
    from mckd.data.files import read_modality

    import nibabel as nib

    case = shared_path("brats2013", "brats_2013_pat0003_1")
    flair = np.asarray(nib.load(str(case / "Flair_subtrMeanDivStd.nii.gz")).dataobj, dtype=np.float32)
    (tmp_path / "vol").mkdir()
    for k in range(3):
        crop = flair[60 + 8 * k: 76 + 8 * k:2, 60:76:2, 60:76:2]  # (8, 8, 8) pieces of a real scan
        nib.save(nib.Nifti1Image(crop, np.eye(4)), str(tmp_path / "vol" / f"v{k}.nii.gz"))
    rows = read_modality("mri", ModalitySource(path=str(tmp_path / "vol")), FilesOptions())
    assert rows.ids == ["v0", "v1", "v2"] and rows.values.shape == (3, 1, 8, 8, 8)
    spec = NetworkSpec(("mri", "ecg"), {"mri": (1, 8, 8, 8), "ecg": (2, 50)}, 3, lambda c: 2 * c)
    parts = build_by_shape(ByShapeOptions(feature_dim=16, sequence_encoder="gru", volume_channels=[4]), spec)
    assert isinstance(parts.encoder["mri"][0], torch.nn.Conv3d) and isinstance(parts.encoder["ecg"], GRUEncoder)
    assert parts.encoder["mri"](torch.from_numpy(rows.values)).shape == (3, 16)
    assert parts.encoder["ecg"](torch.randn(5, 2, 50)).shape == (5, 16)
    with pytest.raises(ConfigError, match=r"modality 'ecg': a image modality has 3 axes"):
        build_by_shape(ByShapeOptions(kinds={"ecg": "image"}), spec)


def test_from_python_any_modules_train_and_evaluate_end_to_end(digits_csv_dir, tmp_path):
    from mckd.api import arrays_bundle, fit
    from mckd.data.multiview import read_view

    (pix, labels), (fou, _) = read_view(digits_csv_dir, "pix"), read_view(digits_csv_dir, "fou")
    draw = np.random.default_rng(0).random(len(labels))
    pix[draw < 0.3] = np.nan
    fou[draw > 0.7] = np.nan
    bundle = arrays_bundle({"pix": pix, "fou": fou}, labels)
    encoders = {"pix": torch.nn.Sequential(torch.nn.Linear(240, 16), torch.nn.ReLU()),
                "fou": torch.nn.Sequential(torch.nn.Linear(76, 16), torch.nn.ReLU())}
    result = fit(bundle, encoders, torch.nn.Linear(32, 10), tmp_path / "run",
                 settings={"train.iterations": 40, "train.progress": False, "method.meta_every": 5})
    rows = {r["pattern"]: r for r in result.observed}
    assert set(rows) == {OBSERVED, "pix", "fou", "pix+fou"} and rows[OBSERVED]["samples"] == 600
    assert rows[OBSERVED]["accuracy"] > 0.5 and RunDir(tmp_path / "run").observed.with_suffix(".csv").is_file()
    with pytest.raises(ConfigError, match="were arrays given to mckd.api.fit"):
        build_experiment(load_config(tmp_path / "run" / "config.yaml"))


def test_nan_in_the_missing_entries_of_a_dataset_is_never_read_in_training_the_meta_step_or_evaluation(
        digits_csv_dir, tmp_path):
    from mckd.api import fit

    # A third of the samples lack pix: their rows hold NaN, as a careless loader leaves them.
    bundle, encoders = _two_view_bundle(digits_csv_dir, absent=(slice(None, None, 3), 0), fill=float("nan"))
    result = fit(bundle, encoders, torch.nn.Linear(32, 10), tmp_path / "run",
                 settings={"train.iterations": 30, "train.log_every": 10, "train.progress": False,
                           "method.meta_every": 2})
    assert torch.isfinite(result.experiment.method.weights.raw).all()
    assert all(torch.isfinite(p).all() for p in result.experiment.model.parameters())
    rows = [json.loads(line) for line in RunDir(tmp_path / "run").metrics.read_text().splitlines()]
    assert all(np.isfinite(r["task_loss"]) and np.isfinite(r["ckd_loss"]) for r in rows if r["kind"] == "train")
    assert all(row["accuracy"] is not None and np.isfinite(row["accuracy"]) for row in result.observed)


def _two_view_bundle(digits_csv_dir, absent: tuple | None = None, fill: float = 0.0):
    """Digits as ``pix`` and ``fou`` (1,200 / 200 / 600 samples) and an encoder each; ``absent``: (rows, view)
    marked missing, their values set to ``fill``."""
    from mckd.data.bundle import DataBundle, MultiModalTensorDataset
    from mckd.data.multiview import read_view

    (pix, labels), (fou, _) = read_view(digits_csv_dir, "pix"), read_view(digits_csv_dir, "fou")
    pix, fou = (torch.from_numpy((x - x.mean(0)) / (x.std(0) + 1e-6)).float() for x in (pix, fou))
    present = torch.ones(len(labels), 2, dtype=torch.bool)
    if absent is not None:
        rows, view = absent
        present[rows, view] = False
        (pix, fou)[view][~present[:, view]] = fill

    def part(rows: slice) -> MultiModalTensorDataset:
        return MultiModalTensorDataset([pix[rows], fou[rows]], torch.from_numpy(labels[rows]), present[rows])

    bundle = DataBundle(("pix", "fou"), part(slice(0, 1200)), part(slice(1200, 1400)), part(slice(1400, 2000)), 10,
                        {"pix": (240,), "fou": (76,)})
    encoders = {"pix": torch.nn.Sequential(torch.nn.Linear(240, 16), torch.nn.ReLU()),
                "fou": torch.nn.Sequential(torch.nn.Linear(76, 16), torch.nn.ReLU())}
    return bundle, encoders


def test_lckd_never_elects_a_modality_that_no_validation_sample_has_and_validation_skips_it(digits_csv_dir, tmp_path):
    from mckd.api import fit

    bundle, encoders = _two_view_bundle(digits_csv_dir, absent=(slice(1200, 1400), 1))  # no meta-validation sample has fou
    fit(bundle, encoders, torch.nn.Linear(32, 10), tmp_path / "run", method="lckd",
        settings={"train.iterations": 12, "train.progress": False, "method.teacher_every": 4, "train.eval_every": 6})
    records = [json.loads(line) for line in RunDir(tmp_path / "run").metrics.read_text().splitlines()]
    teachers = [r for r in records if r["kind"] == "teacher"]
    assert teachers and all(r["teacher"] == "pix" for r in teachers), teachers
    validations = [r for r in records if r["kind"] == "val"]
    assert validations and all("accuracy_fou" not in r and "accuracy_all" not in r and r["score"] == r["accuracy_pix"]
                               for r in validations)


def test_fit_refuses_an_existing_run_unless_forced(digits_csv_dir, tmp_path):
    from mckd.api import fit
    from mckd.errors import MckdError

    bundle, encoders = _two_view_bundle(digits_csv_dir)
    settings = {"train.iterations": 4, "train.progress": False, "method.meta_every": 2}
    fit(bundle, encoders, torch.nn.Linear(32, 10), tmp_path / "run", settings=settings)
    before = RunDir(tmp_path / "run").checkpoint.read_bytes()
    with pytest.raises(MckdError, match="exists; pass force=True to fit"):
        fit(bundle, encoders, torch.nn.Linear(32, 10), tmp_path / "run", settings=settings)
    assert RunDir(tmp_path / "run").checkpoint.read_bytes() == before
    fit(bundle, encoders, torch.nn.Linear(32, 10), tmp_path / "run", settings={**settings, "train.iterations": 6},
        force=True)
    assert json.loads(RunDir(tmp_path / "run").record.read_text())["iteration"] == 6


def test_fit_takes_a_preset_as_its_method_with_the_presets_settings(digits_csv_dir, tmp_path):
    from mckd.api import fit

    bundle, encoders = _two_view_bundle(digits_csv_dir)
    result = fit(bundle, encoders, torch.nn.Linear(32, 10), tmp_path / "run", method="zero_fill",
                 settings={"train.iterations": 4, "train.progress": False, "method.alpha": 0.5})
    config = result.experiment.config
    assert (config.method.name, config.method.options.alpha, config.method.options.meta, config.model.fill) == \
        ("mckd", 0.0, False, "zero")  # the preset's settings come last: they define it
