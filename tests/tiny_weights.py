"""Test helpers: a tiny SDXL stack "as after training" and the published adapter layout written from it."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.lora import add_lora, save_lora, save_vae_partial, set_vae_trainable
from models.tiny import build_tiny_sdxl


def trained_tiny_stack(seed: int = 5) -> dict:
    """Tiny stack with a rank-4 LoRA of non-zero values and a modified VAE encoder, as after training."""
    stack = build_tiny_sdxl(seed=0)
    add_lora(stack["unet"], rank=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in stack["unet"].named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        for p in set_vae_trainable(stack["vae"]):
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return stack


def write_published_adapter(stack: dict, root: Path) -> Path:
    """The published ``zcx65535/bokehdiff`` layout: LoRA at the root *without* the ``unet.`` prefix (which
    diffusers >= 0.33 silently fails to load), the partial VAE state dict under ``small/vae.ckpt``."""
    root = Path(root)
    ours = load_file(str(save_lora(stack["unet"], root / "ours")))
    save_file({k[len("unet."):]: v for k, v in ours.items()}, str(root / "pytorch_lora_weights.safetensors"))
    save_vae_partial(stack["vae"], root / "small")
    return root
