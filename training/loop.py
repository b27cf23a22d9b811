"""The pieces of BokehDiff training: models, optimisers, the step, the non-finite guard, validation, logging.

Recipe (Zhu et al., ICCV 2025, Sec. 4; conventions in ``docs/conventions.md``): the one-step model
(``models.onestep.OneStepBokeh``: VAE encode -> UNet at t = 499 with PISA -> x0 -> VAE decode) is trained with
rank-8 LoRA on the UNet (``models.lora.PAPER_LORA_TARGETS``) and direct fine-tuning of the VAE encoder's
``conv_in`` / ``mid_block`` / ``conv_out`` at 0.1x the learning rate; the objective is ``losses.BokehLoss``
(MSE + edge + LPIPS + a GAN term after ``gan_step``), the multilevel discriminator trained at 2x the learning
rate. PISA's hardness follows :func:`pisa_hardness` (soft -> hard), passed explicitly every step.

Distributed and exact-resume rules this module keeps:

- Every process runs the same collectives in the same order: the backward always runs (also on a non-finite
  loss; its gradients are discarded), and the decision to skip an update is all-reduced, so no rank waits on
  a collective another rank skipped.
- Nothing draws from the global RNGs outside the step (validation runs under ``fork_rng``; DataLoaders have
  their own generators), so the RNG state accelerate checkpoints after step ``k`` is exactly the state step
  ``k + 1`` starts from. Inside the step PISA draws its occlusion-jitter and dropout seeds from the global
  torch RNG (``--pisa_seed`` null, the published random jitter), so this matters for exact resume. Ranks may
  draw different jitter; their LoRA weights stay equal because DDP averages the gradients.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "Components",
    "NonFiniteLossError",
    "NonFiniteGuard",
    "StepOutput",
    "StepLog",
    "build_components",
    "build_models",
    "build_optimizers",
    "describe_run",
    "peak_memory_mb",
    "pisa_hardness",
    "rank_checksums",
    "train_step",
    "validate",
]


# ----------------------------------------------------------------------------------------------------------
# Schedules and guards
# ----------------------------------------------------------------------------------------------------------
def pisa_hardness(step: int, start: float, per_step: float, maximum: float) -> float:
    """PISA hardness at optimisation step ``step`` (0-based): ``min(start + per_step * step, maximum)``.

    ``log(hardness)`` is the slope of the CoC sigmoid ``M_ij`` (docs/conventions.md), so training moves from a soft
    constraint (keys leak light beyond their CoC; gradients reach every pair) to a hard one. The published code
    started at 3 and added 1 per PISA call (two self-attention layers per UNet pass: +2 per step), capped at 1e6.
    """
    return float(min(start + per_step * step, maximum))


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite losses/gradients for too many consecutive steps."""


class NonFiniteGuard:
    """Counts skipped (non-finite) steps in ``progress`` and raises after ``limit`` of them in a row.

    Args:
        progress: the :class:`training.checkpoint.TrainProgress` whose counters are updated (checkpointed).
        limit: consecutive skipped steps that stop training (``--max_nonfinite_steps``).
    """

    def __init__(self, progress, limit: int):
        self.progress, self.limit = progress, limit

    def update(self, skipped: bool, step: int, last_checkpoint: str | None = None) -> None:
        if not skipped:
            self.progress.nonfinite_in_a_row = 0
            return
        self.progress.nonfinite_total += 1
        self.progress.nonfinite_in_a_row += 1
        logger.warning("step %d: non-finite loss or gradient, update skipped (%d in a row, %d in total)",
                       step, self.progress.nonfinite_in_a_row, self.progress.nonfinite_total)
        if self.progress.nonfinite_in_a_row >= self.limit:
            raise NonFiniteLossError(
                f"stopping at step {step}: {self.progress.nonfinite_in_a_row} consecutive steps had a non-finite "
                f"loss or gradient (--max_nonfinite_steps {self.limit}). Last good checkpoint: "
                f"{last_checkpoint or 'none'}. Lower --learning_rate, try --mixed_precision no instead of bf16, "
                f"or check the data; then resume with --resume_from_checkpoint latest."
            )


