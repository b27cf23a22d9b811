"""This process's place in a job that ``accelerate launch`` or ``torchrun`` started (or a job of one process).

Every rank lists the same work items in the same order and takes a contiguous block (accelerate's
``PartialState.split_between_processes``): which rank does what follows from the list and the number of
processes alone. ``inference_hf.py`` and ``prepare_data.py`` share it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass
class Ranks:
    """This process's place in the job: ``index`` of ``count`` processes; ``state`` is accelerate's
    ``PartialState`` (its ``wait_for_everyone`` is a no-op in one process)."""

    state: object
    index: int = 0
    count: int = 1

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def barrier(self) -> None:
        self.state.wait_for_everyone()

    def share(self, items: list) -> list[tuple[int, object]]:
        """This rank's contiguous block of ``items`` as ``(global index, item)`` pairs."""
        with self.state.split_between_processes(list(enumerate(items))) as mine:
            return list(mine)

    def gather(self, value) -> list:
        """``value`` of every rank, in rank order (a collective: every rank must call it)."""
        if self.count == 1:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])


class OneProcess:
    """The part of ``PartialState``'s interface :class:`Ranks` uses, for a process no launcher started: no
    process group is set up, so a plain run (and a test calling ``main()``) leaves accelerate's state alone."""

    def wait_for_everyone(self) -> None:
        pass

    @contextlib.contextmanager
    def split_between_processes(self, items):
        yield items


def join_ranks(device_type: str) -> Ranks:
    """Join the job the launcher started (``accelerate launch`` / ``torchrun`` set ``WORLD_SIZE``), or be a job
    of one. ``device_type == "cpu"`` makes the process group use gloo (no GPU needed)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Ranks(OneProcess())
    from accelerate import PartialState

    state = PartialState(cpu=device_type == "cpu")
    return Ranks(state, state.process_index, state.num_processes)


def rank_device(ranks: Ranks, device):
    """The device this rank renders on: with several processes on CUDA, the launcher's local GPU
    (``cuda:<local rank>``), else ``device`` as resolved from ``--device``."""
    if ranks.count > 1 and device.type == "cuda" and device.index is None:
        return ranks.state.device
    return device
