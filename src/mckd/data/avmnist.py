"""Audiovision-MNIST (SMIL, Ma et al. 2021): spoken digits paired with MNIST images.

Prepared once from the raw public sources by ``mckd prepare avmnist``:

- audio: Free Spoken Digit Dataset recordings ``{digit}_{speaker}_{index}.wav``
  (8 kHz; by default speakers jackson, nicolas and theo, 1,500 clips), each
  turned into a 20x20 MFCC by one of the recipes of :mod:`mckd.data.audio`;
- image: each recording is paired with an MNIST image of the same digit,
  read from an IDX pair (:mod:`mckd.data.idx`). Within each digit the images
  are a random permutation drawn from ``--seed``, taken without replacement,
  so the pairing is deterministic and no image is used twice;
- split, SMIL's: recordings with index < 15 are the test set (450 with the
  three speakers); of the others (1,050), 15 per digit (150) drawn by the
  seed are the meta-validation split and the rest (900) the training split:
  the paper's 60/10/30.

The prepared file is one safetensors file (tensors only, never unpickled):
``image`` uint8 ``[S, 28, 28]``, ``audio`` float32 ``[S, 20, 20]`` (MFCC
coefficient x frame), ``label`` int64 ``[S]``, ``split`` uint8 ``[S]`` (0
train, 1 meta-validation, 2 test), ``image_index`` int64 ``[S]`` (row of the
MNIST IDX file, to trace every pair back), ``recording_index`` and
``speaker`` int64 ``[S]``; its metadata (JSON under ``avmnist``) records the
recipe, seed, speakers, recording file names and source files.

The registered dataset ``avmnist`` reads that file.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from mckd.io import atomic_write, file_problem
from mckd.data.audio import FSDD_SPEAKERS, N_FRAMES, N_MFCC, RECIPES, list_fsdd, mfcc, read_wav
from mckd.data.bundle import DataBundle, MultiModalTensorDataset
from mckd.data.recorded_split import split_record, use_recorded_split
from mckd.data.idx import read_mnist
from mckd.registry import PATH
from mckd.errors import ConfigError, DataError
from mckd.registry import register_dataset

MODALITIES = ("image", "audio")
SPLITS = ("train", "val", "test")  # codes 0, 1, 2 in the ``split`` tensor
TEST_INDEX_BELOW = 15  # SMIL: recordings with index < 15 are the test set
FORMAT = 1
SHARED = Path("..") / "shared" / "data"  # the project's real data, relative to the project root
DEFAULT_IMAGES = SHARED / "mnist" / "mnist-part-a-images-idx3-ubyte.gz"
DEFAULT_LABELS = SHARED / "mnist" / "mnist-part-a-labels-idx1-ubyte.gz"
DEFAULT_RECORDINGS = SHARED / "fsdd" / "recordings"
_ARRAYS = {"image": np.uint8, "audio": np.float32, "label": np.int64, "split": np.uint8,
           "image_index": np.int64, "recording_index": np.int64, "speaker": np.int64}


def pair_by_label(digits: np.ndarray, image_labels: np.ndarray, seed: int) -> np.ndarray:
    """For each recording, the index of an MNIST image of the same digit.

    Args:
        digits: ``[R]`` the recordings' digits, in a fixed order.
        image_labels: ``[M]`` the MNIST labels.
        seed: within each digit, images are taken in the order of a permutation drawn from this seed.

    Returns:
        ``[R]`` int64 image indices, distinct, with ``image_labels[result] == digits``.

    Raises:
        DataError: when a digit has more recordings than images.
    """
    rng = np.random.default_rng(seed)
    chosen = np.full(len(digits), -1, dtype=np.int64)
    for digit in range(10):  # a fixed order, so the draw does not depend on which digits are present
        candidates = rng.permutation(np.flatnonzero(image_labels == digit))
        wanted = np.flatnonzero(digits == digit)
        if len(wanted) > len(candidates):
            raise DataError(f"pairing: {len(wanted)} recordings of digit {digit} but only {len(candidates)} MNIST "
                            "images of it; every recording needs its own image")
        chosen[wanted] = candidates[: len(wanted)]
    return chosen


def smil_split(digits: np.ndarray, indices: np.ndarray, val_per_digit: int, seed: int) -> np.ndarray:
    """SMIL's split: index < 15 is test; of the rest, ``val_per_digit`` per digit (by ``seed``) are meta-validation.

    Returns:
        ``[R]`` uint8 codes: 0 train, 1 meta-validation, 2 test.
    """
    split = np.where(indices < TEST_INDEX_BELOW, 2, 0).astype(np.uint8)
    rng = np.random.default_rng(seed + 1)  # another stream than the pairing's
    for digit in range(10):
        if not np.any(digits == digit):
            continue
        pool = np.flatnonzero((digits == digit) & (split == 0))
        if len(pool) <= val_per_digit:
            raise DataError(f"split: digit {digit} has {len(pool)} training recordings (index >= {TEST_INDEX_BELOW}); "
                            f"{val_per_digit} of them for meta-validation would leave none for training")
        split[rng.choice(pool, size=val_per_digit, replace=False)] = 1
    return split


def prepare_avmnist(
    images: str | Path,
    labels: str | Path,
    recordings: str | Path,
    out: str | Path,
    speakers: Sequence[str] = FSDD_SPEAKERS,
    recipe: str = "clean",
    seed: int = 0,
    val_per_digit: int = 15,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Read the raw sources, pair, split and write the prepared file atomically; return its metadata.

    Raises:
        DataError: on unreadable or inconsistent sources, or when ``out`` exists and ``force`` is false.
    """
    from safetensors.numpy import save_file

    from mckd.progress import Progress

    out = Path(out)
    if recipe not in RECIPES:
        raise DataError(f"MFCC recipe must be one of {list(RECIPES)}, got {recipe!r}")
    if out.exists() and not force:
        raise DataError(f"{str(out)!r} exists; pass --force to replace it")
    from mckd.io import claim_output

    with claim_output(out, replace=True, kind="file", what="prepared AV-MNIST file", inputs=[images, labels, recordings]):  # one writer; a read-only place fails now
        if val_per_digit < 0:
            raise DataError(f"--val-per-digit must be >= 0, got {val_per_digit}")
        mnist_images, mnist_labels = read_mnist(images, labels)
        clips = list_fsdd(recordings, speakers)
        digits = np.array([c.digit for c in clips], dtype=np.int64)
        indices = np.array([c.index for c in clips], dtype=np.int64)
        image_index = pair_by_label(digits, mnist_labels, seed)
        split = smil_split(digits, indices, val_per_digit, seed)
        audio = np.zeros((len(clips), N_MFCC, N_FRAMES), dtype=np.float32)
        bar = Progress(len(clips), f"MFCC ({recipe})", enabled=progress, unit="clip")  # plain lines off a terminal
        try:
            for i, clip in enumerate(clips):
                samples, rate = read_wav(clip.path)
                audio[i] = mfcc(samples, rate, recipe)  # (20, 20)
                bar.update()
        finally:
            bar.close()
        if not np.isfinite(audio).all():
            raise DataError("prepare avmnist: an MFCC holds NaN or Inf values")
        arrays = {
            "image": np.ascontiguousarray(mnist_images[image_index]),  # (S, 28, 28) uint8
            "audio": audio,
            "label": digits,
            "split": split,
            "image_index": image_index,
            "recording_index": indices,
            "speaker": np.array([list(speakers).index(c.speaker) for c in clips], dtype=np.int64),
        }
        metadata = {
            "format": FORMAT,
            "recipe": recipe,
            "seed": seed,
            "val_per_digit": val_per_digit,
            "test_index_below": TEST_INDEX_BELOW,
            "speakers": list(speakers),
            "recordings": [c.path.name for c in clips],
            "sources": {"images": str(images), "labels": str(labels), "recordings": str(recordings)},
            "sizes": {name: int((split == code).sum()) for code, name in enumerate(SPLITS)},
        }
        atomic_write(out, lambda tmp: save_file(arrays, tmp, metadata={"avmnist": json.dumps(metadata)}))
        return metadata


