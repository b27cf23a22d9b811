"""Aperture shapes shared by both renderers: a disc or a regular polygon (``blades >= 3``).

Conventions (both renderers use exactly these, so their outputs agree):

* The aperture is the unit disc, or the regular ``blades``-gon inscribed in it (circumradius 1, one vertex at
  angle ``rotation_deg`` measured from +x towards +y in image coordinates, x = column, y = row).
  A point with circle-of-confusion radius ``r`` px therefore blurs into a disc of radius ``r`` or a polygon
  whose vertices lie at distance ``r``.
* Orientation follows the thin lens (``kernels/layers.py``): the ray through pixel ``p`` and aperture point
  ``u`` meets the scene at ``x = p + coc * u``, so a point of signed CoC ``r`` lights the pixels
  ``p = x - r * u``. Behind the focus plane (``r < 0``) the blur is the aperture itself scaled by ``|r|``; in
  front of it (``r > 0``) it is the aperture point-reflected (rotated by 180 degrees), as in a real lens,
  where the bokeh of an odd-bladed iris flips between the two sides of focus. The scatter renderer therefore
  measures the edge height of an offset ``o = p - q`` from a source ``q`` with ``coc_q > 0`` at ``-o``
  (``reflect_for_positive_coc``). Discs and even-bladed polygons are point symmetric, so for them the sign
  makes no difference and no reflection is computed (their results are bit-identical either way).
* Scatter splat membership has a 1 px linear soft edge: weight 1 inside, 0 outside, the 0.5 contour on the
  shape's boundary (``membership``). The per-source normaliser (sum of membership over all offsets) does not
  depend on the sign: the set of offsets within reach is point symmetric, so reflecting every offset sums the
  same terms.
* Ray-tracer samples cover the aperture with equal area per sample (``aperture_samples``).
"""

from __future__ import annotations

import math

import torch

_GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))


def check_aperture(blades: int, rotation_deg: float) -> None:
    """Raise ``ValueError`` for an aperture that cannot be drawn (``blades`` must be 0 or >= 3)."""
    if not isinstance(blades, int) or blades < 0 or blades in (1, 2):
        raise ValueError(f"blades must be 0 (disc) or an integer >= 3 (polygon); got {blades!r}")
    if not math.isfinite(float(rotation_deg)):
        raise ValueError(f"rotation_deg must be a finite angle in degrees; got {rotation_deg!r}")


def polygon_edge_height(dx: float, dy: float, blades: int, rotation_deg: float) -> float:
    """Distance of offset ``(dx, dy)`` (px) along the normal of the polygon edge it points at.

    For a regular ``blades``-gon with circumradius ``r`` the apothem is ``r * cos(pi / blades)``; the offset
    lies inside iff this height <= apothem. For ``blades == 0`` it is the Euclidean length (disc).
    """
    dist = math.hypot(dx, dy)
    if blades == 0 or dist == 0.0:
        return dist
    sector = 2.0 * math.pi / blades
    # Angle relative to the nearest edge normal: vertices sit at rotation + k*sector, so edge normals sit
    # half a sector further on; fold the angle into [-sector/2, sector/2) around that normal.
    phi = math.atan2(dy, dx) - math.radians(rotation_deg) - sector / 2.0
    phi = (phi + sector / 2.0) % sector - sector / 2.0
    return dist * math.cos(phi)


def reflect_for_positive_coc(blades: int) -> bool:
    """Whether a source with positive CoC (in front of focus) splats a point-reflected aperture that differs
    from the unreflected one: true for odd blade counts only (discs and even polygons are point symmetric)."""
    return blades >= 3 and blades % 2 == 1


def apothem_ratio(blades: int) -> float:
    """Apothem / circumradius of the aperture (1 for the disc)."""
    return 1.0 if blades == 0 else math.cos(math.pi / blades)