# ----------------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Components:
    """Everything the step needs. ``model`` and ``discriminator`` are as returned by ``accelerator.prepare``
    (possibly DDP-wrapped); ``*_raw`` are the unwrapped modules (for hooks, validation, export)."""

    model: nn.Module
    model_raw: nn.Module
    loss_fn: nn.Module
    discriminator: nn.Module | None
    discriminator_raw: nn.Module | None
    optimizer: Any
    scheduler: Any
    disc_optimizer: Any | None
    disc_scheduler: Any | None
    lora_params: list
    vae_params: list
    lora_modules: list[str]
    pisa_layers: list[str]
    window_nonfinite: bool = field(default=False)


def build_models(args, device: torch.device) -> tuple[nn.Module, list[str], list[str], list, list]:
    """Load the SDXL components and assemble the trainable one-step model.

    Returns ``(model, lora_modules, pisa_layers, lora_params, vae_params)``: a ``models.onestep.OneStepBokeh``
    on ``device`` (frozen base weights in the mixed-precision dtype, trainable tensors in float32; the VAE stays
    float32), the LoRA-carrying module names, the PISA-processed attention layers, and the trainable parameters.
    """
    from models.hub import local_source
    from models.lora import PAPER_LORA_TARGETS, add_lora, set_vae_trainable
    from models.onestep import OneStepBokeh
    from models.sdxl import load_sdxl_components, resolve_dtype

    # Hub unreachable: the cached snapshot's folder, or HubUnreachableError at once (models/hub.py).
    base = local_source(args.pretrained_model_name_or_path, "SDXL base model", revision=args.revision,
                        hint="--pretrained_model_name_or_path DIR", flag="--pretrained_model_name_or_path")
    try:  # the VAE is loaded without the UNet's --variant
        sdxl = load_sdxl_components(base, revision=args.revision, variant=args.variant)
    except OSError as error:  # offline hub, missing cache, incomplete local folder: one remedy
        raise OSError(
            f"--pretrained_model_name_or_path {args.pretrained_model_name_or_path!r}: cannot load the SDXL "
            f"components ({type(error).__name__}: {str(error).splitlines()[0]}). Pass a local diffusers SDXL folder "
            f"(unet/, vae/, text_encoder(_2)/, tokenizer(_2)/, scheduler/) or make the hub reachable/cached."
        ) from error
    unet, vae, scheduler = sdxl["unet"], sdxl["vae"], sdxl["scheduler"]
    text_encoder, text_encoder_2 = sdxl["text_encoder"].to(device), sdxl["text_encoder_2"].to(device)
    tokenizer, tokenizer_2 = sdxl["tokenizer"], sdxl["tokenizer_2"]
    del sdxl  # the text encoders are dropped below, once the prompt embeddings are cached

    pisa_layers: list[str] = []
    if args.pisa:
        from models.pisa import install_pisa_processors

        # The published recipe trains with random occlusion jitter and attention dropout; the processor's
        # defaults (fixed seed 0, no dropout) are the inference settings. seed=None draws from the global torch
        # RNG per call, which accelerate checkpoints, so resume stays exact.
        # Segments, supersamples and the discretisation (compat) are options: the released recipe trains
        # with 5 x 4 and the published discretisation (configs/train_published.yaml).
        pisa_layers = list(install_pisa_processors(
            unet, seed=args.pisa_seed, dropout_p=args.pisa_dropout, n_segments=args.pisa_segments,
            n_supersamples=args.pisa_supersamples, compat=args.pisa_compat))
        if not pisa_layers:
            raise ValueError("no attention layer matched the PISA patterns; is the base model SDXL-shaped?")
    lora_modules = add_lora(unet, args.rank, PAPER_LORA_TARGETS, alpha=args.lora_alpha)
    vae_params = set_vae_trainable(vae, bool(args.opt_vae))
    if not args.opt_vae:
        vae_params = []
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    model = OneStepBokeh.from_components(unet, vae, scheduler, text_encoder, text_encoder_2, tokenizer, tokenizer_2,
                                         timestep=args.timestep, gamma=args.model_gamma)
    del text_encoder, text_encoder_2  # the prompt embeddings are cached in the model
    # Frozen base weights in the compute dtype save memory; trainable tensors stay float32 so small Adam
    # updates are not rounded away. The VAE stays float32 (SDXL's VAE overflows in fp16).
    model.to(device)
    weight_dtype = resolve_dtype(args.mixed_precision)
    if weight_dtype != torch.float32:
        unet.to(dtype=weight_dtype)
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    for p in lora_params:
        p.data = p.data.float()
    model.train()
    return model, lora_modules, pisa_layers, lora_params, vae_params


