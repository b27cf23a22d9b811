"""A training run of ``train_lora_otf.py``, from its command line to the exported adapter: build, loop, save.

Exit status: 0 done; 1 a checkpoint could not be saved (no space left; the previous one is kept), or the
``--push_to_hub`` upload failed (the run is complete locally; the message gives the command to upload it); 2 for
invalid options (also an uninstalled --report_to tracker, or --push_to_hub with the hub unreachable or no token), a missing or incomplete --resume_from_checkpoint folder or one trained with other settings (also
optimiser / LR-schedule ones its restored state fixes: training.resume), an
--output_dir holding an earlier run that this command would overwrite, a missing data folder or weights that
are neither local, cached nor downloadable (one ``error:`` line), or a run stopped after too many non-finite
steps. Rerunning with ``--resume_from_checkpoint latest`` continues exactly where the last checkpoint left off
(a checkpoint whose RNG state cannot be read is an error unless ``--allow_inexact_resume``).
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from data.synthesis.assets import TrainingDataError
from metrics.image import psnr_from_mse
from training.checkpoint import (CheckpointHooks, CheckpointSaveError, TrainProgress, check_fresh_output_dir,
                                 check_rng_state, export_inference, remove_stale_temporaries, resolve_resume_path,
                                 rotate_checkpoints, save_checkpoint)
from training.config import dump_config, parse_args, report_to_names
from training.data import (build_train_dataset, build_validation_set, check_validation_data, make_train_iterator,
                           move_batch)
from training.loop import (NonFiniteGuard, NonFiniteLossError, StatusMeter, StepLog, build_components,
                           describe_run, peak_memory_mb, pisa_hardness, rank_checksums, train_step, validate)
from training.model_card import write_model_card
from training.plots import write_training_curves
from training.resume import check_newer_checkpoints, check_resume_settings
from training.publish import check_push_to_hub, push_run, upload_command
from training.tracking import log_validation_grid, write_validation_grid

logger = logging.getLogger("train_lora_otf")  # the name the log lines have always carried (the command's)


def setup_accelerator(args):
    """Accelerator with trackers, seeded; TF32 and the xformers flag handled with a message.

    Without CUDA it runs on the CPU (``cpu=True``): several processes started by ``torchrun`` or ``accelerate
    launch --multi_gpu`` then form one gloo process group. Left to itself, accelerate on a CPU-only host without
    ``ACCELERATE_USE_CPU`` treats every rank as a job of its own, and the ranks race on one output folder."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed

    report_to = report_to_names(args.report_to) or None  # accelerate takes a list, not a comma-separated string
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        log_with=report_to, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=str(Path(args.output_dir) / args.logging_dir)),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        force=False)
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    if args.enable_xformers_memory_efficient_attention:
        logger.info("--enable_xformers_memory_efficient_attention: accepted for the published command; "
                    "stock layers already use PyTorch SDPA and PISA layers their own kernel (impl auto: sparse "
                    "where the CoC bound skips enough pairs, else chunked), so nothing changes")
    set_seed(args.seed)
    return accelerator


def prepare_output_dir(args, accelerator) -> Path:
    """Create ``output_dir``, recover from interrupted saves, and refuse to mix a fresh run into an earlier run's
    checkpoints (unless ``--overwrite_output_dir``). Every process raises alike. The resolved config is written
    later, once a resume has been accepted (a refused one must not replace the run's ``train_config.yaml``)."""
    out = Path(args.output_dir)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
    accelerator.wait_for_everyone()
    check_fresh_output_dir(out, args.resume_from_checkpoint, args.overwrite_output_dir, accelerator.is_main_process)
    return out


def refuse(error: Exception, accelerator=None) -> int:
    """End a run refused before training: one argparse-style ``error:`` line (no traceback), exit status 2."""
    print(f"train_lora_otf.py: error: {error}", file=sys.stderr)
    if accelerator is not None:
        accelerator.end_training()
    return 2


def plot_curves(out: Path) -> Path | None:
    """Write ``out/training_curves.png`` (:mod:`training.plots`); a failure is a warning, never a failed run (the
    logs it draws from are complete either way). Returns the path, or None when it could not be drawn."""
    try:
        path = write_training_curves(out)
    except Exception as error:  # noqa: BLE001 - matplotlib, fonts, disk: the run's own outputs are unaffected
        logger.warning("the training curves could not be drawn (%s: %s); redraw them with `python -m scripts.plot_run "
                       "%s`", type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "", out)
        return None
    logger.info("training curves written to %s", path)
    return path


