"""AV-MNIST input checks on small files made here: IDX, WAV, the FSDD folder and the prepared file."""

from __future__ import annotations

import gzip
import json
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from mckd.data.audio import list_fsdd, read_wav
from mckd.data.avmnist import load_prepared, pair_by_label, prepare_avmnist, smil_split
from mckd.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, read_mnist
from mckd.errors import DataError


def idx_bytes(values: np.ndarray, magic_type: int = 0x08) -> bytes:
    header = bytes([0, 0, magic_type, values.ndim]) + b"".join(struct.pack(">I", d) for d in values.shape)
    return header + values.astype(">u1" if magic_type == 0x08 else ">i4").tobytes()


def write_idx_pair(folder: Path, images: int = 30, labels: int = 30, gz: bool = True) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    pixels = idx_bytes(rng.integers(0, 256, (images, 28, 28)))
    digits = idx_bytes(np.arange(labels) % 10)
    suffix = ".gz" if gz else ""
    image_path, label_path = folder / f"images-idx3-ubyte{suffix}", folder / f"labels-idx1-ubyte{suffix}"
    image_path.write_bytes(gzip.compress(pixels) if gz else pixels)
    label_path.write_bytes(gzip.compress(digits) if gz else digits)
    return image_path, label_path


def write_wav(path: Path, samples: int = 800, width: int = 2, channels: int = 1, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as stream:
        stream.setnchannels(channels)
        stream.setsampwidth(width)
        stream.setframerate(rate)
        stream.writeframes(np.random.default_rng(0).integers(0, 255, samples * width * channels, dtype=np.uint8).tobytes())
    return path


# --- IDX -------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_a_good_idx_pair_reads(tmp_path, gz):
    images, labels = read_mnist(*write_idx_pair(tmp_path, gz=gz))
    assert images.shape == (30, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == [i % 10 for i in range(30)]


@pytest.mark.parametrize("cut", [0, 3, 10, 100, -1])
def test_a_truncated_idx_file_names_what_the_header_announced(tmp_path, cut):
    path, _ = write_idx_pair(tmp_path, gz=False)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:-1])
    with pytest.raises(DataError, match=str(path)):
        read_idx(path, IMAGES_MAGIC)


def test_an_idx_header_that_does_not_match_the_file_size_gives_both(tmp_path):
    path, _ = write_idx_pair(tmp_path, gz=False)
    path.write_bytes(path.read_bytes() + bytes(28 * 28))  # one image more than the header says
    with pytest.raises(DataError, match=r"announces shape \(30, 28, 28\) \(23536 bytes in all\) but the file holds 24320"):
        read_idx(path, IMAGES_MAGIC)


def test_a_wrong_magic_number_or_swapped_files_are_named(tmp_path):
    images, labels = write_idx_pair(tmp_path)
    with pytest.raises(DataError, match=f"has magic {IMAGES_MAGIC}; expected {LABELS_MAGIC} \\(labels\\)"):
        read_mnist(images, images)
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DataError, match="not an IDX header"):
        read_idx(tmp_path / "png")


def test_a_damaged_gzip_idx_is_named(tmp_path):
    images, _ = write_idx_pair(tmp_path)
    data = bytearray(images.read_bytes())
    data[20:40] = bytes(range(20))  # corrupt the deflate stream, keep the gzip header
    images.write_bytes(bytes(data))
    with pytest.raises(DataError, match="is a damaged gzip file"):
        read_idx(images)
    images.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(DataError, match="is a damaged gzip file"):
        read_idx(images)


def test_images_and_labels_of_different_lengths_give_both_counts(tmp_path):
    images, labels = write_idx_pair(tmp_path, images=30, labels=29)
    with pytest.raises(DataError, match="holds 30 images but .* holds 29 labels"):
        read_mnist(images, labels)


def test_labels_that_are_not_digits_and_non_byte_types_are_refused(tmp_path):
    images, labels = write_idx_pair(tmp_path, gz=False)
    labels.write_bytes(idx_bytes(np.full(30, 12)))
    with pytest.raises(DataError, match="go up to 12; expected digits 0-9"):
        read_mnist(images, labels)
    labels.write_bytes(idx_bytes(np.arange(30) % 10, magic_type=0x0C))
    with pytest.raises(DataError):
        read_mnist(images, labels)


def test_an_idx_file_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nothing.gz")


# --- WAV and the FSDD folder -----------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_wav_of_every_width_reads_into_minus_one_one(tmp_path, width):
    samples, rate = read_wav(write_wav(tmp_path / "a.wav", width=width, channels=2))
    assert rate == 8000 and samples.shape == (800,) and samples.dtype == np.float32
    assert -1 <= samples.min() and samples.max() < 1


