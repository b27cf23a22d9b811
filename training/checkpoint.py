"""Resumable training checkpoints: accelerate state + our own weights, written atomically, rotated, self-describing.

Layout of ``<output_dir>/checkpoint-<step>/`` (``step`` = optimisation steps completed):

- ``pytorch_lora_weights.safetensors``: the UNet LoRA, peft keys with the ``unet.`` prefix, with our and
  diffusers' metadata (``models.lora``; ``pipe.load_lora_weights`` reads rank and alpha from it);
- ``vae.safetensors``: the fine-tuned VAE encoder tensors (only with ``--opt_vae 1``);
- ``discriminator.safetensors``: the discriminator's trainable tensors and their modules' buffers (GAN only);
- ``optimizer*.bin``, ``scheduler*.bin``, ``random_states_<rank>.pkl``: written by ``accelerator.save_state``
  (optimizers, LR schedules, Python/NumPy/torch RNG of every process);
- ``bokehdiff_checkpoint.json``: step, data position, non-finite counters, LoRA rank/targets, trainable VAE
  tensors, PISA settings, base model, resolution, library and code versions, and the resolved config;
- ``checkpoint_complete``: the completeness marker, written last (after every file is flushed to disk).

The LoRA and VAE files are the inference export format too: ``models.lora.load_lora(unet, folder)`` and
``load_vae_partial(vae, folder)`` read a checkpoint folder directly (older checkpoints hold ``vae.ckpt``
instead, read the same way); :func:`export_inference` writes the same files (without training state) to
``output_dir`` at the end of training, plus peft's adapter files and ``vae.ckpt`` (for the released scripts).

Atomicity: a folder named ``checkpoint-<step>`` is always complete. A checkpoint is written to
``.tmp-checkpoint-<step>``, gets its completeness marker, and is renamed to ``checkpoint-<step>`` only when
every process has finished writing, so a crash while saving leaves the previous checkpoints untouched (the
rolling limit deletes old checkpoints only after the new one is in place). The rolling limit first renames a
checkpoint to ``.del-checkpoint-<step>`` and then deletes it, so a kill during the deletion never leaves a
half-deleted folder under a checkpoint's name. ``latest`` only ever sees complete folders (marker present;
:func:`is_complete`); leftovers of interrupted saves and deletions, and incomplete ``checkpoint-*`` folders (as
older versions could leave), are removed at start-up with a warning. Re-saving an existing step moves the old
folder aside (``.old-checkpoint-<step>``) before publishing the new one; if a crash falls between those two
renames, start-up moves the old folder back (:func:`remove_stale_temporaries`). A save that runs out of disk
space raises :class:`CheckpointSaveError` naming the device, removes its partial folder and keeps the previous
checkpoints.

A fresh run (no ``--resume_from_checkpoint``) into an ``output_dir`` that already holds checkpoints, or the
files of an earlier run (logs, config, exported weights) without checkpoints, is refused
(:func:`check_fresh_output_dir`): the rolling limit would keep the old run's higher steps, ``latest`` would
later resume the wrong run, and the earlier run's logs and config would be overwritten.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from data.disk import is_disk_full
from models.lora import LORA_WEIGHT_NAME, VAE_SAFETENSORS_NAME, VAE_WEIGHT_NAME
from models.lora_formats import PEFT_CONFIG_NAME, PEFT_WEIGHT_NAME

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_PREFIX",
    "META_NAME",
    "DISC_WEIGHT_NAME",
    "TrainProgress",
    "CheckpointHooks",
    "CheckpointSaveError",
    "check_fresh_output_dir",
    "check_rng_state",
    "code_version",
    "compare_run_settings",
    "export_inference",
    "is_complete",
    "list_checkpoints",
    "remove_stale_temporaries",
    "resolve_resume_path",
    "rotate_checkpoints",
    "save_checkpoint",
    "trainable_state_dict",
]

CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-" + CHECKPOINT_PREFIX
OLD_PREFIX = ".old-" + CHECKPOINT_PREFIX
DEL_PREFIX = ".del-" + CHECKPOINT_PREFIX
META_NAME = "bokehdiff_checkpoint.json"
DISC_WEIGHT_NAME = "discriminator.safetensors"
COMPLETE_NAME = "checkpoint_complete"
_CHECKPOINT_RE = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")
# Checkpoints of versions before the marker are complete when these files are all there.
_LEGACY_REQUIRED = (META_NAME, LORA_WEIGHT_NAME, "optimizer.bin", "random_states_0.pkl")
# What a run leaves besides checkpoints (the PNG: training.plots.CURVES_NAME); a fresh run must not overwrite them.
CONFIG_NAME = "train_config.yaml"
RUN_FILES = ("train_log.jsonl", "validation.jsonl", CONFIG_NAME, LORA_WEIGHT_NAME, VAE_WEIGHT_NAME,
             VAE_SAFETENSORS_NAME, PEFT_CONFIG_NAME, PEFT_WEIGHT_NAME, META_NAME, "README.md", "training_curves.png")
RUN_FOLDERS = ("validation",)  # the validation grids (training.tracking.VALIDATION_DIR)
_FINISHED_RUN_FILES = (LORA_WEIGHT_NAME, META_NAME)  # the export written at the end of training


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (no space left); the previous checkpoints are untouched."""


