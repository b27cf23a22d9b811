"""Compositing and ray-traced rendering of layered windows (torch, batched; device and dtype follow the inputs).

The ground truth goes through ``kernels.render_layers`` (BokehMe's layered ray tracer, Peng et al., CVPR 2022)
in linear light (``srgb ** gamma``, :mod:`kernels.colour`); the window is padded by the largest CoC radius so
every kept pixel sees all the light that reaches it, and the padding is cropped away. The all-in-focus image
is the same front-to-back composite in linear light, so at ``K = 0`` the target equals the input exactly.
"""

from __future__ import annotations

import torch

from kernels import render_layers
from kernels.colour import DEFAULT_GAMMA, linear_to_srgb, srgb_to_linear


def plane_disparity(planes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-layer disparity maps ``(B, L, 1, H, W)`` from planes ``(B, L, 3)`` = (A, B, C), pixel coords."""
    y = torch.arange(height, device=planes.device, dtype=planes.dtype).view(1, 1, height, 1)
    x = torch.arange(width, device=planes.device, dtype=planes.dtype).view(1, 1, 1, width)
    a, b, c = (planes[..., i, None, None] for i in range(3))
    return ((1.0 - a * x - b * y) / c).unsqueeze(2)


def composite_window(images_srgb, alphas, planes, *, gamma: float = DEFAULT_GAMMA):
    """All-in-focus composite, disparity and foreground coverage of a layered window (front to back).

    Args:
        images_srgb: ``(B, L, 3, H, W)`` straight (not premultiplied) sRGB colour in [0, 1], NEAR to FAR.
        alphas: ``(B, L, 1, H, W)`` in [0, 1]; the last layer is the opaque background.
        planes: ``(B, L, 3)`` (A, B, C), disparity = (1 - A*x - B*y) / C in window pixel coordinates.

    Returns:
        ``aif`` (B, 3, H, W) sRGB [0, 1] composited in linear light (what the renderer returns at K = 0),
        ``disparity`` (B, 1, H, W) in [0, 1] (layer disparities blended with the same visibility weights, so
        soft edges get intermediate values) and ``coverage`` (B, 1, H, W), the visible foreground fraction.
    """
    transmittance = torch.cumprod(1.0 - alphas, dim=1)
    # Visibility of layer l = alpha_l * prod_{m<l} (1 - alpha_m): over-compositing front to back.
    weights = alphas * torch.cat([torch.ones_like(transmittance[:, :1]), transmittance[:, :-1]], dim=1)
    aif_linear = (weights * srgb_to_linear(images_srgb, gamma)).sum(dim=1)
    disparity = (weights * plane_disparity(planes, *images_srgb.shape[-2:]).to(weights.dtype)).sum(dim=1)
    coverage = weights[:, :-1].sum(dim=1)
    return linear_to_srgb(aif_linear, gamma), disparity.clamp(0.0, 1.0), coverage.clamp(0.0, 1.0)


def render_window(
    images_srgb: torch.Tensor,
    alphas: torch.Tensor,
    planes: torch.Tensor,
    K: torch.Tensor,
    disp_focus: torch.Tensor,
    *,
    pad: int,
    gamma: float = DEFAULT_GAMMA,
    n_samples: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    impl: str = "auto",
) -> torch.Tensor:
    """Ground-truth bokeh of a padded layered window with ``kernels.render_layers``, padding cropped.

    Args:
        images_srgb, alphas, planes: as :func:`composite_window`, window of ``(H + 2*pad) x (W + 2*pad)``.
        K: ``(B,)`` px of CoC radius per unit disparity; disp_focus: ``(B,)`` in [0, 1].
        pad: padding to crop (px), at least the largest CoC radius so border pixels get all their light.
        n_samples: aperture samples (renderer default when None); max_samples: cap of the renderer's
            automatic count (its default when None; the mip prefilter covers sparser sampling, at the price of
            a slightly softer bokeh); seed: the renderer's sampling seed.

    Returns:
        ``(B, 3, H, W)`` sRGB bokeh in [0, 1]: ``(sum / weight) ** (1 / gamma)`` of the renderer's output.
    """
    kwargs = {} if n_samples is None else {"n_samples": int(n_samples)}
    if max_samples is not None:
        kwargs["max_samples"] = int(max_samples)
    dtype = images_srgb.dtype
    colour_sum, weight = render_layers(
        srgb_to_linear(images_srgb, gamma), alphas.to(dtype), planes.to(dtype), K.to(dtype), disp_focus.to(dtype),
        seed=int(seed), impl=impl, **kwargs,
    )
    bokeh_linear = colour_sum / weight.clamp_min(1e-6)
    if pad:
        bokeh_linear = bokeh_linear[..., pad:-pad, pad:-pad]
    return linear_to_srgb(bokeh_linear.clamp(0.0, 1.0), gamma)


def shift_planes(planes: torch.Tensor, offset: int) -> torch.Tensor:
    """Planes ``(..., 3)`` = (A, B, C) re-expressed for a window whose origin lies ``offset`` px right of and
    below the old one: ``d(x' + o, y' + o) = (s - A x' - B y') / C`` with ``s = 1 - (A + B) o = C d(o, o) > 0``,
    i.e. ``(A, B, C) / s``."""
    if offset == 0:
        return planes
    return planes / (1.0 - (planes[..., 0:1] + planes[..., 1:2]) * offset)
