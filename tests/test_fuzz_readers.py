"""Fuzzing every reader of user files: random bytes, truncations and byte flips of a valid file.

Each reader is given a damaged version of a file it reads well; it must
either read it (some damage is harmless, e.g. a flipped pixel) or raise the
product's own error (:class:`mckd.errors.MckdError`), never another
exception type and never code from the file.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import wave
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mckd.errors import MckdError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def damaged(draw, original: bytes) -> bytes:
    """``original`` cut short, with bytes overwritten, with bytes inserted, or replaced by random bytes."""
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "random", "header"]))
    data = bytearray(original)
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, max(0, len(data) - 1)))])
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "header":  # the first bytes are where formats keep sizes and types
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, min(len(data), 64) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "insert":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=32)) + bytes(data[at:])
    return draw(st.binary(max_size=512))


def reads_or_product_error(read: Callable[[], object]) -> None:
    try:
        read()
    except MckdError as error:
        assert str(error), "a product error must say what is wrong"


def _idx() -> bytes:
    values = np.random.default_rng(0).integers(0, 256, (4, 28, 28)).astype(np.uint8)
    return bytes([0, 0, 8, 3]) + struct.pack(">III", 4, 28, 28) + values.tobytes()


def _wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as stream:
        stream.setnchannels(1)
        stream.setsampwidth(2)
        stream.setframerate(8000)
        stream.writeframes(np.random.default_rng(0).integers(-3000, 3000, 400).astype("<i2").tobytes())
    return buffer.getvalue()


def _nifti(compressed: bool) -> bytes:
    nib = pytest.importorskip("nibabel")
    image = nib.Nifti1Image(np.random.default_rng(0).uniform(0, 1, (6, 6, 5)).astype(np.float32), np.eye(4))
    data = image.to_bytes()
    return gzip.compress(data, mtime=0) if compressed else data


def _checkpoint(tmp: Path) -> bytes:
    from mckd.checkpoint import save_checkpoint

    save_checkpoint(tmp / "seed.safetensors", {"model.w": torch.arange(12.0).reshape(3, 4)}, {"iteration": 3})
    return (tmp / "seed.safetensors").read_bytes()


IDX, WAV = _idx(), _wav()


@FUZZ
@given(data=damaged(IDX), gz=st.booleans())
def test_fuzzed_idx_files(tmp_path, data, gz):
    from mckd.data.idx import read_idx

    path = tmp_path / "f-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if gz else data)
    reads_or_product_error(lambda: read_idx(path))


@FUZZ
@given(data=damaged(gzip.compress(IDX, mtime=0)))
def test_fuzzed_gzip_streams_of_idx_files(tmp_path, data):
    from mckd.data.idx import read_idx

    path = tmp_path / "f-idx3-ubyte.gz"
    path.write_bytes(data)
    reads_or_product_error(lambda: read_idx(path))


@FUZZ
@given(data=damaged(WAV))
def test_fuzzed_wav_files(tmp_path, data):
    from mckd.data.audio import read_wav

    path = tmp_path / "1_theo_0.wav"
    path.write_bytes(data)
    reads_or_product_error(lambda: read_wav(path))


@FUZZ
@given(data=st.data(), compressed=st.booleans())
def test_fuzzed_nifti_files(tmp_path, data, compressed):
    from mckd.seg.cases import check_finite, read_nifti

    path = tmp_path / ("scan.nii.gz" if compressed else "scan.nii")
    path.write_bytes(data.draw(damaged(_nifti(compressed))))

    def read() -> None:
        check_finite(read_nifti(path))

    reads_or_product_error(read)


@FUZZ
@given(data=st.data())
def test_fuzzed_checkpoints(tmp_path, data):
    from mckd.checkpoint import load_checkpoint

    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(data.draw(damaged(_checkpoint(tmp_path))))
    reads_or_product_error(lambda: load_checkpoint(path))


@FUZZ
@given(data=st.data())
def test_fuzzed_prepared_avmnist_files(tmp_path, data):
    from safetensors.numpy import save_file

    from mckd.data.avmnist import load_prepared

    size = 6
    arrays = {"image": np.zeros((size, 28, 28), np.uint8), "audio": np.ones((size, 20, 20), np.float32),
              "label": np.arange(size, dtype=np.int64), "split": (np.arange(size) % 3).astype(np.uint8),
              "image_index": np.arange(size, dtype=np.int64), "recording_index": np.arange(size, dtype=np.int64),
              "speaker": np.zeros(size, np.int64)}
    seed = tmp_path / "seed.safetensors"
    save_file(arrays, str(seed), metadata={"avmnist": json.dumps({"format": 1, "recipe": "clean", "seed": 0,
                                                                    "speakers": ["theo"]})})
    path = tmp_path / "avmnist.safetensors"
    path.write_bytes(data.draw(damaged(seed.read_bytes())))
    reads_or_product_error(lambda: load_prepared(path))


@FUZZ
@given(data=st.data())
def test_fuzzed_multiview_csv_files(tmp_path, data):
    from mckd.data import multiview

    rows = np.random.default_rng(0).uniform(-1, 1, (multiview.SAMPLES, 7))
    rows[:, -1] = np.arange(multiview.SAMPLES) % 10
    text = ",".join(str(i) for i in range(7)) + "\n" + "\n".join(",".join(f"{v:.3f}" for v in row) for row in rows)
    # damage only the first rows: the whole 2,000-row file is the same there, and it keeps examples fast
    head, tail = text.encode()[:600], text.encode()[600:]
    (tmp_path / "mfeat-mor.csv").write_bytes(data.draw(damaged(head)) + tail)
    reads_or_product_error(lambda: multiview.read_view(tmp_path, "mor"))


@FUZZ
@given(text=st.text(max_size=200))
def test_fuzzed_config_and_layout_files(tmp_path, text):
    from mckd.config import load_config
    from mckd.seg.layouts import load_layout

    path = tmp_path / "config.yaml"
    path.write_text(text)
    reads_or_product_error(lambda: load_config(path))
    reads_or_product_error(lambda: load_layout(str(path)))