@dataclass
class TrainProgress:
    """Counters that, with the accelerate state, make a resumed run continue exactly.

    Attributes:
        step: optimisation steps completed.
        samples_per_rank: training samples each process has drawn from its data stream (the stream's position).
        nonfinite_total: steps skipped because a loss or gradient was NaN/inf.
        nonfinite_in_a_row: current run of consecutive skipped steps (training stops at ``--max_nonfinite_steps``).
    """

    step: int = 0
    samples_per_rank: int = 0
    nonfinite_total: int = 0
    nonfinite_in_a_row: int = 0


def code_version() -> str:
    """``git describe`` of the code that trains (``unknown`` outside a git checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def is_complete(folder: str | os.PathLike) -> bool:
    """A checkpoint folder holds everything a resume needs: its completeness marker (written last), or, for
    checkpoints written before the marker existed, the metadata, LoRA, optimizer and RNG files."""
    folder = Path(folder)
    return (folder / COMPLETE_NAME).is_file() or all((folder / name).is_file() for name in _LEGACY_REQUIRED)


def _written_here(folder: Path) -> bool:
    """A ``checkpoint-*`` folder of this script (complete or not): it holds the metadata or the marker. Every
    complete folder (:func:`is_complete`) is one; a folder without either is another tool's (never deleted)."""
    return (folder / META_NAME).is_file() or (folder / COMPLETE_NAME).is_file()


def _named_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir`` as ``(step, path)``, oldest first (temporaries and incomplete
    folders are ignored)."""
    return [(step, path) for step, path in _named_checkpoints(output_dir) if is_complete(path)]


def resolve_resume_path(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder ``--resume_from_checkpoint`` names, or None to start fresh.

    ``latest`` picks the newest complete checkpoint in ``output_dir`` (None if there is none, so the same
    command both starts and resumes a run). A path must be a checkpoint folder holding ``META_NAME``.
    """
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / resume
    if not (path / META_NAME).is_file():
        raise FileNotFoundError(
            f"--resume_from_checkpoint: '{resume}' is not a checkpoint folder (no {META_NAME} in '{path}'). "
            f"Use 'latest' or a '{CHECKPOINT_PREFIX}<step>' folder written by this script."
        )
    if not is_complete(path):  # an interrupted save or deletion: accelerate would fail on a missing file later
        missing = [name for name in _LEGACY_REQUIRED if not (path / name).is_file()]
        raise FileNotFoundError(
            f"--resume_from_checkpoint: '{path}' is an incomplete checkpoint (no {COMPLETE_NAME} marker; missing "
            f"{', '.join(missing)}): a save or a deletion of it was interrupted. Resume from another checkpoint "
            f"folder, or use 'latest' (the newest complete checkpoint in --output_dir)."
        )
    return path


