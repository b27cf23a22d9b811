"""The released code's PISA discretisation, reproduced so that the published weights behave as trained.

``pisa_attention(compat=True)`` / ``PISAAttnProcessor(compat=True)`` select :data:`PUBLISHED`, adding
``published_geometry=True`` selects :data:`PUBLISHED_GEOMETRY` (the pipeline's ``protocol="published"``); the
paper's code (:mod:`models.pisa.occlusion`, :mod:`models.pisa.coc`) only calls the chosen object's methods.
What differs from :class:`models.pisa.geometry.Discretisation`, one method each:

1. Segment step factor (index mix-up): the query's ray disparity in ``(1 - t)/t``, the key's in
   ``d/(1 - d)``, thresholded against the key's ray; ``|1 - d_j|`` floored at 1e-6 (the sign kept).
2. Token distances on ``linspace(0, 1, n)`` per axis (a token step of ``px_per_token * n / (n - 1)``); with
   ``published_geometry`` on a frame of 512 px per axis whatever its size, and the released occlusion grid.
3. Disparity outside the image reads 0 (grid_sample zero padding) and no blocking margin.
4. ``disp_coc`` resized to the token grid bilinearly (not area).

Differences the released code has in both modes are listed in docs/conventions.md, "The released code's PISA".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .geometry import CORRECTED, Discretisation, positions_from_axes

PUBLISHED_FRAME_PX = 512.0  # released protocol: every frame PISA sees spans 512 px per axis (51.2 x 10 px)
ONE_MINUS_D_MIN = 1e-6  # |1 - d_j| floor in the released step factor (it divides by zero at d_j = 1)


def token_positions_published_px(h: int, w: int, px_per_token: float, device,
                                 frame_px: float | None = None) -> torch.Tensor:
    """The released token positions: (h * w, 2) float32 (y, x) in pixels.

    Released: ``linspace(0, 1, n) * 51.2`` in 10-px units. Without ``frame_px``: on n = 32 tokens per 512 px,
    i.e. a per-axis step of ``px_per_token * n / (n - 1)``. With ``frame_px``: each axis spans ``frame_px``
    pixels whatever its token count (the released code treats every frame as 512 px).
    """
    if frame_px is not None:
        y = torch.linspace(0.0, 1.0, h, device=device, dtype=torch.float32) * frame_px
        x = torch.linspace(0.0, 1.0, w, device=device, dtype=torch.float32) * frame_px
    else:
        rows = torch.arange(h, device=device, dtype=torch.float32)
        cols = torch.arange(w, device=device, dtype=torch.float32)
        y = rows * (px_per_token * h / max(h - 1, 1))
        x = cols * (px_per_token * w / max(w - 1, 1))
    return positions_from_axes(y, x)


def token_uv_published(h: int, w: int, device) -> torch.Tensor:
    """The released occlusion sample grid: token ``k`` (row-major, ``k = r * w + c``) sits at
    ``x = u_h[k % h]``, ``y = u_w[k // h]`` with ``u_n = linspace(-1 + 1/n, 1 - 1/n, n)``.

    For square grids this is every token's own centre; for ``h != w`` the released code pairs the x axis
    with the *row* count and enumerates tokens column-count-major, so tokens look up shifted positions. Kept
    as is under the published protocol (the released weights were trained with it).
    """
    k = torch.arange(h * w, device=device)
    u_h = torch.linspace(-1.0 + 1.0 / h, 1.0 - 1.0 / h, h, device=device, dtype=torch.float32)
    u_w = torch.linspace(-1.0 + 1.0 / w, 1.0 - 1.0 / w, w, device=device, dtype=torch.float32)
    return torch.stack([u_h[k % h], u_w[k // h]], dim=-1)


class PublishedDiscretisation(Discretisation):
    """The released discretisation (items 1-4 of the module docstring) on each frame's own extent."""

    name = "published"
    occlusion_margin = 0.0
    padding_mode = "zeros"  # grid_sample zero padding, as released (also darkens lookups next to the border)

    def token_positions_px(self, h: int, w: int, px_per_token: float, device) -> torch.Tensor:
        return token_positions_published_px(h, w, px_per_token, device)

    def segment_fraction(self, ps: torch.Tensor, d_q: torch.Tensor, d_k: torch.Tensor,
                         t_k: torch.Tensor) -> torch.Tensor:
        """The released step factor ``(1 - t_q) d_k / (t_q (1 - d_k))`` with the query's ray ``t_q`` (index
        mix-up). ``|1 - d_k| < 1e-6`` is replaced by 1e-6: the released code yields inf/nan at ``d_k = 1``; this
        sends those samples far off the image, i.e. "not blocked", which zero padding gave for inf. A map above 1
        (published BLB: raw ``1 / depth``) keeps the released negative factor there."""
        t_q = ps * d_q + (1.0 - ps)
        one_minus = 1.0 - d_k
        one_minus = torch.where(one_minus.abs() < ONE_MINUS_D_MIN, one_minus.new_tensor(ONE_MINUS_D_MIN), one_minus)
        return (1.0 - t_q) * d_k / (t_q * one_minus)

    def resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PublishedGeometry(PublishedDiscretisation):
    """:class:`PublishedDiscretisation` plus the released units and occlusion grid: token distances on a frame
    of :data:`PUBLISHED_FRAME_PX` per axis, occlusion lookups at :func:`token_uv_published`."""

    name = "published_geometry"
    frame_px = PUBLISHED_FRAME_PX

    def token_positions_px(self, h: int, w: int, px_per_token: float, device) -> torch.Tensor:
        return token_positions_published_px(h, w, px_per_token, device, self.frame_px)

    def token_uv(self, h: int, w: int, device) -> torch.Tensor:
        return token_uv_published(h, w, device)


PUBLISHED = PublishedDiscretisation()
PUBLISHED_GEOMETRY = PublishedGeometry()


def discretisation(compat: bool = False, published_geometry: bool = False) -> Discretisation:
    """The discretisation that the public ``compat`` / ``published_geometry`` flags name.

    Raises:
        ValueError: ``published_geometry`` without ``compat``.
    """
    if published_geometry and not compat:
        raise ValueError("published_geometry=True reproduces the published code and needs compat=True as well.")
    if published_geometry:
        return PUBLISHED_GEOMETRY
    return PUBLISHED if compat else CORRECTED


def drop_unused_geometry(settings: dict) -> dict:
    """PISA processor settings with ``published_geometry`` removed when ``compat`` is off: the released geometry
    exists only on the released discretisation, so a caller who turns ``compat`` off (e.g. under the published
    protocol, whose defaults name both) gets the corrected discretisation whole. Returns a new dict."""
    settings = dict(settings)
    if not settings.get("compat", False):
        settings.pop("published_geometry", None)
    return settings

