"""The kit of the hostile-input cases: the inputs they damage, the one runner and the one checker.

Every case of ``tests/hostile/test_*.py`` is one bad input (a file, a config,
an option, a disk, a signal, a second process) through one ``mckd`` command
or the Python API, and is checked the same way (:func:`check`):

- the exit status: 2 for an error, 130 for a stop by a signal, 0 where the
  command must succeed (a capped resource, an accepted change);
- stderr: no ``Traceback``; an error is exactly one ``mckd: error:`` line, a
  stop ends in one ``mckd: ...`` line; the line holds the case's words (the
  file, key or option, what was found);
- its outputs: absent if they were absent, byte for byte the same if they
  existed (a user's files above all); no hidden temporary file or staging
  folder left behind; no crafted pickle ran; no process left running.

Cases run in this process through :func:`mckd.cli.main` (fast), or as real
``mckd`` processes where they need one: a signal, a second process holding
an output, a private mount namespace (a full or read-only disk), or the
stderr a user sees.

The inputs are made here from scratch (synthetic digits CSVs, BraTS-like
NIfTI cases, own-data tables), once per session (:func:`build_world`); a case
that damages one copies it first.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import traceback
import warnings
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from helpers import Payload, pickled_payload  # noqa: F401 - one definition, shared by every test

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


# --- a case, and the lists of cases --------------------------------------------------------------------------


@dataclass
class Case:
    """One hostile input: the command, what its last line must say, and what it must leave as it was."""

    argv: list[str]
    expect: list[str]  # words the error (or stop) line must hold: the file, key or option, and the problem
    outputs: list[Path] = field(default_factory=list)  # absent, or byte for byte unchanged, afterwards
    code: Any = 2  # the exit status: 2 an error, 130 a stop by a signal, 0 success (a tuple: any of them)
    warns: list[str] = field(default_factory=list)  # words a `mckd: warning:` line must hold
    process: bool = False  # run as a real `mckd` process (what a user sees on stderr)
    shell: str = ""  # run in a private mount namespace after this shell set-up (a tmpfs, a read-only bind mount)
    signal_when: Callable[[], bool] | None = None  # send `signal` once this holds (a phase was reached)
    signal: int = 15  # SIGTERM
    holder: list[Any] | None = None  # mckd arguments (or ["-c", python code, args]) of a second process holding an
    # output while the case runs
    holder_ready: Callable[[], bool] | None = None  # the holder has claimed its output
    after: Callable[[], list[str]] | None = None  # further checks once it ended (resume works, ...): problems
    api: Callable[[], Any] | None = None  # a Python API call instead of a command (must raise an MckdError)


class Cases:
    """A module's cases, each made by a function of the world (named after it), as pytest parameters.

    ``@CASES`` adds a case that runs in this process; ``@CASES.process`` one that needs real processes
    (marked ``hostile_process``: signals, second processes, mount namespaces).
    """

    def __init__(self) -> None:
        self.builders: list[tuple[str, Callable[["World"], Case], bool]] = []

    def __call__(self, build: Callable[["World"], Case]) -> Callable[["World"], Case]:
        self.builders.append((build.__name__.replace("_", "-"), build, False))
        return build

    def process(self, build: Callable[["World"], Case]) -> Callable[["World"], Case]:
        self.builders.append((build.__name__.replace("_", "-"), build, True))
        return build

    def params(self) -> list[Any]:
        return [pytest.param(build, id=name, marks=[pytest.mark.hostile_process] if slow else [])
                for name, build, slow in self.builders]


# --- making inputs -------------------------------------------------------------------------------------------


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


def digits_config(path: Path, csv_dir: Path, extra: str = "") -> Path:
    return write_yaml(path, f"""\
task:
  name: classification
data:
  name: multiview_digits
  csv_dir: {csv_dir}
  views: [fou, mor]
model:
  name: multiview_mlp
  hidden: 16
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


def brats_case(root: Path, name: str, rng: np.random.Generator, sequences: tuple[str, ...] = SEQUENCES) -> Path:
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