def build_losses_from_args(args):
    """``losses.BokehLoss`` from the CLI (the GAN is on iff ``--gan_loss_type`` is set and ``--lambda_gan > 0``)."""
    from losses import LossConfig, build_losses

    gan = bool(args.gan_loss_type) and args.lambda_gan > 0
    return build_losses(LossConfig(
        lambda_mse=args.lambda_l2, edge=args.edge, lambda_edge=args.lambda_edge, lpips=args.lpips,
        lambda_lpips=args.lambda_lpips, lpips_pretrained=args.lpips_pretrained,
        lpips_vgg_weights=args.lpips_vgg_weights, gan_loss_type=args.gan_loss_type if gan else None,
        cv_type=args.cv_type, lambda_gan=args.lambda_gan, gan_step=args.gan_step,
        gan_backbone_weights=args.gan_backbone_weights, gan_pretrained=args.gan_pretrained,
        gan_tiny=args.gan_tiny, gan_backbone=args.gan_backbone, gan_levels=args.gan_levels,
        gan_normalize=args.gan_normalize, gan_head=args.gan_head, gan_head_channels=args.gan_head_channels,
        gan_generator_target=args.gan_generator_target, gan_batch_reduction=args.gan_batch_reduction,
        signed_range=args.loss_signed_range, edge_weight_mode=args.edge_weight_mode, clamp_pred=args.loss_clamp_pred,
    ))


