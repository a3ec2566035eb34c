"""The hostile cases' shared world: good inputs made once per session, which each case copies and damages."""

from __future__ import annotations

import pytest
import torch

from hostile.kit import World, build_world


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    pytest.importorskip("nibabel")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_world(tmp_path_factory.mktemp("hostile"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