def remove_stale_temporaries(output_dir: str | os.PathLike) -> list[Path]:
    """Clean up after interrupted saves and deletions; returns the folders removed.

    An ``.old-checkpoint-<step>`` whose ``checkpoint-<step>`` is missing is the last good copy of that step (the
    crash fell between moving it aside and publishing its replacement, see :func:`save_checkpoint`): it is
    renamed back. Every other temporary (``.tmp-*``, possibly incomplete; ``.old-*`` already replaced;
    ``.del-*``, a rotation interrupted while deleting) is deleted, and so is a ``checkpoint-*`` folder of this
    script (it holds ``META_NAME`` or the marker) that is not complete (:func:`is_complete`; older versions could
    leave one half-deleted). A ``checkpoint-*`` folder without either (another tool's, or a user's) is left alone
    with a warning: it is never listed as a checkpoint, and never deleted.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    for old in sorted(root.glob(OLD_PREFIX + "*")):
        final = root / (CHECKPOINT_PREFIX + old.name[len(OLD_PREFIX):])
        if old.is_dir() and not final.exists() and is_complete(old):
            logger.warning("restoring '%s' as '%s': a re-save of that step was interrupted", old, final)
            os.replace(old, final)
    removed = []
    incomplete = []
    for _, path in _named_checkpoints(root):
        if is_complete(path):
            continue
        if _written_here(path):
            incomplete.append(path)
        else:  # not written by this script (e.g. another trainer's checkpoint): never ours to delete
            logger.warning("ignoring '%s': not a checkpoint of this script (no %s); left untouched", path, META_NAME)
    for child in sorted(root.iterdir()):
        if child.is_dir() and (child.name.startswith((TMP_PREFIX, OLD_PREFIX, DEL_PREFIX)) or child in incomplete):
            logger.warning("removing '%s' left by an interrupted checkpoint save or deletion", child)
            shutil.rmtree(child)
            removed.append(child)
    return removed


def check_fresh_output_dir(output_dir: str | os.PathLike, resume: str | None, overwrite: bool,
                           is_main_process: bool = True) -> None:
    """Refuse to start a fresh run on top of another run (or, with ``overwrite``, delete its files first).

    Call on every process (each raises the same error; only the main process deletes) after
    :func:`remove_stale_temporaries`. An earlier run is its ``checkpoint-*`` folders or, when they were deleted,
    its :data:`RUN_FILES` (logs, config, exported weights). With ``resume`` set, a run with checkpoints is
    continued; ``latest`` without any checkpoint starts fresh, which is refused only over a *finished* run (its
    exported weights), whose logs and config it would overwrite.

    Raises:
        FileExistsError: an earlier run would be overwritten, and no ``overwrite``; or a ``checkpoint-*`` folder
            that this script did not write is there (never deleted, even with ``overwrite``).
    """
    root = Path(output_dir)
    foreign = [path for _, path in _named_checkpoints(root) if not _written_here(path)]
    if foreign:  # not ours to delete, and a save of the same step would replace it: refused even with overwrite
        raise FileExistsError(
            f"--output_dir '{output_dir}' holds {', '.join(repr(p.name) for p in foreign)}, named like this script's "
            f"checkpoints but not written by it (no {META_NAME}); a checkpoint of the same step would replace it. "
            f"Move it out of the folder, or choose a new --output_dir."
        )
    found = list_checkpoints(root)
    files = [root / name for name in RUN_FILES if (root / name).is_file()]
    files += [root / name for name in RUN_FOLDERS if (root / name).is_dir()]
    if resume:
        finished = [root / name for name in _FINISHED_RUN_FILES if (root / name).is_file()]
        if found or not finished or resume != "latest":
            return
        if overwrite:  # `latest` with nothing to resume starts over on top of a finished run
            _delete_earlier_run([], files, is_main_process)
            return
        raise FileExistsError(
            f"--resume_from_checkpoint latest: --output_dir '{output_dir}' holds a finished run "
            f"({', '.join(p.name for p in finished)}) but no checkpoint to resume from (its checkpoint-* folders "
            f"were deleted); starting over would overwrite its logs and config. Choose a new --output_dir, or "
            f"pass --overwrite_output_dir to delete that run's files and start over."
        )
    if not found and all(path.name == CONFIG_NAME for path in files):
        return  # nothing, or only the config of a run that stopped before its first step: rewritten by this one
    if not overwrite:
        if found:
            steps = ", ".join(str(step) for step, _ in found)
            raise FileExistsError(
                f"--output_dir '{output_dir}' already holds checkpoints of an earlier run (steps {steps}) and "
                f"--resume_from_checkpoint is not set. Continue that run with --resume_from_checkpoint latest, "
                f"choose a new --output_dir, or pass --overwrite_output_dir to delete those checkpoints and start over."
            )
        raise FileExistsError(
            f"--output_dir '{output_dir}' holds the files of an earlier run ({', '.join(p.name for p in files)}) "
            f"but no checkpoint, and --resume_from_checkpoint is not set; a fresh run would overwrite them. "
            f"Choose a new --output_dir, or pass --overwrite_output_dir to delete them and start over."
        )
    _delete_earlier_run([path for _, path in found], files, is_main_process)


def _delete_earlier_run(folders: list[Path], files: list[Path], is_main_process: bool) -> None:
    if not is_main_process:
        return
    for path in folders + files:
        logger.warning("--overwrite_output_dir: deleting '%s' of an earlier run", path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def rotate_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints so that at most ``total_limit`` remain; returns the deleted folders."""
    if total_limit is None:
        return []
    found = list_checkpoints(output_dir)
    doomed = [path for _, path in found[: max(0, len(found) - total_limit)]]
    for path in doomed:
        logger.info("checkpoints_total_limit=%d: removing %s", total_limit, path)
        # Renamed first (atomic), deleted second: a kill during the deletion leaves a `.del-` leftover that
        # start-up removes, never a half-deleted folder that `latest` would take for a checkpoint.
        aside = path.with_name(DEL_PREFIX + path.name[len(CHECKPOINT_PREFIX):])
        os.replace(path, aside)
        shutil.rmtree(aside)
    return doomed


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` to disk, so the rename below publishes data that is really there."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None) -> Path:
    """Save the full training state as ``checkpoint-<step>`` atomically, then apply the rolling limit.

    Must be called on every process (each writes its RNG state); the main process publishes the folder.
    Returns the checkpoint path.

    Raises:
        CheckpointSaveError: the device holding ``output_dir`` is full (``ENOSPC``, or the torch writer's
            ``inline_container`` / ``file write failed`` errors it causes). The partial folder is removed; the
            previous checkpoints are kept.
    """
    root = Path(output_dir)
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f"{TMP_PREFIX}{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
    except Exception as error:  # noqa: BLE001 - torch and safetensors report a full disk in their own types
        _raise_save_error(error, accelerator, root, tmp, step)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            _fsync_tree(tmp)
            with open(tmp / COMPLETE_NAME, "w") as handle:  # the marker, last: everything above is on disk
                handle.write(f"{step}\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            _raise_save_error(error, accelerator, root, tmp, step)
            raise
        old = None
        if final.exists():  # same step saved before (e.g. a rerun): keep it until the new one is in place
            old = root / f"{OLD_PREFIX}{step}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old)
        rotate_checkpoints(root, total_limit)
    accelerator.wait_for_everyone()
    return final


def _raise_save_error(error: BaseException, accelerator, root: Path, tmp: Path, step: int) -> None:
    """Turn a disk-full failure of a checkpoint save into a :class:`CheckpointSaveError` (after removing the
    partial folder); return for any other error, which the caller re-raises unchanged."""
    if not is_disk_full(error):
        return
    free = shutil.disk_usage(root).free if root.exists() else 0
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    previous = list_checkpoints(root)
    kept = (f"the previous checkpoint '{previous[-1][1]}' is kept" if previous else
            "no earlier checkpoint of this run exists")
    raise CheckpointSaveError(
        errno.ENOSPC,
        f"cannot save {CHECKPOINT_PREFIX}{step}: no space left on the device holding '{root}' "
        f"({free / 2**20:.0f} MiB free while writing; {type(error).__name__}: {str(error).splitlines()[0][:160]}). "
        f"The partial checkpoint was removed and {kept}. Free space there (or lower --checkpoints_total_limit), "
        f"then continue with --resume_from_checkpoint latest.",
    ) from error


def check_rng_state(folder: str | os.PathLike, process_index: int, allow_inexact: bool) -> None:
    """Check that this process's ``random_states_<rank>.pkl`` in a checkpoint can be restored.

    accelerate only logs an INFO line when it cannot, and the run then continues with other random draws
    (samples, occlusion jitter, dropout): not the exact resume promised. So this is an error unless
    ``allow_inexact`` (``--allow_inexact_resume``), which continues with a warning.

    Raises:
        RuntimeError: the file is missing, truncated or lacks the Python/NumPy/torch states.
    """
    from accelerate.utils import load

    path = Path(folder) / f"random_states_{process_index}.pkl"
    try:
        states = load(path)
        missing = [key for key in ("random_state", "numpy_random_seed", "torch_manual_seed") if key not in states]
        if missing:
            raise ValueError(f"it has no {', '.join(missing)}")
    except Exception as error:  # noqa: BLE001 - whatever the reason (missing, truncated, foreign), the state is lost
        problem = (f"cannot restore the random-number state of process {process_index} from '{path}' "
                   f"({type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else 'unreadable'})")
        if not allow_inexact:
            raise RuntimeError(
                f"{problem}. Resuming without it would draw other samples, occlusion jitter and dropout than the "
                f"uninterrupted run. Restore the file, resume from an earlier checkpoint (--resume_from_checkpoint "
                f"<its folder>), or pass --allow_inexact_resume to continue with fresh random states."
            ) from error
        logger.warning("%s; --allow_inexact_resume: continuing with the current random states, so this run does "
                       "not exactly match an uninterrupted one", problem)


def trainable_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters of ``module`` plus the buffers of every submodule that owns one, and of their
    descendants.

    The buffers matter: spectral normalisation keeps its power-iteration vectors as buffers next to (or, with
    ``torch.nn.utils.parametrizations``, one level below) the weight, and an exact resume needs them. Frozen
    backbones (no trainable parameter) are left out.
    """
    owners = [name for name, mod in module.named_modules()
              if any(p.requires_grad for p in mod.parameters(recurse=False))]
    state = {name: p for name, p in module.named_parameters() if p.requires_grad}
    for name, buf in module.named_buffers():
        mod_name = name.rsplit(".", 1)[0] if "." in name else ""
        if any(mod_name == o or mod_name.startswith(o + ".") or o == "" for o in owners):
            state[name] = buf
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def _module_trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's own ``trainable_state_dict()`` when it defines one (``losses.MultiLevelDiscriminator``:
    the heads with their spectral-norm vectors), else :func:`trainable_state_dict`."""
    if hasattr(module, "trainable_state_dict"):
        return {k: v.detach().cpu().contiguous() for k, v in module.trainable_state_dict().items()}
    return trainable_state_dict(module)


def _load_trainable_state(module: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    if hasattr(module, "load_trainable_state_dict"):
        module.load_trainable_state_dict(state)  # strict: missing or unexpected keys raise
        return
    expected = trainable_state_dict(module)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"'{path}' does not match the discriminator: missing {missing[:8]}, unexpected "
                         f"{unexpected[:8]}; was it trained with the same --cv_type / --gan_loss_type?")
    result = module.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"'{path}': keys not applied to the discriminator: {result.unexpected_keys[:8]}")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    from data.io import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def export_inference(unet: nn.Module, vae: nn.Module | None, folder: str | os.PathLike,
                     describe: Mapping[str, Any], *, shareable: bool = False) -> Path:
    """Write the inference weights (LoRA; VAE encoder tensors if ``vae`` is given) and their description.

    ``folder`` then loads with ``models.lora.load_lora(unet, folder)`` / ``load_vae_partial(vae, folder)`` and
    diffusers' ``pipe.load_lora_weights(folder)``; ``describe`` (rank, targets, PISA settings, base model,
    resolution, ...) goes into the LoRA file's metadata and into ``bokehdiff_checkpoint.json``. ``shareable``
    (the export at the end of training) adds peft's adapter folder files (``PeftModel.from_pretrained(unet,
    folder)``) and ``vae.ckpt`` for the released scripts, which read only that name.
    """
    from models.lora import save_lora, save_vae_partial, write_peft_adapter

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lora_file = save_lora(unet, folder, extra_metadata={k: v for k, v in describe.items() if k != "config"})
    if vae is not None:
        save_vae_partial(vae, folder / VAE_SAFETENSORS_NAME)
        if shareable:
            save_vae_partial(vae, folder / VAE_WEIGHT_NAME)
    if shareable:
        write_peft_adapter(lora_file, folder)
    _write_json(folder / META_NAME, describe)
    return folder


# Settings that define the weights: resuming with others is an error.
# model_gamma / synthesis_gamma: a checkpoint of format_version 1 without them recorded one `gamma` for both.
# They come before `gamma` (which repeats model_gamma) so that a refusal names the flag the user sets.
_MUST_MATCH = ("lora", "pisa", "timestep", "model_gamma", "synthesis_gamma", "gamma", "vae_trainable")
# Settings that change the sample stream or the update: resuming with others works but is not exact. The
# worker count is among them because OnTheFlyDataset mixes the DataLoader worker id into each sample's seed.
_SHOULD_MATCH = ("base_model", "resolution", "train_batch_size", "num_processes", "gradient_accumulation_steps",
                 "dataloader_num_workers")


def compare_run_settings(saved: Mapping[str, Any], current: Mapping[str, Any]
                         ) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """Differences between a checkpoint's metadata and this run's :func:`training.loop.describe_run`.

    Returns ``(errors, warnings)``, each a list of ``(key, saved value, current value)``. A key missing at the
    top level of an older checkpoint is looked up in its recorded ``config``.
    """
    def recorded(key):
        return saved[key] if key in saved else saved.get("config", {}).get(key)

    def must(key):
        if key in ("model_gamma", "synthesis_gamma") and key not in saved:
            return saved.get("gamma")
        if key == "pisa" and isinstance(saved.get("pisa"), Mapping) and isinstance(current.get("pisa"), Mapping):
            # Checkpoints from before the PISA sample counts were options trained with the processor's 7 x 5.
            counts = {k: v for k, v in (("n_segments", 7), ("n_supersamples", 5)) if k in current["pisa"]}
            return {**counts, **saved["pisa"]}
        return saved.get(key)

    errors = [(k, must(k), current[k]) for k in _MUST_MATCH
              if (k in saved or must(k) is not None) and k in current and must(k) != current[k]]
    warnings = [(k, recorded(k), current.get(k)) for k in _SHOULD_MATCH if recorded(k) != current.get(k)]
    return errors, warnings


class CheckpointHooks:
    """accelerate ``save_state`` / ``load_state`` pre-hooks that store our weights instead of full models.

    accelerate would otherwise write every prepared model's complete state dict (the whole SDXL UNet and VAE,
    GBs per checkpoint). The hooks empty its model list and write only what training changes: the LoRA, the
    fine-tuned VAE tensors and the discriminator's trainable tensors, plus the metadata JSON with the
    :class:`TrainProgress`. Optimizers, schedulers and RNG states are still saved by accelerate.

    Args:
        unet: the (unwrapped) UNet carrying the LoRA adapter.
        vae: the (unwrapped) VAE if its encoder is trained, else None.
        discriminator: the (unwrapped) discriminator, or None without the GAN.
        progress: the live :class:`TrainProgress`, updated in place on load.
        describe: returns the metadata dict (rank, targets, PISA, base model, config, ...) at save time.
        is_main_process: only the main process writes files.
    """

    def __init__(self, unet: nn.Module, vae: nn.Module | None, discriminator: nn.Module | None,
                 progress: TrainProgress, describe: Callable[[], dict], is_main_process: bool):
        self.unet, self.vae, self.discriminator = unet, vae, discriminator
        self.progress, self.describe, self.is_main_process = progress, describe, is_main_process
        self.loaded_meta: dict | None = None

    def register(self, accelerator) -> None:
        accelerator.register_save_state_pre_hook(self.save)
        accelerator.register_load_state_pre_hook(self.load)

    def save(self, models: list, weights: list, output_dir: str) -> None:
        weights.clear()  # accelerate saves no full model state; we write the trainable parts below
        if not self.is_main_process:
            return
        folder = Path(output_dir)
        meta = dict(self.describe())
        meta["progress"] = asdict(self.progress)
        export_inference(self.unet, self.vae, folder, meta)
        if self.discriminator is not None:
            from safetensors.torch import save_file

            from data.io import atomic_write

            with atomic_write(folder / DISC_WEIGHT_NAME) as tmp:  # the file's mode follows the umask
                save_file(_module_trainable_state(self.discriminator), str(tmp))

    def load(self, models: list, input_dir: str) -> None:
        from models.lora import load_lora, load_vae_partial

        models.clear()  # nothing for accelerate to load into the models: we restore our own files
        folder = Path(input_dir)
        meta = json.loads((folder / META_NAME).read_text())
        errors, warnings = compare_run_settings(meta, self.describe())
        if errors:
            key, saved, now = errors[0]
            raise ValueError(
                f"checkpoint '{folder}' was trained with {key}={saved!r}, this run has {now!r}; "
                f"resume with the same settings (see {folder / META_NAME}) or start a new --output_dir"
            )
        for key, saved, now in warnings:
            logger.warning("resuming '%s': %s was %r, now %r; the run will not match an uninterrupted one",
                           folder, key, saved, now)
        load_lora(self.unet, folder)
        if self.vae is not None:
            load_vae_partial(self.vae, folder)
        if self.discriminator is not None:
            _load_trainable_state(self.discriminator, folder / DISC_WEIGHT_NAME)
        restored = TrainProgress(**meta["progress"])
        for field, value in asdict(restored).items():
            setattr(self.progress, field, value)
        self.loaded_meta = meta
