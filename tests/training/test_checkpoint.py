"""training/checkpoint.py: atomic saves, rotation under a limit, crashes and kills at every step, disk full,
folders written by other tools, and what a checkpoint stores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.helpers import REPO, FakeAccelerator
from training.checkpoint import (CHECKPOINT_PREFIX, META_NAME, check_fresh_output_dir, list_checkpoints,
                                 remove_stale_temporaries, resolve_resume_path, save_checkpoint)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_checkpoints_are_atomic_rotated_and_found(tmp_path):
    for step in (2, 4, 6):
        save_checkpoint(FakeAccelerator(), tmp_path, step, total_limit=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(FakeAccelerator(crash=True), tmp_path, 8, total_limit=2)
    # The interrupted save is invisible: 'latest' is still the last complete checkpoint, none was rotated away.
    assert resolve_resume_path("latest", tmp_path) == tmp_path / f"{CHECKPOINT_PREFIX}6"
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    assert (tmp_path / f"{CHECKPOINT_PREFIX}6" / "optimizer.bin").read_bytes() == b"x" * 10
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [f".tmp-{CHECKPOINT_PREFIX}8"]
    assert resolve_resume_path(None, tmp_path) is None
    assert resolve_resume_path("latest", tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError, match="--resume_from_checkpoint"):
        resolve_resume_path(str(tmp_path / "nope"), tmp_path)


def test_crash_while_resaving_a_step_keeps_that_step(tmp_path, monkeypatch):
    """Re-saving step 6 moves the old folder aside, then publishes the new one; a crash between the two renames
    leaves only `.old-checkpoint-6` (complete) and `.tmp-checkpoint-6`: start-up restores the old one."""
    import training.checkpoint as checkpoint

    save_checkpoint(FakeAccelerator(), tmp_path, 6, total_limit=2)
    real_replace = os.replace

    def crash_on_publish(src, dst):
        if Path(src).name.startswith(".tmp-"):
            raise KeyboardInterrupt("killed between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_publish)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(FakeAccelerator(), tmp_path, 6, total_limit=2)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert not (tmp_path / f"{CHECKPOINT_PREFIX}6").exists()
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [f".tmp-{CHECKPOINT_PREFIX}6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{CHECKPOINT_PREFIX}6"]
    assert (tmp_path / f"{CHECKPOINT_PREFIX}6" / "optimizer.bin").read_bytes() == b"x" * 10
    # An `.old-` copy whose replacement was published is just a leftover: removed, the new one kept.
    (tmp_path / f".old-{CHECKPOINT_PREFIX}6").mkdir()
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [f".old-{CHECKPOINT_PREFIX}6"]
    assert resolve_resume_path("latest", tmp_path) == tmp_path / f"{CHECKPOINT_PREFIX}6"


def _kill_during_rotation(monkeypatch, checkpoint):
    """shutil.rmtree that deletes one file of the folder, then dies like kill -9."""
    def dying_rmtree(path, *args, **kwargs):
        victim = sorted(p for p in Path(path).rglob("*") if p.is_file())[0]
        victim.unlink()
        raise KeyboardInterrupt(f"killed while deleting {path}")

    monkeypatch.setattr(checkpoint.shutil, "rmtree", dying_rmtree)


def test_kill_during_rotation_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    import training.checkpoint as checkpoint

    for step in (2, 4):
        save_checkpoint(FakeAccelerator(), tmp_path, step, total_limit=2)
    real_rmtree = shutil.rmtree
    _kill_during_rotation(monkeypatch, checkpoint)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(FakeAccelerator(), tmp_path, 6, total_limit=2)  # rotation deletes checkpoint-2
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    # checkpoint-2 is no longer named as a checkpoint: it was moved aside before its deletion began.
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    assert resolve_resume_path("latest", tmp_path) == tmp_path / f"{CHECKPOINT_PREFIX}6"
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [f".del-{CHECKPOINT_PREFIX}2"]
    save_checkpoint(FakeAccelerator(), tmp_path, 8, total_limit=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{CHECKPOINT_PREFIX}6", f"{CHECKPOINT_PREFIX}8"]


def test_an_incomplete_checkpoint_folder_is_not_resumed_and_is_cleaned_up(tmp_path):
    """A `checkpoint-N` left half-deleted by an older version (no completeness marker, files missing): `latest`
    picks the newest complete checkpoint, and start-up removes the broken one."""
    for step in (2, 4):
        save_checkpoint(FakeAccelerator(), tmp_path, step, total_limit=None)
    broken = tmp_path / f"{CHECKPOINT_PREFIX}6"
    shutil.copytree(tmp_path / f"{CHECKPOINT_PREFIX}4", broken)
    for child in broken.iterdir():
        if child.name != META_NAME:
            child.unlink()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]
    assert resolve_resume_path("latest", tmp_path) == tmp_path / f"{CHECKPOINT_PREFIX}4"
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [broken.name]
    assert not broken.exists()


def _safetensors_error(message):
    from safetensors import SafetensorError

    return SafetensorError(message)


# What each writer raises on a full disk (measured on a 64 KiB tmpfs): the OS, torch.save, safetensors.
@pytest.mark.parametrize("failure", [
    OSError(28, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),
    _safetensors_error("Error while serializing: I/O error: No space left on device (os error 28)"),
])
def test_disk_full_during_a_save_names_the_device_and_keeps_the_previous_checkpoint(tmp_path, failure):
    class _DiskFull(FakeAccelerator):
        def save_state(self, folder):
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / META_NAME).write_text("{}")
            raise failure

    from training.checkpoint import CheckpointSaveError

    save_checkpoint(FakeAccelerator(), tmp_path, 2, total_limit=1)
    with pytest.raises(CheckpointSaveError, match=f"no space left on the device holding '{tmp_path}'.*"
                                                  f"{CHECKPOINT_PREFIX}2' is kept"):
        save_checkpoint(_DiskFull(), tmp_path, 4, total_limit=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{CHECKPOINT_PREFIX}2"]  # no half-written temporary
    assert (tmp_path / f"{CHECKPOINT_PREFIX}2" / "optimizer.bin").read_bytes() == b"x" * 10


_KILL_DURING_ROTATION = """
import os, shutil, signal, sys
from pathlib import Path
import training.checkpoint as checkpoint

