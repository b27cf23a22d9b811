"""Checks of a ``--resume_from_checkpoint`` request made before anything is loaded: settings a resume cannot
change, and checkpoints of a branch the resume would abandon (:func:`check_newer_checkpoints`).

``accelerator.load_state`` restores the optimisers and LR schedules of a checkpoint. What their state fixes:

- the AdamW parameter groups (``lr``, ``betas``, ``eps``, ``weight_decay``) and the schedules' ``base_lrs``
  (``learning_rate`` and the VAE / discriminator multiples): a new value on the command line would be recorded
  in ``train_config.yaml``, the model card and the checkpoints, but never used;
- the schedules' position (``last_epoch``). The LR curve itself (a diffusers closure, not saved) is rebuilt
  from the new flags, so changing what the curve depends on (its type, warm-up, and the run length, cycles or
  power where the type uses them) splices two schedules that no single recorded value describes.

Both are refused, like the weight-defining settings of :func:`training.checkpoint.compare_run_settings`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from training.checkpoint import CHECKPOINT_PREFIX, META_NAME, list_checkpoints

__all__ = ["SCHEDULE_INPUTS", "check_newer_checkpoints", "check_resume_settings", "fixed_by_restored_state"]

# What each diffusers schedule (training.loop.build_optimizers) is computed from besides the step.
SCHEDULE_INPUTS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "constant_with_warmup": ("lr_warmup_steps",),
    "linear": ("lr_warmup_steps", "max_train_steps"),
    "cosine": ("lr_warmup_steps", "max_train_steps"),
    "cosine_with_restarts": ("lr_warmup_steps", "max_train_steps", "lr_num_cycles"),
    "polynomial": ("lr_warmup_steps", "max_train_steps", "lr_power"),
}


def fixed_by_restored_state(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The options (``train_config.yaml`` keys) that a checkpoint of a run with ``config`` fixes for its resume:
    those restored with the optimiser / scheduler state, and those its LR schedule is a function of."""
    keys = ["learning_rate", "adam_beta1", "adam_beta2", "adam_weight_decay", "adam_epsilon", "lr_scheduler"]
    if config.get("opt_vae"):  # the VAE parameter group exists only then
        keys.append("vae_lr_scale")
    if config.get("gan_loss_type") and (config.get("lambda_gan") or 0) > 0:  # the discriminator's optimiser
        keys.append("disc_lr_scale")
    keys += SCHEDULE_INPUTS.get(config.get("lr_scheduler"), ())
    return tuple(keys)


def _read_meta(folder: Path) -> dict:
    try:
        return json.loads((folder / META_NAME).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"--resume_from_checkpoint: cannot read '{folder / META_NAME}' ({type(error).__name__}: "
                         f"{error}); resume from another checkpoint folder") from error


def check_resume_settings(folder: str | os.PathLike, current: Mapping[str, Any]) -> None:
    """Refuse to resume checkpoint ``folder`` with other values of :func:`fixed_by_restored_state` than it was
    trained with (``current``: this run's resolved options, e.g. ``vars(args)``).

    A checkpoint whose recorded config lacks a key (older versions) is not checked for it.

    Raises:
        ValueError: one sentence naming each changed flag with both values and the fixes.
    """
    folder = Path(folder)
    saved = _read_meta(folder).get("config") or {}
    changed = [(key, saved[key], current.get(key)) for key in fixed_by_restored_state(saved)
               if key in saved and saved[key] != current.get(key)]
    if not changed:
        return
    diffs = "; ".join(f"--{key} {old} in the checkpoint, {new} now" for key, old, new in changed)
    same = " ".join(f"--{key} {old}" for key, old, _ in changed)
    raise ValueError(
        f"--resume_from_checkpoint: checkpoint '{folder}' was trained with other optimiser / LR-schedule settings "
        f"({diffs}). The optimiser and schedule state restored from it fix these: a new value would be recorded "
        f"in train_config.yaml, the model card and the checkpoints but not used (or would splice two LR "
        f"schedules). Resume with the checkpoint's values ({same}), or start a new run in a new --output_dir.")


def check_newer_checkpoints(folder: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """Refuse to resume checkpoint ``folder`` (of step ``s``) while ``output_dir`` holds complete checkpoints of
    later steps: they belong to the branch the resume abandons, and they would outlive it (the rolling limit
    keeps the newest; a later ``--resume_from_checkpoint latest`` would jump back onto that branch, mixing its
    logs, config and model card with this one's).

    Raises:
        ValueError: naming the newer checkpoints and the fixes.
    """
    folder = Path(folder)
    progress = _read_meta(folder).get("progress") or {}
    step = progress.get("step")
    if step is None:  # older metadata: the folder's name carries the step
        name = folder.name
        step = int(name[len(CHECKPOINT_PREFIX):]) if name[len(CHECKPOINT_PREFIX):].isdigit() else None
    if step is None:
        return
    newer = [path for s, path in list_checkpoints(output_dir) if s > step and path.resolve() != folder.resolve()]
    if not newer:
        return
    names = ", ".join(path.name for path in newer)
    raise ValueError(
        f"--resume_from_checkpoint {folder}: --output_dir '{output_dir}' also holds newer checkpoints ({names}) "
        f"of the run this resume from step {step} would abandon; they would outlive it and a later "
        f"`--resume_from_checkpoint latest` would jump back onto them, mixing two runs' logs, config and model "
        f"card. Move or delete {names} first, or copy '{folder}' into a new --output_dir and resume there "
        f"(--resume_from_checkpoint <that copy>).")
