"""Full and read-only disks, for real: a small tmpfs or a read-only bind mount in a private mount namespace.

Each command ends in one line naming the file and the reason, and what was
there before is intact (skipped where no mount namespace can be made).
"""

from __future__ import annotations

import pytest

from hostile.kit import Case, Cases, World, run_case

CASES = Cases()
NOSPACE = "No space left on device"
READONLY = "Read-only file system"


def _full(w: World, with_run: bool = False):
    """A 256 kB tmpfs (with a copy of the digits run, 2 MB) filled up, at a fresh path: ``(folder, shell set-up)``."""
    folder = w.fresh("full")
    folder.mkdir(parents=True)
    copy = f" && cp -r {w.digits_run} {folder}/run" if with_run else ""
    size = "2m" if with_run else "256k"
    return folder, (f"mount -t tmpfs -o size={size} tmpfs {folder}{copy} && "
                    f"(dd if=/dev/zero of={folder}/fill bs=4k 2>/dev/null; true)")


def _read_only(w: World):
    """A folder holding a copy of the digits run, mounted read-only for the case: ``(folder, shell set-up)``."""
    import shutil

    folder = w.fresh("ro")
    shutil.copytree(w.digits_run, folder / "run")
    return folder, f"mount --bind -o ro {folder} {folder}"


@CASES.process
def evaluate_onto_a_full_disk(w: World) -> Case:
    folder, shell = _full(w, with_run=True)
    return Case(["evaluate", folder / "run", "--device", "cpu"], [NOSPACE], shell=shell)


@CASES.process
def resume_onto_a_full_disk(w: World) -> Case:
    folder, shell = _full(w, with_run=True)
    return Case(["train", "--resume", folder / "run", "--set", "train.iterations=6"], [NOSPACE], shell=shell)


@CASES.process
def compare_onto_a_full_disk(w: World) -> Case:
    folder, shell = _full(w)
    return Case(["compare", w.digits_run, w.other_run, "--out", folder / "cmp"], [NOSPACE], shell=shell)


@CASES.process
def predict_onto_a_full_disk(w: World) -> Case:
    folder, shell = _full(w)
    return Case(["predict", w.brats_run, f"flair={w.flair}", "--out", folder / "seg.nii.gz", "--device", "cpu"],
                [NOSPACE], shell=shell)


@CASES.process
def prepare_onto_a_full_disk(w: World) -> Case:
    folder, shell = _full(w)
    return Case(["prepare", "seg", w.brats_src, folder / "cache", "--workers", "2", "--no-progress"], [NOSPACE],
                shell=shell)


@CASES.process
def train_force_onto_a_read_only_run_keeps_it(w: World) -> Case:
    folder, shell = _read_only(w)
    return Case(["train", w.digits_yaml, "--out", folder / "run", "--force"], [READONLY], [folder], shell=shell)


@CASES.process
def predict_into_a_read_only_folder(w: World) -> Case:
    folder, shell = _read_only(w)
    return Case(["predict", w.brats_run, f"flair={w.flair}", "--out", folder / "seg.nii.gz", "--device", "cpu"],
                [READONLY], [folder], shell=shell)


@CASES.process
def prepare_into_a_read_only_folder(w: World) -> Case:
    folder, shell = _read_only(w)
    return Case(["prepare", "seg", w.brats_src, folder / "cache", "--workers", "1", "--no-progress"], [READONLY],
                [folder], shell=shell)


@pytest.mark.parametrize("build", CASES.params())
def test_full_and_read_only_disks_are_one_line(build, world):
    problems = run_case(build(world), world)
    assert not problems, "\n".join(problems)
