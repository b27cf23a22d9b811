"""Batched vs unbatched renders of one input (issue 20): 3 focus planes x 2 K through ``BokehDiffPipeline``.

    python -m benchmarks.bench_batching [--sizes 256 512] [--stack tiny|sdxl] [--repeats 3] [--output none]

Per size, in one process and on one device, the same six renders four ways:

- ``unbatched``: six ``pipe(image, disparity, K=..., disp_focus=...)`` calls (each encodes the input again), the
  baseline every ratio is against;
- ``variants b=1``: ``pipe.render_variants(..., batch_size=1)``: one VAE encode, six UNet calls, bit-identical
  to the baseline (checked here too);
- ``variants b=2`` / ``b=6``: two / six renders per UNet (and VAE decoder) call; the largest difference from the
  baseline is reported (float rounding: BLAS kernels are chosen by batch size).

Time is the best of ``--repeats`` runs after one warm-up. ``--stack tiny`` (default) is the tiny SDXL-shaped
stack (CPU in seconds); ``--stack sdxl`` builds SDXL's UNet and VAE with random weights (needs ~12 GB, slow on
a CPU). Writes the "Batched renders" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.report import best_of, load_average, machine_description, replace_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Batched renders"
K_VALUES = (10.0, 30.0)
FOCUS = (0.2, 0.5, 0.8)
SETTINGS = [(K, f) for K in K_VALUES for f in FOCUS]  # 2 K x 3 focus planes = 6 renders of one input


def _stack(name: str) -> dict:
    from models.sdxl import SDXL_TEXT_WIDTHS, SDXL_UNET_CONFIG, SDXL_VAE_CONFIG
    from models.tiny import build_random_stack, build_tiny_sdxl

    if name == "tiny":
        return build_tiny_sdxl(seed=0)
    return build_random_stack(SDXL_UNET_CONFIG, SDXL_VAE_CONFIG, text_widths=SDXL_TEXT_WIDTHS,
                              pooled_width=SDXL_TEXT_WIDTHS[1], text_layers=1, text_heads=8,
                              text_intermediate=1024, seed=0)


def _inputs(size: int, device):
    """A seeded random photo and a smooth disparity with a near disc, ``(1, 3, S, S)`` / ``(1, 1, S, S)``."""
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    disc = ((yy - 0.5) ** 2 + (xx - 0.4) ** 2 < 0.04).float()
    return image.to(device), (0.2 + 0.4 * xx + 0.35 * disc)[None, None].to(device)


def measure(pipe, size: int, repeats: int, mode: str = "full") -> list[dict]:
    """One row per way of rendering :data:`SETTINGS` at ``size`` px (see the module docstring)."""
    image, disparity = _inputs(size, pipe.device)
    Ks = [K for K, _ in SETTINGS]
    foci = [f for _, f in SETTINGS]
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else None

    def unbatched():
        return torch.cat([pipe(image, disparity, K=K, disp_focus=f, mode=mode, seed=0)
                          for K, f in SETTINGS])

    def variants(b):
        return lambda: pipe.render_variants(image, disparity, K=Ks, disp_focus=foci, batch_size=b, mode=mode, seed=0)

    baseline = unbatched()
    runs = [("unbatched", unbatched)] + [(f"variants b={b}", variants(b)) for b in (1, 2, len(SETTINGS))]
    rows = []
    for name, fn in runs:
        seconds = best_of(fn, repeats, sync)
        out = fn()
        rows.append(dict(size=size, way=name, seconds=seconds, renders_per_s=len(SETTINGS) / seconds,
                         max_abs_diff=float((out - baseline).abs().max()), identical=bool(torch.equal(out, baseline))))
    for row in rows:
        row["speedup"] = rows[0]["seconds"] / row["seconds"]
    return rows


def section(rows: list[dict], opts, device: str) -> str:
    lines = [SECTION, "",
             f"`python -m benchmarks.bench_batching --stack {opts.stack}` ({time.strftime('%Y-%m-%d')}; "
             f"{machine_description()}; device {device}; load {load_average()} at the end). One input, "
             f"{len(K_VALUES)} K x {len(FOCUS)} focus planes = {len(SETTINGS)} renders, full frame, float32; "
             f"best of {opts.repeats} after a warm-up. Speed-up is against `unbatched` (six pipeline calls) in the "
             "same process; max |diff| is the largest difference from it in sRGB [0, 1].", "",
             "| image (px) | renders | s | renders / s | speed-up | max abs diff | bit-identical |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['way']} | {r['seconds']:.3f} | {r['renders_per_s']:.2f} | "
                     f"{r['speedup']:.2f} | {r['max_abs_diff']:.1e} | {'yes' if r['identical'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="square image side(s), px")
    parser.add_argument("--stack", choices=("tiny", "sdxl"), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"), help="BENCHMARKS.md to update, or none")
    opts = parser.parse_args(argv)
    from models.lora import add_lora
    from models.pipeline import BokehDiffPipeline

    parts = _stack(opts.stack)
    add_lora(parts["unet"], rank=8)
    pipe = BokehDiffPipeline(**parts, protocol="corrected").to(opts.device)
    rows = [row for size in opts.sizes for row in measure(pipe, size, opts.repeats)]
    text = section(rows, opts, opts.device)
    print(text)
    if opts.output != "none":
        replace_section(text, Path(opts.output))
    # Batch 1 must be bit-identical to the unbatched renders (one encode changes nothing but the time).
    return 0 if all(r["identical"] for r in rows if r["way"] == "variants b=1") else 1


if __name__ == "__main__":
    raise SystemExit(main())
