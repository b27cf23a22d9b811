"""Depth-discontinuity bands: where lens-blur renderers differ most (hair, fur, thin structures).

A pixel is a discontinuity if the disparity jumps by more than ``threshold`` (disparity units, [0, 1] scale)
to its right or lower neighbour; both pixels of such a pair are marked. The band is that set dilated by
``width_px`` pixels (a square structuring element, i.e. Chebyshev distance <= width_px), so it covers the
region where blur from one side of the edge mixes with the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BAND_WIDTH_PX = 8  # default dilation radius (px): about the blur radius where both sides of an edge mix
BAND_THRESHOLD = 0.05  # default disparity jump between neighbours that counts as an edge


def discontinuity_band(disparity: torch.Tensor, *, width_px: int = BAND_WIDTH_PX,
                       threshold: float = BAND_THRESHOLD) -> torch.Tensor:
    """Boolean band mask ``(B, 1, H, W)`` for disparity ``(B, 1, H, W)`` in [0, 1].

    ``width_px`` >= 0 is the dilation radius in pixels; ``threshold`` > 0 the minimum jump in disparity
    between neighbouring pixels that counts as a discontinuity.
    """
    if disparity.ndim != 4 or disparity.shape[1] != 1:
        raise ValueError(f"disparity must be (B, 1, H, W), got {tuple(disparity.shape)}")
    if width_px < 0 or threshold <= 0:
        raise ValueError(f"need width_px >= 0 and threshold > 0, got {width_px} and {threshold}")
    d = disparity.float()
    edges = torch.zeros_like(d, dtype=torch.bool)
    jump_x = (d[..., :, 1:] - d[..., :, :-1]).abs() > threshold
    jump_y = (d[..., 1:, :] - d[..., :-1, :]).abs() > threshold
    edges[..., :, 1:] |= jump_x
    edges[..., :, :-1] |= jump_x
    edges[..., 1:, :] |= jump_y
    edges[..., :-1, :] |= jump_y
    if width_px == 0:
        return edges
    dilated = F.max_pool2d(edges.float(), kernel_size=2 * width_px + 1, stride=1, padding=width_px)
    return dilated > 0.5
