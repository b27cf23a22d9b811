"""GPU benchmark of one BokehDiff training step at full SDXL size, 512 px: time and peak memory, with and
without gradient checkpointing.

    python -m benchmarks.gpu_train [--batches 1 4] [--resolution 512] [--repeats 5] [--json out.json]
    python -m benchmarks.gpu_train --smoke     # CPU check of the script itself with the tiny stack, 64 px

The UNet and VAE are built from SDXL's published configs (``models.sdxl.SDXL_UNET_CONFIG`` /
``SDXL_VAE_CONFIG``, so nothing is downloaded) with random weights: speed and memory do not depend on the
values. Prompt embeddings are random tensors of SDXL's shapes. The trained model is the paper's: PISA on
``down_blocks.1.attentions.0`` self-attention (training hardness), rank-8 LoRA on ``PAPER_LORA_TARGETS``
(float32 LoRA tensors on a bf16 UNet), the VAE encoder's ``conv_in``/``mid_block``/``conv_out`` trainable in
float32, VAE in float32. The step is ``training.loop.train_step`` (forward, MSE + edge loss, backward, gradient
clipping, AdamW with the LoRA and VAE groups) under accelerate with ``mixed_precision=bf16``; ``--gan`` adds the
multilevel discriminator on a *random* ConvNeXt-B backbone (same cost as the pretrained one) from step 0.

Per (batch, gradient checkpointing) it reports the best-of-N step time after two warm-up steps (CUDA
synchronised), the peak allocated memory (``torch.cuda.max_memory_allocated``, reset per setting), and
``x no-ckpt``: the time relative to the same batch without checkpointing, measured in the same process.
Out-of-memory is recorded, not fatal.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def _args(resolution: int, batch: int, checkpointing: bool, gan: bool, smoke: bool):
    from training.config import parse_args

    argv = ["--train_data_dir", "unused", "--output_dir", tempfile.mkdtemp(), "--pretrained_model_name_or_path",
            "random-sdxl", "--resolution", str(resolution), "--train_batch_size", str(batch),
            "--mixed_precision", "no" if smoke else "bf16", "--no-lpips", "--edge", "--gan_step", "0",
            "--lambda_gan", "0.1" if gan else "0", "--no-gan_pretrained"]
    if gan and smoke:
        argv.append("--gan_tiny")
    if checkpointing:
        argv.append("--gradient_checkpointing")
    return parse_args(argv)


def _build(args, accelerator, smoke: bool):
    """Random-weight SDXL (or tiny) one-step model with PISA + LoRA + trainable VAE ends, and the step's parts."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from models.lora import PAPER_LORA_TARGETS, add_lora, set_vae_trainable
    from models.onestep import OneStepBokeh
    from models.pisa import install_pisa_processors
    from training.loop import Components, build_losses_from_args, build_optimizers

    torch.manual_seed(0)
    if smoke:
        from models.tiny import build_tiny_sdxl

        parts = build_tiny_sdxl()
        unet, vae = parts["unet"], parts["vae"]
        prompt_shape, pooled_dim = (1, 77, unet.config.cross_attention_dim), 32
    else:
        from models.sdxl import SDXL_UNET_CONFIG, SDXL_VAE_CONFIG

        unet, vae = UNet2DConditionModel(**SDXL_UNET_CONFIG), AutoencoderKL(**SDXL_VAE_CONFIG)
        prompt_shape, pooled_dim = (1, 77, 2048), 1280
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000)
    pisa_layers = install_pisa_processors(unet)
    lora_modules = add_lora(unet, args.rank, PAPER_LORA_TARGETS)
    vae_params = set_vae_trainable(vae, True)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    model = OneStepBokeh(unet, vae, torch.randn(prompt_shape), torch.randn(1, pooled_dim), scheduler.alphas_cumprod,
                         timestep=args.timestep, gamma=args.model_gamma).to(accelerator.device)
    if args.mixed_precision == "bf16":
        unet.to(torch.bfloat16)
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    for p in lora_params:
        p.data = p.data.float()
    model.train()
    loss_fn = build_losses_from_args(args).to(accelerator.device)
    disc = loss_fn.discriminator
    opt, sched, d_opt, d_sched = build_optimizers(args, lora_params, vae_params,
                                                  disc.trainable_parameters() if disc is not None else [], 1)
    model_p, opt, sched = accelerator.prepare(model, opt, sched)
    disc_p = None
    if disc is not None:
        disc_p, d_opt, d_sched = accelerator.prepare(disc, d_opt, d_sched)
    return Components(model_p, model, loss_fn, disc_p, disc, opt, sched, d_opt, d_sched, lora_params, vae_params,
                      lora_modules, pisa_layers)


