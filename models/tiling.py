"""Our tiler (the corrected protocol): padding, the full-frame / tiled choice, and blended latent tiles.

Images are reflect-padded to a multiple of 32 px (8 for the VAE x 4 for the UNet's two downsamplers) and
cropped back. Full frame is planned when a memory model of the UNet pass fits; otherwise overlapping latent
tiles are blended with raised-cosine weights (a partition of unity over each overlap), each with its own
``disp_coc`` crop and the micro-conditioning of a training crop. The VAE is tiled separately (diffusers' VAE
tiling) when its full-resolution pass would not fit.

A tiler is chosen once from the protocol (``models.pipeline``); :class:`Tiler` also carries the protocol's
defaults (model gamma, PISA discretisation, x0 clamp). The released code's tiler is
``models.published_tiling.PublishedTiler``. Sizes are in image px unless named ``_latent``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import torch
import torch.nn.functional as F

from .adapter import AdapterInfo
from .onestep import DEFAULT_GAMMA
from .pisa import working_set_bytes

__all__ = [
    "RenderPlan",
    "Tiler",
    "UNET_BYTES_PER_LATENT_PX_PER_ELEM",
    "VAE_BYTES_PER_PX_PER_ELEM",
    "available_bytes",
    "blend_window",
    "estimate_bytes",
    "pad_multiple",
    "pad_to",
    "tile_starts",
]

# Memory model for the automatic full-frame / tiled choice: peak working bytes of one UNet pass per latent
# pixel per byte of element size, for SDXL's widths (320, 640, 1280), scaled linearly by the UNet's widths; and
# of the VAE per image pixel per byte of element size, for its widths up to 512.
# Calibrated on the full SDXL architecture (benchmarks/bench_sdxl.py, BENCHMARKS.md "Full SDXL architecture",
# CPU float32, 2026-12-03): the UNet pass measured 57,000-57,400 B per latent px per element byte (512^2 and
# 1024x768, sparse PISA included), so 60,000 stays ~5% above; the VAE (the peak of tiled renders, encode or
# decode) measured 950-960 B per image px per element byte, above the first guess of 750, so 1,000. On every
# measured row the planner's estimate is at or above the measured peak, by at most 35% (rows whose peak is the
# smaller of the two passes). CUDA bf16 (SDPA kernels) is not measured yet: the headroom below covers it.
# Default tile (px): SDXL's native side, and an overlap above the CoC radii of usual K (tiles must not cut a
# blur disc; see Tiler.plan).
TILE_SIZE = 1024
TILE_OVERLAP = 256
UNET_BYTES_PER_LATENT_PX_PER_ELEM = 60_000
_SDXL_WIDTH_SUM = 320 + 640 + 1280
VAE_BYTES_PER_PX_PER_ELEM = 1_000
_MEMORY_HEADROOM = 0.8  # use at most 80% of what is free: allocator fragmentation, PISA blocks, outputs


# ----------------------------------------------------------------------------------------------------------
# Tiling geometry
# ----------------------------------------------------------------------------------------------------------
def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``, neighbours overlapping by >= ``overlap``.

    Starts are multiples of ``align`` (so every tile sits on the same downsampling grid as the full frame:
    strided convolutions are only shift-equivariant for shifts that are multiples of their total stride) and
    as evenly spaced as that allows; the first is 0 and the last is ``length - tile``. ``length`` and ``tile``
    must be multiples of ``align``.
    """
    if tile >= length:
        return [0]
    if length % align or tile % align:
        raise ValueError(f"length ({length}) and tile ({tile}) must be multiples of align ({align}).")
    stride_units = (tile - overlap) // align  # the largest aligned stride that keeps the overlap
    if overlap < 0 or stride_units < 1:
        raise ValueError(
            f"tile overlap must be in [0, tile - {align}] for tile={tile} (aligned to {align}), got {overlap}."
        )
    units = (length - tile) // align
    intervals = -(-units // stride_units)
    q, r = divmod(units, intervals)  # r intervals of q + 1 units, the rest q: all <= stride_units
    starts, pos = [0], 0
    for k in range(intervals):
        pos += (q + 1 if k < r else q) * align
        starts.append(pos)
    return starts


def blend_window(starts: list[int], tile: int, index: int) -> torch.Tensor:
    """1-D blending weights ``(tile,)`` for tile ``index`` of ``starts``.

    Over the overlap with each neighbour the weight rises (or falls) as ``sin^2`` of the position, so the two
    neighbours' weights sum to exactly 1 there; image borders are not tapered. Weights are > 0 everywhere
    (samples at pixel centres), so normalising by the weight sum is always defined.
    """
    w = torch.ones(tile, dtype=torch.float64)
    s = starts[index]
    if index > 0:
        ramp = starts[index - 1] + tile - s  # overlap with the previous tile
        if ramp > 0:
            x = (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp
            w[:ramp] = torch.minimum(w[:ramp], torch.sin(0.5 * math.pi * x) ** 2)
    if index < len(starts) - 1:
        ramp = s + tile - starts[index + 1]
        if ramp > 0:
            x = (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp
            w[tile - ramp:] = torch.minimum(w[tile - ramp:], torch.cos(0.5 * math.pi * x) ** 2)
    return w


@dataclass
class RenderPlan:
    """How an image is rendered: ``mode`` ``"full"`` or ``"tiled"``, VAE tiling, tile geometry (latent px),
    and why (for logs)."""

    mode: str
    vae_tiling: bool
    padded_hw: tuple[int, int]
    tile_latent: int = 0
    overlap_latent: int = 0
    n_tiles: int = 1
    reason: str = ""
    timings: dict = field(default_factory=dict)


def pad_to(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """``(B, C, h, w)`` padded at the bottom and right to ``(ph, pw)``: reflected (replicated where the padding
    is not smaller than the image)."""
    h, w = x.shape[-2:]
    if (h, w) == (ph, pw):
        return x
    pad = (0, pw - w, 0, ph - h)
    # Reflection keeps image statistics at the border (no black frame for the VAE); it needs pad < size.
    padding_mode = "reflect" if pw - w < w and ph - h < h else "replicate"
    return F.pad(x, pad, mode=padding_mode)


# ----------------------------------------------------------------------------------------------------------
# Memory model
# ----------------------------------------------------------------------------------------------------------
def pad_multiple(model) -> int:
    """Image sizes are padded to this for ``model`` (a ``models.onestep.OneStepBokeh``): the VAE factor times
    the UNet's total downsampling."""
    n_down = len(model.unet.config.block_out_channels) - 1
    return model.vae_scale_factor * 2**n_down


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: the driver's free bytes; CPU: Linux's ``MemAvailable``, which counts the
    page cache the kernel can drop, e.g. after reading 10 GB of weights; elsewhere the free physical pages), or
    ``None``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return None


def estimate_bytes(model, height: int, width: int, pisa_segments: int | None = None) -> tuple[int, int]:
    """Rough peak activation bytes of a full-frame ``(unet, vae)`` pass of ``model`` at ``height x width`` px.

    With ``pisa_segments`` (PISA installed, that many occlusion segments) the UNet figure includes PISA's
    working set as the sparse path needs it (``models.pisa_sparse``: linear in the tokens, no N x N table), so
    full frame is planned whenever the activations fit.
    """
    f = model.vae_scale_factor
    config = model.unet.config
    widths = sum(config.block_out_channels) / _SDXL_WIDTH_SUM
    unet_elem = torch.finfo(model.unet.dtype).bits // 8
    vae_elem = torch.finfo(model.vae.dtype).bits // 8
    unet = UNET_BYTES_PER_LATENT_PX_PER_ELEM * unet_elem * widths * (height // f) * (width // f)
    if pisa_segments is not None:
        # PISA runs in down_blocks.1 (half the latent resolution); diffusers' SDXL config names the
        # number of heads "attention_head_dim".
        heads_cfg = config.attention_head_dim
        heads = heads_cfg[1] if isinstance(heads_cfg, (list, tuple)) else heads_cfg
        tokens = (height // f // 2) * (width // f // 2)
        unet += working_set_bytes(tokens, 1, int(heads), config.block_out_channels[1] // int(heads),
                                  int(pisa_segments))
    vae_widths = max(model.vae.config.block_out_channels) / 512
    vae = VAE_BYTES_PER_PX_PER_ELEM * vae_elem * vae_widths * height * width
    return int(unet), int(vae)


# ----------------------------------------------------------------------------------------------------------
# The tiler
# ----------------------------------------------------------------------------------------------------------
class Tiler:
    """The corrected protocol's render path.

    Args:
        tile_size: tile side in image px for tiled mode (a multiple of the pad multiple, 32 for SDXL).
        tile_overlap: overlap between tiles in image px (a multiple of the VAE factor; should exceed the
            largest CoC radius).
        full_frame_max_px: optional cap on ``H * W`` for full-frame rendering in ``mode="auto"`` (else memory).

    The protocol's defaults are static, so they can be asked before a pipeline exists.
    """

    protocol = "corrected"
    # PISA settings the protocol implies, under the caller's overrides (none: models.pisa's defaults).
    pisa_defaults: Mapping = MappingProxyType({})
    uses_tile_size = True  # tile_size / tile_overlap shape the tiles

    def __init__(self, tile_size: int = TILE_SIZE, tile_overlap: int = TILE_OVERLAP, full_frame_max_px: int | None = None):
        self.tile_size = int(tile_size)
        self.tile_overlap = int(tile_overlap)
        self.full_frame_max_px = full_frame_max_px

    # ------------------------------------------------------------------------------------------------------
    # The protocol's defaults
    # ------------------------------------------------------------------------------------------------------
    @staticmethod
    def model_gamma(adapter: AdapterInfo) -> float:
        """The model gamma when none is given: the one the adapter records, else :data:`DEFAULT_GAMMA`."""
        return DEFAULT_GAMMA if adapter.model_gamma is None else adapter.model_gamma

    @staticmethod
    def pisa_compat(adapter: AdapterInfo) -> bool:
        """PISA's discretisation when none is given: the one the adapter was trained with."""
        return adapter.pisa_compat

    @staticmethod
    def x0_clip(scheduler) -> float | None:
        """The x0 clamp (``models.onestep.OneStepBokeh.x0_clip``): none."""
        return None

    # ------------------------------------------------------------------------------------------------------
    # Input handling and planning
    # ------------------------------------------------------------------------------------------------------
    @staticmethod
    def prepare_coc(coc_px: torch.Tensor) -> torch.Tensor:
        """The CoC map PISA receives: the signed ``coc_px`` ``(B, 1, H, W)`` itself."""
        return coc_px

    def plan(self, model, height: int, width: int, mode: str = "auto", vae_tiling: bool | str = "auto", *,
             pisa_segments: int | None = None, batch: int = 1) -> RenderPlan:
        """Full frame vs tiled (and VAE tiling) for ``batch`` renders of an ``height x width`` image per UNet call
        (``mode`` already validated).

        ``mode="auto"``: full frame when the estimated UNet activations (:func:`estimate_bytes`) fit in 80% of
        the free memory (and ``H * W <= full_frame_max_px`` if set); tiled otherwise. ``vae_tiling="auto"``:
        tile the VAE when its full-resolution pass would not fit. Explicit ``"full"`` / ``"tiled"`` / booleans
        override.
        """
        m = pad_multiple(model)
        ph, pw = -(-height // m) * m, -(-width // m) * m
        unet_b, vae_b = estimate_bytes(model, ph, pw, pisa_segments)
        unet_b *= batch  # the VAE decodes one render at a time (BokehDiffPipeline._iter_run)
        free = available_bytes(model.prompt_embeds.device)
        budget = None if free is None else free * _MEMORY_HEADROOM
        reason = f"estimated UNet {unet_b / 2**30:.2f} GiB, VAE {vae_b / 2**30:.2f} GiB" + (
            "" if budget is None else f", budget {budget / 2**30:.2f} GiB"
        )
        if mode == "auto":
            too_big = (budget is not None and unet_b > budget) or (
                self.full_frame_max_px is not None and ph * pw > self.full_frame_max_px
            )
            mode = "tiled" if too_big and max(ph, pw) > self.tile_size else "full"
            reason = f"auto: {mode} ({reason})"
        else:
            reason = f"{mode} (requested; {reason})"
        if vae_tiling == "auto":
            vae_tiling = budget is not None and vae_b > budget
        f = model.vae_scale_factor
        if mode == "tiled":
            if self.tile_size % m or self.tile_overlap % f:
                raise ValueError(
                    f"tile_size ({self.tile_size}) must be a multiple of {m} px and tile_overlap ({self.tile_overlap}) "
                    f"of {f} px."
                )
            if not 0 <= self.tile_overlap <= self.tile_size - m:  # tile_starts' rule, stated in image pixels
                raise ValueError(f"tile_overlap must be in [0, tile_size - {m}] = [0, {self.tile_size - m}] px "
                                 f"(tiles advance by at least {m} px), got {self.tile_overlap}.")
            tile, overlap = self.tile_size // f, self.tile_overlap // f
            align = m // f
            n = len(tile_starts(ph // f, tile, overlap, align)) * len(tile_starts(pw // f, tile, overlap, align))
            return RenderPlan("tiled", bool(vae_tiling), (ph, pw), tile, overlap, n, reason)
        return RenderPlan("full", bool(vae_tiling), (ph, pw), reason=reason)

    # ------------------------------------------------------------------------------------------------------
    # Tiled prediction
    # ------------------------------------------------------------------------------------------------------
    def predict_tiled(self, model, z: torch.Tensor, disp: torch.Tensor, coc: torch.Tensor, plan: RenderPlan,
                      pisa_hardness: float | None = None, tile_batch_size: int = 1) -> torch.Tensor:
        """x0 ``(B, 4, h, w)`` from overlapping latent tiles of ``z`` blended with :func:`blend_window` weights
        (normalised by their sum); ``disp`` / ``coc`` ``(B, 1, 8h, 8w)`` at image resolution.

        Each tile is conditioned as a training crop: ``original_size`` = the full padded image, ``crop_top_left``
        = the tile's pixel offset, ``target_size`` = the tile's pixel size; ``disp_coc`` is the tile's crop at
        image resolution, so PISA sees CoC radii in the same pixel units as in full-frame mode.
        Each UNet call takes ``tile_batch_size`` tiles of every item of the batch.
        """
        f = model.vae_scale_factor
        align = pad_multiple(model) // f
        _, _, h, w = z.shape
        t_h, t_w = min(plan.tile_latent, h), min(plan.tile_latent, w)
        ys, xs = tile_starts(h, t_h, plan.overlap_latent, align), tile_starts(w, t_w, plan.overlap_latent, align)
        acc = torch.zeros(z.shape, dtype=torch.float32, device=z.device)
        norm = torch.zeros((1, 1, h, w), dtype=torch.float32, device=z.device)
        tiles = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
        full_size = (h * f, w * f)
        batch = z.shape[0]
        step = max(1, tile_batch_size)
        # Each UNet call takes the same ``step`` tiles of every item of the batch (item-major): one item is
        # tiles[start:start + step] as before; several items (renders of one image) share the call.
        for start in range(0, len(tiles), step):
            chunk = tiles[start:start + step]
            zs, ds, cs, offsets = [], [], [], []
            for b in range(batch):
                for iy, ix in chunk:
                    y, x = ys[iy], xs[ix]
                    zs.append(z[b:b + 1, :, y:y + t_h, x:x + t_w])
                    ds.append(disp[b:b + 1, :, y * f:(y + t_h) * f, x * f:(x + t_w) * f])
                    cs.append(coc[b:b + 1, :, y * f:(y + t_h) * f, x * f:(x + t_w) * f])
                    offsets.append((y * f, x * f))
            x0 = model.predict_x0(
                torch.cat(zs),
                torch.cat(ds),
                torch.cat(cs),
                original_size=full_size,
                crop_top_left=torch.tensor(offsets, dtype=torch.float32),
                target_size=(t_h * f, t_w * f),
                pisa_hardness=pisa_hardness,
            )
            for k, (iy, ix) in enumerate(chunk):
                y, x = ys[iy], xs[ix]
                wy = blend_window(ys, t_h, iy).to(z.device, torch.float32)
                wx = blend_window(xs, t_w, ix).to(z.device, torch.float32)
                weight = wy[:, None] * wx[None, :]
                for b in range(batch):
                    acc[b:b + 1, :, y:y + t_h, x:x + t_w] += x0[b * len(chunk) + k:b * len(chunk) + k + 1] * weight
                norm[:, :, y:y + t_h, x:x + t_w] += weight
        return acc / norm
