"""Layered thin-lens ray tracer: ground-truth bokeh for RGBA layers on (tilted) planes.

Scene (docs/conventions.md): layers ordered near to far, straight (not premultiplied) linear colour + alpha, each on a
plane ``disparity(x, y) = (1 - A*x - B*y) / C`` in pixel coordinates of the layer grid (x = column,
y = row, origin at the top-left pixel centre). Signed CoC ``coc(x) = K * (disparity(x) - disp_focus)``.

Thin lens: the ray through output pixel ``p`` and aperture sample ``u`` meets layer ``l`` at the point ``x``
with ``x = p + coc_l(x) * u`` (so a point of CoC ``r`` is seen by the pixels ``p = x - r*u``, the same
convention as the scatter renderer). For a plane this is linear in ``x``: with ``g = (K / C) * u`` and
``w0 = p + g - K * disp_focus * u``, ``x = w0 - g * t`` where ``t = A*x + B*y`` solves
``t * (1 + A*g_x + B*g_y) = A*w0_x + B*w0_y``. The denominator vanishes only for rays parallel to the
plane; it is clamped away from 0 (keeping its sign), which sends such rays far outside the layer.

Compositing is front to back along each ray with transmittance ``T`` (Porter-Duff "over", premultiplied
colour): ``sum += w_s * T * a_l * c_l``, ``T *= 1 - a_l``. Partial occlusion is exact in the limit of many
samples: a defocused foreground lets through exactly the rays that miss it.

Anti-aliasing over the aperture: S samples of a radius-``r`` blur are ``r * sqrt(pi / S)`` px apart, so a
sharp layer sampled that sparsely shows S ghost copies. Each layer is therefore sampled from a mip pyramid
of its premultiplied RGBA (2x2 box per level, zero outside the layer) at level ``log2(spacing)``, blended
trilinearly: every sample then averages over its own share of the aperture footprint (a small blur,
matched to the local spacing, on top of the defocus blur, negligible when S is large enough that the
spacing is <= 1 px). Level 0 with integer coordinates returns the stored values exactly, so K = 0 gives the
all-in-focus composite.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import aperture
from ._backend import as_cupy as _cp, check_shape, load_kernel, per_batch_scalar, resolve_impl

_DENOM_EPS = 1e-6


def auto_n_samples(max_coc_px: float, target_spacing_px: float = 4.0, max_samples: int = 64) -> int:
    """Aperture samples for a largest |CoC| of ``max_coc_px``: enough that neighbouring samples land about
    ``target_spacing_px`` apart (area per sample pi*r^2/S = spacing^2), capped by ``max_samples``; the mip
    prefilter covers whatever spacing remains. 1 sample (pinhole) when nothing is defocused. Even counts
    keep the mirror-symmetric sample set."""
    if max_coc_px < 0.5:
        return 1
    n = math.ceil(math.pi * (max_coc_px / target_spacing_px) ** 2)
    n = max(2, min(int(max_samples), n))
    return n + (n % 2)


def _plane_coc_extremes(planes, k, focus, h, w):
    """Max |CoC| px over each layer's grid (the CoC of a plane is affine, so its extremes are at corners)."""
    xs = torch.tensor([0.0, w - 1.0, 0.0, w - 1.0], dtype=torch.float64)
    ys = torch.tensor([0.0, 0.0, h - 1.0, h - 1.0], dtype=torch.float64)
    a, b, c = planes[..., 0:1], planes[..., 1:2], planes[..., 2:3]  # (B, L, 1)
    disp = (1.0 - a * xs - b * ys) / c  # (B, L, 4)
    return (k[:, None, None] * (disp - focus[:, None, None])).abs().amax()


