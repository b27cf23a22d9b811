"""Shared test setup: offline hubs, deterministic threads, the `gpu` marker, and the order and grouping of tests
under pytest-xdist (grouped and slow tests first; `xdist_group` honoured, see tests/xdist_groups.py)."""

import os

# No test may touch the network: make every Hugging Face client fail fast instead of trying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")

# Under pytest-xdist (`make test`: one worker per core) each worker, and every process it starts, computes on one
# thread: two workers with a pool of one thread per core each spin against each other in OpenMP (measured on 2
# cores: `make test` took 4.5 min with those pools, 3.1 min with one thread per worker).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from tests import forked_ranks, xdist_groups  # noqa: E402

pytest_plugins = ["tests.xdist_groups"]

if XDIST_WORKER:
    torch.set_num_threads(1)


def _cuda_ok() -> bool:
    return torch.cuda.is_available()


# Under xdist a group is one unit of work, handed out when its first test comes up: the groups first, then the
# `slow` tests, so that the long units start early instead of leaving one worker busy at the end.
_FIRST = {forked_ranks.GROUP: 0, "gradio": 1}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: (_FIRST.get(xdist_groups.group_of(item), len(_FIRST)), "slow" not in item.keywords))
    if _cuda_ok():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; run on a GPU machine with `pytest -m gpu`")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_runtest_setup(item):
    forked_ranks.current_group = xdist_groups.group_of(item)  # run_ranks refuses to start outside its group


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
