"""Token geometry of PISA: token positions (pixels), grid_sample coordinates, the token grid of a layer, the
pair distance, and :class:`Discretisation`, the paper's sampling of these on the token grid (the released
code's variants are in :mod:`models.pisa.published`). Conventions: docs/conventions.md, "PISA"."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

OCC_MARGIN = 1e-5  # a sample must exceed the ray's disparity by this much to block it (flat d = 1: no self-hit)


def positions_from_axes(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Row-major token positions (h * w, 2) as (y, x) from the per-row ``y`` (h,) and per-column ``x`` (w,)."""
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([yy.flatten(), xx.flatten()], dim=-1)


def token_centres_px(h: int, w: int, px_per_token: float, device) -> torch.Tensor:
    """Token centres ``(index + 0.5) * px_per_token``: (h * w, 2) float32 (y, x) in image pixels."""
    y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * px_per_token
    x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * px_per_token
    return positions_from_axes(y, x)


def token_uv(h: int, w: int, device) -> torch.Tensor:
    """Token centres in grid_sample's align_corners=False coordinates: (h * w, 2) float32 (x, y), each in (-1, 1)."""
    x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (2.0 / w) - 1.0
    y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (2.0 / h) - 1.0
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=-1)


def token_grid(n_tokens: int, height_px: int, width_px: int) -> tuple[int, int]:
    """Token grid (h, w) with h * w = n_tokens whose aspect matches the image's H / W.

    SDXL's strided convs round odd sizes up, so h is not always H / 16 exactly: try the divisors of
    n_tokens near sqrt(n_tokens * H / W) and keep the one whose aspect is closest.
    """
    guess = math.sqrt(n_tokens * height_px / width_px)
    best = None
    for h in range(max(1, math.floor(guess) - 2), math.ceil(guess) + 3):
        if n_tokens % h:
            continue
        err = abs(math.log((h / (n_tokens // h)) / (height_px / width_px)))
        if best is None or err < best[0]:
            best = (err, h)
    if best is None or best[0] > 0.25:
        raise ValueError(
            f"disp_coc of size {height_px}x{width_px} px does not match a token grid of {n_tokens} tokens with "
            "the same aspect; pass disp_coc at the image resolution the UNet latents were encoded from."
        )
    return best[1], n_tokens // best[1]


def pair_distance(pos_q: torch.Tensor, pos_k: torch.Tensor) -> torch.Tensor:
    """|p_i - p_j| for broadcastable (..., 2) position tensors: (...) float32, same units as the positions.

    The one distance formula of every PISA path (dense, chunked, sparse, flex). Elementwise and exact to
    rounding: cdist's default matrix-multiply form follows allow_tf32 on GPUs and loses tens of pixels at
    1024 px, which a near-hard CoC step turns into wrong masks; and cdist's direct form rounds differently
    from this one in the last bit, which a hard step (hardness inf: ``M = 0`` for ``|p_i - p_j| > r_j``)
    turns into a pair kept by one path and dropped by another when ``r_j`` equals a token distance.
    """
    diff = pos_q - pos_k
    return (diff[..., 0].square() + diff[..., 1].square()).sqrt()


class Discretisation:
    """How PISA samples its geometry on the token grid: this repository's (the paper's equations, sampled
    exactly). One object per call, chosen when the spec is built; :mod:`models.pisa.published` subclasses it
    to reproduce the released code.

    Attributes:
        occlusion_margin: a segment sample blocks only when the scene disparity exceeds the ray's by this much.
        padding_mode: grid_sample padding for disparity lookups outside the image (``"border"``: clamp).
    """

    name = "corrected"
    occlusion_margin = OCC_MARGIN
    padding_mode = "border"

    def token_positions_px(self, h: int, w: int, px_per_token: float, device) -> torch.Tensor:
        """Token positions for the CoC distance: (h * w, 2) float32 (y, x), exact centres in image pixels."""
        return token_centres_px(h, w, px_per_token, device)

    def token_uv(self, h: int, w: int, device) -> torch.Tensor:
        """Token positions for occlusion lookups: (h * w, 2) float32 grid_sample (x, y) in (-1, 1)."""
        return token_uv(h, w, device)

    def segment_fraction(self, ps: torch.Tensor, d_q: torch.Tensor, d_k: torch.Tensor,
                         t_k: torch.Tensor) -> torch.Tensor:
        """Image-plane fraction ``f_s`` of the query -> key segment where the ray sample ``s`` projects.

        ``ps``: segment fractions ``p_s``; ``d_q``, ``d_k``: query / key disparity; ``t_k = p_s d_k + (1 - p_s)``:
        the disparity of the ray from key ``j`` toward the camera at ``p_s`` (all broadcastable). Returns
        ``f_s = g(d_j) / g(t_s)`` with ``g(d) = d / (1 - d)``, written as ``p_s d_j / t_s`` (``1 - t_s = p_s (1 - d_j)``
        cancels), finite for ``d_j = 1``.
        """
        return ps * d_k / t_k

    def resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Image-resolution ``(B, C, H, W)`` maps (disparity, CoC px) to a token grid ``size``: area average."""
        return F.interpolate(x, size=size, mode="area")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


CORRECTED = Discretisation()
