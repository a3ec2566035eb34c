"""An independent malformed-input run: bad files and configs through every mckd command.

Everything is made here from scratch, in a temporary folder, without the
project's test fixtures or shared data: synthetic multi-view CSVs, BraTS-like
NIfTI cases, MNIST-like IDX files and FSDD-like WAV files, a few good runs to
damage, and then one malformed input per case. Each case runs ``mckd
prepare``, ``mckd train``, ``mckd evaluate``, ``mckd predict`` (or ``mckd
compare``) and must:

- exit with status 2,
- print exactly one line to stderr, ``mckd: error: ...``, that names the
  problem (each case says which words),
- print no ``Traceback``,
- leave its outputs as they were: absent if they were absent, byte for byte
  the same if they existed, and no temporary file behind.

Usage::

    python benchmarks/malformed_inputs.py              # every case as a subprocess (about 70; a few minutes)
    python benchmarks/malformed_inputs.py --in-process # the same through mckd.cli.main (what the tests run)
    python benchmarks/malformed_inputs.py --only predict --keep DIR

Prints one line per case and a summary; exits 1 if any case fails.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class Case:
    """One malformed input: the command, what its error must say, and what it must not write."""

    name: str
    argv: list[str]
    expect: list[str]  # substrings the error line must contain (file or key, and the problem)
    outputs: list[Path] = field(default_factory=list)  # must be absent, or unchanged, afterwards
    code: Any = 2  # the exit status: 2 for an error, 130 for a stop by a signal (a tuple: any of them)
    shell: str = ""  # run in a private mount namespace after this shell set-up (a tmpfs, a read-only bind mount)
    signal_when: Any = None  # () -> bool: send ``signal`` to the command once it holds (a phase was reached)
    signal: int = 15  # SIGTERM
    holder: list[str] | None = None  # mckd arguments of a process holding the output while the case runs
    holder_ready: Any = None  # () -> bool: the holder has claimed its output
    after: Any = None  # () -> list[str]: further checks once the case ended (resume works, no orphans, ...)


@dataclass
class Result:
    case: Case
    code: int | None
    stderr: str
    seconds: float
    problems: list[str]


# --- Making inputs ---------------------------------------------------------------------------


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def digits_csvs(folder: Path, views: dict[str, int], rng: np.random.Generator) -> Path:
    """Synthetic ``mfeat-<view>.csv`` files in the UCI layout: a header row, 2,000 rows, label last."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(10), 200)
    for view, width in views.items():
        features = rng.normal(size=(2000, width)) + labels[:, None] * 0.3
        table = np.column_stack([features, labels])
        header = ",".join(str(i) for i in range(width + 1))
        np.savetxt(folder / f"mfeat-{view}.csv", table, delimiter=",", header=header, comments="", fmt="%.4f")
    return folder


def digits_config(path: Path, csv_dir: Path, hidden: int = 16, extra: str = "") -> Path:
    return write_yaml(path, f"""\
task:
  name: classification
data:
  name: multiview_digits
  csv_dir: {csv_dir}
  views: [fou, mor]
model:
  name: multiview_mlp
  hidden: {hidden}
  feature_dim: 8
  decoder_hidden: 16
method:
  name: mckd
  alpha: 0.1
  meta_every: 1
train:
  iterations: 3
  batch_size: 32
  device: cpu
  progress: false
  precision: fp32
{extra}""")


def nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


SHAPE = (12, 12, 10)
SEQUENCES = ("flair", "t1", "t1ce", "t2")


def brats_case(root: Path, name: str, rng: np.random.Generator, sequences=SEQUENCES) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for sequence in sequences:
        image = np.zeros(SHAPE, np.float32)
        image[2:-2, 2:-2, 2:-2] = rng.uniform(1, 2, (8, 8, 6))
        nifti(folder / f"{name}_{sequence}.nii.gz", image)
    labels = np.zeros(SHAPE, np.uint8)
    labels[4:7, 4:7, 3:6] = 2
    labels[5, 5, 4] = 4
    labels[6, 5, 4] = 1
    nifti(folder / f"{name}_seg.nii.gz", labels)
    return folder


def brats_source(root: Path, rng: np.random.Generator, cases: int = 4) -> Path:
    for n in range(cases):
        brats_case(root, f"case{n}", rng)
    return root


def brats_config(path: Path, cache: Path, extra_data: str = "") -> Path:
    return write_yaml(path, f"""\
task:
  name: segmentation
  sw_batch_size: 1
data:
  name: brats
  cache: {cache}
  crop: [8, 8, 8]
  val_crops: 1
  crops_per_epoch: 4
{extra_data}model:
  name: unet3d
  widths: [4, 8]
method:
  name: mckd
  meta_every: 1
train:
  iterations: 1
  batch_size: 2
  device: cpu
  progress: false
  precision: fp32
eval:
  batch_size: 1
""")


