"""Session-wide test settings: offline Hub access and one temporary ProVQ cache for every test."""

from __future__ import annotations

import os

import pytest
import torch

# No test may reach an outside host; scripts started by tests inherit these too.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The test models are tiny. On a busy 2-core machine, OpenMP threads that spin-wait for each other made
# their steps 5 to 50 times slower, so tests and the scripts they start use one thread per process.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def provq_cache(tmp_path_factory):
    """A temporary PROVQ_CACHE for the whole session: built-in datasets and domain classifiers go there once."""
    cache = tmp_path_factory.mktemp("provq_cache")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("PROVQ_CACHE", str(cache))
        yield cache