def _pyramid(premult: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Mip levels of premultiplied RGBA (N, 4, H, W); the grid is zero-padded (alpha 0 = empty space) at the
    bottom/right to a multiple of 2**(levels-1), so every level covers exactly the same extent."""
    step = 2 ** (levels - 1)
    h, w = premult.shape[-2:]
    level = F.pad(premult, (0, (-w) % step, 0, (-h) % step))
    out = [level]
    for _ in range(1, levels):
        level = F.avg_pool2d(level, 2)
        out.append(level)
    return out


def _sample_mip(pyr: list[torch.Tensor], x, y, lod) -> torch.Tensor:
    """Trilinear mip sample of premultiplied RGBA at level-0 pixel-centre coordinates x, y (B, H, W) and
    level of detail ``lod`` (B, H, W): levels floor(lod) and floor(lod)+1 blended by frac(lod); bilinear
    within a level, zero outside the layer. All levels span the same padded extent (hp, wp) px, so one
    normalised grid (grid_sample, align_corners=False) addresses every level."""
    hp, wp = pyr[0].shape[-2:]
    grid = torch.stack([(x + 0.5) * (2.0 / wp) - 1.0, (y + 0.5) * (2.0 / hp) - 1.0], dim=-1)
    top = len(pyr) - 1
    lod = lod.clamp(0.0, float(top))
    lo = torch.floor(lod)
    frac = lod - lo
    out = None
    for k in range(top + 1):
        w_here = torch.where(lo == k, 1 - frac, 0.0)
        if k > 0:
            w_here = w_here + torch.where(lo == k - 1, frac, 0.0)
        if not bool((w_here != 0).any()):
            continue
        val = F.grid_sample(pyr[k], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        term = val * w_here.unsqueeze(1)
        out = term if out is None else out + term
    return out


def _layers_torch(premult, planes, k, focus, u, wts, spacing_unit, levels):
    """premult (B, L, 4, H, W); planes (B, L, 3); k, focus (B,); u (S, 2); wts (S,). Returns sum, weight."""
    b, n_layers, _, h, w = premult.shape
    dtype = premult.dtype
    dev = premult.device
    pyrs = [_pyramid(premult[:, l], levels) for l in range(n_layers)]
    py, px = torch.meshgrid(
        torch.arange(h, dtype=dtype, device=dev), torch.arange(w, dtype=dtype, device=dev), indexing="ij"
    )
    px = px.expand(b, h, w)
    py = py.expand(b, h, w)
    colour_sum = torch.zeros(b, 3, h, w, dtype=dtype, device=dev)
    weight = torch.zeros(b, 1, h, w, dtype=dtype, device=dev)
    kb = k.view(b, 1, 1)
    fb = focus.view(b, 1, 1)
    for s in range(u.shape[0]):
        ux, uy, ws = float(u[s, 0]), float(u[s, 1]), float(wts[s])
        trans = torch.ones(b, 1, h, w, dtype=dtype, device=dev)
        for l in range(n_layers):
            if ux == 0.0 and uy == 0.0:
                # Pinhole ray: x = p exactly; read the layer directly (bit-exact all-in-focus composite).
                rgba = premult[:, l]
            else:
                pa = planes[:, l, 0].view(b, 1, 1)
                pb = planes[:, l, 1].view(b, 1, 1)
                pc = planes[:, l, 2].view(b, 1, 1)
                gx = kb / pc * ux
                gy = kb / pc * uy
                w0x = px + (gx - kb * fb * ux)
                w0y = py + (gy - kb * fb * uy)
                den = 1 + pa * gx + pb * gy
                den = torch.where(den.abs() < _DENOM_EPS, torch.where(den < 0, -_DENOM_EPS, _DENOM_EPS), den)
                t = (pa * w0x + pb * w0y) / den
                x = w0x - gx * t
                y = w0y - gy * t
                if spacing_unit > 0 and levels > 1:
                    coc = kb * ((1 - pa * x - pb * y) / pc - fb)
                    lod = torch.log2((coc.abs() * spacing_unit).clamp_min(1.0))
                else:
                    lod = torch.zeros_like(x)
                rgba = _sample_mip(pyrs[l], x, y, lod)
            # Written as separate products, not addcmul (fused multiply-add rounds differently), so that the
            # single pinhole sample reproduces the plain "over" composite bit for bit.
            colour_sum += (trans * rgba[:, :3]) * ws
            trans = trans * (1 - rgba[:, 3:4])
        weight += (1 - trans) * ws
    return colour_sum, weight


def _layers_cuda(premult, planes, k, focus, u, wts, spacing_unit, levels):
    import cupy

    b, n_layers, _, h, w = premult.shape
    colour_sum = torch.empty(b, 3, h, w, dtype=torch.float32, device=premult.device)
    weight = torch.empty(b, 1, h, w, dtype=torch.float32, device=premult.device)
    n = b * h * w
    if n == 0:  # CUDA rejects a zero-size grid ("invalid configuration"); an empty image has nothing to do
        return colour_sum, weight
    dev = premult.device.index if premult.device.index is not None else torch.cuda.current_device()
    kern = load_kernel("layers.cu", "layers_trace", dev)
    pyr_levels = [_pyramid(premult[:, l].float(), levels) for l in range(n_layers)]
    # Flatten all levels of all layers into one buffer; per (layer, level) offsets and sizes go alongside.
    chunks, offs, sizes = [], [], []
    pos = 0
    for l in range(n_layers):
        for lev in pyr_levels[l]:
            chunks.append(lev.contiguous().reshape(b, -1))
            offs.append(pos)
            sizes.extend(lev.shape[-2:])
            pos += lev.shape[1] * lev.shape[2] * lev.shape[3]
    mip = torch.cat(chunks, 1).contiguous()  # (B, total)
    meta = torch.tensor(offs + sizes, dtype=torch.int32, device=premult.device)
    planes32 = planes.float().contiguous()
    k32, f32 = k.float().contiguous(), focus.float().contiguous()
    u32, w32 = u.float().contiguous(), wts.float().contiguous()
    threads = 128
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(premult.device).cuda_stream)
    with cupy.cuda.Device(dev), stream:
        kern(((n + threads - 1) // threads,), (threads,), (
            _cp(mip), _cp(meta), cupy.int64(pos), _cp(planes32), _cp(k32), _cp(f32),
            _cp(u32), _cp(w32), cupy.int32(u.shape[0]), cupy.int32(b), cupy.int32(n_layers),
            cupy.int32(levels), cupy.int32(h), cupy.int32(w), cupy.float32(spacing_unit),
            _cp(colour_sum), _cp(weight),
        ))
    return colour_sum, weight


def render_layers(
    images_linear: torch.Tensor,
    alphas: torch.Tensor,
    planes: torch.Tensor,
    K,
    disp_focus,
    *,
    n_samples: int | None = None,
    blades: int = 0,
    rotation_deg: float = 0.0,
    seed: int = 0,
    impl: str = "auto",
    max_samples: int = 64,
    prefilter: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray-trace RGBA layers through a thin lens.

    Args:
        images_linear: (B, L, 3, H, W) straight (not premultiplied) linear colour, layers NEAR to FAR;
            L >= 1. An empty image (B, H or W = 0) returns empty outputs.
        alphas: (B, L, 1, H, W) coverage in [0, 1], on the device of ``images_linear``; outside the grid a
            layer is empty (alpha 0).
        planes: (B, L, 3) = (A, B, C), ``disparity(x, y) = (1 - A*x - B*y) / C`` (x = column, y = row, px);
            finite, C > 0. Moved to the device of ``images_linear`` (like K and disp_focus).
        K: (B,) tensor or float >= 0, CoC radius in px per unit disparity.
        disp_focus: (B,) tensor or float, focused disparity (1 = near).
        n_samples: aperture samples per pixel; None = ``auto_n_samples(max |CoC|, max_samples=max_samples)``
            (1 when nothing is defocused, which makes K = 0 return the composite exactly). An odd count
            > 1 is rounded up to the next even one (mirror-symmetric pairs, ``aperture.aperture_samples``).
        blades, rotation_deg: aperture shape, as in ``render_scatter``.
        seed: rotation of the (deterministic) sample pattern.
        impl: "auto" | "cuda" | "torch".
        prefilter: sample each layer's mip pyramid at the aperture-sample spacing (anti-ghosting).

    Returns:
        ``(bokeh_linear_sum (B, 3, H, W), weight (B, 1, H, W))``: sample weights sum to 1 over the aperture,
        so ``weight`` in [0, 1] is the fraction of rays that hit some layer and
        ``bokeh = bokeh_linear_sum / weight.clamp_min(eps)``.
    """
    op = "render_layers"
    check_shape("images_linear", images_linear, (None, None, 3, None, None), op)
    b, n_layers, _, h, w = images_linear.shape
    check_shape("alphas", alphas, (b, n_layers, 1, h, w), op)
    check_shape("planes", planes, (b, n_layers, 3), op)
    if n_layers == 0:
        raise ValueError(f"{op}: images_linear has no layers (shape {tuple(images_linear.shape)}, L = 0); pass "
                         "at least one RGB layer with its alpha and plane")
    aperture.check_aperture(blades, rotation_deg)
    dtype = torch.float64 if images_linear.dtype == torch.float64 else torch.float32
    dev = images_linear.device
    if alphas.device != dev:
        raise ValueError(f"{op}: alphas is on {alphas.device} but images_linear is on {dev}; move both to one "
                         "device")
    k = per_batch_scalar("K", K, b, dtype, dev, op)
    focus = per_batch_scalar("disp_focus", disp_focus, b, dtype, dev, op)
    if (k < 0).any():
        raise ValueError(f"{op}: K must be >= 0 (blur radius in px per unit disparity); got {k.tolist()}")
    try:  # (B, L, 3) numbers, moved like K and disp_focus
        planes = planes.to(device=dev, dtype=dtype)
    except (RuntimeError, NotImplementedError) as exc:
        raise ValueError(f"{op}: planes is on {planes.device} and cannot be moved to the images' device {dev} "
                         f"({exc}); pass planes as a tensor with data (CPU or {dev})") from exc
    if not torch.isfinite(planes).all():
        raise ValueError(f"{op}: planes must be finite (A, B, C); got {planes.tolist()}")
    if not (planes[..., 2] > 0).all():
        raise ValueError(f"{op}: planes[..., 2] (C) must be > 0 so that disparity is finite; got "
                         f"{planes[..., 2].tolist()}")
    backend = resolve_impl(impl, images_linear, op)
    if b * h * w == 0:  # nothing to trace (and no corners to take the CoC extremes of)
        return (images_linear.new_zeros(b, 3, h, w), images_linear.new_zeros(b, 1, h, w))

    max_coc = float(_plane_coc_extremes(planes.detach().cpu().double(), k.cpu().double(), focus.cpu().double(), h, w))
    if n_samples is None:
        n_samples = auto_n_samples(max_coc, max_samples=max_samples)
    u, wts = aperture.aperture_samples(int(n_samples), blades, rotation_deg, seed)
    u, wts = u.to(dev, dtype), wts.to(dev, dtype)
    n_traced = u.shape[0]  # what aperture_samples returned (odd counts round up), not what was asked for
    # Distance between neighbouring aperture samples, per px of CoC: the aperture area (pi for the disc,
    # (n/2) sin(2 pi/n) for the polygon) shared among the S traced samples.
    area = math.pi if blades == 0 else 0.5 * blades * math.sin(2 * math.pi / blades)
    spacing_unit = math.sqrt(area / n_traced) if (prefilter and n_traced > 1) else 0.0
    levels = 1 + max(0, math.ceil(math.log2(max(max_coc * spacing_unit, 1.0))))
    levels = min(levels, 1 + int(math.log2(max(min(h, w), 1))))

    alpha = alphas.to(dtype).clamp(0.0, 1.0)
    premult = torch.cat([images_linear.to(dtype) * alpha, alpha], dim=2)  # (B, L, 4, H, W)
    if backend == "cuda":
        colour_sum, weight = _layers_cuda(premult, planes, k, focus, u, wts, spacing_unit, levels)
        colour_sum, weight = colour_sum.to(dtype), weight.to(dtype)
    else:
        colour_sum, weight = _layers_torch(premult, planes, k, focus, u, wts, spacing_unit, levels)
    return colour_sum.to(images_linear.dtype), weight.to(images_linear.dtype)