def build_optimizers(args, lora_params, vae_params, disc_params, num_processes: int):
    """AdamW for the generator (LoRA group at ``learning_rate``, VAE group at ``vae_lr_scale`` x) and for the
    discriminator (``disc_lr_scale`` x), each with a diffusers LR schedule.

    accelerate's prepared scheduler steps ``num_processes`` times per optimisation step (it assumes the
    schedule counts samples per process), so warm-up and length are given in those units, which keeps the
    schedule a function of the optimisation step whatever the number of processes.
    """
    from diffusers.optimization import get_scheduler

    adam = dict(betas=(args.adam_beta1, args.adam_beta2), weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    groups = [{"params": lora_params, "lr": args.learning_rate, "name": "lora"}]
    if vae_params:
        groups.append({"params": vae_params, "lr": args.learning_rate * args.vae_lr_scale, "name": "vae"})
    optimizer = torch.optim.AdamW(groups, **adam)
    schedule = dict(num_warmup_steps=args.lr_warmup_steps * num_processes,
                    num_training_steps=args.max_train_steps * num_processes, power=args.lr_power)
    scheduler = get_scheduler(args.lr_scheduler, optimizer, num_cycles=args.lr_num_cycles, **schedule)
    disc_optimizer = disc_scheduler = None
    if disc_params:
        disc_optimizer = torch.optim.AdamW(disc_params, lr=args.learning_rate * args.disc_lr_scale, **adam)
        # The published recipe restarts only the generator's schedule; the discriminator's has one cycle.
        disc_scheduler = get_scheduler(args.lr_scheduler, disc_optimizer, num_cycles=1, **schedule)
    return optimizer, scheduler, disc_optimizer, disc_scheduler


def build_components(args, accelerator) -> Components:
    """Models, losses, optimisers and schedules, prepared with ``accelerator`` (DDP where distributed)."""
    model, lora_modules, pisa_layers, lora_params, vae_params = build_models(args, accelerator.device)
    loss_fn = build_losses_from_args(args).to(accelerator.device)
    disc_raw = loss_fn.discriminator
    disc_params = disc_raw.trainable_parameters() if disc_raw is not None else []
    optimizer, scheduler, disc_optimizer, disc_scheduler = build_optimizers(
        args, lora_params, vae_params, disc_params, accelerator.num_processes)
    model_p, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    disc = None
    if disc_raw is not None:
        disc, disc_optimizer, disc_scheduler = accelerator.prepare(disc_raw, disc_optimizer, disc_scheduler)
    return Components(model_p, model, loss_fn, disc, disc_raw, optimizer, scheduler, disc_optimizer,
                      disc_scheduler, lora_params, vae_params, lora_modules, pisa_layers)


def describe_run(args, c: Components, num_processes: int) -> dict:
    """Metadata stored with every checkpoint and export: what the weights are and how they were trained."""
    import diffusers
    import peft

    from models.lora import PAPER_LORA_TARGETS, VAE_TRAINABLE_PREFIXES
    from models.pipeline import DEFAULT_PISA
    from training.checkpoint import code_version

    return {
        "format": "bokehdiff-train", "format_version": 1,
        "base_model": args.pretrained_model_name_or_path, "revision": args.revision, "variant": args.variant,
        "resolution": args.resolution, "timestep": args.timestep,
        # model_gamma is what inference needs (models.adapter.AdapterInfo.model_gamma); `gamma` repeats it for readers
        # of format_version 1 files, where it was the one gamma of both the model and the data.
        "model_gamma": args.model_gamma, "synthesis_gamma": args.synthesis_gamma, "gamma": args.model_gamma,
        "lora": {"rank": args.rank, "alpha": args.lora_alpha if args.lora_alpha is not None else args.rank,
                 "targets": list(PAPER_LORA_TARGETS), "modules": len(c.lora_modules)},
        "vae_trainable": list(VAE_TRAINABLE_PREFIXES) if c.vae_params else [],
        "pisa": {"enabled": bool(args.pisa), "layers": c.pisa_layers,
                 "hardness_schedule": {"start": args.pisa_hardness_start, "per_step": args.pisa_hardness_per_step,
                                       "max": args.pisa_hardness_max},
                 # What inference_hf.py uses (1e7, as published), not the training cap (published: 1e6).
                 "inference_hardness": DEFAULT_PISA["hardness"], "seed": args.pisa_seed,
                 "dropout": args.pisa_dropout, "n_segments": args.pisa_segments,
                 "n_supersamples": args.pisa_supersamples,
                 # The discretisation trained with; the pipeline reads it (models.adapter.AdapterInfo.pisa_compat).
                 "compat": bool(args.pisa_compat)},
        "train_batch_size": args.train_batch_size, "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "dataloader_num_workers": args.dataloader_num_workers,
        "num_processes": num_processes,
        "versions": {"code": code_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
                     "peft": peft.__version__},
        "config": {k: v for k, v in sorted(vars(args).items()) if k not in ("local_rank", "hub_token")},  # no secret
    }


# ----------------------------------------------------------------------------------------------------------
# The step
# ----------------------------------------------------------------------------------------------------------
@dataclass
class StepOutput:
    """What one micro-batch step reports. ``terms``: loss terms (floats, this process); ``synced``: an
    optimisation step ended here; ``skipped``: that step's update was dropped (non-finite somewhere);
    ``pred``: the detached prediction ``(B, 3, H, W)``; ``grad_norm``: the LoRA gradient norm (synced steps)."""

    terms: dict
    synced: bool
    skipped: bool
    pred: torch.Tensor
    grad_norm: float = float("nan")


@contextlib.contextmanager
def _frozen_eval(module: nn.Module | None):
    """The discriminator as a fixed critic for the generator's term: no gradients into its heads (they would
    leak into the discriminator's accumulated gradients) and eval mode (no spectral-norm power iteration)."""
    if module is None:
        yield
        return
    params = [p for p in module.parameters() if p.requires_grad]
    was_training = module.training
    for p in params:
        p.requires_grad_(False)
    module.eval()
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        module.train(was_training)


def _all_ranks_any(accelerator, flag: bool, device) -> bool:
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    if accelerator.num_processes > 1:
        value = accelerator.reduce(value, reduction="sum")
    return bool(value.item() > 0)


def train_step(c: Components, batch: dict, *, step: int, args, accelerator) -> StepOutput:
    """One micro-batch: forward, generator loss, backward, discriminator loss and backward, and at the end of
    an accumulation window the (all-ranks-consistent) update or skip.

    Args:
        batch: collated ``OnTheFlyDataset`` items on the device (``aif``, ``bokeh`` ``(B, 3, H, W)`` sRGB in
            [0, 1], ``disparity`` / ``coc_px`` ``(B, 1, H, W)``, ``original_size`` / ``crop_top_left`` ``(B, 2)``).
        step: optimisation steps completed so far (drives the PISA hardness and the GAN start).
    """
    hardness = pisa_hardness(step, args.pisa_hardness_start, args.pisa_hardness_per_step, args.pisa_hardness_max)
    modules = [c.model] + ([c.discriminator] if c.discriminator is not None else [])
    with accelerator.accumulate(*modules):
        pred = c.model(batch["aif"], batch["disparity"], batch["coc_px"], original_size=batch["original_size"],
                       crop_top_left=batch["crop_top_left"], pisa_hardness=hardness if args.pisa else None)
        with _frozen_eval(c.discriminator_raw):
            total, terms = c.loss_fn(pred, batch["bokeh"], batch["aif"], step=step, discriminator=c.discriminator_raw)
        finite = math.isfinite(terms["total"])
        # Backward even when non-finite: under DDP every rank must reach the same gradient all-reduce; the
        # poisoned gradients are dropped below.
        accelerator.backward(total)
        if c.discriminator is not None:
            # The critic sees displayable images: clamp the unclamped prediction to [0, 1].
            d_loss, d_terms = c.loss_fn.discriminator_loss(pred.detach().clamp(0, 1), batch["bokeh"],
                                                           discriminator=c.discriminator)
            accelerator.backward(d_loss)
            terms.update(d_terms)
            finite = finite and math.isfinite(d_terms["gan_d"])
        c.window_nonfinite = c.window_nonfinite or not finite
        out = StepOutput(terms=terms, synced=accelerator.sync_gradients, skipped=False, pred=pred.detach())
        if accelerator.sync_gradients:
            norms = [accelerator.clip_grad_norm_(c.lora_params, args.max_grad_norm)]
            if c.vae_params:
                norms.append(accelerator.clip_grad_norm_(c.vae_params, args.max_grad_norm))
            if c.discriminator is not None:
                norms.append(accelerator.clip_grad_norm_(c.discriminator_raw.trainable_parameters(),
                                                         args.max_grad_norm))
            # Clipped norms are computed after the all-reduce, hence equal on all ranks; the loss flag is not.
            bad = _all_ranks_any(accelerator, c.window_nonfinite, accelerator.device)
            bad = bad or not all(math.isfinite(float(n)) for n in norms)
            out.grad_norm, out.skipped = float(norms[0]), bad
            # No loss scaler is involved: training.config rejects fp16 (accelerate's single GradScaler would be
            # unscaled once per clip call and updated once per optimiser here).
            if not bad:
                c.optimizer.step()
                if c.disc_optimizer is not None:
                    c.disc_optimizer.step()
            # The schedule follows the step count, skipped or not, so the LR stays a function of the step.
            c.scheduler.step()
            if c.disc_scheduler is not None:
                c.disc_scheduler.step()
            c.optimizer.zero_grad(set_to_none=True)
            if c.disc_optimizer is not None:
                c.disc_optimizer.zero_grad(set_to_none=True)
            c.window_nonfinite = False
    return out


# ----------------------------------------------------------------------------------------------------------
# Validation, logging, rank consistency
# ----------------------------------------------------------------------------------------------------------
def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


@torch.no_grad()
def validate(model: nn.Module, batches: list[dict], *, hardness: float | None, device: torch.device,
             max_images: int = 4, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """PSNR / SSIM / L1 of the model on the fixed held-out batches, and an image grid.

    Runs the unwrapped model in eval mode under ``fork_rng`` (the training RNG stream is untouched), reseeded
    with ``seed`` so per-call random draws (PISA's occlusion jitter with ``--pisa_seed`` null) are the same at
    every validation: metrics of different steps differ by the weights only.

    PSNR and SSIM are ``metrics.image.psnr_per_image`` / ``ssim_per_image``, the whole-image values that
    ``evaluate.py`` reports, so a validation number and an evaluation number of one image pair agree. (Until
    issue 22 SSIM came from ``piq.ssim``, which averages only the interior where the 11-px window fits and
    average-pools images over 256 px first; kornia's 'same'-padded map here covers every pixel.)

    Returns:
        ``(metrics, grid)``: ``{"psnr" (dB, capped at metrics.image.PSNR_MAX_DB), "ssim" in [-1, 1], "l1" in
        [0, 1]}`` averaged over images, and a ``(3, rows * H, 4 * W)`` grid in [0, 1] whose rows are
        AIF | prediction | target | disparity.
    """
    from metrics.image import psnr_per_image, ssim_per_image

    was_training = model.training
    model.eval()
    psnr, ssim, l1, rows, count = 0.0, 0.0, 0.0, [], 0
    try:
        with torch.random.fork_rng(devices=_rng_devices(device)):
            torch.random.default_generator.manual_seed(seed)  # the CPU generator: PISA draws its seeds there
            for batch in batches:
                b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                pred = model(b["aif"], b["disparity"], b["coc_px"], original_size=b["original_size"],
                             crop_top_left=b["crop_top_left"], pisa_hardness=hardness).float().clamp(0, 1)
                target = b["bokeh"].float().clamp(0, 1)
                n = pred.shape[0]
                psnr += float(psnr_per_image(pred, target).sum())  # capped; evaluate.py's definition
                ssim += float(ssim_per_image(pred, target).sum())
                l1 += float((pred - target).abs().flatten(1).mean(1).sum())
                count += n
                for i in range(n):
                    if len(rows) < max_images:
                        disp = b["disparity"][i].float().expand(3, -1, -1)
                        rows.append(torch.cat([b["aif"][i].float(), pred[i], target[i], disp], dim=2).cpu())
    finally:
        model.train(was_training)
    metrics = {"psnr": psnr / max(count, 1), "ssim": ssim / max(count, 1), "l1": l1 / max(count, 1)}
    return metrics, torch.cat(rows, dim=1) if rows else torch.zeros(3, 1, 1)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: allocated accelerator memory on CUDA, else the resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def rank_checksums(accelerator, params: list) -> list[int]:
    """A 63-bit hash of this process's trainable tensors, gathered from every process (equal when in sync)."""
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().float().cpu().numpy().tobytes())
    value = torch.tensor([int.from_bytes(digest.digest()[:8], "little") >> 1], device=accelerator.device)
    return [int(v) for v in accelerator.gather(value).tolist()]


class StepLog:
    """Per-step JSON lines (``train_log.jsonl`` / ``validation.jsonl``) on the main process.

    Lines are strict JSON (the same convention as ``evaluate.py``'s ``metrics.json``): PSNR is capped at
    :data:`metrics.image.PSNR_MAX_DB` by whoever computes it, and any value that is still not finite (the loss
    or gradient norm of a skipped non-finite step, whose ``skipped`` field says so) is written as ``null``.

    On resume, records after the resumed step (written by the interrupted run after its last checkpoint)
    are dropped, so the file always describes one consistent history. A line that is not a complete record
    (a kill or a full disk while appending) is dropped with a warning.
    """

    def __init__(self, path: str | os.PathLike, start_step: int, enabled: bool):
        self.path, self.enabled = Path(path), enabled
        if enabled and self.path.exists():
            kept = []
            for number, line in enumerate(self.path.read_text(errors="replace").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    step = json.loads(line)["step"]
                except (ValueError, KeyError, TypeError):
                    logger.warning("'%s' line %d is not a complete record (a write was interrupted); dropped: %.80r",
                                   self.path, number, line)
                    continue
                if step <= start_step:
                    kept.append(line)
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        from metrics.report import finite_or_none  # strict JSON: undefined values as null, as evaluate.py writes

        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(finite_or_none(record), allow_nan=False) + "\n")


class StatusMeter:
    """Seconds per step over the last logging window, for the status line."""

    def __init__(self):
        self.t0, self.steps = time.perf_counter(), 0

    def tick(self) -> None:
        self.steps += 1

    def seconds_per_step(self) -> float:
        elapsed = time.perf_counter() - self.t0
        rate = elapsed / max(self.steps, 1)
        self.t0, self.steps = time.perf_counter(), 0
        return rate