def membership(radius_px: torch.Tensor, dist: float, height: float, apothem: float) -> torch.Tensor:
    """Soft membership in [0, 1] of an offset in the aperture of a source with blur radius ``radius_px``.

    ``dist`` = |offset| px, ``height`` = ``polygon_edge_height(offset)``, ``apothem`` = ``apothem_ratio``.
    Disc: ``clamp(r + 0.5 - dist, 0, 1)``. Polygon: the same ramp on the edge distance, intersected (min)
    with the circumscribed disc so that a tiny polygon (r < 0.5) never reaches a neighbouring pixel through
    the edge-line extension near a vertex (keeps the in-focus identity exact).
    """
    m = radius_px + (0.5 - dist)
    if apothem != 1.0:
        m = torch.minimum(m, radius_px * apothem + (0.5 - height))
    return m.clamp_(0.0, 1.0)


def polygon_radius(theta: torch.Tensor, blades: int, rotation_deg: float) -> torch.Tensor:
    """Distance from the centre to the boundary of the unit-circumradius aperture at angle ``theta`` (rad)."""
    if blades == 0:
        return torch.ones_like(theta)
    sector = 2.0 * math.pi / blades
    phi = theta - math.radians(rotation_deg) - sector / 2.0
    phi = torch.remainder(phi + sector / 2.0, sector) - sector / 2.0
    return math.cos(math.pi / blades) / torch.cos(phi)


def sample_count(n_samples: int) -> int:
    """Number of samples ``aperture_samples(n_samples)`` returns: 1 for the pinhole, else n rounded up to
    even (mirror-symmetric pairs)."""
    return 1 if n_samples == 1 else n_samples + (n_samples % 2)


def aperture_samples(
    n_samples: int, blades: int = 0, rotation_deg: float = 0.0, seed: int = 0, dtype=torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified aperture samples ``u`` (S, 2) = (ux, uy) with area weights (S,) summing to 1.

    Disc: a Vogel (golden-angle) spiral, ``rho = sqrt((i + 0.5) / S')``, which gives each sample an equal
    area cell (stratified) without the grid's aliasing; a seeded random rotation decorrelates calls.
    The set is made mirror symmetric (each sample paired with (-ux, uy)) so that a horizontal image flip
    commutes with rendering. Polygon: disc samples are pushed radially to the polygon boundary
    (``rho * R(theta)``); that map scales area by ``R(theta)^2``, so each sample's weight is proportional to
    it, which keeps the estimator unbiased for the polygon's uniform measure.
    ``n_samples == 1`` returns the pinhole sample u = 0; otherwise ``sample_count(n_samples)`` samples are
    returned: an odd count is rounded up to the next even one, since the set consists of mirror pairs
    (callers that derive a sample spacing must use the returned count). Samples are built on the CPU in
    float64 (a few hundred numbers) and moved by the caller.
    """
    check_aperture(blades, rotation_deg)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1; got {n_samples}")
    if n_samples == 1:
        return torch.zeros(1, 2, dtype=dtype), torch.ones(1, dtype=dtype)
    half = (n_samples + 1) // 2
    gen = torch.Generator().manual_seed(int(seed))
    spin = float(torch.rand((), generator=gen, dtype=torch.float64)) * 2.0 * math.pi
    i = torch.arange(half, dtype=torch.float64)
    # `half` spiral samples plus their mirror images (theta -> pi - theta): each half is equal-area on the
    # disc by itself, so the union is too, and the set is exactly symmetric under x -> -x.
    rho = torch.sqrt((i + 0.5) / half)
    theta = i * _GOLDEN_ANGLE + spin
    theta = torch.cat([theta, math.pi - theta])
    rho = torch.cat([rho, rho])
    radial = polygon_radius(theta, blades, rotation_deg)
    rho = rho * radial
    u = torch.stack([rho * torch.cos(theta), rho * torch.sin(theta)], dim=-1)
    w = radial**2
    w = w / w.sum()
    assert u.shape[0] == sample_count(n_samples)
    return u.to(dtype), w.to(dtype)