def random_batch(batch: int, size: int, device) -> dict:
    """A training batch of random ``(batch, 3|1, size, size)`` images, disparity in [0, 1] and CoC radii (px)."""
    g = torch.Generator().manual_seed(0)
    disparity = torch.rand(batch, 1, size, size, generator=g)
    return {k: v.to(device) for k, v in dict(
        aif=torch.rand(batch, 3, size, size, generator=g), bokeh=torch.rand(batch, 3, size, size, generator=g),
        disparity=disparity, coc_px=20.0 * (disparity - 0.5),
        original_size=torch.tensor([[768, 768]] * batch), crop_top_left=torch.tensor([[128, 128]] * batch),
    ).items()}


def measure(batch: int, checkpointing: bool, opts) -> dict:
    from accelerate import Accelerator

    from training.loop import train_step

    args = _args(opts.resolution, batch, checkpointing, opts.gan, opts.smoke)
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=opts.smoke)
    cuda = accelerator.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    row = dict(batch=batch, resolution=opts.resolution, gradient_checkpointing=checkpointing, gan=opts.gan)
    try:
        c = _build(args, accelerator, opts.smoke)
        data = random_batch(batch, opts.resolution, accelerator.device)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(opts.repeats + 2):
            sync()
            t0 = time.perf_counter()
            train_step(c, data, step=i, args=args, accelerator=accelerator)
            sync()
            times.append(time.perf_counter() - t0)
        row.update(seconds=min(times[2:]), peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                   status="ok")
    except torch.OutOfMemoryError as error:
        row.update(seconds=None, peak_gib=None, status=f"OOM: {str(error).splitlines()[0]}")
    finally:
        accelerator.free_memory()
        if cuda:
            torch.cuda.empty_cache()
    return row


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gan", action="store_true", help="add the discriminator (random ConvNeXt-B backbone)")
    parser.add_argument("--smoke", action="store_true", help="tiny stack on CPU at 64 px: checks the script runs")
    parser.add_argument("--json", type=str, default=None)
    opts = parser.parse_args(argv)
    if opts.smoke:
        opts.resolution, opts.repeats = 64, 1
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_train.py needs a CUDA device (or --smoke for a CPU check of the script)")
    rows = []
    for batch in opts.batches:
        for checkpointing in (False, True):
            rows.append(measure(batch, checkpointing, opts))
            print(json.dumps(rows[-1]), flush=True)  # each row as measured: a cut run still leaves its numbers
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not opts.smoke else "CPU (smoke)"
    print(f"{device}, torch {torch.__version__}")
    print("| batch | px | grad. ckpt | s / step | peak GiB | x no-ckpt | status |\n|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["batch"] == r["batch"] and not b["gradient_checkpointing"])
        ratio = r["seconds"] / base["seconds"] if r["seconds"] and base["seconds"] else float("nan")
        secs = f"{r['seconds']:.3f}" if r["seconds"] else "-"
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] else "-"
        print(f"| {r['batch']} | {r['resolution']} | {r['gradient_checkpointing']} | {secs} | {peak} | "
              f"{ratio:.2f} | {r['status']} |")
    if opts.json:
        Path(opts.json).write_text(json.dumps(dict(device=device, rows=rows), indent=2))
    return rows


if __name__ == "__main__":
    main()