def load_prepared(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a prepared file: its arrays (checked) and metadata. Nothing is unpickled."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise DataError(f"prepared AV-MNIST file {str(path)!r} {problem}; make it with `mckd prepare avmnist "
                        f"--recipe smil --out {path}` (see the README)")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = json.loads((handle.metadata() or {}).get("avmnist", "null"))
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise DataError(f"{str(path)!r} is not a readable safetensors file ({error})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise DataError(f"{str(path)!r} is not an AV-MNIST file of format {FORMAT} (made by `mckd prepare avmnist`)")
    missing = sorted(set(_ARRAYS) - set(arrays))
    if missing:
        raise DataError(f"{str(path)!r} lacks the arrays {missing}")
    size = len(arrays["label"])
    shapes = {"image": (size, 28, 28), "audio": (size, N_MFCC, N_FRAMES)}
    for name, dtype in _ARRAYS.items():
        expected = shapes.get(name, (size,))
        if arrays[name].shape != expected or arrays[name].dtype != dtype:
            raise DataError(f"{str(path)!r}: array {name!r} is {arrays[name].dtype} {arrays[name].shape}, "
                            f"expected {np.dtype(dtype)} {expected}")
    lacking = [key for key in ("recipe", "seed", "speakers") if key not in metadata]
    if lacking:
        raise DataError(f"{str(path)!r}: its metadata lacks {lacking}; prepare it again with `mckd prepare avmnist`")
    # Values a damaged or hand-made file could hold that would otherwise fail deep in training (or train on NaN).
    if size and (arrays["label"].min() < 0 or arrays["label"].max() > 9):
        raise DataError(f"{str(path)!r}: labels range over {int(arrays['label'].min())}..{int(arrays['label'].max())}; "
                        "expected the digits 0-9")
    if size and arrays["split"].max() > 2:
        raise DataError(f"{str(path)!r}: split codes go up to {int(arrays['split'].max())}; expected 0 train, "
                        "1 meta-validation, 2 test")
    if not np.isfinite(arrays["audio"]).all():
        raise DataError(f"{str(path)!r}: the MFCCs hold {int((~np.isfinite(arrays['audio'])).sum())} NaN or Inf values")
    return arrays, metadata


@dataclass
class AVMNISTOptions:
    """Options of the ``avmnist`` dataset."""

    path: str = field(default="cache/avmnist_smil.safetensors", metadata=PATH)  # the file `mckd prepare avmnist` wrote
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))  # [image, audio]; one alone: LowerB
    standardise_audio: bool = True  # MFCC coefficient c: (x - mean_c) / std_c over the training split
    image_range: Literal["unit", "symmetric"] = "unit"  # pixels in [0, 1], or in [-1, 1] as SMIL's code
    train_on_val: bool = False  # the meta-validation samples join the training split (SMIL's lower bound trains on all 1,050); only for methods without a meta step

    def validate(self, path: str) -> None:
        if not self.modalities or len(set(self.modalities)) != len(self.modalities) or \
                any(m not in MODALITIES for m in self.modalities):
            raise ConfigError(f"{path}.modalities must be distinct names from {list(MODALITIES)}, got {self.modalities}")


