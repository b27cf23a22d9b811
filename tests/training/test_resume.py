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
