"""Classical scatter (splatting) bokeh renderer, after BokehMe's classical renderer (Peng et al., CVPR 2022,
"BokehMe: When Neural Rendering Meets Classical Rendering", Sec. 3.1: every pixel scatters its colour over
its circle of confusion, results are normalised by the accumulated weight).

Model (all in linear light, radii in pixels of the working resolution):

* Source q with signed CoC ``coc_q`` splats over the aperture of radius ``r_q = |coc_q|`` with a 1 px soft
  edge (``aperture.membership``); for ``coc_q > 0`` (in front of focus) the aperture is point-reflected, the
  orientation the thin-lens ray tracer produces (see ``kernels/aperture.py``; matters for odd blade
  counts). Its splat weights are divided by their own discrete sum ``N(r_q)``, so every source distributes
  exactly one unit of weight (energy conservation: with a uniform CoC the accumulated weight is 1 everywhere
  away from the border and the image sum is preserved).
* Output ``p = sum_q w_qp c_q / sum_q w_qp`` (BokehMe's normalisation; where weights do not sum to 1 because
  of depth changes it acts as a local hole-filling average instead of darkening).
* Occlusion (the in-focus-foreground-over-blurred-background case): a source behind the target
  (``coc_p - coc_q > 0.5`` px, signed CoC grows towards the camera) reaches ``p`` only through ``p``'s own
  circle of confusion: its effective radius becomes ``rho = r_q - s * relu(r_q - r_p)`` with the soft
  depth test ``s = clamp(coc_p - coc_q - 0.5, 0, 1)``. Physically the cone of rays that converges on a
  sharp foreground pixel never sees the background, and a blurred foreground pixel of radius ``r_p`` sees
  background light from within ``r_p`` (partial occlusion). It is an approximation: the blocked fraction
  of a background splat is not redistributed, the normalisation hides the missing weight. A sharp
  foreground pixel (|coc_p| < 0.5) next to any source more than 1.5 px of CoC behind it receives no
  background light at all (tested exactly in tests/kernels/test_scatter.py).
* Exactness: a pixel that receives no weight from any other pixel returns its own (boosted) colour
  bit-exactly, so in-focus regions with |coc| < 0.5 all around are unchanged.

Cost is O(H * W * R^2) for the maximum radius R (a gather over all offsets within R). The torch path
``_scatter_torch`` works strip by strip and visits per strip only the offsets its sources can reach;
``_scatter_torch_reference`` (one full-image pass per offset) is the plain statement of the same sums, kept
for the tests. See BENCHMARKS.md.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from . import aperture
from ._backend import as_cupy as _cp, check_blur_radius, check_shape, load_kernel, per_batch_scalar, resolve_impl
from .colour import DEFAULT_GAMMA, linear_to_srgb, srgb_to_linear

_DEPTH_MARGIN_PX = 0.5  # CoC difference below which two sources count as the same surface (no occlusion)


def _offsets(max_radius: float, blades: int, rotation_deg: float) -> list[tuple[int, int, float, float, float]]:
    """All integer offsets (dy, dx) != 0 that a source of radius ``max_radius`` can reach, as
    ``(dy, dx, dist, height, height_reflected)``: Euclidean length, polygon edge height of the offset (used for
    sources with coc <= 0) and of its point reflection (-dy, -dx) (used for sources with coc > 0; see
    ``aperture.reflect_for_positive_coc``). For discs and even polygons ``height_reflected`` is ``height``
    itself, so those renders are exactly what they were before the reflection existed. Membership is 0 at
    distance >= r + 0.5; the set is point symmetric (the normaliser relies on it)."""
    reach = max_radius + 0.5
    n = int(math.ceil(reach))
    reflect = aperture.reflect_for_positive_coc(blades)
    out = []
    for dy in range(-n, n + 1):
        for dx in range(-n, n + 1):
            dist = math.hypot(dx, dy)
            if (dx, dy) == (0, 0) or dist >= reach:
                continue
            height = aperture.polygon_edge_height(dx, dy, blades, rotation_deg)
            height_r = aperture.polygon_edge_height(-dx, -dy, blades, rotation_deg) if reflect else height
            out.append((dy, dx, dist, height, height_r))
    return out


def _reflects(offsets) -> bool:
    """Whether any offset's edge height differs under point reflection (odd polygons)."""
    return any(o[4] != o[3] for o in offsets)