@register_dataset("avmnist", AVMNISTOptions, "Audiovision-MNIST: MNIST image + FSDD MFCC (mckd prepare avmnist)")
def build_avmnist(options: AVMNISTOptions, seed: int) -> DataBundle:
    """The prepared file's three splits; images ``[1, 28, 28]`` in [0, 1] (or [-1, 1]), MFCCs ``[1, 20, 20]``.

    With ``train_on_val`` the training split is the training and meta-validation
    samples together (the meta-validation split stays as it is, for evaluation
    and LCKD's elections; a method with a meta step refuses it, see
    :func:`mckd.build.build_experiment`).
    """
    arrays, metadata = load_prepared(options.path)
    rows = [str(r) for r in range(len(arrays["split"]))]  # a sample's id: its row in the prepared file
    labels = [str(v) for v in arrays["label"].tolist()]
    split = use_recorded_split(rows, labels, arrays["split"].astype(np.int64))
    train = (split == 0) | ((split == 1) & options.train_on_val)
    pixels = arrays["image"].astype(np.float32) / 255.0
    scaling = {"image": (np.zeros((1, 1, 1), np.float32), np.full((1, 1, 1), 255.0, np.float32))}
    if options.image_range == "symmetric":
        pixels = pixels * 2.0 - 1.0
        scaling["image"] = (np.full((1, 1, 1), 127.5, np.float32), np.full((1, 1, 1), 127.5, np.float32))
    image = torch.from_numpy(pixels).unsqueeze(1)  # (S, 1, 28, 28)
    audio = arrays["audio"]
    if options.standardise_audio:
        mean = audio[train].mean(axis=(0, 2), keepdims=True)  # (1, 20, 1): per coefficient
        std = audio[train].std(axis=(0, 2), keepdims=True)
        std = np.where(std > 1e-6, std, 1.0)
        audio = (audio - mean) / std
        scaling["audio"] = (mean.astype(np.float32), std.astype(np.float32))  # (1, 20, 1): one sample is [1, 20, 20]
    inputs = {"image": image, "audio": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(1)}
    label = torch.from_numpy(arrays["label"])

    def subset(rows_mask: np.ndarray) -> MultiModalTensorDataset:
        rows = torch.from_numpy(np.flatnonzero(rows_mask))
        return MultiModalTensorDataset([inputs[m][rows] for m in options.modalities], label[rows])

    shapes = {"image": (1, 28, 28), "audio": (1, N_MFCC, N_FRAMES)}
    return DataBundle(
        modalities=tuple(options.modalities),
        train=subset(train),
        val=subset(split == 1),
        test=subset(split == 2),
        num_classes=10,
        input_shapes={m: shapes[m] for m in options.modalities},
        info={"source": str(options.path), "recipe": metadata["recipe"], "prepare_seed": metadata["seed"],
              "speakers": metadata["speakers"], "sizes": {n: int((split == c).sum()) for c, n in enumerate(SPLITS)},
              "val_in_train": options.train_on_val, **split_record(rows, labels, split)},
        scaling={m: scaling[m] for m in options.modalities if m in scaling},
    )


