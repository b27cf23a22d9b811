"""Depth-dependent Gaussian blur: the naive baseline that lens-blur papers compare against.

Each pixel is blurred with a Gaussian of standard deviation ``sigma = |coc_px| / 2`` (a disc of radius r has
standard deviation r / sqrt(2) ~ 0.7 r; r / 2 is the usual softer choice), ignoring occlusion and aperture
shape. It is implemented as a gather from a small stack of uniformly blurred copies of the image at
``sigma_k = k * step`` px, interpolated linearly per pixel between the two nearest levels. Linear light in
and out, like the other renderers; pure PyTorch (a baseline needs no CUDA kernel).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._backend import check_blur_radius, check_shape


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding; ``sigma`` in px (0 returns the input)."""
    if sigma <= 0:
        return image
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = image.shape[1]
    # Reflect padding cannot reach further than side - 1 px, so on a small image the kernel is cut to that
    # half-width; each cut kernel is renormalised to sum 1 (otherwise small images darken: a uniform image
    # must stay uniform at any size).
    pad_h, pad_w = min(radius, image.shape[-2] - 1), min(radius, image.shape[-1] - 1)
    k_w = kernel[radius - pad_w : radius + pad_w + 1]
    k_h = kernel[radius - pad_h : radius + pad_h + 1]
    k_w = k_w / k_w.sum() if pad_w < radius else k_w
    k_h = k_h / k_h.sum() if pad_h < radius else k_h
    out = F.pad(image, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w else image
    out = F.conv2d(out, k_w.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, pad_h, pad_h), mode="reflect") if pad_h else out
    return F.conv2d(out, k_h.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def render_gaussian(image_linear: torch.Tensor, coc_px: torch.Tensor, *, step_px: float = 0.5) -> torch.Tensor:
    """Depth-dependent Gaussian blur baseline.

    Args:
        image_linear: (B, 3, H, W) linear light.
        coc_px: (B, 1, H, W) signed CoC radius in px; the blur is ``sigma = |coc_px| / 2``.
        step_px: spacing of the blur stack in sigma (px); smaller is more accurate and slower.

    Returns:
        (B, 3, H, W) linear light. Pixels with ``coc_px == 0`` are returned unchanged.
    """
    check_shape("image_linear", image_linear, (None, 3, None, None), "render_gaussian")
    b, _, h, w = image_linear.shape
    check_shape("coc_px", coc_px, (b, 1, h, w), "render_gaussian")
    if step_px <= 0:
        raise ValueError(f"render_gaussian: step_px must be > 0; got {step_px}")
    sigma = coc_px.abs().to(image_linear.dtype) / 2
    check_blur_radius(float(coc_px.abs().max()) if coc_px.numel() else 0.0, *image_linear.shape[-2:], "render_gaussian")
    levels = int(math.ceil(float(sigma.max()) / step_px)) if sigma.numel() else 0
    position = sigma / step_px  # fractional level index per pixel
    out = torch.zeros_like(image_linear)
    for k in range(levels + 1):
        weight = (1 - (position - k).abs()).clamp_min(0)  # linear interpolation (tent) between levels
        if bool((weight > 0).any()):
            out += weight * _gaussian_blur(image_linear, k * step_px)
    return out