@pytest.mark.parametrize("damage", ["header_only", "half_header", "garbage", "empty", "no_frames", "missing"])
def test_an_unreadable_truncated_or_empty_wav_is_named(tmp_path, damage):
    path = write_wav(tmp_path / "3_theo_7.wav")
    data = path.read_bytes()
    if damage == "header_only":
        path.write_bytes(data[:44])
    elif damage == "half_header":
        path.write_bytes(data[:20])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 4)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "no_frames":
        write_wav(path, samples=0)
    else:
        path.unlink()
    with pytest.raises(DataError, match=r"WAV file .*3_theo_7.wav"):
        read_wav(path)


def test_a_fsdd_folder_without_a_requested_speaker_or_missing_altogether_is_named(tmp_path):
    write_wav(tmp_path / "1_theo_0.wav")
    (tmp_path / "notes.txt").write_text("ignored: not a recording name")
    assert [r.speaker for r in list_fsdd(tmp_path, ["theo"])] == ["theo"]
    with pytest.raises(DataError, match=r"no recording of speaker\(s\) \['jackson'\]"):
        list_fsdd(tmp_path, ["theo", "jackson"])
    with pytest.raises(DataError, match="does not exist"):
        list_fsdd(tmp_path / "nowhere")


def test_too_few_images_for_the_pairing_or_recordings_for_the_split_are_named():
    with pytest.raises(DataError, match="3 recordings of digit 1 but only 2 MNIST images"):
        pair_by_label(np.array([1, 1, 1]), np.array([1, 1, 0]), 0)
    digits, indices = np.array([4] * 20), np.arange(20)  # indices 15..19 are training: 5 recordings
    with pytest.raises(DataError, match="digit 4 has 5 training recordings"):
        smil_split(digits, indices, 5, 0)


# --- The prepared file ---------------------------------------------------------------------


@pytest.fixture
def sources(tmp_path):
    images, labels = write_idx_pair(tmp_path, images=60, labels=60)
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    for digit in range(10):
        for index in (0, 20, 21):
            write_wav(recordings / f"{digit}_theo_{index}.wav")
    return images, labels, recordings


def test_prepare_refuses_to_overwrite_unless_forced_and_fails_before_writing(sources, tmp_path):
    out = tmp_path / "avmnist.safetensors"
    out.write_bytes(b"an earlier file")
    with pytest.raises(DataError, match="exists; pass --force to replace it"):
        prepare_avmnist(*sources, out, speakers=["theo"], val_per_digit=1, progress=False)
    assert out.read_bytes() == b"an earlier file"
    broken = sources[2] / "0_theo_0.wav"  # the first clip read: fails before any MFCC is computed
    broken.write_bytes(broken.read_bytes()[:30])
    with pytest.raises(DataError, match="0_theo_0.wav"):
        prepare_avmnist(*sources, out, speakers=["theo"], val_per_digit=1, force=True, progress=False)
    assert out.read_bytes() == b"an earlier file"  # a failed prepare leaves the old file
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _prepared(path: Path, **changes) -> Path:
    from safetensors.numpy import save_file

    size = 30
    arrays = {"image": np.zeros((size, 28, 28), np.uint8), "audio": np.zeros((size, 20, 20), np.float32),
              "label": np.arange(size, dtype=np.int64) % 10, "split": (np.arange(size) % 3).astype(np.uint8),
              "image_index": np.arange(size, dtype=np.int64), "recording_index": np.arange(size, dtype=np.int64),
              "speaker": np.zeros(size, np.int64)}
    metadata = {"format": 1, "recipe": "clean", "seed": 0, "speakers": ["theo"]}
    for name, change in changes.items():
        if name == "metadata":
            metadata = change
        else:
            arrays[name] = change(arrays[name])
    save_file(arrays, str(path), metadata={"avmnist": json.dumps(metadata)})
    return path


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"label": lambda a: a + 5}, "labels range over 5..14; expected the digits 0-9"),
        ({"label": lambda a: a - 1}, "labels range over -1..8"),
        ({"split": lambda a: a * 2}, "split codes go up to 4"),
        ({"audio": lambda a: np.full_like(a, np.nan)}, "the MFCCs hold 12000 NaN or Inf values"),
        ({"audio": lambda a: a[:, :10]}, r"array 'audio' is float32 \(30, 10, 20\), expected float32 \(30, 20, 20\)"),
        ({"metadata": {"format": 1}}, "its metadata lacks"),
        ({"metadata": {"format": 7}}, "is not an AV-MNIST file of format 1"),
    ],
)
def test_a_damaged_prepared_file_is_named(tmp_path, changes, message):
    path = _prepared(tmp_path / "avmnist.safetensors", **changes)
    with pytest.raises(DataError, match=message):
        load_prepared(path)


def test_a_prepared_file_that_is_not_safetensors_is_refused_without_unpickling(tmp_path):
    import pickle

    path = tmp_path / "avmnist.safetensors"
    path.write_bytes(pickle.dumps({"label": [1, 2, 3]}))
    with pytest.raises(DataError, match="is not a readable safetensors file"):
        load_prepared(path)
    with pytest.raises(DataError, match="does not exist; make it with `mckd prepare avmnist"):
        load_prepared(tmp_path / "nothing.safetensors")
