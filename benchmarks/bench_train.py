"""CPU benchmark of one training step of the tiny stack: seconds per step and the cost split.

    python -m benchmarks.bench_train [--sizes 64 128] [--batch 2] [--repeats 5] [--threads 1] [--json out.json]

Builds the tiny SDXL-shaped stack (``models/tiny.py``) and the real training components
(``training.loop.build_components``: PISA, rank-8 LoRA on the paper's targets, VAE encoder ends, losses,
AdamW, LR schedule, single-process accelerate) and times, per crop size, best of N after a warm-up:

- ``forward``: the one-step model's forward alone, no gradients (the baseline, same process);
- ``step``: ``training.loop.train_step`` (forward, losses, backward, clipping, AdamW) for the MSE-only
  objective, for the paper's objective (MSE + edge + GAN with the tiny discriminator; LPIPS is left out: its
  VGG trunk would dominate a tiny model and is not part of what we measure), and with gradient checkpointing;
- ``data``: synthesising one batch with ``OnTheFlyDataset`` (torch renderer, main process).

Results are printed as a Markdown table (seconds and ``x forward`` ratios) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from benchmarks.report import best_of
from data.synthesis import write_otf_folder


def _components(sdxl: str, data: str, size: int, batch: int, extra: list[str]):
    from accelerate import Accelerator

    from training.config import parse_args
    from training.loop import build_components

    args = parse_args(["--config", str(Path(__file__).resolve().parents[1] / "configs" / "train_tiny.yaml"),
                       "--pretrained_model_name_or_path", sdxl, "--train_data_dir", data, "--output_dir",
                       tempfile.mkdtemp(), "--resolution", str(size), "--train_batch_size", str(batch),
                       "--gan_step", "0", *extra])
    accelerator = Accelerator(cpu=True)
    return args, accelerator, build_components(args, accelerator)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=str, default=None)
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from models.tiny import save_tiny_sdxl
    from training.data import build_train_dataset
    from training.loop import train_step

    tmp = Path(tempfile.mkdtemp())
    sdxl, data = str(save_tiny_sdxl(tmp / "sdxl")), str(write_otf_folder(tmp / "data", size=384))
    variants = {
        "step, MSE only": ["--no-edge", "--lambda_gan", "0"],
        "step, MSE + edge + GAN (tiny D)": [],
        "step, MSE + edge + GAN, grad. ckpt": ["--gradient_checkpointing"],
    }
    rows = []
    for size in opts.sizes:
        results = {}
        for name, extra in variants.items():
            args, accelerator, c = _components(sdxl, data, size, opts.batch, extra)
            dataset = build_train_dataset(args, rank=0, total_samples=1000)
            items = [dataset[i * dataset.num_pairs + i % dataset.num_pairs] for i in range(opts.batch)]
            batch = torch.utils.data.default_collate(items)
            if "forward" not in results:
                model = c.model_raw

                @torch.no_grad()
                def forward():
                    model(batch["aif"], batch["disparity"], batch["coc_px"], original_size=batch["original_size"],
                          crop_top_left=batch["crop_top_left"], pisa_hardness=10.0)

                results["forward (no grad), baseline"] = best_of(forward, opts.repeats)
                results["data: synthesise one batch"] = best_of(
                    lambda: [dataset[i * dataset.num_pairs] for i in range(opts.batch)], opts.repeats)
            counter = iter(range(10**9))
            results[name] = best_of(lambda: train_step(c, batch, step=next(counter), args=args,
                                                     accelerator=accelerator), opts.repeats)
        base = results["forward (no grad), baseline"]
        for name, seconds in results.items():
            rows.append(dict(size=size, batch=opts.batch, what=name, seconds=seconds, x_forward=seconds / base))

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), torch "
          f"{torch.__version__}, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    print("| crop (px) | batch | what | s | x forward |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['batch']} | {r['what']} | {r['seconds']:.3f} | {r['x_forward']:.2f} |")
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