def msd_dataset(folder: Path, names: list[str], nan_affine: str = "") -> Path:
    """A Medical Segmentation Decathlon folder: one 4D image (4 channels) and one label map per name.

    ``nan_affine``: the case whose image header holds a NaN in its affine (sform; no qform).
    """
    import json

    import nibabel as nib

    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        image = nib.Nifti1Image(rng.uniform(1, 2, (*SHAPE, 4)).astype(np.float32), np.eye(4))
        if name == nan_affine:
            header = image.header.copy()
            header.set_qform(None, code=0)
            header["srow_x"] = [np.nan, 0, 0, 0]
            header["sform_code"] = 1
            image = nib.Nifti1Image(np.asarray(image.dataobj), None, header)
        nib.save(image, str(folder / "imagesTr" / f"{name}.nii.gz"))
        labels = np.zeros(SHAPE, np.uint8)
        labels[4:6, 4:6, 4:6] = 1
        nib.save(nib.Nifti1Image(labels, np.eye(4)), str(folder / "labelsTr" / f"{name}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names]}))
    return folder


def brats_config(path: Path, cache: Path) -> Path:
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
model:
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


def own_table(folder: Path, rng: np.random.Generator, samples: int = 120) -> Path:
    """A user's table: ``id``, ``label`` (3 classes) and two modalities' columns ``a*`` and ``b*``."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    labels = np.arange(samples) % 3
    table = pd.DataFrame({"id": [f"s{i}" for i in range(samples)], "label": labels})
    for j in range(4):
        table[f"a{j}"] = rng.normal(size=samples) + labels
    for j in range(3):
        table[f"b{j}"] = rng.normal(size=samples) - labels
    table.to_csv(folder / "table.csv", index=False)
    return folder / "table.csv"


def own_config(path: Path, root: Path, extra_modality: str = "") -> Path:
    return write_yaml(path, f"""\
task: {{name: classification}}
data:
  name: files
  root: {root}
  labels: table.csv
  modalities:
    a: {{path: table.csv, columns: ['a*']}}
    b: {{path: table.csv, columns: ['b*']}}
{extra_modality}model: {{name: by_shape}}
train: {{iterations: 4, batch_size: 16, device: cpu, progress: false, precision: fp32}}
""")


def idx(values: np.ndarray) -> bytes:
    """An IDX file's bytes (MNIST's format) of unsigned bytes."""
    return bytes([0, 0, 8, values.ndim]) + b"".join(struct.pack(">I", d) for d in values.shape) + \
        values.astype(np.uint8).tobytes()


def wav(path: Path, rng: np.random.Generator, samples: int = 600) -> Path:
    with wave.open(str(path), "wb") as stream:
        stream.setnchannels(1)
        stream.setsampwidth(2)
        stream.setframerate(8000)
        stream.writeframes(rng.integers(-2000, 2000, samples).astype("<i2").tobytes())
    return path


def run_ok(argv: list[str]) -> None:
    """Make a good input with mckd itself (in this process, quietly); it must succeed."""
    from mckd.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = main([str(a) for a in argv])
    if code != 0:
        raise RuntimeError(f"setting up: mckd {' '.join(map(str, argv))} failed: {err.getvalue()[-500:]}")


# --- the world: good inputs, made once, that cases copy and damage ------------------------------------------


@dataclass
class World:
    """The good inputs every case starts from, and fresh places for each case's outputs."""

    root: Path
    csv: Path  # synthetic multi-view digits CSVs (views fou, mor)
    digits_yaml: Path
    digits_run: Path  # trained and evaluated
    other_run: Path  # the same config, seed 1 (a second run to compare)
    brats_src: Path  # 4 BraTS 2018-named cases
    cache: Path  # its `mckd prepare seg` cache
    brats_yaml: Path
    brats_run: Path
    own: Path  # a folder with a user's table.csv (ids s0..s119, labels 0-2)
    own_yaml: Path
    own_run: Path
    marker: Path  # a crafted pickle creates it; no case may
    counter: list[int] = field(default_factory=lambda: [0])

    def fresh(self, name: str) -> Path:
        """A path under the world that does not exist yet (each case its own)."""
        self.counter[0] += 1
        return self.root / "cases" / f"{self.counter[0]:03d}_{name}"

    def copy(self, source: Path, name: str) -> Path:
        """A copy of ``source`` (a file or folder) at a fresh path."""
        target = self.fresh(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
        return target

    @property
    def flair(self) -> Path:
        return self.brats_src / "case0" / "case0_flair.nii.gz"


def build_world(root: Path) -> World:
    """Make the good inputs under ``root`` (about 15 s): two digits runs, a BraTS cache and run, an own-data run."""
    rng = np.random.default_rng(0)
    csv = digits_csvs(root / "digits_csv", {"fou": 76, "mor": 6}, rng)
    digits_yaml = digits_config(root / "digits.yaml", csv)
    runs = root / "runs"
    world = World(root=root, csv=csv, digits_yaml=digits_yaml, digits_run=runs / "digits",
                  other_run=runs / "other_digits", brats_src=brats_source(root / "brats_src", rng),
                  cache=root / "brats_cache", brats_yaml=root / "brats.yaml", brats_run=runs / "brats",
                  own=root / "own", own_yaml=root / "own.yaml", own_run=runs / "own", marker=root / "CODE_RAN")
    run_ok(["train", digits_yaml, "--out", world.digits_run])
    run_ok(["train", digits_yaml, "--out", world.other_run, "--set", "seed=1"])
    run_ok(["prepare", "seg", world.brats_src, world.cache, "--workers", "1", "--no-progress"])
    run_ok(["train", brats_config(world.brats_yaml, world.cache), "--out", world.brats_run])
    own_table(world.own, rng)
    run_ok(["train", own_config(world.own_yaml, world.own), "--out", world.own_run])
    return world


# --- running and checking ------------------------------------------------------------------------------------


def snapshot(path: Path) -> object:
    """``None`` when absent; a file's hash (or a link's target); a folder's ``{relative path: hash}``."""
    if path.is_symlink():
        return ("link", os.readlink(path))
    if not path.exists():
        return None
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return {str(p.relative_to(path)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(path.rglob("*")) if not p.name.endswith(".lock")}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def temporary_files(root: Path) -> set[str]:
    """Hidden temporary files and staging folders under ``root``, but those of a process still running."""
    found = set()
    for p in root.rglob("*"):
        if not (p.name.startswith(".") and ".tmp" in p.name):
            continue
        pid = re.match(r"^\..+?\.(\d+)\.", p.name)
        if pid and alive(int(pid.group(1))) and int(pid.group(1)) != os.getpid():
            continue
        found.add(str(p))
    return found


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


def can_mount() -> bool:
    """Whether a private mount namespace with a tmpfs can be made here (root, or user namespaces)."""
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c",
                           "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"],
                          capture_output=True)
    return done.returncode == 0


def mckd_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _in_process(case: Case) -> tuple[int | None, str]:
    from mckd.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: err.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        try:
            if case.api is not None:
                from mckd.errors import MckdError

                try:
                    case.api()
                    code: int | None = 0
                except MckdError as error:
                    err.write(f"mckd: error: {' '.join(str(error).split())}\n")
                    code = 2
            else:
                code = main([str(a) for a in case.argv])
        except SystemExit as exit_:  # argparse
            code = exit_.code if isinstance(exit_.code, int) else 2
        except BaseException:  # noqa: BLE001 - an escaping exception is exactly what this looks for
            code = None
            err.write(traceback.format_exc())
    return code, err.getvalue()


def _as_process(case: Case, root: Path) -> tuple[int | None, str, list[int]]:
    env = mckd_env()
    command = [PYTHON, "-m", "mckd.cli", *map(str, case.argv)]
    if case.shell:
        done = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", f'{case.shell} && exec "$@"',
                               "sh", *command], capture_output=True, text=True, cwd=root, env=env, timeout=600)
        return done.returncode, done.stderr, []
    if case.signal_when is None:
        done = subprocess.run(command, capture_output=True, text=True, cwd=root, env=env, timeout=600)
        return done.returncode, done.stderr, []
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not case.signal_when():
        time.sleep(0.02)
    descendants = children_of(process.pid)
    if process.poll() is None:
        process.send_signal(case.signal)
    stderr = process.communicate(timeout=300)[1]
    time.sleep(0.3)
    return process.returncode, stderr, [pid for pid in descendants if alive(pid)]


