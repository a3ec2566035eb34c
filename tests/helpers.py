"""Builders the tests share: a loop reference of the CKD term, synthetic NIfTI cases, pickle payloads, callbacks."""

from __future__ import annotations

import contextlib
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from mckd.train import Callback

# --- the CKD term, computed another way -------------------------------------------------------------------


def feature_distance(teacher: torch.Tensor, student: torch.Tensor, p: int, reduction: str) -> torch.Tensor:
    """``mean |t - s|^p`` over elements (``mean``) or ``||t - s||_p`` (``norm``)."""
    diff = (teacher - student).flatten().abs()
    if reduction == "mean":
        return (diff**p).mean()
    return (diff**p).sum() ** (1.0 / p)


def ckd_by_loops(features: torch.Tensor, present: torch.Tensor, weights: torch.Tensor, p: int = 1,
                 reduction: str = "mean") -> torch.Tensor:
    """(1/B) sum_b sum_{i != j, both present} (w_i / w_j) d(f_i detached, f_j), with Python loops."""
    batch, n = present.shape
    total = features.new_zeros(())
    for b in range(batch):
        for i in range(n):
            for j in range(n):
                if i != j and present[b, i] and present[b, j]:
                    ratio = float(weights[i]) / float(weights[j])
                    total = total + ratio * feature_distance(features[b, i].detach(), features[b, j], p, reduction)
    return total / batch


# --- synthetic NIfTI cases ------------------------------------------------------------------------------

SHAPE = (10, 10, 8)
SEQUENCES = ("flair", "t1", "t1ce", "t2")


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``array`` as NIfTI (identity affine by default)."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def synthetic_head(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A 'head': random positive intensities inside, 0 at the border (the background)."""
    image = np.zeros(shape, np.float32)
    inner = tuple(slice(2, s - 2) for s in shape)
    image[inner] = np.random.default_rng(seed).uniform(1, 2, tuple(s - 4 for s in shape))
    return image


def make_brats_case(root: Path, name: str, labels: np.ndarray | None = None) -> Path:
    """A BraTS 2018-named case folder of 4 synthetic sequences and a label map (labels 0/1/2/4)."""
    folder = root / name
    folder.mkdir(parents=True)
    for n, sequence in enumerate(SEQUENCES):
        save_nifti(folder / f"{name}_{sequence}.nii.gz", synthetic_head(n))
    if labels is None:
        labels = np.zeros(SHAPE, np.uint8)
        labels[4:6, 4:6, 3:5] = 4
        labels[3, 3, 3] = 1
        labels[6, 6, 4] = 2
    save_nifti(folder / f"{name}_seg.nii.gz", labels)
    return folder


# --- files that run code when unpickled ---------------------------------------------------------------


class Payload:
    """Unpickling this creates ``path``: the proof that a loader ran code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def pickled_payload(marker: Path, protocol: int = 4) -> bytes:
    """A pickle that creates ``marker`` when loaded."""
    return pickle.dumps(Payload(marker), protocol=protocol)


# --- training callbacks ---------------------------------------------------------------------------------


class AtIteration(Callback):
    """A callback that calls ``action()`` after iteration ``when``."""

    name = "at_iteration"

    def __init__(self, when: int, action: Callable[[], None]) -> None:
        self.when, self.action = when, action

    def on_iteration_end(self, iteration: int, experiment) -> None:
        if iteration == self.when:
            self.action()


def assert_resumes_exactly(config, folder: Path, stop_at: int = 5) -> dict[str, torch.Tensor]:
    """Train ``config`` straight, and stopped by SIGTERM after ``stop_at`` then resumed: equal checkpoints and logs.

    Returns the straight run's checkpoint tensors.
    """
    import os
    import signal

    import pytest

    from mckd.checkpoint import load_checkpoint
    from mckd.rundir import RunDir
    from mckd.train import TrainingInterrupted, train

    train(config, folder / "straight")
    with pytest.raises(TrainingInterrupted):
        train(config, folder / "stopped", callbacks=[AtIteration(stop_at, lambda: os.kill(os.getpid(), signal.SIGTERM))])
    train(config, folder / "stopped", resume=True)
    a, _ = load_checkpoint(RunDir(folder / "straight").checkpoint)
    b, _ = load_checkpoint(RunDir(folder / "stopped").checkpoint)
    assert sorted(a) == sorted(b) and [k for k in a if not torch.equal(a[k], b[k])] == []
    strip = lambda run: [line.split(', "seconds"')[0] for line in RunDir(run).metrics.read_text().splitlines()]  # noqa: E731
    assert strip(folder / "straight") == strip(folder / "stopped")
    return a


@contextlib.contextmanager
def held_by_another_process(path: Path, kind: str = "file") -> Iterator[int]:
    """Another process holds mckd's output claim on ``path`` (a file or a ``"dir"``) for the block; yields its pid."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom mckd.io import claim_output\n"
                               "with claim_output(sys.argv[1], kind=sys.argv[2]):\n"
                               "    print('held', flush=True)\n    time.sleep(60)\n", str(path), kind],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
