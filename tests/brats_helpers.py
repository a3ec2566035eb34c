"""Shared setup of the BraTS tests: caches of the real cases, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT, shared_path
from mckd.data.brats_cache import DATASET_FILE, prepare_cache
from mckd.data.brats_layout import detect_layout, load_layout

LAYOUT_2013 = str(ROOT / "configs" / "brats2013_layout.yaml")


def session_cache(factory: pytest.TempPathFactory, name: str) -> Path:
    """``<session tmp>/brats_cache/<name>``, prepared on first use (both test modules share it)."""
    out = factory.getbasetemp() / "brats_cache" / name
    if not (out / DATASET_FILE).is_file():
        source = shared_path(name)
        layout = load_layout(LAYOUT_2013) if name == "brats2013" else detect_layout(source)
        prepare_cache(source, out, layout, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def cache2013(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four 2-sequence BraTS 2013 cases (mapping layout, old label convention)."""
    return session_cache(tmp_path_factory, "brats2013")


@pytest.fixture(scope="session")
def cache4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two 4-sequence cases (BraTS 2018 and 2021 naming)."""
    return session_cache(tmp_path_factory, "brats4")