def idx(values: np.ndarray) -> bytes:
    return bytes([0, 0, 8, values.ndim]) + b"".join(struct.pack(">I", d) for d in values.shape) + values.astype(np.uint8).tobytes()


def wav(path: Path, rng: np.random.Generator, samples: int = 600) -> Path:
    with wave.open(str(path), "wb") as stream:
        stream.setnchannels(1)
        stream.setsampwidth(2)
        stream.setframerate(8000)
        stream.writeframes(rng.integers(-2000, 2000, samples).astype("<i2").tobytes())
    return path


class Payload:
    """Unpickling this creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def run_ok(argv: list[str]) -> None:
    """Make a good input with the product itself (in this process, quietly); it must succeed."""
    from mckd.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(argv)
    if code != 0:
        raise RuntimeError(f"setup step mckd {' '.join(argv)} failed: {err.getvalue()[-500:]}")


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- The cases -------------------------------------------------------------------------------


def build(root: Path, only: str | None = None) -> list[Case]:
    """Make every malformed input under ``root``; return the cases (``only``: those of one command)."""
    rng = np.random.default_rng(0)
    cases: list[Case] = []
    want = (lambda command: only is None or only == command)
    marker = root / "CODE_RAN"  # a crafted pickle creates it; no case may

    # ---- digits: CSVs, configs, a good run --------------------------------------------------
    csv_dir = digits_csvs(root / "digits_csv", {"fou": 76, "mor": 6}, rng)
    good = digits_config(root / "digits.yaml", csv_dir)
    digits_run = root / "runs" / "digits"
    if want("train") or want("evaluate") or want("predict") or want("hostile"):
        run_ok(["train", str(good), "--out", str(digits_run)])
    out = root / "runs" / "should_not_exist"

    if want("train"):
        def bad_csv(name: str, mutate) -> Path:
            folder = copy_tree(csv_dir, root / f"csv_{name}")
            path = folder / "mfeat-fou.csv"
            lines = path.read_text().splitlines()
            path.write_text("\n".join(mutate(lines)) + "\n")
            return digits_config(root / f"digits_{name}.yaml", folder)

        def set_cell(lines, row, column, value):
            cells = lines[row].split(",")
            cells[column] = value
            lines[row] = ",".join(cells)
            return lines

        cases += [
            Case("train/config-unknown-nested-key", ["train", str(write_yaml(root / "c1.yaml", good.read_text().replace("  hidden:", "  hiden:"))), "--out", str(out)],
                 ["unknown config key 'model.hiden'", "did you mean 'hidden'"], [out]),
            Case("train/config-unknown-top-key", ["train", str(write_yaml(root / "c2.yaml", good.read_text() + "sed: 3\n")), "--out", str(out)],
                 ["unknown config key 'sed'", "did you mean 'seed'"], [out]),
            Case("train/config-wrong-type", ["train", str(good), "--set", "train.lr=fast", "--out", str(out)],
                 ["train.lr must be a number", "'fast'"], [out]),
            Case("train/config-alpha-negative", ["train", str(good), "--set", "method.alpha=-0.5", "--out", str(out)],
                 ["method.alpha must be >= 0", "-0.5"], [out]),
            Case("train/config-rate-above-one", ["train", str(good), "--set", "missing.policy=rates", "--set", "missing.rates={mor: 1.5}", "--out", str(out)],
                 ["missing.rates.mor must be in [0, 1]", "1.5"], [out]),
            Case("train/config-rate-unknown-modality", ["train", str(good), "--set", "missing.policy=rates", "--set", "missing.rates={audio: 0.5}", "--out", str(out)],
                 ["missing.rates names ['audio']", "not modalities"], [out]),
            Case("train/config-binary", ["train", str(root / "binary.yaml"), "--out", str(out)],
                 ["binary.yaml", "not a text (UTF-8) YAML file"], [out]),
            Case("train/config-bad-yaml", ["train", str(write_yaml(root / "tabs.yaml", "data:\n\t- x\n")), "--out", str(out)],
                 ["tabs.yaml", "is not valid YAML"], [out]),
            Case("train/config-missing", ["train", str(root / "nothing.yaml"), "--out", str(out)],
                 ["nothing.yaml", "does not exist"], [out]),
            Case("train/csv-nan", ["train", str(bad_csv("nan", lambda l: set_cell(l, 7, 3, "nan"))), "--out", str(out)],
                 ["mfeat-fou.csv", "NaN or Inf"], [out]),
            Case("train/csv-short", ["train", str(bad_csv("short", lambda l: l[:1500])), "--out", str(out)],
                 ["mfeat-fou.csv", "has shape (1499, 77), expected (2000, 77)"], [out]),
            Case("train/csv-ragged", ["train", str(bad_csv("ragged", lambda l: set_cell(l, 9, 5, "1,2"))), "--out", str(out)],
                 ["mfeat-fou.csv", "is not a numeric CSV"], [out]),
            Case("train/csv-text", ["train", str(bad_csv("text", lambda l: set_cell(l, 9, 5, "abc"))), "--out", str(out)],
                 ["mfeat-fou.csv", "is not a numeric CSV"], [out]),
            Case("train/csv-label-not-a-digit", ["train", str(bad_csv("label", lambda l: set_cell(l, 9, 76, "12"))), "--out", str(out)],
                 ["mfeat-fou.csv", "labels [12.0]", "expected the digits 0-9"], [out]),
            Case("train/csv-missing-view", ["train", str(good), "--set", "data.views=[fou, kar]", "--out", str(out)],
                 ["mfeat-kar.csv does not exist"], [out]),
            Case("train/split-too-small", ["train", str(good), "--set", "data.split=[0.998, 0.001, 0.001]", "--out", str(out)],
                 ["split is empty", "too few"], [out]),
        ]
        (root / "binary.yaml").write_bytes(bytes(range(128, 256)) * 3)

        # resume: the run exists; its checkpoint must stay as it is
        resume_none = root / "runs" / "resume_none"
        resume_none.mkdir(parents=True)
        shutil.copy(digits_run / "config.yaml", resume_none / "config.yaml")
        resume_pickle = copy_tree(digits_run, root / "runs" / "resume_pickle")
        (resume_pickle / "checkpoint.safetensors").write_bytes(pickle.dumps(Payload(marker)))
        resume_other = copy_tree(digits_run, root / "runs" / "resume_other")
        resume_damaged = copy_tree(digits_run, root / "runs" / "resume_damaged")
        from mckd.checkpoint import load_checkpoint, save_checkpoint

        tensors, metadata = load_checkpoint(resume_damaged / "checkpoint.safetensors")
        metadata.update(iteration=1, complete=False)
        del metadata["world_size"], tensors["data.train"]  # a hand-edited or damaged training state
        save_checkpoint(resume_damaged / "checkpoint.safetensors", tensors, metadata)
        cases += [
            Case("train/resume-without-checkpoint", ["train", "--resume", str(resume_none)],
                 ["cannot resume", "checkpoint.safetensors", "does not exist"], [resume_none / "checkpoint.safetensors"]),
            Case("train/resume-pickle-checkpoint", ["train", "--resume", str(resume_pickle)],
                 ["resume_pickle/checkpoint.safetensors", "Python pickle", "refuses"], [resume_pickle / "checkpoint.safetensors", resume_pickle / "eval"]),
            Case("train/resume-other-model-configuration", ["train", "--resume", str(resume_other), "--set", "model.hidden=8"],
                 ["does not match this model configuration", "encoders.fou.0.weight (16, 76) vs (8, 76)"],
                 [resume_other / "checkpoint.safetensors", resume_other / "metrics.jsonl"]),
            Case("train/resume-damaged-training-state", ["train", "--resume", str(resume_damaged)],
                 ["resume_damaged/checkpoint.safetensors", "lacks ['world_size', 'data.train']", "cannot be resumed"],
                 [resume_damaged / "checkpoint.safetensors", resume_damaged / "metrics.jsonl"]),
            Case("train/resume-not-a-run", ["train", "--resume", str(root / "digits_csv")],
                 ["cannot resume", "no config.yaml"], [root / "digits_csv"]),
        ]

    # ---- evaluate ------------------------------------------------------------------------------
    if want("evaluate"):
        eval_pickle = copy_tree(digits_run, root / "runs" / "eval_pickle")
        shutil.rmtree(eval_pickle / "eval")
        (eval_pickle / "checkpoint.safetensors").write_bytes(pickle.dumps(Payload(marker), protocol=2))
        eval_torch = copy_tree(digits_run, root / "runs" / "eval_torch")
        shutil.rmtree(eval_torch / "eval")
        import torch

        torch.save({"model": Payload(marker)}, eval_torch / "checkpoint.safetensors")
        eval_cut = copy_tree(digits_run, root / "runs" / "eval_cut")
        shutil.rmtree(eval_cut / "eval")
        data = (eval_cut / "checkpoint.safetensors").read_bytes()
        (eval_cut / "checkpoint.safetensors").write_bytes(data[: len(data) // 2])
        # another model configuration: the tensors of a hidden=16 run under the metadata of a hidden=24 config
        eval_other = copy_tree(digits_run, root / "runs" / "eval_other")
        shutil.rmtree(eval_other / "eval")
        from mckd.checkpoint import load_checkpoint, save_checkpoint

        tensors, metadata = load_checkpoint(eval_other / "checkpoint.safetensors")
        metadata["config"]["model"]["hidden"] = 24
        save_checkpoint(eval_other / "checkpoint.safetensors", tensors, metadata)
        eval_nodata = copy_tree(digits_run, root / "runs" / "eval_nodata")
        shutil.rmtree(eval_nodata / "eval")
        tensors, metadata = load_checkpoint(eval_nodata / "checkpoint.safetensors")
        metadata["config"]["data"]["csv_dir"] = str(root / "gone")
        save_checkpoint(eval_nodata / "checkpoint.safetensors", tensors, metadata)
        cases += [
            Case("evaluate/not-a-run", ["evaluate", str(root / "runs" / "nothing"), "--device", "cpu"],
                 ["run directory", "does not exist"], [root / "runs" / "nothing"]),
            Case("evaluate/pickle-checkpoint", ["evaluate", str(eval_pickle), "--device", "cpu"],
                 ["eval_pickle/checkpoint.safetensors", "Python pickle", "refuses"], [eval_pickle / "eval"]),
            Case("evaluate/torch-save-checkpoint", ["evaluate", str(eval_torch), "--device", "cpu"],
                 ["eval_torch/checkpoint.safetensors", "zip archive", "refuses"], [eval_torch / "eval"]),
            Case("evaluate/truncated-checkpoint", ["evaluate", str(eval_cut), "--device", "cpu"],
                 ["eval_cut/checkpoint.safetensors", "not a readable safetensors file"], [eval_cut / "eval"]),
            Case("evaluate/other-model-configuration", ["evaluate", str(eval_other), "--device", "cpu"],
                 ["does not match this model configuration", "(16, 76) vs (24, 76)"], [eval_other / "eval"]),
            Case("evaluate/data-gone", ["evaluate", str(eval_nodata), "--device", "cpu"],
                 ["gone/mfeat-fou.csv does not exist"], [eval_nodata / "eval"]),
        ]

    # ---- BraTS: prepare, train, evaluate, predict -----------------------------------------------
    source = brats_source(root / "brats_src", rng)
    cache = root / "brats_cache"
    brats_run = root / "runs" / "brats"
    if want("predict") or want("evaluate") or want("train") or want("hostile"):
        run_ok(["prepare", "brats", str(source), str(cache), "--workers", "1", "--no-progress"])
    if want("predict") or want("hostile"):
        run_ok(["train", str(brats_config(root / "brats.yaml", cache)), "--out", str(brats_run)])

    if want("prepare"):
        def bad_source(name: str, damage) -> Path:
            folder = copy_tree(source, root / f"src_{name}")
            damage(folder / "case2")
            return folder

        def replace(path_name: str, array, affine=None):
            return lambda case: nifti(case / f"case2_{path_name}.nii.gz", array, affine)

        shifted = np.eye(4)
        shifted[:3, 3] = [1.5, 0, 0]
        with_nan = np.ones(SHAPE, np.float32)
        with_nan[5, 5, 5] = np.nan
        labels7 = np.zeros(SHAPE, np.uint8)
        labels7[5, 5, 5] = 7

        def truncate(name: str, keep: float):
            def damage(case: Path) -> None:
                path = case / f"case2_{name}.nii.gz"
                data = path.read_bytes()
                path.write_bytes(data[: int(len(data) * keep)])
            return damage

        prepared = root / "prepared_brats"
        existing = copy_tree(cache, root / "existing_cache")
        (root / "empty_src").mkdir()
        layout = write_yaml(root / "layout.yaml", "sequences: {flair: '{case}_flair.nii.gz'}\nlabels: brats2099\n")
        prepare = lambda src, dst=prepared, *more: ["prepare", "brats", str(src), str(dst), "--workers", "1", "--no-progress", *more]  # noqa: E731
        cases += [
            Case("prepare-brats/source-missing", prepare(root / "no_src"), ["no_src", "does not exist"], [prepared]),
            Case("prepare-brats/source-empty", prepare(root / "empty_src"), ["empty_src holds no case folders"], [prepared]),
            Case("prepare-brats/missing-sequence", prepare(bad_source("noseq", lambda c: (c / "case2_t1ce.nii.gz").unlink())),
                 ["case case2", "no 't1ce' sequence file"], [prepared]),
            Case("prepare-brats/missing-label", prepare(bad_source("nolabel", lambda c: (c / "case2_seg.nii.gz").unlink())),
                 ["case case2", "no label file"], [prepared]),
            Case("prepare-brats/shape-mismatch", prepare(bad_source("shape", replace("t2", np.ones((12, 12, 9), np.float32)))),
                 ["case2_t2.nii.gz has shape (12, 12, 9)", "one voxel grid"], [prepared]),
            Case("prepare-brats/affine-mismatch", prepare(bad_source("affine", replace("t1", np.ones(SHAPE, np.float32), shifted))),
                 ["case2_t1.nii.gz has affine", "one voxel grid"], [prepared]),
            Case("prepare-brats/nan-voxels", prepare(bad_source("nan", replace("flair", with_nan))),
                 ["case2_flair.nii.gz holds 1 NaN or Inf voxels"], [prepared]),
            Case("prepare-brats/all-zero-sequence", prepare(bad_source("zero", replace("t2", np.zeros(SHAPE, np.float32)))),
                 ["case2_t2.nii.gz (t2) is empty", "--allow-missing"], [prepared]),
            Case("prepare-brats/labels-outside-convention", prepare(bad_source("labels", replace("seg", labels7))),
                 ["case2_seg.nii.gz: label values [7]", "brats2018 convention"], [prepared]),
            Case("prepare-brats/truncated-nifti", prepare(bad_source("trunc", truncate("t1", 0.5))),
                 ["case2_t1.nii.gz", "not a readable NIfTI file"], [prepared]),
            Case("prepare-brats/header-only-nifti", prepare(bad_source("trunc2", truncate("t1", 0.05))),
                 ["case2_t1.nii.gz", "not a readable NIfTI file"], [prepared]),
            Case("prepare-brats/not-nifti", prepare(bad_source("garbage", lambda c: (c / "case2_flair.nii.gz").write_bytes(os.urandom(900)))),
                 ["case2_flair.nii.gz", "not a readable NIfTI file"], [prepared]),
            Case("prepare-brats/4d-nifti", prepare(bad_source("4d", replace("t1", np.ones((*SHAPE, 2), np.float32)))),
                 ["case2_t1.nii.gz", "expected a 3D volume"], [prepared]),
            Case("prepare-brats/output-exists", prepare(source, existing), ["existing_cache exists", "--force"], [existing]),
            Case("prepare-brats/bad-layout", prepare(source, prepared, "--layout", str(layout)),
                 ["layout.yaml", "labels 'brats2099' is not one of"], [prepared]),
        ]
        for case in cases:  # each prepare case its own output (the cases run two at a time; an output in use is refused)
            if case.outputs == [prepared]:
                own = root / f"prepared_{case.name.split('/')[-1]}"
                case.argv[3], case.outputs = str(own), [own]

    if want("train"):
        two_cases = root / "brats_two"
        run_ok(["prepare", "brats", str(brats_source(root / "brats_src_two", rng, cases=2)), str(two_cases), "--workers", "1", "--no-progress"])
        damaged_record = copy_tree(cache, root / "brats_damaged_record")
        (damaged_record / "dataset.json").write_text("{ not json")
        damaged_array = copy_tree(cache, root / "brats_damaged_array")
        for case in ("case0", "case1", "case2", "case3"):
            array = damaged_array / case / "t1.npy"
            array.write_bytes(array.read_bytes()[:90])
        cases += [
            Case("train/brats-cache-missing", ["train", str(brats_config(root / "b1.yaml", root / "no_cache")), "--out", str(out)],
                 ["no_cache is not a segmentation cache", "mckd prepare seg"], [out]),
            Case("train/brats-too-few-cases", ["train", str(brats_config(root / "b2.yaml", two_cases)), "--out", str(out)],
                 ["2 cases are too few"], [out]),
            Case("train/brats-damaged-record", ["train", str(brats_config(root / "b3.yaml", damaged_record)), "--out", str(out)],
                 ["brats_damaged_record/dataset.json", "is damaged"], [out]),
            Case("train/brats-damaged-array", ["train", str(brats_config(root / "b4.yaml", damaged_array)), "--out", str(out)],
                 ["t1.npy is not a readable cached array"], [out]),
            Case("train/brats-unknown-modality", ["train", str(brats_config(root / "b5.yaml", cache)), "--set", "data.modalities=[flair, dwi]", "--out", str(out)],
                 ["data.modalities ['flair', 'dwi']", "must be distinct names from the cache's"], [out]),
        ]
    if want("predict"):
        inputs = root / "predict_inputs"
        inputs.mkdir()
        flair = source / "case0" / "case0_flair.nii.gz"
        data = flair.read_bytes()
        (inputs / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
        nifti(inputs / "other_shape.nii.gz", np.ones((12, 12, 9), np.float32))
        nan_image = np.ones(SHAPE, np.float32)
        nan_image[3, 3, 3] = np.inf
        nifti(inputs / "inf.nii.gz", nan_image)
        nifti(inputs / "zero.nii.gz", np.zeros(SHAPE, np.float32))
        existing = root / "existing_prediction.nii.gz"
        existing.write_bytes(b"an earlier prediction")
        prediction = root / "prediction.nii.gz"
        pickled_run = root / "runs" / "predict_pickle"
        pickled_run.mkdir(parents=True)
        (pickled_run / "checkpoint.safetensors").write_bytes(pickle.dumps(Payload(marker)))
        outputs = iter(range(100))

        def predict(*items, run=brats_run, out_path=None):
            # one output per case: cases run two at a time, and a second predict on one output is refused as in use
            out_path = out_path or prediction.with_name(f"prediction_{next(outputs)}.nii.gz")
            return ["predict", str(run), *items, "--out", str(out_path), "--device", "cpu"]
        cases += [
            Case("predict/output-exists", predict(f"flair={flair}", out_path=existing), ["existing_prediction.nii.gz", "exists", "--force"], [existing]),
            Case("predict/output-not-nifti", predict(f"flair={flair}", out_path=root / "prediction.png"), ["prediction.png must end in .nii.gz"], [root / "prediction.png"]),
            Case("predict/unknown-modality", predict(f"dwi={flair}"), ["has none of the sequences the model takes", "it has dwi"], [prediction]),
            Case("predict/not-modality-equals-file", predict(str(flair)), ["inputs are MODALITY=FILE"], [prediction]),
            Case("predict/input-missing", predict(f"flair={inputs / 'nothing.nii.gz'}"), ["nothing.nii.gz", "does not exist"], [prediction]),
            Case("predict/truncated-input", predict(f"flair={inputs / 'truncated.nii.gz'}"), ["truncated.nii.gz", "not a readable NIfTI file"], [prediction]),
            Case("predict/shape-mismatch", predict(f"flair={flair}", f"t1={inputs / 'other_shape.nii.gz'}"), ["other_shape.nii.gz has shape (12, 12, 9)"], [prediction]),
            Case("predict/inf-input", predict(f"flair={inputs / 'inf.nii.gz'}"), ["inf.nii.gz holds 1 NaN or Inf voxels"], [prediction]),
            Case("predict/all-zero-input", predict(f"flair={inputs / 'zero.nii.gz'}"), ["zero.nii.gz (flair) is empty"], [prediction]),
            Case("predict/pickle-checkpoint", predict(f"flair={flair}", run=pickled_run), ["Python pickle", "refuses"], [prediction]),
            Case("predict/not-a-segmentation-run", predict(f"flair={flair}", run=digits_run), ["is a classification model", "BraTS segmentation run"], [prediction]),
            Case("predict/unknown-label-convention", predict(f"flair={flair}") + ["--labels", "brats2099"], ["label convention 'brats2099'"], [prediction]),
        ]
        for case in cases:  # each predict case's own output must stay absent
            if case.outputs == [prediction]:
                case.outputs = [Path(case.argv[case.argv.index("--out") + 1])]

    # ---- compare (two evaluated runs) -----------------------------------------------------------
    if want("compare"):
        tables = {}
        for name, content in {"empty": b"", "binary": bytes(range(128, 256)), "text": b"subset,size,acc\nfou,1,high\n",
                              "good": b"subset,size,acc\nfou,1,0.5\n"}.items():
            (root / "tables" / name).mkdir(parents=True)
            (root / "tables" / name / "subsets.csv").write_bytes(content)
            tables[name] = root / "tables" / name
        comparison = root / "comparison"
        compare = lambda a, b: ["compare", str(tables[a]), str(tables[b]), "--out", str(comparison)]  # noqa: E731
        cases += [
            Case("compare/empty-table", compare("empty", "good"), ["empty/subsets.csv", "holds no rows"], [comparison]),
            Case("compare/binary-table", compare("good", "binary"), ["binary/subsets.csv", "not a readable CSV table"], [comparison]),
            Case("compare/non-numeric-metric", compare("good", "text"), ["acc is 'high' in"], [comparison]),
            Case("compare/not-a-run", ["compare", str(tables["good"]), str(root / "nowhere")], ["nowhere", "has no subsets.csv"], []),
        ]

    # ---- AV-MNIST prepare --------------------------------------------------------------------
    if want("prepare"):
        av = root / "avmnist"
        av.mkdir()
        images = rng.integers(0, 256, (40, 28, 28))
        labels = np.arange(40) % 10
        (av / "images.gz").write_bytes(gzip.compress(idx(images)))
        (av / "labels.gz").write_bytes(gzip.compress(idx(labels)))
        (av / "images_truncated").write_bytes(idx(images)[:5000])
        (av / "images_padded").write_bytes(idx(images) + bytes(100))
        (av / "labels_short.gz").write_bytes(gzip.compress(idx(labels[:39])))
        recordings = av / "recordings"
        recordings.mkdir()
        for digit in range(10):
            for index in (0, 20, 21):
                wav(recordings / f"{digit}_theo_{index}.wav", rng)
        bad_recordings = copy_tree(recordings, av / "recordings_bad")
        first = bad_recordings / "0_theo_0.wav"
        first.write_bytes(first.read_bytes()[:30])
        prepared_av = av / "prepared.safetensors"
        existing_av = av / "existing.safetensors"
        existing_av.write_bytes(b"an earlier file")

        def prepare_av(images_file="images.gz", labels_file="labels.gz", recs=recordings, out_file=prepared_av):
            return ["prepare", "avmnist", "--images", str(av / images_file), "--labels", str(av / labels_file),
                    "--recordings", str(recs), "--speakers", "theo", "--val-per-digit", "1", "--out", str(out_file), "--no-progress"]

        cases += [
            Case("prepare-avmnist/idx-truncated", prepare_av(images_file="images_truncated"), ["images_truncated", "announces shape (40, 28, 28)"], [prepared_av]),
            Case("prepare-avmnist/idx-header-vs-size", prepare_av(images_file="images_padded"), ["images_padded", "but the file holds"], [prepared_av]),
            Case("prepare-avmnist/idx-swapped", prepare_av(images_file="labels.gz"), ["labels.gz", "has magic 2049; expected 2051"], [prepared_av]),
            Case("prepare-avmnist/images-labels-length", prepare_av(labels_file="labels_short.gz"), ["holds 40 images but", "holds 39 labels"], [prepared_av]),
            Case("prepare-avmnist/idx-missing", prepare_av(images_file="nothing.gz"), ["nothing.gz", "does not exist"], [prepared_av]),
            Case("prepare-avmnist/wav-truncated", prepare_av(recs=bad_recordings), ["0_theo_0.wav", "not a readable PCM WAV file"], [prepared_av]),
            Case("prepare-avmnist/recordings-missing", prepare_av(recs=av / "nowhere"), ["nowhere", "does not exist"], [prepared_av]),
            Case("prepare-avmnist/output-exists", prepare_av(out_file=existing_av), ["existing.safetensors", "--force"], [existing_av]),
        ]
    if want("hostile"):
        from hostile_inputs import hostile_cases

        cases += hostile_cases(root, rng, good, digits_run, source, cache, brats_run, csv_dir)
    return cases


# --- Running and checking --------------------------------------------------------------------


def snapshot(path: Path) -> object:
    """``None`` when absent; the file's hash; or a folder's ``{relative path: hash}``."""
    if not path.exists():
        return None
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def temporary_files(root: Path) -> set[str]:
    """Hidden temporary files and staging folders under ``root``, but those of a process still running.

    (Cases run two at a time: the other case's temporaries are not left behind, yet.)
    """
    found = set()
    for p in root.rglob("*"):
        if not (p.name.startswith(".") and ".tmp" in p.name):
            continue
        pid = re.match(r"^\..+?\.(\d+)\.", p.name)
        if pid and alive(int(pid.group(1))):
            continue
        found.add(str(p))
    return found


def check(case: Case, code: int | None, stderr: str, before: dict[Path, object], marker: Path, tmp_before: set[str], root: Path) -> list[str]:
    problems = []
    codes = case.code if isinstance(case.code, tuple) else (case.code,)
    if code not in codes:
        problems.append(f"exit status {code}, expected {' or '.join(map(str, codes))}")
    if "Traceback" in stderr:
        problems.append("a traceback on stderr")
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code == 0 and 0 in codes:  # it finished before the signal came: it must have succeeded cleanly
        message = ""
        case = Case(case.name, case.argv, [], case.outputs, after=case.after)
    elif case.code == 2:
        errors = [line for line in lines if line.startswith("mckd: error: ")]
        if len(errors) != 1 or lines[-1:] != errors:
            problems.append(f"stderr is not one 'mckd: error:' line: {stderr.strip()[-300:]!r}")
        message = errors[0] if errors else stderr
    else:
        if not lines or not lines[-1].startswith("mckd: ") or lines[-1].startswith("mckd: error:"):
            problems.append(f"stderr does not end with one 'mckd: ...' line: {stderr.strip()[-300:]!r}")
        message = lines[-1] if lines else ""
    for words in case.expect:
        if words not in message:
            problems.append(f"the message does not say {words!r}: {message.strip()[:300]!r}")
    for path, old in before.items():
        if snapshot(path) != old:
            problems.append(f"{path} was {'created' if old is None else 'changed'}")
    left = temporary_files(root) - tmp_before
    if left:
        problems.append(f"temporary files left: {sorted(left)}")
    if marker.exists():
        problems.append("a crafted pickle ran code")
    if case.after is not None:
        problems += case.after()
    return problems


def needs_process(case: Case) -> str:
    """Why ``case`` cannot run in-process ("" when it can)."""
    if case.shell:
        return "a private mount namespace (tmpfs, read-only bind mount)"
    if case.signal_when is not None:
        return "a signal to a real process"
    if case.holder is not None:
        return "a second real process"
    return ""


def can_mount() -> bool:
    """Whether a private mount namespace with a tmpfs can be made here (root, or user namespaces)."""
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c",
                           "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"],
                          capture_output=True)
    return done.returncode == 0


def children_of(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            kids = [int(p) for p in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            kids = []
        found += kids
        todo += kids
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def run_case(case: Case, root: Path, in_process: bool) -> Result:
    marker = root / "CODE_RAN"
    before = {path: snapshot(path) for path in case.outputs}
    tmp_before = temporary_files(root)
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "mckd.cli", *case.argv]
    holder = None
    if case.holder is not None:
        holder = subprocess.Popen([sys.executable, "-m", "mckd.cli", *case.holder], cwd=root, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and not case.holder_ready():
            time.sleep(0.05)
    orphans: list[int] = []
    try:
        if in_process:
            from mckd.cli import main

            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                try:
                    code: int | None = main(case.argv)
                except SystemExit as exit_:  # argparse
                    code = exit_.code if isinstance(exit_.code, int) else 2
                except BaseException:  # noqa: BLE001 - an escaping exception is exactly what this run looks for
                    code = None
                    err.write(traceback.format_exc())
            stderr = err.getvalue()
        elif case.shell:
            script = f'{case.shell} && exec "$@"'
            done = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script, "sh", *command],
                                  capture_output=True, text=True, cwd=root, env=env, timeout=600)
            code, stderr = done.returncode, done.stderr
        elif case.signal_when is not None:
            process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True)
            deadline = time.time() + 300
            while time.time() < deadline and process.poll() is None and not case.signal_when():
                time.sleep(0.02)
            descendants = children_of(process.pid)
            if process.poll() is None:
                process.send_signal(case.signal)
            stderr = process.communicate(timeout=300)[1]
            code = process.returncode
            time.sleep(0.3)
            orphans = [pid for pid in descendants if alive(pid)]
        else:
            done = subprocess.run(command, capture_output=True, text=True, cwd=root, env=env, timeout=600)
            code, stderr = done.returncode, done.stderr
    finally:
        if holder is not None:
            holder.send_signal(15)
            holder.wait(timeout=300)
    seconds = time.perf_counter() - start
    problems = check(case, code, stderr, before, marker, tmp_before, root)
    if orphans:
        problems.append(f"processes left running after the signal: {orphans}")
    return Result(case, code, stderr, seconds, problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-process", action="store_true", help="call mckd.cli.main instead of starting processes")
    parser.add_argument("--only", choices=["prepare", "train", "evaluate", "predict", "compare", "hostile"],
                        help="the cases of one command, or the hostile classes (disks, concurrency, signals, ...)")
    parser.add_argument("--keep", help="build in this folder (must not exist) and keep it")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once as subprocesses (default 2)")
    parser.add_argument("--case", action="append", default=[], metavar="NAME",
                        help="run only this case (repeatable), e.g. --case evaluate/pickle-checkpoint")
    parser.add_argument("--list", action="store_true", help="print the cases' names and run none")
    args = parser.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mckd_malformed_"))
    root.mkdir(parents=True, exist_ok=bool(not args.keep))
    root = root.resolve()
    try:
        start = time.perf_counter()
        cases = build(root, args.only)
        print(f"built {len(cases)} malformed inputs in {time.perf_counter() - start:.0f} s under {root}")
        if args.list:
            print("\n".join(case.name for case in cases))
            return 0
        if args.case:
            unknown = sorted(set(args.case) - {case.name for case in cases})
            if unknown:
                print(f"no such case: {', '.join(unknown)}", file=sys.stderr)
                return 2
            cases = [case for case in cases if case.name in args.case]
        skipped: list[tuple[Case, str]] = []
        mount = can_mount()
        runnable = []
        for case in cases:
            reason = needs_process(case) if args.in_process else ""
            if not reason and case.shell and not mount:
                reason = "no private mount namespace can be made here (needs root or user namespaces)"
            if reason:
                skipped.append((case, reason))
            else:
                runnable.append(case)
        cases = runnable
        if args.in_process:
            results = [run_case(case, root, True) for case in cases]
        else:
            alone = [case for case in cases if case.signal_when is not None or case.holder is not None]
            together = [case for case in cases if case not in alone]
            with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
                results = list(pool.map(lambda case: run_case(case, root, False), together))
            results += [run_case(case, root, False) for case in alone]  # timing-sensitive: one at a time
        failed = 0
        for result in results:
            error = next((line for line in result.stderr.splitlines() if line.startswith("mckd: error: ")), "")
            status = "ok  " if not result.problems else "FAIL"
            failed += bool(result.problems)
            print(f"{status} {result.case.name:45s} {result.seconds:5.1f}s  {error[13:130]}")
            for problem in result.problems:
                print(f"     - {problem}")
        reasons: dict[str, int] = {}
        for _, reason in skipped:
            reasons[reason] = reasons.get(reason, 0) + 1
        for reason, count in reasons.items():
            print(f"skipped {count} cases that need {reason}" if not reason.startswith("no ") else
                  f"skipped {count} cases: {reason}")
        print(f"{len(results) - failed} of {len(results)} cases end with one clear error, no traceback, nothing half-written")
        return 1 if failed else 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
