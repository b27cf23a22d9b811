"""training/data.py: the stateless, sharded sample stream, the resumable iterator and the fixed held-out set."""

from __future__ import annotations

import pytest
import torch

from tests.training.helpers import train_argv, write_otf_data
from training.config import parse_args
from training.data import SampleStream, build_validation_set

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sample_stream_is_stateless_resumable_and_sharded():
    def take(stream, n):
        it = iter(stream)
        return [next(it) for _ in range(n)]

    full = take(SampleStream(4, seed=7, rank=1, world_size=2), 10)
    assert take(SampleStream(4, seed=7, rank=1, world_size=2, start=6), 4) == full[6:]
    other = take(SampleStream(4, seed=7, rank=0, world_size=2), 10)
    assert not set(full) & set(other)  # ranks never draw the same global sample
    assert {i % 4 for i in full + other} == {0, 1, 2, 3}  # every pair is used
    assert take(SampleStream(4, seed=8, rank=1, world_size=2), 10) != full


def test_validation_set_is_fixed_and_leaves_the_global_rng_alone(tmp_path):
    """After `load_state` only the main process builds the held-out set; a draw from the global torch RNG there
    would shift PISA's per-call jitter and dropout away from the uninterrupted run's."""
    data = write_otf_data(tmp_path / "data")
    args = parse_args(train_argv(dict(sdxl="x", data=str(data)), tmp_path, "--num_validation_samples", 2))
    state = torch.get_rng_state()
    first = build_validation_set(args, 2)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    again = build_validation_set(args, 2)
    assert all(torch.equal(a["bokeh"], b["bokeh"]) for a, b in zip(first, again))


class _WhoMadeMe(torch.utils.data.Dataset):
    """Returns its index and the DataLoader worker that produced it (the OnTheFlyDataset seeds with both)."""

    num_pairs = 3

    def __len__(self):
        return 10**6

    def __getitem__(self, index):
        info = torch.utils.data.get_worker_info()
        return torch.tensor([index, -1 if info is None else info.id])


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_iterator_yields_the_same_samples_from_the_same_workers(workers):
    from training.data import make_train_iterator

    def batches(start, n):
        it = make_train_iterator(_WhoMadeMe(), batch_size=2, num_workers=workers, seed=3, rank=0, world_size=1,
                                 start_samples=start)
        return [next(it).tolist() for _ in range(n)]

    full = batches(0, 6)
    assert batches(6, 3) == full[3:]  # resumed after 3 batches: odd batch count, so worker order must be fixed