def run_case(case: Case, world: World) -> list[str]:
    """Run ``case`` and return its problems (none: it passed)."""
    if case.shell and not can_mount():
        pytest.skip("no private mount namespace can be made here (needs root or user namespaces)")
    before = {path: snapshot(path) for path in case.outputs}
    tmp_before = temporary_files(world.root)
    holder = None
    if case.holder is not None:
        command = [PYTHON, *case.holder] if case.holder[0] == "-c" else [PYTHON, "-m", "mckd.cli", *case.holder]
        holder = subprocess.Popen([str(c) for c in command], cwd=world.root, env=mckd_env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and holder.poll() is None and not case.holder_ready():
            time.sleep(0.05)
        if not case.holder_ready():
            holder.kill()
            return [f"the second process never held its output (exit status {holder.wait()})"]
    orphans: list[int] = []
    try:
        if case.process or case.shell or case.signal_when is not None or case.holder is not None:
            code, stderr, orphans = _as_process(case, world.root)
        else:
            code, stderr = _in_process(case)
    finally:
        if holder is not None:
            holder.send_signal(15)
            holder.wait(timeout=300)
    problems = check(case, code, stderr, before, world, tmp_before)
    if orphans:
        problems.append(f"processes left running after the signal: {orphans}")
    return problems


def check(case: Case, code: int | None, stderr: str, before: dict[Path, object], world: World,
          tmp_before: set[str]) -> list[str]:
    """The case's problems: exit status, stderr, outputs, leftovers, a pickle that ran."""
    problems = []
    codes = case.code if isinstance(case.code, tuple) else (case.code,)
    if code not in codes:
        problems.append(f"exit status {code}, expected {' or '.join(map(str, codes))}")
    if "Traceback" in stderr:
        problems.append("a traceback on stderr")
    lines = [line for line in stderr.splitlines() if line.strip()]
    message = ""
    if code == 2 and 2 in codes:
        errors = [line for line in lines if line.startswith("mckd: error: ")]
        if len(errors) != 1 or lines[-1:] != errors:
            problems.append(f"stderr is not one 'mckd: error:' line: {stderr.strip()[-400:]!r}")
        message = errors[0] if errors else stderr
    elif code == 130:
        if not lines or not lines[-1].startswith("mckd: ") or lines[-1].startswith("mckd: error:"):
            problems.append(f"stderr does not end with one 'mckd: ...' line: {stderr.strip()[-300:]!r}")
        message = lines[-1] if lines else ""
    elif code == 0 and [line for line in lines if line.startswith("mckd: error")]:
        problems.append(f"an error line, yet exit status 0: {stderr.strip()[-300:]!r}")
    if code != 0:
        for words in case.expect:
            if words not in message:
                problems.append(f"the message does not say {words!r}: {message.strip()[:400]!r}")
    for words in case.warns:
        if not any(line.startswith("mckd: warning:") and words in line for line in lines):
            problems.append(f"no 'mckd: warning:' line says {words!r}: {stderr.strip()[-300:]!r}")
    for path, old in before.items():
        if snapshot(path) != old:
            problems.append(f"{path} was {'created' if old is None else 'changed or removed'}")
    left = temporary_files(world.root) - tmp_before
    if left:
        problems.append(f"temporary files left: {sorted(left)}")
    if world.marker.exists():
        problems.append("a crafted pickle ran code")
    if case.after is not None:
        problems += case.after()
    return problems


def mckd(root: Path, *argv: Any) -> subprocess.CompletedProcess:
    """``mckd ARGV`` as a real process in ``root`` (for the checks after a case)."""
    return subprocess.run([PYTHON, "-m", "mckd.cli", *map(str, argv)], cwd=root, env=mckd_env(),
                          capture_output=True, text=True, timeout=600)


def staging_folders(folder: Path, name: str) -> list[Path]:
    """The hidden staging folders of output ``name`` in ``folder``."""
    return [p for p in folder.glob(f".{name}.*.tmp") if p.is_dir()]


def lines_of(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def hold(path: Path, ready: Path, kind: str = "file", replaces: bool = False) -> list[Any]:
    """A :attr:`Case.holder`: a process that claims ``path`` (mckd's output guard), creates ``ready``, and waits.

    ``replaces``: it claims ``path`` as ``mckd train --force`` does (to replace it).
    """
    code = ("import sys, time\nfrom mckd.io import claim_output\n"
            "with claim_output(sys.argv[1], kind=sys.argv[2], replace=True, replaces=sys.argv[3] == '1',\n"
            "                  what='run directory' if sys.argv[2] == 'dir' else 'output'):\n"
            "    open(sys.argv[4], 'w').close()\n    time.sleep(120)\n")
    return ["-c", code, path, kind, "1" if replaces else "0", ready]
