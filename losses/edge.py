"""Multi-scale, edge-weighted gradient loss (BokehDiff, Zhu et al., ICCV 2025, training objective).

Bokeh rendering must keep in-focus edges crisp and must not bleed blur across depth edges. A plain pixel
loss is dominated by flat regions, so the paper adds an L1 loss on image gradients that is up-weighted
where either the target or the all-in-focus (AIF) input has an edge, evaluated at three scales so that
both fine texture and the coarser blurred boundaries are supervised.

Exact definition (mean reduction). For an image ``I`` of shape ``(B, C, H, W)`` let

    dx(I)[b, c, i, j] = I[b, c, i, j + 1] - I[b, c, i, j]        shape (B, C, H, W - 1)
    dy(I)[b, c, i, j] = I[b, c, i + 1, j] - I[b, c, i, j]        shape (B, C, H - 1, W)

and ``R_s(I)`` the area resampling (box average, ``F.interpolate(mode="area")``) to
``(floor(H / s), floor(W / s))``; ``R_1`` is the identity. With ``P_s, T_s, A_s`` the resampled prediction,
target and AIF image, and for each direction ``d in {dx, dy}`` a per-pixel weight shared by all channels

    w_d,s[b, i, j] = 1 + max( mean_c |d(T_s)[b, c, i, j]|, mean_c |d(A_s)[b, c, i, j]| )

the loss is

    L_edge = sum_{s in (1, 2, 3)} (1 / s) * sum_{d in (dx, dy)} mean_{b, c, i, j} w_d,s * |d(P_s) - d(T_s)|

With ``weight_mode="per_channel"`` (the released training's definition) the weight is not averaged over
channels: ``w_d,s[b, c, i, j] = 1 + max(|d(T_s)[b, c, i, j]|, |d(A_s)[b, c, i, j]|)``.

The weights are built from the target and the AIF input only and are detached: they say *where* to look,
they are not something the generator can change. Each scale is weighted ``1 / s`` (not renormalised), so
identical gradients at all scales give ``(1 + 1/2 + 1/3)`` times the full-scale value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from losses._checks import check_images

DEFAULT_SCALES: tuple[int, ...] = (1, 2, 3)
#: ``channel_mean``: one weight per pixel (ours); ``per_channel``: one per pixel and channel (the release).
EDGE_WEIGHT_MODES = ("channel_mean", "per_channel")


def _finite_differences(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences: ``(B, C, H, W)`` -> ``dx (B, C, H, W-1)``, ``dy (B, C, H-1, W)``."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    return dx, dy


def _area_resample(image: torch.Tensor, scale: int) -> torch.Tensor:
    """Box-average ``(B, C, H, W)`` down to ``(H // scale, W // scale)``; identity for ``scale == 1``."""
    if scale == 1:
        return image
    height, width = image.shape[-2:]
    return F.interpolate(image, size=(height // scale, width // scale), mode="area")


def edge_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    aif: torch.Tensor,
    scales: Sequence[int] = DEFAULT_SCALES,
    weight_mode: str = "channel_mean",
) -> torch.Tensor:
    """Multi-scale edge-weighted L1 gradient loss; formula in the module docstring.

    Args:
        pred: predicted bokeh image, ``(B, 3, H, W)``, sRGB in [0, 1]; gradients flow to it.
        target: ground-truth bokeh image, ``(B, 3, H, W)``, sRGB in [0, 1].
        aif: all-in-focus input image, ``(B, 3, H, W)``, sRGB in [0, 1]; only used for the weights.
        scales: integer downsampling factors ``s`` (each weighted ``1 / s``); the paper uses ``(1, 2, 3)``.
        weight_mode: ``"channel_mean"`` or ``"per_channel"`` edge weights (module docstring).

    The formula is the same for images on another scale (e.g. [-1, 1], as the released training computes
    it): the caller maps all three images alike.

    Returns:
        Scalar tensor (dtype of ``pred``), >= 0, zero iff the gradients of ``pred`` and ``target`` agree
        at every scale.
    """
    check_images("edge_loss", pred=pred, target=target, aif=aif)
    if weight_mode not in EDGE_WEIGHT_MODES:
        raise ValueError(f"edge_loss: `weight_mode` must be one of {list(EDGE_WEIGHT_MODES)}; found {weight_mode!r}.")
    per_channel = weight_mode == "per_channel"
    if not scales or any(int(s) != s or s < 1 for s in scales):
        raise ValueError(f"edge_loss: `scales` must be positive integers such as (1, 2, 3); found {scales}.")
    height, width = pred.shape[-2:]
    coarsest = max(scales)
    if height // coarsest < 2 or width // coarsest < 2:
        raise ValueError(
            f"edge_loss: images of {height}x{width} px are too small for scale 1/{coarsest} (each scale "
            f"needs at least 2x2 px for a finite difference); use images of at least {2 * coarsest} px."
        )

    total = pred.new_zeros(())
    for scale in scales:
        pred_s, target_s, aif_s = (_area_resample(x, scale) for x in (pred, target, aif))
        for d_pred, d_target, d_aif in zip(
            _finite_differences(pred_s), _finite_differences(target_s), _finite_differences(aif_s.detach())
        ):
            d_target = d_target.detach()
            if per_channel:
                weight = 1.0 + torch.maximum(d_target.abs(), d_aif.abs())
            else:
                # One weight per pixel (channel mean of |grad|), so colour edges count once, not three times.
                weight = 1.0 + torch.maximum(
                    d_target.abs().mean(dim=1, keepdim=True), d_aif.abs().mean(dim=1, keepdim=True)
                )
            total = total + (weight * (d_pred - d_target).abs()).mean() / scale
    return total


class EdgeLoss(nn.Module):
    """Module form of :func:`edge_loss` (no parameters); ``forward(pred, target, aif) -> scalar``."""

    def __init__(self, scales: Sequence[int] = DEFAULT_SCALES, weight_mode: str = "channel_mean") -> None:
        super().__init__()
        if weight_mode not in EDGE_WEIGHT_MODES:
            raise ValueError(f"EdgeLoss: `weight_mode` must be one of {list(EDGE_WEIGHT_MODES)}; found {weight_mode!r}.")
        self.scales = tuple(scales)
        self.weight_mode = weight_mode

    def forward(self, pred: torch.Tensor, target: torch.Tensor, aif: torch.Tensor) -> torch.Tensor:
        return edge_loss(pred, target, aif, self.scales, self.weight_mode)

    def extra_repr(self) -> str:
        return f"scales={self.scales}, weight_mode={self.weight_mode!r}"