def add_prepare_parser(datasets: Any) -> None:
    """``mckd prepare avmnist``: the prepared file that the ``avmnist`` dataset reads."""
    p = datasets.add_parser(
        "avmnist", help="pair FSDD recordings (as MFCCs) with MNIST images; SMIL's split",
        description="Read an MNIST IDX pair and an FSDD recordings folder, turn each recording into a 20x20 MFCC, "
                    "pair it with an MNIST image of the same digit (deterministic by --seed), split as SMIL did "
                    "(index < 15 test; 15 per digit of the rest meta-validation) and write one safetensors file. "
                    "Needs librosa (pip install 'mckd[audio]'); its first call compiles for about 13 s.",
    )
    p.add_argument("--images", default=str(DEFAULT_IMAGES), help=f"MNIST images IDX file, gzip or raw (default: {DEFAULT_IMAGES})")
    p.add_argument("--labels", default=str(DEFAULT_LABELS), help=f"MNIST labels IDX file (default: {DEFAULT_LABELS})")
    p.add_argument("--recordings", default=str(DEFAULT_RECORDINGS), help=f"FSDD recordings folder (default: {DEFAULT_RECORDINGS})")
    p.add_argument("--speakers", nargs="+", default=list(FSDD_SPEAKERS), help="FSDD speakers (default: jackson nicolas theo)")
    p.add_argument("--recipe", choices=RECIPES, default="clean",
                   help="MFCC recipe: clean (whole clip, 20 frames span it; default) or smil (SMIL's, for the paper's numbers)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pairing and of the meta-validation draw (default: 0)")
    p.add_argument("--val-per-digit", type=int, default=15, help="meta-validation recordings per digit (default: 15)")
    p.add_argument("--out", help="output file (default: cache/avmnist_<recipe>.safetensors)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> None:
    out = Path(args.out) if args.out else Path("cache") / f"avmnist_{args.recipe}.safetensors"
    metadata = prepare_avmnist(args.images, args.labels, args.recordings, out, speakers=args.speakers,
                               recipe=args.recipe, seed=args.seed, val_per_digit=args.val_per_digit,
                               force=args.force, progress=not args.no_progress)
    sizes = metadata["sizes"]
    print(f"prepared {sum(sizes.values())} AV-MNIST pairs ({metadata['recipe']} MFCCs; train {sizes['train']}, "
          f"meta-validation {sizes['val']}, test {sizes['test']}) into {out}")
