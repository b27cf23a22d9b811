"""Resume checks of training/checkpoint.py: the saved settings against the new run's, and the RNG state files."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from tests.training.helpers import PATHS, train_argv
from training.checkpoint import CHECKPOINT_PREFIX, compare_run_settings
from training.config import parse_args

pytestmark = pytest.mark.usefixtures("one_thread")


def test_resume_compares_settings_and_warns_about_the_worker_count():
    saved = {"lora": {"rank": 4}, "pisa": {"dropout": 0.1}, "resolution": 64, "train_batch_size": 2,
             "config": {"dataloader_num_workers": 2}}  # older checkpoints: the worker count only in the config
    same = dict(saved, dataloader_num_workers=2)
    errors, warnings = compare_run_settings(saved, same)
    assert errors == [] and [w for w in warnings if w[0] == "dataloader_num_workers"] == []
    errors, warnings = compare_run_settings(saved, dict(same, dataloader_num_workers=4, pisa={"dropout": 0.0}))
    assert errors == [("pisa", {"dropout": 0.1}, {"dropout": 0.0})]
    assert ("dataloader_num_workers", 2, 4) in warnings


def test_an_unreadable_rng_state_stops_the_resume_unless_allowed(tmp_path, caplog):
    from training.checkpoint import check_rng_state

    folder = tmp_path / f"{CHECKPOINT_PREFIX}4"
    folder.mkdir()
    torch.save({"random_state": random.getstate(), "numpy_random_seed": np.random.get_state(),
                "torch_manual_seed": torch.get_rng_state()}, folder / "random_states_0.pkl")
    check_rng_state(folder, process_index=0, allow_inexact=False)  # a good file passes
    (folder / "random_states_0.pkl").write_bytes((folder / "random_states_0.pkl").read_bytes()[:40])  # truncated
    with pytest.raises(RuntimeError, match="random_states_0.pkl.*--allow_inexact_resume"):
        check_rng_state(folder, process_index=0, allow_inexact=False)
    with caplog.at_level("WARNING"):
        check_rng_state(folder, process_index=0, allow_inexact=True)
    assert "random_states_0.pkl" in caplog.text and "not exactly" in caplog.text
    with pytest.raises(RuntimeError, match="random_states_1.pkl"):
        check_rng_state(folder, process_index=1, allow_inexact=False)  # another rank's file is missing
    assert parse_args(train_argv(PATHS, tmp_path, "--allow_inexact_resume")).allow_inexact_resume is True
    assert parse_args(train_argv(PATHS, tmp_path)).allow_inexact_resume is False


def test_resume_compares_model_and_synthesis_gamma():
    current = {"lora": {"rank": 4}, "gamma": 1.0, "model_gamma": 1.0, "synthesis_gamma": 2.2}
    assert compare_run_settings(dict(current), current)[0] == []
    errors = compare_run_settings(dict(current, synthesis_gamma=1.0), current)[0]
    assert errors == [("synthesis_gamma", 1.0, 2.2)]
    # A checkpoint written before the split recorded one gamma for the model and the data.
    errors = compare_run_settings({"lora": {"rank": 4}, "gamma": 1.0}, current)[0]
    assert errors == [("synthesis_gamma", 1.0, 2.2)]
    assert compare_run_settings({"lora": {"rank": 4}, "gamma": 2.2}, dict(current, model_gamma=2.2, gamma=2.2))[0] \
        == []


def test_resume_of_a_checkpoint_from_before_the_pisa_count_options():
    pisa = {"enabled": True, "dropout": 0.1, "compat": False}
    current = {"pisa": dict(pisa, n_segments=7, n_supersamples=5)}
    assert compare_run_settings({"pisa": pisa}, current)[0] == []  # it trained with the processor's 7 x 5
    errors = compare_run_settings({"pisa": pisa}, {"pisa": dict(pisa, n_segments=5, n_supersamples=4)})[0]
    assert [e[0] for e in errors] == ["pisa"]


def _checkpoint_of(tmp_path, *flags, step=4):
    """A checkpoint folder whose metadata records the resolved config of the tiny preset with ``flags``."""
    import json

    from training.checkpoint import META_NAME

    folder = tmp_path / f"{CHECKPOINT_PREFIX}{step}"
    folder.mkdir()
    config = vars(parse_args(train_argv(PATHS, tmp_path, *flags)))
    (folder / META_NAME).write_text(json.dumps({"config": config, "progress": {"step": step}}))
    return folder


COSINE = ("--lr_scheduler", "cosine", "--max_train_steps", 8, "--opt_vae", 1)


@pytest.mark.parametrize("flag, value", [
    ("learning_rate", 0.05), ("lr_scheduler", "linear"), ("lr_warmup_steps", 3), ("max_train_steps", 12),
    ("adam_beta1", 0.8), ("adam_beta2", 0.99), ("adam_weight_decay", 0.5), ("adam_epsilon", 1e-6),
    ("vae_lr_scale", 0.5), ("disc_lr_scale", 3.0),
])
def test_a_resume_that_changes_what_the_restored_optimiser_state_fixes_is_refused(tmp_path, flag, value):
    """The optimiser and LR-schedule state restored from a checkpoint keeps its lr, betas, eps, weight decay and
    base LRs (and the schedule's position on a curve built from the type, warm-up and run length): a new value was
    recorded in train_config.yaml and the model card but not used (or spliced two schedules)."""
    from training.resume import check_resume_settings

    folder = _checkpoint_of(tmp_path, *COSINE)
    check_resume_settings(folder, vars(parse_args(train_argv(PATHS, tmp_path, *COSINE))))  # same settings: fine
    changed = vars(parse_args(train_argv(PATHS, tmp_path, *COSINE, f"--{flag}", value)))
    saved = vars(parse_args(train_argv(PATHS, tmp_path, *COSINE)))[flag]
    with pytest.raises(ValueError) as info:
        check_resume_settings(folder, changed)
    message = str(info.value)
    assert f"--{flag} {saved} in the checkpoint, {changed[flag]} now" in message
    assert f"Resume with the checkpoint's values (--{flag} {saved})" in message and "new --output_dir" in message
    assert "\n" not in message


def test_a_resume_may_change_what_neither_the_optimiser_state_nor_its_schedule_uses(tmp_path):
    """A constant schedule does not depend on the run length (extending a run is fine); the VAE scale of a run
    without the VAE group, the discriminator scale without a GAN and the power of a non-polynomial schedule
    are used nowhere. Settings the optimiser state does not hold (gradient clipping) may change too."""
    from training.resume import check_resume_settings

    base = ("--lr_scheduler", "constant", "--opt_vae", 0, "--lambda_gan", 0)
    folder = _checkpoint_of(tmp_path, *base)
    for extra in (("--max_train_steps", 20), ("--lr_warmup_steps", 5), ("--vae_lr_scale", 0.5),
                  ("--disc_lr_scale", 3.0), ("--lr_power", 2.0), ("--lr_num_cycles", 3), ("--max_grad_norm", 0.5)):
        check_resume_settings(folder, vars(parse_args(train_argv(PATHS, tmp_path, *base, *extra))))
    with pytest.raises(ValueError, match="--lr_warmup_steps 2 in the checkpoint, 5 now"):
        check_resume_settings(_checkpoint_of(_made(tmp_path / "w"), "--lr_scheduler", "constant_with_warmup"),
                              vars(parse_args(train_argv(PATHS, tmp_path, "--lr_warmup_steps", 5))))


def _made(folder):
    folder.mkdir()
    return folder


def test_resuming_an_older_checkpoint_while_newer_ones_exist_is_refused(tmp_path):
    """Resuming checkpoint-4 with checkpoint-6 and -8 of the abandoned branch still there left them in place: a
    later `latest` jumped back onto that branch (mixed logs, config, model card). The newest, or a copy in a
    folder without newer checkpoints, resumes."""
    from training.checkpoint import COMPLETE_NAME
    from training.resume import check_newer_checkpoints

    run = _made(tmp_path / "run")
    for step in (4, 6, 8):
        (_checkpoint_of(run, step=step) / COMPLETE_NAME).write_text(f"{step}\n")
    with pytest.raises(ValueError) as info:
        check_newer_checkpoints(run / f"{CHECKPOINT_PREFIX}4", run)
    message = str(info.value)
    assert "checkpoint-6, checkpoint-8" in message and "step 4" in message and "\n" not in message
    assert "Move or delete" in message and "new --output_dir" in message
    check_newer_checkpoints(run / f"{CHECKPOINT_PREFIX}8", run)  # the newest
    import shutil

    fresh = _made(tmp_path / "fresh")
    shutil.copytree(run / f"{CHECKPOINT_PREFIX}4", fresh / f"{CHECKPOINT_PREFIX}4")
    check_newer_checkpoints(run / f"{CHECKPOINT_PREFIX}4", fresh)  # resumed into a new --output_dir
    check_newer_checkpoints(fresh / f"{CHECKPOINT_PREFIX}4", fresh)
