"""The malformed-input run of benchmarks/malformed_inputs.py, as a test.

Every case (a malformed file or config through ``mckd prepare``, ``train``,
``evaluate`` or ``predict``) must exit with status 2 and one ``mckd: error:``
line naming the problem, no traceback, and leave its outputs absent or
unchanged. The cases run in this process through ``mckd.cli.main`` (fast);
two of them also run as real ``mckd`` processes, so the stderr a user sees is
checked too. The benchmark script runs all of them as processes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("malformed_inputs", ROOT / "benchmarks" / "malformed_inputs.py")
malformed = importlib.util.module_from_spec(_spec)
sys.modules["malformed_inputs"] = malformed  # dataclasses look their module up
_spec.loader.exec_module(malformed)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("malformed").resolve()
    return root, {case.name: case for case in malformed.build(root)}


def test_the_run_covers_every_command_and_every_listed_check(built):
    _, cases = built
    commands = {name.split("/")[0] for name in cases}
    assert commands == {"prepare-brats", "prepare-avmnist", "train", "evaluate", "predict", "compare"}
    for check in ["missing-sequence", "missing-label", "unknown-modality", "shape-mismatch", "affine-mismatch",
                  "nan-voxels", "all-zero-sequence", "labels-outside-convention", "truncated-nifti", "wav-truncated",
                  "idx-truncated", "idx-header-vs-size", "images-labels-length", "source-empty", "split-too-small",
                  "no-modality-at-evaluation", "config-unknown-nested-key", "config-wrong-type",
                  "config-alpha-negative", "config-rate-above-one", "pickle-checkpoint", "other-model-configuration",
                  "output-exists"]:
        assert any(name.endswith("/" + check) for name in cases), check


def test_every_malformed_input_ends_with_one_clear_error_and_nothing_half_written(built):
    root, cases = built
    failures = []
    for case in cases.values():
        result = malformed.run_case(case, root, in_process=True)
        if result.problems:
            failures.append(f"{case.name}: {'; '.join(result.problems)}")
    assert failures == []


@pytest.mark.parametrize("name", ["prepare-brats/labels-outside-convention", "evaluate/pickle-checkpoint"])
def test_as_a_real_process_the_user_sees_one_line_and_no_traceback(built, name):
    root, cases = built
    result = malformed.run_case(cases[name], root, in_process=False)
    assert result.problems == [], result.stderr
