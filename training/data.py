"""Training data plumbing: a stateless, resumable, rank-sharded sample stream and the fixed held-out set.

Why a custom sampler: exact resume needs the data position to be a pure function of "samples consumed",
independent of how the run was cut into pieces. :class:`SampleStream` is infinite and stateless: sample ``k``
of process ``rank`` is the global sample ``g = k * world_size + rank``; it uses the (foreground, background)
pair ``p = hash(seed, g) mod N`` (uniform over the ``N`` pairs, no N-sized permutation to hold in memory) and
the dataset index ``g * N + p``. ``OnTheFlyDataset`` picks the pair from ``index mod N`` and seeds the scene
from the index, so every global sample is a *fresh* scene (no epoch ever repeats one) and its content does not
depend on when the run was interrupted. Resuming = starting the stream at the saved ``samples_per_rank``.

One caveat, handled here: ``OnTheFlyDataset`` also mixes the DataLoader *worker id* into its seed, and a
DataLoader hands batch ``b`` (counted from the iterator's start) to worker ``b mod num_workers``. A resumed
iterator starts at worker 0, so :func:`make_train_iterator` first draws and drops ``start_batches mod
num_workers`` batches, which puts every later batch on the same worker as in the uninterrupted run.
"""

from __future__ import annotations

import itertools
import logging
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kernels.colour import DEFAULT_GAMMA

logger = logging.getLogger(__name__)

__all__ = ["SampleStream", "build_train_dataset", "build_validation_set", "check_validation_data", "dataset_options",
           "make_train_iterator", "move_batch"]


