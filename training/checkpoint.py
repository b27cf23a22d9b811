"""Resumable training checkpoints: accelerate state + our own weights, written atomically, rotated, self-describing.

Layout of ``<output_dir>/checkpoint-<step>/`` (``step`` = optimisation steps completed):

- ``pytorch_lora_weights.safetensors``: the UNet LoRA, peft keys with the ``unet.`` prefix (``models.lora``);
- ``vae.ckpt``: the fine-tuned VAE encoder tensors (only with ``--opt_vae 1``);
- ``discriminator.safetensors``: the discriminator's trainable tensors and their modules' buffers (GAN only);
- ``optimizer*.bin``, ``scheduler*.bin``, ``random_states_<rank>.pkl``: written by ``accelerator.save_state``
  (optimizers, LR schedules, Python/NumPy/torch RNG of every process);
- ``bokehdiff_checkpoint.json``: step, data position, non-finite counters, LoRA rank/targets, trainable VAE
  tensors, PISA settings, base model, resolution, library and code versions, and the resolved config.

The LoRA and VAE files are the inference export format too: ``models.lora.load_lora(unet, folder)`` and
``load_vae_partial(vae, folder)`` read a checkpoint folder directly; :func:`export_inference` writes the same
files (without training state) to ``output_dir`` at the end of training.

Atomicity: a checkpoint is written to ``.tmp-checkpoint-<step>`` and renamed to ``checkpoint-<step>`` only when
every process has finished writing, so a crash while saving leaves the previous checkpoints untouched (the
rolling limit deletes old checkpoints only after the new one is in place). ``latest`` only ever sees complete
folders; leftovers of interrupted saves are removed at start-up with a warning. Re-saving an existing step
moves the old folder aside (``.old-checkpoint-<step>``) before publishing the new one; if a crash falls between
those two renames, start-up moves the old folder back (:func:`remove_stale_temporaries`).

A fresh run (no ``--resume_from_checkpoint``) into an ``output_dir`` that already holds checkpoints is refused
(:func:`check_fresh_output_dir`): the rolling limit would keep the old run's higher steps and ``latest``
would later resume the wrong run.
"""

from __future__ import annotations

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

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_PREFIX",
    "META_NAME",
    "DISC_WEIGHT_NAME",
    "TrainProgress",
    "CheckpointHooks",
    "check_fresh_output_dir",
    "code_version",
    "compare_run_settings",
    "export_inference",
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
META_NAME = "bokehdiff_checkpoint.json"
DISC_WEIGHT_NAME = "discriminator.safetensors"
_CHECKPOINT_RE = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")


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


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir`` as ``(step, path)``, oldest first (temporaries are ignored)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


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
    return path


def remove_stale_temporaries(output_dir: str | os.PathLike) -> list[Path]:
    """Clean up after interrupted saves; returns the folders removed.

    An ``.old-checkpoint-<step>`` whose ``checkpoint-<step>`` is missing is the last good copy of that step (the
    crash fell between moving it aside and publishing its replacement, see :func:`save_checkpoint`): it is
    renamed back. Every other temporary (``.tmp-*``, possibly incomplete; ``.old-*`` already replaced) is deleted.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    for old in sorted(root.glob(OLD_PREFIX + "*")):
        final = root / (CHECKPOINT_PREFIX + old.name[len(OLD_PREFIX):])
        if old.is_dir() and not final.exists():
            logger.warning("restoring '%s' as '%s': a re-save of that step was interrupted", old, final)
            os.replace(old, final)
    removed = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.startswith((TMP_PREFIX, OLD_PREFIX)):
            logger.warning("removing '%s' left by an interrupted checkpoint save", child)
            shutil.rmtree(child)
            removed.append(child)
    return removed


def check_fresh_output_dir(output_dir: str | os.PathLike, resume: str | None, overwrite: bool,
                           is_main_process: bool = True) -> None:
    """Refuse to start a fresh run on top of another run's checkpoints (or, with ``overwrite``, delete them).

    Call on every process (each raises the same error; only the main process deletes) after
    :func:`remove_stale_temporaries`. Nothing happens when ``resume`` is set: ``latest`` or a path continue a run.

    Raises:
        FileExistsError: ``output_dir`` holds ``checkpoint-*`` folders, no ``resume`` and no ``overwrite``.
    """
    found = list_checkpoints(output_dir)
    if resume or not found:
        return
    if not overwrite:
        steps = ", ".join(str(step) for step, _ in found)
        raise FileExistsError(
            f"--output_dir '{output_dir}' already holds checkpoints of an earlier run (steps {steps}) and "
            f"--resume_from_checkpoint is not set. Continue that run with --resume_from_checkpoint latest, choose "
            f"a new --output_dir, or pass --overwrite_output_dir to delete those checkpoints and start over."
        )
    if is_main_process:
        for _, path in found:
            logger.warning("--overwrite_output_dir: deleting '%s' of an earlier run", path)
            shutil.rmtree(path)


def rotate_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints so that at most ``total_limit`` remain; returns the deleted folders."""
    if total_limit is None:
        return []
    found = list_checkpoints(output_dir)
    doomed = [path for _, path in found[: max(0, len(found) - total_limit)]]
    for path in doomed:
        logger.info("checkpoints_total_limit=%d: removing %s", total_limit, path)
        shutil.rmtree(path)
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
    """
    root = Path(output_dir)
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f"{TMP_PREFIX}{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _fsync_tree(tmp)
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def export_inference(unet: nn.Module, vae: nn.Module | None, folder: str | os.PathLike,
                     describe: Mapping[str, Any]) -> Path:
    """Write the inference weights (LoRA; VAE encoder tensors if ``vae`` is given) and their description.

    ``folder`` then loads with ``models.lora.load_lora(unet, folder)`` / ``load_vae_partial(vae, folder)``;
    ``describe`` (rank, targets, PISA settings, base model, resolution, ...) goes into the LoRA file's metadata
    and into ``bokehdiff_checkpoint.json``.
    """
    from models.lora import save_lora, save_vae_partial

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_lora(unet, folder, extra_metadata={k: v for k, v in describe.items() if k != "config"})
    if vae is not None:
        save_vae_partial(vae, folder)
    _write_json(folder / META_NAME, describe)
    return folder


# Settings that define the weights: resuming with others is an error.
# model_gamma / synthesis_gamma: a checkpoint of format_version 1 without them recorded one `gamma` for both.
_MUST_MATCH = ("lora", "pisa", "timestep", "gamma", "model_gamma", "synthesis_gamma", "vae_trainable")
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

            save_file(_module_trainable_state(self.discriminator), str(folder / DISC_WEIGHT_NAME))

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
