"""training/loop.py's schedules: learning-rate groups, warm-up and restarts, and the PISA hardness ramp."""

from __future__ import annotations

import pytest
import torch

from tests.training.helpers import PATHS, train_argv
from training.config import parse_args
from training.loop import build_optimizers, pisa_hardness

pytestmark = pytest.mark.usefixtures("one_thread")


def _groups_lr(opt):
    return [group["lr"] for group in opt.param_groups]


def test_vae_and_discriminator_lr_groups_follow_the_schedule(tmp_path):
    """LoRA at the schedule's LR, the VAE group at 0.1x, the discriminator at 2x, at every step of a warm-up +
    cosine schedule; accelerate steps a prepared scheduler once per process, which build_optimizers offsets."""
    args = parse_args(train_argv(PATHS, tmp_path, "--lr_scheduler", "cosine", "--lr_warmup_steps", 3,
                            "--max_train_steps", 10, "--learning_rate", 1e-3))
    lora, vae, disc = ([torch.nn.Parameter(torch.zeros(2))] for _ in range(3))
    schedules = []
    for num_processes in (1, 2):
        opt, sched, d_opt, d_sched = build_optimizers(args, lora, vae, disc, num_processes=num_processes)
        assert [g["name"] for g in opt.param_groups] == ["lora", "vae"]
        seen = []
        for _ in range(args.max_train_steps):
            base = sched.get_last_lr()[0]
            assert _groups_lr(opt) == pytest.approx([base, 0.1 * base])
            assert _groups_lr(d_opt) == pytest.approx([2 * base])
            seen.append(base)
            for _ in range(num_processes):  # what accelerate's prepared scheduler does per optimisation step
                opt.step(), d_opt.step(), sched.step(), d_sched.step()
        schedules.append(seen)
    assert schedules[1] == pytest.approx(schedules[0])  # the same schedule whatever the process count
    # ... and the warm-up reached the peak at step 3 from 0.
    opt, sched, _, _ = build_optimizers(args, lora, [], [], num_processes=1)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step(), sched.step()
    assert lrs[:4] == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, 1e-3])
    assert 1e-3 > lrs[4] > lrs[5] > 0  # cosine decay after the warm-up


def test_lr_warmup_and_restart_cycles_are_honoured(tmp_path):
    """cosine_with_restarts with 2 cycles after 2 warm-up steps over 10: peak at 2 and again at 6 (the generator);
    the discriminator's schedule has one cycle (published), so it keeps decaying through the restart."""
    args = parse_args(train_argv(PATHS, tmp_path, "--lr_scheduler", "cosine_with_restarts", "--lr_num_cycles", 2,
                            "--lr_warmup_steps", 2, "--max_train_steps", 10, "--learning_rate", 1e-3))
    opt, sched, d_opt, d_sched = build_optimizers(args, [torch.nn.Parameter(torch.zeros(1))], [],
                                                  [torch.nn.Parameter(torch.zeros(1))], num_processes=1)
    gen, disc = [], []
    for _ in range(10):
        gen.append(_groups_lr(opt)[0])
        disc.append(_groups_lr(d_opt)[0])
        opt.step(), d_opt.step(), sched.step(), d_sched.step()
    assert gen[:3] == pytest.approx([0.0, 5e-4, 1e-3])
    assert gen[6] == pytest.approx(1e-3) and gen[5] < 1e-3 / 2  # restart after 4 of the 8 decay steps
    assert disc[:3] == pytest.approx([0.0, 1e-3, 2e-3])
    assert all(a > b for a, b in zip(disc[2:], disc[3:]))  # one cycle: no restart


def test_pisa_hardness_schedule():
    assert pisa_hardness(0, 3.0, 2.0, 1e6) == 3.0
    assert pisa_hardness(10, 3.0, 2.0, 1e6) == 23.0
    assert pisa_hardness(10**9, 3.0, 2.0, 1e6) == 1e6
