"""Shared setup of the BraTS tests: caches of the real cases, made once per test session, and reading one case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, shared_path
from mckd.seg.cache import DATASET_FILE
from mckd.seg.cases import Case, read_case_files
from mckd.seg.layouts import Layout, layout_case_files
from mckd.seg.prepare import prepare_segmentation

LAYOUT_2013 = str(ROOT / "configs" / "brats2013_layout.yaml")


def session_cache(factory: pytest.TempPathFactory, name: str) -> Path:
    """``<session tmp>/brats_cache/<name>``, prepared on first use on the files' own grid (both modules share it)."""
    out = factory.getbasetemp() / "brats_cache" / name
    if not (out / DATASET_FILE).is_file():
        source = shared_path(name)
        prepare_segmentation(source, out, LAYOUT_2013 if name == "brats2013" else "auto", orientation="none",
                             workers=2, progress=False, say=lambda message: None)
    return out


@pytest.fixture(scope="session")
def cache2013(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four 2-sequence BraTS 2013 cases (mapping layout, old label convention)."""
    return session_cache(tmp_path_factory, "brats2013")


@pytest.fixture(scope="session")
def cache4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two 4-sequence cases (BraTS 2018 and 2021 naming)."""
    return session_cache(tmp_path_factory, "brats4")


def read_case(case: Path, layout: Layout, allow_missing: bool = False, need_labels: bool = True) -> Case:
    """One case folder of a layout, read and checked as ``prepare seg`` reads it."""
    files = layout_case_files(Path(case), layout, allow_missing, need_labels)
    return read_case_files(files, layout.modalities, layout.label_scheme, allow_missing, need_labels)


def brats_regions(labels: np.ndarray) -> np.ndarray:
    """Internal BraTS classes (1 core, 2 oedema, 3 enhancing) -> bool ``[3, *S]`` ET, TC, WT, computed here."""
    return np.stack([labels == 3, np.isin(labels, [1, 3]), labels > 0])
