"""Audiovision-MNIST on the real files in ../shared/data: readers, MFCC recipes, pairing, split, rates, training.

The expensive pieces are shared by module-scoped fixtures: librosa's first
MFCC call (numba compilation) and one prepared file made through the CLI from
one speaker's 500 recordings.
"""

from __future__ import annotations

import gzip
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mckd.errors import DataError
from conftest import ROOT, shared_path

pytest.importorskip("librosa", reason="AV-MNIST preparation needs the audio extra: pip install 'mckd[audio]'")

from mckd.data import audio as audio_mod  # noqa: E402
from mckd.data.audio import (  # noqa: E402
    FSDD_SPEAKERS,
    clean_frame_settings,
    list_fsdd,
    mfcc_clean,
    mfcc_smil,
    read_wav,
)
from mckd.data.avmnist import load_prepared, pair_by_label, smil_split  # noqa: E402
from mckd.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, read_mnist  # noqa: E402

IMAGES = ("mnist", "mnist-part-a-images-idx3-ubyte.gz")
LABELS = ("mnist", "mnist-part-a-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    return read_mnist(shared_path(*IMAGES), shared_path(*LABELS))


@pytest.fixture(scope="module")
def recordings() -> Path:
    return shared_path("fsdd", "recordings")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, recordings: Path) -> Path:
    """One speaker (theo, 500 clips), SMIL recipe, 1 meta-validation clip per digit, made by `mckd prepare avmnist`."""
    from mckd.cli import main

    out = tmp_path_factory.mktemp("avmnist") / "theo.safetensors"
    code = main(["prepare", "avmnist", "--images", str(shared_path(*IMAGES)), "--labels", str(shared_path(*LABELS)),
                 "--recordings", str(recordings), "--speakers", "theo", "--recipe", "smil", "--val-per-digit", "1",
                 "--seed", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


# ---------------------------------------------------------------- IDX


def test_idx_reader_reads_the_real_mnist_pair(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = mnist
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and set(np.unique(labels)) == set(range(10))
    # The header is big-endian: the first bytes of the gunzipped file say so.
    raw = gzip.decompress(shared_path(*IMAGES).read_bytes())
    assert int.from_bytes(raw[:4], "big") == IMAGES_MAGIC
    assert [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(3)] == [5000, 28, 28]
    assert np.array_equal(images.reshape(-1), np.frombuffer(raw[16:], np.uint8))


def test_idx_reader_reads_raw_and_gzip_alike(tmp_path: Path) -> None:
    raw_path = tmp_path / "labels-idx1-ubyte"
    raw_path.write_bytes(gzip.decompress(shared_path(*LABELS).read_bytes()))
    assert np.array_equal(read_idx(raw_path, LABELS_MAGIC), read_idx(shared_path(*LABELS), LABELS_MAGIC))


def test_idx_header_that_does_not_match_the_size_is_an_error(tmp_path: Path) -> None:
    raw = gzip.decompress(shared_path(*LABELS).read_bytes())
    short = tmp_path / "short-idx1-ubyte"
    short.write_bytes(raw[:-7])
    with pytest.raises(DataError, match=r"short-idx1-ubyte.*announces shape \(5000,\).*holds 5001 bytes"):
        read_idx(short)


def test_idx_wrong_magic_names_what_was_expected() -> None:
    with pytest.raises(DataError, match=r"labels-idx1-ubyte.gz.*magic 2049; expected 2051 \(images\)"):
        read_idx(shared_path(*LABELS), IMAGES_MAGIC)


def test_images_and_labels_of_different_lengths_are_an_error(tmp_path: Path) -> None:
    raw = gzip.decompress(shared_path(*LABELS).read_bytes())
    fewer = tmp_path / "fewer-labels.gz"
    fewer.write_bytes(gzip.compress(raw[:4] + (4999).to_bytes(4, "big") + raw[8:-1]))
    with pytest.raises(DataError, match=r"5000 images but .*fewer-labels.gz' holds 4999 labels"):
        read_mnist(shared_path(*IMAGES), fewer)


# ---------------------------------------------------------------- WAV and FSDD


def test_wav_reader_agrees_with_soundfile(recordings: Path) -> None:
    soundfile = pytest.importorskip("soundfile")
    for name in ("0_jackson_0.wav", "7_nicolas_33.wav", "9_theo_49.wav"):
        samples, rate = read_wav(recordings / name)
        expected, expected_rate = soundfile.read(recordings / name, dtype="float32")
        assert rate == expected_rate == 8000
        assert samples.dtype == np.float32 and np.array_equal(samples, expected)


def test_wav_reader_rejects_a_file_that_is_not_wav(tmp_path: Path) -> None:
    bad = tmp_path / "0_theo_0.wav"
    bad.write_bytes(b"not a wav file at all")
    with pytest.raises(DataError, match="0_theo_0.wav.*not a readable PCM WAV"):
        read_wav(bad)


def test_fsdd_listing_has_50_recordings_per_digit_and_speaker(recordings: Path) -> None:
    clips = list_fsdd(recordings)
    assert len(clips) == 1500
    for speaker in FSDD_SPEAKERS:
        for digit in range(10):
            assert sorted(c.index for c in clips if c.speaker == speaker and c.digit == digit) == list(range(50))
    with pytest.raises(DataError, match="no recording of speaker"):
        list_fsdd(recordings, ["nobody"])


# ---------------------------------------------------------------- MFCC recipes


@pytest.mark.filterwarnings("ignore:'(aifc|audioop|sunau)' is deprecated:DeprecationWarning")  # librosa.load's audioread
def test_smil_recipe_is_librosa_defaults_on_every_third_sample(recordings: Path) -> None:
    import librosa

    path = recordings / "3_jackson_20.wav"
    decimated = librosa.load(path, sr=None)[0][::3]
    with pytest.warns(UserWarning, match="n_fft=2048 is too large"):  # the warning the recipe silences
        expected = librosa.feature.mfcc(y=decimated, sr=8000, n_mfcc=20)  # (20, T)
    frames = 1 + len(decimated) // 512
    assert expected.shape == (20, frames) and frames < 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # mfcc_smil must not let that warning through
        got = mfcc_smil(read_wav(path)[0])
    assert got.shape == (20, 20) and got.dtype == np.float32
    np.testing.assert_allclose(got[:, :frames], expected, rtol=1e-5, atol=1e-3)
    assert not got[:, frames:].any()  # zero-padded to 20 frames


def test_clean_recipe_spans_the_whole_clip_with_20_frames(recordings: Path) -> None:
    for length in (1149, 3345, 18262, 19, 1):
        hop, n_fft = clean_frame_settings(length)
        assert 19 * hop >= length and 1 + (19 * hop) // hop == 20  # centred frames over the padded clip
        assert n_fft >= 2 * hop and n_fft & (n_fft - 1) == 0
    samples, rate = read_wav(recordings / "3_jackson_20.wav")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = mfcc_clean(samples, rate)
    smil = mfcc_smil(samples)
    assert clean.shape == smil.shape == (20, 20)
    assert np.abs(clean).sum(axis=0).min() > 0  # no zero-padded frame: the clip fills all 20
    assert not np.allclose(clean, smil)
    with pytest.raises(DataError, match="recipe must be one of"):
        audio_mod.mfcc(samples, rate, "mystery")


# ---------------------------------------------------------------- pairing and split


def test_pairing_gives_each_recording_its_own_image_of_the_same_digit(mnist, recordings: Path) -> None:
    _, labels = mnist
    digits = np.array([c.digit for c in list_fsdd(recordings)])
    paired = pair_by_label(digits, labels, seed=0)
    assert np.array_equal(labels[paired], digits)
    assert len(np.unique(paired)) == len(paired)  # no image used twice
    assert np.array_equal(paired, pair_by_label(digits, labels, seed=0))  # deterministic by seed
    assert (paired != pair_by_label(digits, labels, seed=1)).mean() > 0.5
    with pytest.raises(DataError, match="recordings of digit 0 but only"):
        pair_by_label(np.zeros(2000, dtype=np.int64), labels, seed=0)


def test_smil_split_is_450_test_150_validation_900_training_without_overlap(recordings: Path) -> None:
    clips = list_fsdd(recordings)
    digits = np.array([c.digit for c in clips])
    indices = np.array([c.index for c in clips])
    split = smil_split(digits, indices, val_per_digit=15, seed=0)
    names = np.array([c.path.name for c in clips])
    parts = {code: set(names[split == code]) for code in (0, 1, 2)}
    assert [len(parts[c]) for c in (0, 1, 2)] == [900, 150, 450]  # the paper's 60/10/30
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == set(names)
    assert set(np.flatnonzero(split == 2)) == set(np.flatnonzero(indices < 15))
    assert np.bincount(digits[split == 1], minlength=10).tolist() == [15] * 10
    assert np.array_equal(split, smil_split(digits, indices, 15, seed=0))


# ---------------------------------------------------------------- the prepared file and the CLI


def test_prepare_cli_writes_pairs_split_and_refuses_to_overwrite(prepared: Path, mnist, capsys) -> None:
    from mckd.cli import main

    arrays, metadata = load_prepared(prepared)
    images, labels = mnist
    assert metadata["recipe"] == "smil" and metadata["speakers"] == ["theo"]
    assert metadata["sizes"] == {"train": 340, "val": 10, "test": 150}
    assert arrays["image"].shape == (500, 28, 28) and arrays["audio"].shape == (500, 20, 20)
    assert np.array_equal(labels[arrays["image_index"]], arrays["label"])  # paired by label
    assert np.array_equal(images[arrays["image_index"]], arrays["image"])
    assert all(name.startswith(f"{d}_theo_{i}.") for name, d, i in
               zip(metadata["recordings"], arrays["label"], arrays["recording_index"]))
    before = prepared.read_bytes()
    code = main(["prepare", "avmnist", "--speakers", "theo", "--out", str(prepared), "--no-progress",
                 "--images", str(shared_path(*IMAGES)), "--labels", str(shared_path(*LABELS))])
    assert code == 2 and "pass --force" in capsys.readouterr().err
    assert prepared.read_bytes() == before


def test_prepare_cli_force_replaces_a_subset_of_recordings(tmp_path: Path, recordings: Path) -> None:
    from mckd.cli import main

    subset = tmp_path / "recordings"
    subset.mkdir()
    for digit in range(10):
        for index in (0, 1, 20, 21, 22):
            name = f"{digit}_nicolas_{index}.wav"
            shutil.copy(recordings / name, subset / name)
    out = tmp_path / "small.safetensors"
    out.write_text("an older file")
    args = ["prepare", "avmnist", "--images", str(shared_path(*IMAGES)), "--labels", str(shared_path(*LABELS)),
            "--recordings", str(subset), "--speakers", "nicolas", "--val-per-digit", "1", "--out", str(out),
            "--no-progress", "--force"]
    assert main(args) == 0
    arrays, metadata = load_prepared(out)
    assert metadata["recipe"] == "clean" and metadata["sizes"] == {"train": 20, "val": 10, "test": 20}
    assert np.abs(arrays["audio"]).sum(axis=1).min() > 0  # clean: every frame holds signal
    assert not list(tmp_path.glob(".small.safetensors.*"))  # the atomic write left no temporary file


def test_a_file_that_is_not_prepared_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\x80\x04pickle?")
    with pytest.raises(DataError, match="not a readable safetensors file"):
        load_prepared(bad)
    with pytest.raises(DataError, match="mckd prepare avmnist"):
        load_prepared(tmp_path / "absent.safetensors")


# ---------------------------------------------------------------- dataset, network, rates, training


def _config(prepared: Path, *overrides: str):
    from mckd.config import apply_overrides, config_from_dict, load_raw

    raw = load_raw(ROOT / "configs" / "avmnist_missing_audio.yaml")
    return config_from_dict(apply_overrides(raw, [f"data.path={prepared}", "train.progress=false",
                                                  "train.device=cpu", *overrides]))


def test_the_avmnist_configs_hold_the_papers_settings_with_smils_weight_decay_and_pixel_range() -> None:
    from mckd.config import config_from_dict, load_raw

    for name in ("avmnist_missing_audio.yaml", "avmnist_missing_image.yaml"):
        resolved = config_from_dict(load_raw(ROOT / "configs" / name)).to_dict()  # every key: tests/test_config.py
        # The paper's schedule; SMIL's weight decay 1e-4 and pixels in [-1, 1] (the protocol study, README).
        assert (resolved["train"]["lr"], resolved["train"]["weight_decay"], resolved["train"]["gamma"],
                resolved["train"]["step_epochs"], resolved["train"]["epochs"]) == (1e-3, 1e-4, 0.9, 20.0, 60)
        assert resolved["data"]["image_range"] == "symmetric"
        assert (resolved["method"]["meta_lr"], resolved["method"]["meta_weight_decay"],
                resolved["method"]["alpha"], resolved["method"]["p"]) == (1e-2, 1e-2, 0.1, 1)
    assert yaml.safe_load((ROOT / "configs" / "avmnist_missing_image.yaml").read_text())["missing"]["rates"] == {"image": 0.05}


def test_rates_keep_audio_for_exactly_r_of_the_training_samples(prepared: Path) -> None:
    from mckd.build import build_data

    for rate, kept in ((0.05, 17), (0.2, 68)):
        bundle = build_data(_config(prepared, f"missing.rates={{audio: {rate}}}"))
        present = bundle.train.present  # (340, 2): image, audio
        assert present.shape == (340, 2) and bool(present[:, 0].all())
        assert int(present[:, 1].sum()) == kept == round(rate * 340)
        assert bool(bundle.val.present.all() and bundle.test.present.all())  # validation and test stay complete
    standardised = bundle.train.inputs[1]  # (340, 1, 20, 20)
    assert torch.allclose(standardised.mean(dim=(0, 1, 3)), torch.zeros(20), atol=1e-4)


def test_smil_networks_flatten_to_160_and_320_before_the_projection(prepared: Path) -> None:
    from mckd.build import build_experiment

    experiment = build_experiment(_config(prepared))
    encoders = experiment.model.encoders
    assert encoders["image"][:-2](torch.zeros(3, 1, 28, 28)).shape == (3, 160)
    assert encoders["audio"][:-2](torch.zeros(3, 1, 20, 20)).shape == (3, 320)
    out = experiment.model([torch.zeros(3, 1, 28, 28), torch.zeros(3, 1, 20, 20)],
                           torch.tensor([[True, True], [True, False], [False, True]]))
    assert out.prediction.shape == (3, 10) and out.features.shape == (3, 2, 64)
    lower = build_experiment(_config(prepared, "data.modalities=[image]", "missing.policy=none"))
    assert list(lower.model.encoders) == ["image"]


def test_a_short_training_run_learns_and_records_the_weights(prepared: Path, tmp_path: Path) -> None:
    from mckd.runs import evaluate_run
    from mckd.report import read_weight_history
    from mckd.train import train

    config = _config(prepared, "train.iterations=40", "train.lr=0.003", "missing.rates={audio: 0.2}",
                     "method.meta_every=2")
    train(config, tmp_path / "run")
    rows = {r["subset"]: r["accuracy"] for r in evaluate_run(tmp_path / "run", "cpu").subsets}
    assert set(rows) == {"image", "audio", "image+audio"}
    assert rows["image"] > 0.3  # ten classes: chance is 0.1
    iterations, weights = read_weight_history(tmp_path / "run" / "metrics.jsonl")
    assert iterations[0] == 0 and len(iterations) == 1 + 40 // 2
    assert all(abs(a + b - 1) < 1e-5 for a, b in zip(weights["image"], weights["audio"]))
