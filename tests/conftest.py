"""Shared test setup: offline hubs, deterministic threads, and the `gpu` marker."""

import os

# No test may touch the network: make every Hugging Face client fail fast instead of trying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def _cuda_ok() -> bool:
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_ok():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; run on a GPU machine with `pytest -m gpu`")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Each test starts from the same global RNG state, so order does not change results."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread: the tiny models' small convolutions on 2 shared cores only gain
    contention from more (measured 10x slower), and one thread keeps float reductions in a fixed order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