def boost_highlights(image_linear: torch.Tensor, radius_px: torch.Tensor, threshold, gain: float) -> torch.Tensor:
    """Highlight boost applied to sources before splatting (linear light, per channel):

    ``c' = c + gain * max(c - threshold, 0) * clamp(|coc| - 0.5, 0, 1)``.

    The last factor restricts the boost to defocused sources (fully on from |coc| = 1.5 px), so in-focus
    pixels stay untouched; it mimics the clipped highlights that a sensor would record as brighter
    point lights, which then show as bright bokeh discs. ``threshold=None`` or ``gain == 0`` disables it.
    """
    if threshold is None or gain == 0.0:
        return image_linear
    if gain < 0:
        raise ValueError(f"highlight_gain must be >= 0; got {gain}")
    ramp = (radius_px - 0.5).clamp(0.0, 1.0)
    return image_linear + gain * (image_linear - threshold).clamp_min(0.0) * ramp


def _normaliser(radius: torch.Tensor, offsets, apothem: float) -> torch.Tensor:
    """Discrete sum N(r) of each source's membership over all offsets (offset 0 included). The same for both
    signs of CoC: reflecting every offset of the point-symmetric set sums the same terms."""
    norm = aperture.membership(radius.clone(), 0.0, 0.0, apothem)
    for _, _, dist, height, _ in offsets:
        norm += aperture.membership(radius, dist, height, apothem)
    return norm


def _scatter_torch_reference(colour, coc, offsets, apothem):
    """Reference gather implementation. colour (B,3,H,W), coc (B,1,H,W), both float32/64."""
    _, _, h, w = colour.shape
    radius = coc.abs()
    inv_norm = _normaliser(radius, offsets, apothem).reciprocal_()
    self_w = aperture.membership(radius.clone(), 0.0, 0.0, apothem) * inv_norm
    pad = max((max(abs(dy), abs(dx)) for dy, dx, *_ in offsets), default=0)
    reflect = _reflects(offsets)
    # Padding sources have radius 0, so they never reach a real pixel (membership 0 at distance >= 0.5).
    padded = torch.nn.functional.pad(torch.cat([colour * inv_norm, inv_norm, radius, coc], 1), (pad,) * 4)
    cn_pad, inv_pad, r_pad, coc_pad = padded[:, :3], padded[:, 3:4], padded[:, 4:5], padded[:, 5:6]

    coc_p = coc - _DEPTH_MARGIN_PX
    acc_c = torch.zeros_like(colour)
    acc_w = torch.zeros_like(radius)
    s = torch.empty_like(radius)
    excess = torch.empty_like(radius)
    for dy, dx, dist, height, height_r in offsets:
        # Gather: target p receives from source q = p - (dy, dx).
        rows = slice(pad - dy, pad - dy + h)
        cols = slice(pad - dx, pad - dx + w)
        r_q = r_pad[:, :, rows, cols]
        coc_q = coc_pad[:, :, rows, cols]
        if reflect:  # sources in front of focus splat the point-reflected aperture
            # (0-dim tensors of the working dtype: torch.where on two Python floats would give float32)
            height = torch.where(coc_q > 0, coc_q.new_tensor(height_r), coc_q.new_tensor(height))
        torch.sub(coc_p, coc_q, out=s).clamp_(0.0, 1.0)
        torch.sub(r_q, radius, out=excess).clamp_(min=0.0)
        rho = torch.addcmul(r_q, s, excess, value=-1.0)
        m = aperture.membership(rho, dist, height, apothem)
        acc_w.addcmul_(m, inv_pad[:, :, rows, cols])
        acc_c.addcmul_(m, cn_pad[:, :, rows, cols])
    return acc_c, acc_w, self_w