class Accelerator:
    is_main_process = True
    def wait_for_everyone(self):
        pass
    def save_state(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        for name in ("bokehdiff_checkpoint.json", "optimizer.bin", "random_states_0.pkl"):
            (Path(folder) / name).write_text("x")

def die_midway(path, *args, **kwargs):
    next(p for p in sorted(Path(path).iterdir()) if p.is_file()).unlink()
    os.kill(os.getpid(), signal.SIGKILL)

root = Path(sys.argv[1])
for step in (2, 4):
    checkpoint.save_checkpoint(Accelerator(), root, step, total_limit=2)
checkpoint.shutil.rmtree = die_midway
checkpoint.save_checkpoint(Accelerator(), root, 6, total_limit=2)
"""


def test_sigkill_during_rotation_leaves_only_complete_checkpoints(tmp_path):
    """The issue's scenario for real: a process killed with SIGKILL while the rolling limit deletes a folder."""
    result = subprocess.run([sys.executable, "-c", _KILL_DURING_ROTATION, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]
    assert all(p.name.startswith(".del-") for p in tmp_path.iterdir() if p.name not in (
        f"{CHECKPOINT_PREFIX}4", f"{CHECKPOINT_PREFIX}6"))
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{CHECKPOINT_PREFIX}4", f"{CHECKPOINT_PREFIX}6"]


def test_another_tools_checkpoint_folder_is_never_deleted(tmp_path):
    """A `checkpoint-N` without this script's metadata or marker (e.g. a diffusers trainer's, with the same LoRA
    and accelerate file names) is not ours: start-up leaves it untouched (it used to delete it as an 'incomplete
    checkpoint'), it is never listed, and the run is refused, --overwrite_output_dir or not, because a save of
    the same step would replace it."""
    foreign = tmp_path / f"{CHECKPOINT_PREFIX}500"
    foreign.mkdir()
    for name in ("optimizer.bin", "random_states_0.pkl", "pytorch_lora_weights.safetensors", "scheduler.bin"):
        (foreign / name).write_text("not ours")
    assert remove_stale_temporaries(tmp_path) == []
    assert list_checkpoints(tmp_path) == []
    for resume, overwrite in ((None, False), (None, True), ("latest", False)):
        with pytest.raises(FileExistsError, match="checkpoint-500.*not written by it.*Move it"):
            check_fresh_output_dir(tmp_path, resume, overwrite=overwrite)
    assert sorted(p.name for p in foreign.iterdir()) == [
        "optimizer.bin", "pytorch_lora_weights.safetensors", "random_states_0.pkl", "scheduler.bin"]


def test_trainable_state_dict_keeps_spectral_norm_vectors_and_skips_frozen_parts():
    from training.checkpoint import trainable_state_dict

    frozen = torch.nn.Conv2d(3, 4, 3).requires_grad_(False)
    head = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Conv2d(4, 1, 1))
    state = trainable_state_dict(torch.nn.Sequential(frozen, head))
    assert "1.parametrizations.weight.original" in state and "1.bias" in state
    assert {"1.parametrizations.weight.0._u", "1.parametrizations.weight.0._v"} <= set(state)
    assert not any(k.startswith("0.") for k in state)
