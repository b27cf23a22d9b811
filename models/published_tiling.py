"""The released code's tiler and input handling (``protocol="published"``, README "Protocols").

:class:`PublishedTiler` stands beside our :class:`models.tiling.Tiler` and is chosen once from the protocol:
gamma 1 (sRGB straight to the VAE as ``2 x - 1``), PISA with the published discretisation and geometry,
``|CoC|`` taken before PISA's resize, padding to the VAE factor only, 512-px tiles above ``2 * 512^2`` px at
the released offsets (:func:`published_tile_starts`) with Gaussian blending (:func:`published_tile_window`)
of the noise prediction and the released micro-conditioning (:func:`published_time_ids`), VAE tiling always
enabled, and the DDPM x0 clamp from the scheduler config (:func:`models.onestep.ddpm_x0_clip`).
"""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import torch

from .adapter import AdapterInfo
from .onestep import ddpm_x0_clip
from .tiling import RenderPlan, Tiler

__all__ = [
    "PUBLISHED_TILE_LATENT",
    "PublishedTiler",
    "published_tile_starts",
    "published_tile_window",
    "published_time_ids",
]

# Published tiling: 64-latent (512 px) tiles, used when the latent has more than 2 * 64^2 pixels.
PUBLISHED_TILE_LATENT = 64


def published_tile_starts(length: int, tile: int = PUBLISHED_TILE_LATENT) -> list[int]:
    """Tile offsets (latent px) of the published tiled denoiser along one axis of ``length`` latent px:
    ``n = 1 + (length - tile // 4) // (3 * tile // 4)`` offsets evenly spaced from 0 to ``length - tile`` and
    truncated to integers (``floor`` of ``linspace(0, length - tile, n)``); for ``tile <= length < 7 tile / 4``
    that is ``[0, length - tile]``, i.e. ``[0, 0]`` at ``length = tile`` (a tile visited twice, as released:
    the normalised blend is unchanged). For ``length < tile`` the only offset is 0 and the tile is the whole
    axis."""
    n = int(1 + (length - tile // 4) // (tile * 3 // 4))
    if length < tile or n <= 1:
        return [0]
    return [int(v) for v in np.floor(np.linspace(0, length - tile, n))]


def published_tile_window(tile: int = PUBLISHED_TILE_LATENT, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Published blend weight of a tile, ``(tile, tile)``: ``exp(-(u_y^2 + u_x^2))`` with ``u = linspace(-2, 2,
    tile)``: a Gaussian, never exactly zero, normalised later by the summed weights of all tiles."""
    u = torch.linspace(-2, 2, tile, dtype=dtype, device=device)
    return torch.exp(-(u[:, None] ** 2 + u[None] ** 2))


def published_time_ids(height: int, width: int, tile_y: int, tile_x: int) -> tuple[tuple, tuple, tuple]:
    """SDXL micro-conditioning of one published tile: ``(original_size, crop_top_left, target_size)`` =
    ``((H, W), (tile_y, tile_x), (H, W))``: full-image sizes in image px, the crop offset in **latent** px
    (as the released code passes it). Our corrected tiling uses image px and the tile's size instead."""
    return (height, width), (tile_y, tile_x), (height, width)


class PublishedTiler(Tiler):
    """The released code's render path; ``tile_size`` / ``tile_overlap`` / ``full_frame_max_px`` are kept
    but not used (its tiles are :data:`PUBLISHED_TILE_LATENT` latent px at its own offsets)."""

    protocol = "published"
    pisa_defaults = MappingProxyType(dict(compat=True, published_geometry=True))
    uses_tile_size = False

    @staticmethod
    def model_gamma(adapter: AdapterInfo) -> float:
        """1 whatever the adapter records: the released code feeds sRGB to the VAE."""
        return 1.0

    @staticmethod
    def pisa_compat(adapter: AdapterInfo) -> bool:
        """The published discretisation whatever the adapter records."""
        return True

    @staticmethod
    def x0_clip(scheduler) -> float | None:
        """The DDPM clamp of the base model's scheduler config (:func:`models.onestep.ddpm_x0_clip`)."""
        return ddpm_x0_clip(scheduler)

    @staticmethod
    def prepare_coc(coc_px: torch.Tensor) -> torch.Tensor:
        """``|coc_px|``: the released code passes ``|CoC|`` at image resolution and PISA resizes it (bilinear),
        so the absolute value is taken before the resize, not after as for a signed map."""
        return coc_px.abs()

    def plan(self, model, height: int, width: int, mode: str = "auto", vae_tiling: bool | str = "auto", *,
             pisa_segments: int | None = None, batch: int = 1) -> RenderPlan:
        """Pad to the VAE factor only; tiled (512-px tiles) when the latent has more than ``2 * 64^2`` pixels;
        the VAE's own tiling always enabled (it applies above the VAE config's size). No memory model."""
        f = model.vae_scale_factor
        ph, pw = -(-height // f) * f, -(-width // f) * f
        T = PUBLISHED_TILE_LATENT
        if mode == "auto":
            mode = "tiled" if (ph // f) * (pw // f) > 2 * T * T else "full"
            reason = f"published protocol: {mode} (tiles above {2 * T * T} latent px)"
        else:
            reason = f"published protocol: {mode} (requested)"
        vae_tiling = True if vae_tiling == "auto" else bool(vae_tiling)
        n = len(published_tile_starts(ph // f, T)) * len(published_tile_starts(pw // f, T)) if mode == "tiled" else 1
        return RenderPlan(mode, vae_tiling, (ph, pw), T if mode == "tiled" else 0, 0, n, reason)

    def predict_tiled(self, model, z: torch.Tensor, disp: torch.Tensor, coc: torch.Tensor, plan: RenderPlan,
                      pisa_hardness: float | None = None, tile_batch_size: int = 1) -> torch.Tensor:
        """The released code's tiled denoiser: 64-latent tiles at :func:`published_tile_starts` offsets, visited
        column-major (all row offsets for the first column offset, then the next), each conditioned with
        :func:`published_time_ids` and the tile's ``disp_coc`` crop; the UNet *outputs* are blended with
        :func:`published_tile_window` weights normalised by their sum, then turned into ``x0`` (and clamped)
        once for the whole latent. A side shorter than a tile (where the released code fails) uses the
        whole side and the matching crop of the window. ``plan`` and ``tile_batch_size`` are not used (one
        tile per UNet call, the whole batch at once, as released)."""
        f = model.vae_scale_factor
        T = PUBLISHED_TILE_LATENT
        _, _, h, w = z.shape
        t_h, t_w = min(T, h), min(T, w)
        window = published_tile_window(T, device=z.device)[:t_h, :t_w]
        acc = torch.zeros(z.shape, dtype=torch.float32, device=z.device)
        norm = torch.zeros(z.shape, dtype=torch.float32, device=z.device)
        for x in published_tile_starts(w, T):
            for y in published_tile_starts(h, T):
                original, crop, target = published_time_ids(h * f, w * f, y, x)
                eps = model.predict_noise(
                    z[..., y:y + t_h, x:x + t_w],
                    disp[..., y * f:(y + t_h) * f, x * f:(x + t_w) * f],
                    coc[..., y * f:(y + t_h) * f, x * f:(x + t_w) * f],
                    original_size=original, crop_top_left=crop, target_size=target, pisa_hardness=pisa_hardness,
                )
                acc[..., y:y + t_h, x:x + t_w] += eps * window
                norm[..., y:y + t_h, x:x + t_w] += window
        return model.noise_to_x0(z, acc / norm)