def _normaliser_table(offsets, apothem: float, max_radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact samples of N(r) (see ``_normaliser``) at its kinks, float64 on the CPU.

    Each membership term ``clamp(min(r + 0.5 - d, a r + 0.5 - h), 0, 1)`` is piecewise linear in ``r`` with
    kinks where either line reaches 0 or 1 or the two lines cross, so N(r) is piecewise linear with kinks
    only there: linear interpolation between exact samples at all kinks reproduces it up to rounding, at the
    cost of one lookup per pixel instead of one pass over the image per offset.
    """
    dist = torch.tensor([0.0] + [o[2] for o in offsets], dtype=torch.float64)
    height = torch.tensor([0.0] + [o[3] for o in offsets], dtype=torch.float64)
    kinks = [dist - 0.5, dist + 0.5, torch.tensor([0.0, max_radius, max_radius + 1.0], dtype=torch.float64)]
    if apothem != 1.0:
        kinks += [(height - 0.5) / apothem, (height + 0.5) / apothem, (dist - height) / (1.0 - apothem)]
    knots = torch.cat(kinks)
    knots = torch.unique(knots[(knots >= 0.0) & (knots <= max_radius + 1.0)])
    values = torch.empty_like(knots)
    for start in range(0, knots.numel(), 512):  # chunks bound the (knots x offsets) temporary
        r = knots[start:start + 512, None]
        m = r + (0.5 - dist)
        if apothem != 1.0:
            m = torch.minimum(m, r * apothem + (0.5 - height))
        values[start:start + 512] = m.clamp_(0.0, 1.0).sum(1)
    return knots, values


def _inv_normaliser(radius: torch.Tensor, offsets, apothem: float, max_radius: float) -> torch.Tensor:
    """1 / N(radius) by interpolation in ``_normaliser_table`` (same values as ``_normaliser`` up to rounding)."""
    knots, values = _normaliser_table(offsets, apothem, max_radius)
    knots, values = knots.to(radius.device), values.to(radius.device)
    r = radius.to(torch.float64).clamp_(0.0, float(knots[-1]))
    i = (torch.searchsorted(knots, r.reshape(-1), right=True) - 1).clamp_(0, knots.numel() - 2).view_as(r)
    k0, k1 = knots[i], knots[i + 1]
    n = torch.lerp(values[i], values[i + 1], (r - k0) / (k1 - k0))
    return n.reciprocal_().to(radius.dtype)


_STRIP_ELEMS_PER_THREAD = 1 << 17  # the 4-channel float32 product of one thread's share: 2 MB, a core's L2


def _default_strip_elems() -> int:
    """Elements of one (offsets, strip) temporary of ``_scatter_torch``: 2^17 per torch thread, as each op's
    elements are split between the threads (BENCHMARKS.md, "Scatter strips", demo photo: on one thread 2^16 to
    2^18 are within 3%, smaller or larger strips slower; on two threads 2^18 is 1.2x faster than 2^17)."""
    return _STRIP_ELEMS_PER_THREAD * max(1, torch.get_num_threads())


def _scatter_torch(colour, coc, offsets, apothem, strip_elems: int | None = None, progress=None):
    """Fast gather: the model and results of ``_scatter_torch_reference`` up to float rounding.

    The reference makes ~12 elementwise passes over full-image tensors per offset (~830 offsets at radius
    16), so it is memory bound. Here:

    * targets are processed in strips of full rows, about ``strip_elems / K`` pixels for K = 2 R + 1
      offsets per row (default :func:`_default_strip_elems`), so the (K, strip) temporaries stay in a
      core's cache while each op is long enough to amortise its dispatch and thread start-up;
    * all offsets of one row offset ``dy`` are handled by one set of tensor ops: the sources for
      ``dx = hi, hi - 1, ..., lo`` are one strided window (column stride 1) of the padded sources, giving
      (K, B, C, rows, W) views without copies; the K weighted contributions are summed at once;
    * per strip and ``dy`` only the ``dx`` that the largest source radius in the rows read can reach are
      visited (membership is exactly 0 at distance >= r + 0.5), so strips near focus cost few offsets;
    * the occlusion term is skipped where it provably vanishes (no source in the rows read lies behind a
      target by more than the margin, or none is larger than a target), and is computed as
      ``rho = lerp(r_q, min(r_q, r_p), s)``, which equals ``r_q - s * relu(r_q - r_p)``; radii carry the
      +0.5 of the soft edge precomputed;
    * colour and weight accumulate together (4 channels); N(r) comes from ``_inv_normaliser``.

    colour (B,3,H,W), coc (B,1,H,W), float32/64; returns (acc_c, acc_w, self_w) like the reference.
    ``progress(done_rows, H)``, if given, is called after each strip of target rows.
    """
    b, _, h, w = colour.shape
    strip_elems = _default_strip_elems() if strip_elems is None else strip_elems
    radius = coc.abs()
    max_radius = float(radius.max()) if radius.numel() else 0.0
    inv_norm = _inv_normaliser(radius, offsets, apothem, max_radius)
    self_w = aperture.membership(radius.clone(), 0.0, 0.0, apothem) * inv_norm
    acc = torch.zeros(b, 4, h, w, dtype=colour.dtype, device=colour.device)
    if not offsets:
        if progress is not None:
            progress(h, h)
        return acc[:, :3], acc[:, 3:4], self_w
    pad = max(max(abs(dy), abs(dx)) for dy, dx, *_ in offsets)
    reach = radius + 0.5  # membership = clamp(reach - dist, 0, 1) for the disc
    # Channels: colour * inv_norm (3), inv_norm, reach, coc. Padding sources have zero weight and reach 0.
    src = torch.nn.functional.pad(torch.cat([colour * inv_norm, inv_norm, reach, coc], 1), (pad,) * 4)
    coc_m = coc - _DEPTH_MARGIN_PX
    polygon = apothem != 1.0
    reflect = polygon and _reflects(offsets)

    # Per padded source row: largest radius and smallest CoC; per target row: largest CoC - margin and
    # smallest radius (all batch items together).
    row_rmax = src[:, 4].amax((0, 2)).sub_(0.5).tolist()
    row_cmin = src[:, 5].amin((0, 2)).tolist()
    tgt_cmax = coc_m.amax((0, 1, 3)).tolist()
    tgt_rmin = radius.amin((0, 1, 3)).tolist()
    # Per dy: distance, polygon edge height and reflected edge height of dx = pad, pad - 1, ..., -pad (the
    # window order below); offsets out of reach get an infinite distance (membership 0).
    geometry = {}
    for dy, dx, dist, height, height_r in offsets:
        geometry[dy, dx] = (dist, height, height_r)
    shape5 = (-1, 1, 1, 1, 1)
    dist_h = {}
    for dy in range(-pad, pad + 1):
        dh = [geometry.get((dy, dx), (math.inf, math.inf, math.inf)) for dx in range(pad, -pad - 1, -1)]
        dist_h[dy] = tuple(torch.tensor(v, dtype=colour.dtype).view(shape5).to(colour.device) for v in zip(*dh))

    k_max = 2 * pad + 1
    rows = max(1, min(h, strip_elems // (k_max * max(1, b * w))))
    s_buf, t_buf, m_buf = torch.empty(3, k_max, b, 1, rows, w, dtype=colour.dtype, device=colour.device)
    prod_buf = torch.empty(k_max, b, 4, rows, w, dtype=colour.dtype, device=colour.device)
    st_b, st_c, st_y, st_x = src.stride()

    def window(c0: int, c1: int, y_start: int, x_start: int, k: int, n: int) -> torch.Tensor:
        """Sources for K consecutive offsets: [k] is the (B, c1 - c0, n, W) block at column x_start + k."""
        return src.as_strided((k, b, c1 - c0, n, w), (st_x, st_b, st_c, st_y, st_x),
                              src.storage_offset() + c0 * st_c + y_start * st_y + x_start * st_x)

    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        n = y1 - y0
        acc_s = acc[:, :, y0:y1]
        coc_p, reach_p = coc_m[:, :, y0:y1], reach[:, :, y0:y1]
        cmax_p, rmin_p = max(tgt_cmax[y0:y1]), min(tgt_rmin[y0:y1])
        for dy in range(-pad, pad + 1):
            ys = pad + y0 - dy  # first padded source row for target row y0 (source q = p - (dy, dx))
            rmax_q = max(row_rmax[ys:ys + n])
            lim2 = (rmax_q + 0.5) ** 2 - dy * dy  # reachable: dx^2 < lim2
            if lim2 <= 0.0:
                continue
            dx_max = min(pad, math.ceil(math.sqrt(lim2)) - 1)
            occluded = cmax_p > min(row_cmin[ys:ys + n]) and rmax_q > rmin_p
            for hi, lo in ([(dx_max, -dx_max)] if dy != 0 else [(dx_max, 1), (-1, -dx_max)]):
                k = hi - lo + 1
                if k <= 0:
                    continue
                x0 = pad - hi
                s, t, m = s_buf[:k, :, :, :n], t_buf[:k, :, :, :n], m_buf[:k, :, :, :n]
                dist, height, height_r = (v[pad - hi:pad - lo + 1] for v in dist_h[dy])
                reach_q = window(4, 5, ys, x0, k, n)
                if reflect:  # sources in front of focus (coc > 0) splat the point-reflected aperture
                    height = torch.where(window(5, 6, ys, x0, k, n) > 0, height_r, height)
                if occluded:
                    # s = clamp(coc_p - margin - coc_q, 0, 1); rho + 0.5 = lerp(reach_q, min(reach_q, reach_p), s)
                    torch.sub(coc_p, window(5, 6, ys, x0, k, n), out=s).clamp_(0.0, 1.0)
                    torch.minimum(reach_q, reach_p, out=t)
                    reach_q = torch.lerp(reach_q, t, s, out=t)
                torch.sub(reach_q, dist, out=m)
                if polygon:
                    # Edge line a * rho + 0.5 - h = a * (rho + 0.5) + (0.5 - 0.5 a - h).
                    torch.minimum(m, reach_q * apothem + (0.5 - 0.5 * apothem - height), out=m)
                m.clamp_(0.0, 1.0)
                prod = torch.mul(m, window(0, 4, ys, x0, k, n), out=prod_buf[:k, :, :, :n])
                acc_s.add_(prod.sum(0))
        if progress is not None:
            progress(y1, h)
    return acc[:, :3], acc[:, 3:4], self_w


def _scatter_cuda(colour, coc, offsets, apothem, blades, rotation_deg, max_radius):
    import cupy

    b, _, h, w = colour.shape
    colour = colour.float().contiguous()
    coc = coc.float().contiguous()
    acc_c = torch.empty_like(colour)
    acc_w = torch.empty_like(coc)
    self_w = torch.empty_like(coc)
    dev = colour.device.index if colour.device.index is not None else torch.cuda.current_device()
    norm_k = load_kernel("scatter.cu", "scatter_norm", dev)
    gather_k = load_kernel("scatter.cu", "scatter_gather", dev)
    inv_norm = torch.empty_like(coc)
    n = b * h * w
    if n == 0:  # CUDA rejects a zero-size grid ("invalid configuration"); an empty image has nothing to do
        return acc_c, acc_w, self_w
    threads = 256
    grid = ((n + threads - 1) // threads,)
    args_common = (
        cupy.int32(b), cupy.int32(h), cupy.int32(w), cupy.float32(max_radius), cupy.int32(blades),
        cupy.float32(math.radians(rotation_deg)), cupy.float32(apothem),
    )
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(colour.device).cuda_stream)
    with cupy.cuda.Device(dev), stream:
        norm_k(grid, (threads,), (_cp(coc), _cp(inv_norm), _cp(self_w), *args_common))
        gather_k(grid, (threads,), (_cp(colour), _cp(coc), _cp(inv_norm), _cp(acc_c),
                                    _cp(acc_w), *args_common, cupy.float32(_DEPTH_MARGIN_PX)))
    return acc_c, acc_w, self_w


def render_scatter(
    image_linear: torch.Tensor,
    coc_px: torch.Tensor,
    *,
    blades: int = 0,
    rotation_deg: float = 0.0,
    highlight_threshold: float | None = None,
    highlight_gain: float = 0.0,
    impl: str = "auto",
    max_coc_px: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Render classical scatter bokeh in linear light.

    Args:
        image_linear: (B, 3, H, W) linear-light colour, >= 0 (values above 1 are allowed, e.g. HDR).
        coc_px: (B, 1, H, W) signed circle-of-confusion radius in pixels, ``K * (disparity - disp_focus)``
            (positive = in front of the focus plane); |coc_px| is the blur radius.
        blades: 0 for a disc aperture, >= 3 for a regular polygon with vertices at distance |coc|; sources
            with positive CoC splat it point-reflected, as the thin lens (``render_layers``) images them.
        rotation_deg: angle of one polygon vertex in degrees, from +x (column) towards +y (row).
        highlight_threshold, highlight_gain: highlight boost, see ``boost_highlights`` (linear light).
        impl: "auto" | "cuda" | "torch" (see ``kernels.cuda_available``).
        max_coc_px: optional clamp of |coc_px| (px); bounds the cost, which grows with the square of the
            largest radius.
        progress: optional ``progress(done_rows, H)``, called as strips of target rows are finished (the
            torch path; the CUDA kernel renders the image at once and reports ``(H, H)`` at the end), so a
            long render can show where it is.

    Returns:
        (B, 3, H, W) linear-light bokeh image, same dtype and device as ``image_linear``.
    """
    op = "render_scatter"
    check_shape("image_linear", image_linear, (None, 3, None, None), op)
    b, _, h, w = image_linear.shape
    check_shape("coc_px", coc_px, (b, 1, h, w), op)
    aperture.check_aperture(blades, rotation_deg)
    if coc_px.device != image_linear.device:
        raise ValueError(f"{op}: coc_px is on {coc_px.device} but image_linear is on {image_linear.device}")
    if not torch.isfinite(coc_px).all():
        raise ValueError(f"{op}: coc_px contains NaN or inf; fill invalid disparity before rendering")
    backend = resolve_impl(impl, image_linear, op)

    out_dtype = image_linear.dtype
    work = torch.float64 if out_dtype == torch.float64 else torch.float32
    colour = image_linear.to(work)
    coc = coc_px.to(work)
    if max_coc_px is not None:
        coc = coc.clamp(-float(max_coc_px), float(max_coc_px))
    radius = coc.abs()
    colour = boost_highlights(colour, radius, highlight_threshold, float(highlight_gain))
    max_radius = float(radius.max()) if radius.numel() else 0.0
    check_blur_radius(max_radius, h, w, op)
    apothem = aperture.apothem_ratio(blades)
    offsets = _offsets(max_radius, blades, rotation_deg)

    if backend == "cuda":
        acc_c, acc_w, self_w = _scatter_cuda(colour, coc, offsets, apothem, blades, rotation_deg, max_radius)
        acc_c, acc_w, self_w = acc_c.to(work), acc_w.to(work), self_w.to(work)
        if progress is not None:
            progress(h, h)
    else:
        acc_c, acc_w, self_w = _scatter_torch(colour, coc, offsets, apothem, progress=progress)
    out = (acc_c + self_w * colour) / (acc_w + self_w)
    # No light from any other pixel: return the source colour itself, bit-exact (not c*w/w).
    out = torch.where(acc_w == 0, colour, out)
    return out.to(out_dtype)


def render_classical(
    image_srgb: torch.Tensor,
    disparity: torch.Tensor,
    K,
    disp_focus,
    *,
    gamma: float = DEFAULT_GAMMA,
    impl: str = "auto",
    **scatter_opts,
) -> torch.Tensor:
    """Classical bokeh for an sRGB photo and its disparity (what the demo CLI calls).

    Args:
        image_srgb: (B, 3, H, W) gamma-encoded colour in [0, 1].
        disparity: (B, 1, H, W) in [0, 1], 1 = nearest; must be finite.
        K: float or (B,) tensor >= 0, blur radius in px per unit disparity.
        disp_focus: float or (B,) tensor, the focused disparity in [0, 1].
        gamma: ``linear = srgb ** gamma`` (1 disables); the output is encoded back with ``1 / gamma``.
        impl, **scatter_opts: passed to ``render_scatter`` (blades, rotation_deg, highlight_threshold, ...).

    Returns:
        (B, 3, H, W) sRGB-encoded bokeh image in [0, 1] (highlight boost beyond 1 is clipped).
    """
    op = "render_classical"
    check_shape("image_srgb", image_srgb, (None, 3, None, None), op)
    b, _, h, w = image_srgb.shape
    check_shape("disparity", disparity, (b, 1, h, w), op)
    if gamma <= 0:
        raise ValueError(f"{op}: gamma must be > 0; got {gamma}")
    dtype, dev = image_srgb.dtype, image_srgb.device
    k = per_batch_scalar("K", K, b, dtype, dev, op)
    focus = per_batch_scalar("disp_focus", disp_focus, b, dtype, dev, op)
    if (k < 0).any():
        raise ValueError(f"{op}: K must be >= 0 (blur radius in px per unit disparity); got {k.tolist()}. "
                         "The sign of the blur comes from disparity - disp_focus, not from K.")
    coc = k.view(b, 1, 1, 1) * (disparity.to(dtype) - focus.view(b, 1, 1, 1))
    linear = srgb_to_linear(image_srgb.clamp(0.0, 1.0), gamma)
    out = render_scatter(linear, coc, impl=impl, **scatter_opts)
    return linear_to_srgb(out.clamp(0.0, 1.0), gamma)
