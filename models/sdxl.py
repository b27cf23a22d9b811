"""SDXL components and precisions, shared by inference (``models.pipeline``) and training (``training.loop``).

:func:`load_sdxl_components` loads what ``StableDiffusionXLPipeline`` holds (UNet, VAE, both text encoders and
tokenizers, the DDPM scheduler) from a diffusers folder or hub id; the callers resolve the source
(``models.hub``) and word the errors for their flags. :func:`resolve_dtype` is the one precision table.
"""

from __future__ import annotations

import os

import torch

__all__ = ["DTYPES", "SDXL_TEXT_WIDTHS", "SDXL_UNET_CONFIG", "SDXL_VAE_CONFIG", "cast_unet", "load_sdxl_components",
           "resolve_dtype"]

# Precision names accepted by every CLI (--dtype, --mixed_precision): "no" is accelerate's name for float32.
DTYPES = {
    "no": torch.float32, "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


# The released architecture: stabilityai/stable-diffusion-xl-base-1.0 unet/config.json and vae/config.json
# (the fields that shape the networks), written out so the real architecture can be built with random weights
# offline (benchmarks/bench_sdxl.py, benchmarks/gpu_*.py). diffusers' historical naming: `attention_head_dim`
# is the number of heads per block (5, 10, 20; width 64 each). RealVisXL and the other SDXL fine-tunes share it.
SDXL_UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=2048,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    upcast_attention=False,
)
SDXL_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
# Text encoders: CLIP ViT-L (768) and OpenCLIP ViT-bigG (1280, pooled projection 1280); 768 + 1280 = 2048.
SDXL_TEXT_WIDTHS = (768, 1280)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``"fp32"|"no"|"float32"`` -> float32, ``"bf16"|"bfloat16"`` -> bfloat16, ``"fp16"|"float16"`` -> float16."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown precision {dtype!r}; use one of {sorted(DTYPES)}.")
    return DTYPES[dtype]


def cast_unet(unet: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the UNet only when some parameter has another dtype: diffusers' ``to(dtype)`` warns about "modules
    that should be kept in float32" on every call, even when that list is empty, so a no-op cast (the float32
    default) would print it at each load."""
    if any(p.dtype != dtype for p in unet.parameters()):
        unet.to(dtype)


def load_sdxl_components(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    variant: str | None = None,
    vae_variant: str | None = None,
    torch_dtype: torch.dtype | None = None,
) -> dict:
    """The SDXL components of ``source`` (a diffusers folder or hub id), on the CPU.

    Args:
        variant / vae_variant: weight-file variants (e.g. ``"fp16"``) of the UNet / the VAE.
        torch_dtype: given to the UNet's and the VAE's ``from_pretrained`` (``None``: diffusers' default,
            float32). The text encoders load in float32: they only compute the fixed prompt's embeddings.

    Returns:
        ``unet``, ``vae``, ``text_encoder``, ``text_encoder_2``, ``tokenizer``, ``tokenizer_2`` and ``scheduler``
        (a ``DDPMScheduler``: its ``alphas_cumprod`` are the training schedule, the same betas for every SDXL
        scheduler config).

    Raises:
        OSError, ValueError: as the diffusers / transformers loaders raise them (missing files, offline hub).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    common = dict(revision=revision)
    return dict(
        unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=torch_dtype, variant=variant,
                                                  **common),
        vae=AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch_dtype, variant=vae_variant,
                                          **common),
        text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **common),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", **common),
        tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common),
        tokenizer_2=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **common),
        scheduler=DDPMScheduler.from_pretrained(source, subfolder="scheduler", **common),
    )