def train(args) -> int:
    """Train with resolved options (:func:`training.config.parse_args`): build, loop, save. Returns the exit
    status of ``train_lora_otf.py`` (module docstring of :mod:`training.run`)."""
    # ---- build ----------------------------------------------------------------------------------------
    try:  # --push_to_hub: the hub answers and a token exists, checked in seconds before anything is loaded
        hub_target = check_push_to_hub(args)
    except ValueError as error:
        return refuse(error)
    accelerator = setup_accelerator(args)
    try:  # an earlier run's folder (checkpoints, logs, foreign checkpoint-N): refused with the remedies, no traceback
        out = prepare_output_dir(args, accelerator)
    except FileExistsError as error:
        return refuse(error, accelerator)
    try:  # before minutes of loading: a wrong or incomplete checkpoint folder fails fast
        resume = resolve_resume_path(args.resume_from_checkpoint, out)
        if resume is not None:  # settings the restored optimiser / schedule state would override; a branch left
            check_resume_settings(resume, vars(args))
            check_newer_checkpoints(resume, out)
    except (FileNotFoundError, ValueError) as error:
        return refuse(error, accelerator)
    samples_per_step = args.train_batch_size * args.gradient_accumulation_steps
    # The data first: a wrong --train_data_dir fails before minutes of model loading.
    try:
        dataset = build_train_dataset(args, rank=accelerator.process_index,
                                      total_samples=args.max_train_steps * samples_per_step * accelerator.num_processes)
        check_validation_data(args)
        c = build_components(args, accelerator)
    except (OSError, TrainingDataError) as error:  # missing/unusable data, weights not local/cached/reachable
        return refuse(error, accelerator)
    description = describe_run(args, c, accelerator.num_processes)
    progress = TrainProgress()
    hooks = CheckpointHooks(c.model_raw.unet, c.model_raw.vae if c.vae_params else None, c.discriminator_raw,
                            progress, lambda: description, accelerator.is_main_process)
    hooks.register(accelerator)
    if resume is not None:
        check_rng_state(resume, accelerator.process_index, args.allow_inexact_resume)  # exact resume or an error
        try:
            accelerator.load_state(str(resume))  # LoRA, VAE, discriminator, optimisers, schedules, RNG, progress
        except ValueError as error:  # other weight-defining settings than the checkpoint's: the message names them
            return refuse(error, accelerator)
        logger.info("resumed from %s at step %d", resume, progress.step)
    elif args.resume_from_checkpoint:
        logger.info("--resume_from_checkpoint %s: no checkpoint in %s, starting fresh", args.resume_from_checkpoint, out)
    if accelerator.is_main_process:  # only now: a refused resume leaves the run's own config in place
        dump_config(args, out / "train_config.yaml")
    accelerator.wait_for_everyone()
    batches = make_train_iterator(dataset, batch_size=args.train_batch_size, num_workers=args.dataloader_num_workers,
                                  seed=args.seed, rank=accelerator.process_index,
                                  world_size=accelerator.num_processes, start_samples=progress.samples_per_rank)
    validating = args.validation_steps > 0 and accelerator.is_main_process
    val_set = build_validation_set(args, args.train_batch_size) if validating else []
    if report_to_names(args.report_to):
        accelerator.init_trackers("bokehdiff", config={k: v for k, v in vars(args).items()
                                                       if isinstance(v, (int, float, str, bool)) and k != "hub_token"})
    log_from = progress.step if resume is not None else -1  # a fresh run keeps no earlier run's records
    train_log = StepLog(out / "train_log.jsonl", log_from, accelerator.is_main_process)
    val_log = StepLog(out / "validation.jsonl", log_from, accelerator.is_main_process)
    guard, meter = NonFiniteGuard(progress, args.max_nonfinite_steps), StatusMeter()
    last_checkpoint = str(resume) if resume else None

    def run_validation():
        if not accelerator.is_main_process:
            return
        hardness = pisa_hardness(progress.step, args.pisa_hardness_start, args.pisa_hardness_per_step,
                                 args.pisa_hardness_max) if args.pisa else None
        metrics, grid = validate(c.model_raw, val_set, hardness=hardness, device=accelerator.device,
                                 seed=args.validation_seed)
        val_log.write({"step": progress.step, **metrics})
        accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=progress.step)
        write_validation_grid(grid, out, progress.step)  # RUN/validation/step-<step>.png
        log_validation_grid(accelerator.trackers, grid, progress.step)
        logger.info("validation at step %d: PSNR %.2f dB, SSIM %.4f, L1 %.4f", progress.step, metrics["psnr"],
                    metrics["ssim"], metrics["l1"])

    # ---- loop -----------------------------------------------------------------------------------------
    if args.validation_steps and progress.step == 0:
        run_validation()
    bar = tqdm(total=args.max_train_steps, initial=progress.step, desc="steps",
               disable=not accelerator.is_local_main_process)
    window: dict[str, list[float]] = {}
    try:
        while progress.step < args.max_train_steps:
            batch = move_batch(next(batches), accelerator.device, gamma=args.synthesis_gamma)
            result = train_step(c, batch, step=progress.step, args=args, accelerator=accelerator)
            if not result.synced:
                continue
            guard.update(result.skipped, progress.step, last_checkpoint)
            progress.step += 1
            progress.samples_per_rank += samples_per_step
            meter.tick()
            bar.update(1)
            # PSNR of [0, 1] images: --loss_signed_range reports the MSE of [-1, 1] images, 4x as large.
            mse = result.terms["mse"] / (4.0 if args.loss_signed_range else 1.0)
            record = {"step": progress.step, **result.terms, "skipped": result.skipped,
                      "psnr": float(psnr_from_mse(torch.tensor(mse, dtype=torch.float64))),  # capped, as evaluate.py
                      "lr": c.scheduler.get_last_lr()[0], "grad_norm": result.grad_norm}
            train_log.write(record)
            for key, value in record.items():
                if key not in ("step", "skipped") and isinstance(value, float) and math.isfinite(value):
                    window.setdefault(key, []).append(value)
            bar.set_postfix(loss=f"{result.terms['total']:.4f}", psnr=f"{record['psnr']:.2f}")
            if progress.step % args.log_steps == 0:
                scalars = {f"train/{k}": sum(v) / len(v) for k, v in window.items()}
                scalars["train/nonfinite_total"] = progress.nonfinite_total
                accelerator.log(scalars, step=progress.step)
                window = {}
                logger.info("step %d/%d | loss %.4f | lr %.3g | %.3f s/step | peak mem %.0f MiB | skipped %d",
                            progress.step, args.max_train_steps, result.terms["total"], record["lr"],
                            meter.seconds_per_step(), peak_memory_mb(accelerator.device), progress.nonfinite_total)
            if progress.step % args.checkpointing_steps == 0 or progress.step == args.max_train_steps:
                last_checkpoint = str(save_checkpoint(accelerator, out, progress.step, args.checkpoints_total_limit))
            if args.validation_steps and progress.step % args.validation_steps == 0:
                run_validation()
    except NonFiniteLossError as error:
        logger.error("%s", error)
        if accelerator.is_main_process:
            plot_curves(out)  # the curves up to the stop show where the loss went non-finite
        accelerator.end_training()
        return 2
    except CheckpointSaveError as error:  # disk full: said as such, the previous checkpoint kept
        logger.error("%s", error)
        accelerator.end_training()
        return 1
    bar.close()

    # ---- save -----------------------------------------------------------------------------------------
    checksums = rank_checksums(accelerator, c.lora_params + c.vae_params)
    if len(set(checksums)) != 1:
        raise RuntimeError(f"trainable weights differ between processes (checksums {checksums}); "
                           "distributed training went out of sync")
    if accelerator.is_main_process:
        # A kill between publishing the last checkpoint and rotating left one too many; a resume at the last step
        # saves nothing more, so the limit is applied here (the run is complete: no checkpoint is still needed).
        rotate_checkpoints(out, args.checkpoints_total_limit)
        export_inference(c.model_raw.unet, c.model_raw.vae if c.vae_params else None, out,
                         {**description, "progress": vars(progress), "rank_checksums": checksums}, shareable=True)
        logger.info("inference weights written to %s (load with models.lora.load_lora / load_vae_partial)", out)
        card = write_model_card(out, license=args.model_card_license,
                                repo_id=hub_target.repo_id if hub_target else None)
        logger.info("model card written to %s", card)
        plot_curves(out)  # before the upload, which takes the whole folder
        if hub_target is not None:
            try:
                logger.info("pushed to the hub: %s", push_run(out, hub_target))
            except Exception as error:  # noqa: BLE001 - network, auth, quota: the local run is complete either way
                logger.error("--push_to_hub: uploading %s to '%s' failed (%s: %s). The run is complete locally; "
                             "upload it with `%s`", out, hub_target.repo_id, type(error).__name__,
                             str(error).splitlines()[0][:200] if str(error) else "", upload_command(out, hub_target.repo_id))
                accelerator.end_training()
                return 1
    accelerator.end_training()
    return 0


def main(input_args=None) -> int:
    """``train_lora_otf.py``: parse the options (an invalid one: one ``error:`` line, exit 2), print them for
    ``--dry_run``, else :func:`train`."""
    try:
        args = parse_args(input_args)
    except (ValueError, FileNotFoundError) as error:  # invalid or missing options or --config: one line, no traceback
        return refuse(error)
    if args.dry_run:
        shown = {**vars(args), "hub_token": "<hidden>" if args.hub_token else None}  # a secret: never printed
        print(yaml.safe_dump(shown, sort_keys=True))
        return 0
    return train(args)