class SampleStream(Sampler[int]):
    """Infinite stream of dataset indices for one process (see the module docstring).

    Args:
        num_pairs: ``N``, the number of (foreground, background) pairs (``len(fg) * len(bg)``).
        seed: run seed; the stream is a pure function of ``(seed, rank, world_size, start)``.
        rank, world_size: this process and the number of processes.
        start: samples this process has already consumed (resume position).
    """

    def __init__(self, num_pairs: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        if num_pairs < 1:
            raise ValueError(f"SampleStream: need at least one pair, got num_pairs={num_pairs}")
        if not 0 <= rank < world_size:
            raise ValueError(f"SampleStream: rank {rank} outside [0, {world_size})")
        self.num_pairs, self.seed, self.rank, self.world_size, self.start = num_pairs, seed, rank, world_size, start

    def index(self, k: int) -> int:
        """Dataset index of this process's ``k``-th sample."""
        g = k * self.world_size + self.rank
        # Counter-based draw: SeedSequence hashes (seed, g) into well-mixed bits, with no state to carry.
        p = int(np.random.SeedSequence([self.seed, g]).generate_state(1, np.uint64)[0] % self.num_pairs)
        return g * self.num_pairs + p

    def __iter__(self) -> Iterator[int]:
        return (self.index(k) for k in itertools.count(self.start))


def dataset_options(args) -> dict:
    """``OnTheFlyDataset`` keyword arguments of the synthesis options (``--synthesis_gamma``, the scene model,
    augmentation and conditioning); the training and the validation sets share them."""
    from data.synthesis import SceneConfig

    scene = SceneConfig(
        n_foregrounds=(args.min_foregrounds, args.max_foregrounds),
        fg_scale_range=(args.fg_scale_min, args.fg_scale_max), fg_tilt_p=args.fg_tilt_p, fg_gap=args.fg_gap,
        bg_far_range=(args.bg_far_min, args.bg_far_max), bg_span_range=(0.0, args.bg_span_max),
        bg_tilt_direction=args.bg_tilt_direction,
    )
    return dict(gamma=args.synthesis_gamma, config=scene, brightness_p=args.brightness_p,
                brightness_range=(args.brightness_min, args.brightness_max), brightness_cap=args.brightness_cap,
                brightness_clip=args.brightness_clip, aif_composite=args.aif_composite,
                coc_condition=args.coc_condition, aperture_samples=args.aperture_samples)


def build_train_dataset(args, *, rank: int, total_samples: int) -> Dataset:
    """The on-the-fly training dataset for process ``rank``, long enough for ``total_samples`` global samples.

    ``length`` is ``total_samples * N`` so every index :class:`SampleStream` can produce is valid.
    """
    from data.synthesis import OnTheFlyDataset

    options = dataset_options(args)
    probe = OnTheFlyDataset(args.train_data_dir, args.resolution, seed=args.seed, rank=rank, **options)
    probe.check_usable()  # a data set that cannot give one sample fails here, before the run writes anything
    num_pairs = len(probe.fg_paths) * len(probe.bg_paths)
    dataset = OnTheFlyDataset(args.train_data_dir, args.resolution, seed=args.seed, rank=rank,
                              length=max(1, total_samples) * num_pairs,
                              synthesize_on_device=args.synthesize_on_device, **options)
    dataset.num_pairs = num_pairs
    return dataset


def make_train_iterator(dataset: Dataset, *, batch_size: int, num_workers: int, seed: int, rank: int,
                        world_size: int, start_samples: int) -> Iterator[dict]:
    """Batches of this process's stream from sample ``start_samples`` on (see the module docstring).

    The DataLoader gets its own generator, so creating it never draws from the global torch RNG (which is
    part of the checkpointed state).
    """
    if start_samples % batch_size:
        raise ValueError(f"resume position {start_samples} is not a multiple of the batch size {batch_size}")
    # Re-align batches with the workers that produced them in the uninterrupted run (module docstring): start
    # the stream `shift` batches early and drop those, so the first kept batch is sample `start_samples` and
    # comes from worker (start_samples / batch_size) mod num_workers, as it did originally.
    shift = (start_samples // batch_size) % num_workers if num_workers > 1 else 0
    sampler = SampleStream(dataset.num_pairs, seed, rank, world_size, start_samples - shift * batch_size)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                        generator=torch.Generator().manual_seed(seed + rank))
    iterator = iter(loader)
    for _ in range(shift):
        next(iterator)
    return iterator


def move_batch(batch: dict, device: torch.device, *, gamma: float = DEFAULT_GAMMA) -> dict:
    """Tensors of a collated batch moved to ``device`` (other values unchanged). A batch of scene layers
    (``synthesize_on_device``) gets its ground truth rendered there at ``gamma``, the synthesis gamma
    (``data.synthesis.synthesize_batch``; the
    render seed is part of each item, so this stays deterministic and resumable)."""
    if "layers" in batch:
        from data.synthesis import synthesize_batch

        return synthesize_batch(batch, device, gamma=gamma)
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def check_validation_data(args) -> None:
    """Refuse an unusable ``--validation_data_dir`` (when validating) before the run loads models or writes
    anything; every process checks alike. Raises ``FileNotFoundError`` / ``TrainingDataError`` naming the flag."""
    from data.synthesis import OnTheFlyDataset

    if not (args.validation_steps and args.validation_data_dir):
        return
    OnTheFlyDataset(args.validation_data_dir, args.resolution, seed=args.validation_seed, rank=0,
                    length=args.num_validation_samples, flag="--validation_data_dir",
                    **dataset_options(args)).check_usable()


def build_validation_set(args, batch_size: int) -> list[dict]:
    """The fixed held-out set: ``num_validation_samples`` scenes, synthesised once with ``validation_seed``.

    From ``validation_data_dir`` when given (truly held-out images), else from ``train_data_dir`` with a
    different seed (fresh scenes, compositions and blur, from the same source photos). Returns CPU batches.

    The DataLoader gets its own seeded generator: iterating one draws a base seed, and from the global torch
    RNG that draw (main process only, after ``load_state`` on resume) would shift every later random draw of
    the step (PISA jitter, dropout) away from the uninterrupted run's and make the ranks' RNG streams differ.
    """
    from data.synthesis import OnTheFlyDataset

    root = args.validation_data_dir or args.train_data_dir
    # The renderer's own sample count: the release's grid count (thousands of samples) rendered on the CPU would
    # take minutes per image, and the held-out targets are a metric, not part of the recipe.
    options = dict(dataset_options(args), brightness_p=0.0, aperture_samples="auto")
    dataset = OnTheFlyDataset(root, args.resolution, seed=args.validation_seed, rank=0,
                              length=args.num_validation_samples, flip_p=0.0,
                              flag="--validation_data_dir" if args.validation_data_dir else "--train_data_dir",
                              **options)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                        generator=torch.Generator().manual_seed(args.validation_seed))
    return list(loader)
