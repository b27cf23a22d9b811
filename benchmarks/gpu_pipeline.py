"""GPU benchmark of the one-step pipeline at full SDXL size: latency and peak memory at 1024 and 2048 px.

    python -m benchmarks.gpu_pipeline [--sizes 1024 2048] [--modes full tiled] [--repeats 3] [--json out.json]
    python -m benchmarks.gpu_pipeline --smoke      # CPU check of the script itself with the tiny stack

The UNet and VAE are built from SDXL's published configs (stabilityai/stable-diffusion-xl-base-1.0,
``unet/config.json`` and ``vae/config.json``, written out below so nothing is downloaded) with *random*
weights: speed and memory do not depend on the weight values. Prompt embeddings are random tensors of the
right shapes (the text encoders run once at load time and are not part of a render). UNet in bf16 with a
rank-8 LoRA on the paper's targets (as the published model), VAE in float32 by default (``--vae_dtype bf16``
to compare), PISA installed with the inference defaults.

Per setting it reports the best-of-N wall time after a warm-up (CUDA synchronised), the stage split, the
peak allocated memory (``torch.cuda.max_memory_allocated``), and ``x stock``: the time divided by a baseline
measured in the same process, the same UNet with stock attention (no PISA) at the same size. It also reports
the measured UNet activation bytes per latent pixel, to calibrate the memory model of
``models.tiling.estimate_bytes`` (its per-latent-pixel UNet constant). Out-of-memory is recorded, not fatal.
Targets (issue 5): one H100, 1024 px in at most 0.5 s; 2048 px full frame without running out of memory.
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks.report import best_of
from models.lora import add_lora
from models.onestep import OneStepBokeh
from models.pipeline import BokehDiffPipeline, resolve_dtype
from models.sdxl import SDXL_UNET_CONFIG, SDXL_VAE_CONFIG

PROMPT_SHAPE, POOLED_DIM = (1, 77, 2048), 1280


def build_model(device, unet_dtype, vae_dtype, smoke: bool, lora_rank: int = 8) -> OneStepBokeh:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    if smoke:
        from models.tiny import build_tiny_sdxl

        stack = build_tiny_sdxl(seed=0)
        unet, vae = stack["unet"], stack["vae"]
        prompt_shape, pooled_dim = (1, 77, unet.config.cross_attention_dim), 32
    else:
        torch.manual_seed(0)
        unet, vae = UNet2DConditionModel(**SDXL_UNET_CONFIG), AutoencoderKL(**SDXL_VAE_CONFIG)
        prompt_shape, pooled_dim = PROMPT_SHAPE, POOLED_DIM
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    g = torch.Generator().manual_seed(0)
    model = OneStepBokeh(
        unet.eval(), vae.eval(), torch.randn(prompt_shape, generator=g), torch.randn(1, pooled_dim, generator=g),
        scheduler.alphas_cumprod,
    )
    if lora_rank:
        add_lora(model.unet, rank=lora_rank)  # the published model runs with a rank-8 LoRA on every target
    model.to(device)
    model.unet.to(unet_dtype)
    model.vae.to(vae_dtype)
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--modes", nargs="+", default=["full", "tiled"], choices=["full", "tiled"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--unet_dtype", default="bf16")
    parser.add_argument("--vae_dtype", default="fp32")
    parser.add_argument("--vae_tiling", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--lora_rank", type=int, default=8, help="LoRA rank on the paper's targets (0: none)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--smoke", action="store_true", help="tiny stack on CPU at 128 px: checks the script runs")
    args = parser.parse_args(argv)

    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_pipeline.py needs a CUDA device (or --smoke for a CPU check of the script).")
    device = torch.device("cpu" if smoke else "cuda")
    sizes = [128] if smoke else args.sizes
    model = build_model(device, resolve_dtype(args.unet_dtype), resolve_dtype(args.vae_dtype), smoke, args.lora_rank)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    vae_tiling = {"auto": "auto", "on": True, "off": False}[args.vae_tiling]
    tile = 64 if smoke else 1024
    rows = []
    print(f"device {torch.cuda.get_device_name(0) if cuda else 'cpu'}; torch {torch.__version__}", flush=True)

    for size in sizes:
        g = torch.Generator().manual_seed(0)
        image = torch.rand(1, 3, size, size, generator=g).to(device)
        disp = torch.rand(1, 1, size, size, generator=g).to(device)
        coc = 20 * (disp - 0.5)

        # Baseline, same process: one UNet pass with stock attention (no PISA) at this size.
        model.unet.set_default_attn_processor()
        z = torch.randn(1, 4, size // 8, size // 8, device=device)
        try:
            with torch.inference_mode():
                t_stock = best_of(lambda: model.predict_x0(z), args.repeats, sync)
        except torch.OutOfMemoryError:
            t_stock = float("nan")
        if cuda:
            torch.cuda.empty_cache()

        pipe = BokehDiffPipeline(model, tile_size=tile, tile_overlap=tile // 4)  # installs PISA (defaults)
        for mode in args.modes:
            row = dict(size=size, mode=mode, unet_dtype=args.unet_dtype, vae_dtype=args.vae_dtype)
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                t = best_of(lambda: pipe(image, disp, coc_px=coc, mode=mode, vae_tiling=vae_tiling), args.repeats, sync)
                plan = pipe.last_plan
                row.update(seconds=t, x_stock_unet=t / t_stock, tiles=plan.n_tiles, vae_tiling=plan.vae_tiling,
                           **{k: round(v, 4) for k, v in plan.timings.items()})
                if cuda:
                    peak = torch.cuda.max_memory_allocated()
                    weights = sum(p.numel() * p.element_size() for p in model.parameters())
                    latent_px = (size // 8) ** 2 if mode == "full" else (tile // 8) ** 2
                    row.update(peak_gib=peak / 2**30, weights_gib=weights / 2**30,
                               act_bytes_per_latent_px_per_elem=(peak - weights) / latent_px
                               / torch.finfo(model.unet.dtype).bits * 8)
            except torch.OutOfMemoryError as exc:
                row.update(error=f"OOM: {str(exc).splitlines()[0]}")
            rows.append(row)
            print(json.dumps(row), flush=True)

    print("\n| image (px) | mode | tiles | VAE tiling | total (s) | encode | UNet+PISA | decode | x stock UNet | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['size']} | {r['mode']} | - | - | {r['error']} | | | | | |")
            continue
        print(f"| {r['size']} | {r['mode']} | {r['tiles']} | {r['vae_tiling']} | {r['seconds']:.3f} | "
              f"{r['encode_s']:.3f} | {r['unet_s']:.3f} | {r['decode_s']:.3f} | {r['x_stock_unet']:.2f} | "
              f"{r.get('peak_gib', float('nan')):.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
