"""Colour transfer between sRGB-encoded values and linear light, the bottom of the stack (torch/numpy only).

Linear light is ``srgb ** gamma`` (the convention of BokehMe and the BokehDiff paper, docs/conventions.md);
``gamma = 1`` disables the conversion. :func:`gamma_in` / :func:`gamma_out` are the one-step model's transfer
around the VAE (``models/onestep.py``); ``gamma_out`` stays differentiable near 0.
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_GAMMA", "GAMMA_OUT_EPS", "srgb_to_linear", "linear_to_srgb", "gamma_in", "gamma_out"]

#: The default display gamma everywhere (renderers, data, the model): sRGB-like.
DEFAULT_GAMMA = 2.2
#: Below this, x ** (1 / gamma) has a derivative > 1e3 (gamma 2.2); :func:`gamma_out` keeps gradients finite.
GAMMA_OUT_EPS = 1e-4


def srgb_to_linear(image, gamma: float = DEFAULT_GAMMA):
    """sRGB-encoded values in [0, 1] -> linear light, ``x ** gamma`` (the convention of BokehMe and the
    BokehDiff paper; gamma = 1 disables). Works on numpy arrays and torch tensors of any shape."""
    if gamma == 1:
        return image
    return image.clip(0, 1) ** gamma


def linear_to_srgb(image, gamma: float = DEFAULT_GAMMA):
    """Inverse of :func:`srgb_to_linear`: linear light in [0, 1] -> sRGB-encoded ``x ** (1 / gamma)``."""
    if gamma == 1:
        return image
    return image.clip(0, 1) ** (1.0 / gamma)


def gamma_in(srgb: torch.Tensor, gamma: float = DEFAULT_GAMMA) -> torch.Tensor:
    """sRGB-encoded values in [0, 1] -> linear light ``x ** gamma`` (values are clamped to [0, 1] first; the
    inputs are data, never trained, so the clamp costs no useful gradient). gamma = 1 returns ``srgb``."""
    return srgb_to_linear(srgb, gamma)


def gamma_out(linear: torch.Tensor, gamma: float = DEFAULT_GAMMA) -> torch.Tensor:
    """Linear light -> sRGB ``x ** (1 / gamma)``, differentiable.

    No upper clamp (values above 1 keep their gradient, so a loss can pull them back). On ``[0, eps)``,
    ``eps = GAMMA_OUT_EPS = 1e-4``, the power, whose derivative diverges at 0, is replaced by its chord through
    the origin, ``eps ** (1 / gamma) * x / eps`` (continuous at ``eps``; 0 at 0, so black stays black); below 0
    (a decoder can overshoot) the output is ``x`` itself, slope 1, so a loss pulls such pixels back up without
    the chord's steep slope amplifying their gradient. gamma = 1 is the identity. Callers that need
    displayable images clamp the result to [0, 1].
    """
    if gamma == 1:
        return linear
    above = linear >= GAMMA_OUT_EPS
    # where (not clamp) keeps the power's gradient at exactly eps; below it the power is never differentiated.
    power = torch.where(above, linear, torch.full_like(linear, GAMMA_OUT_EPS)) ** (1.0 / gamma)
    toe = torch.where(linear >= 0, linear * (GAMMA_OUT_EPS ** (1.0 / gamma) / GAMMA_OUT_EPS), linear)
    return torch.where(above, power, toe)
