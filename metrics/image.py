"""Full-reference image metrics as papers on lens blur report them, plus their restriction to a pixel mask.

All inputs are ``(B, 3, H, W)`` sRGB in [0, 1] (metrics are computed on the encoded images, as published
numbers for EBB!/BLB are). Masks are ``(B, 1, H, W)`` booleans; a metric "inside a mask" averages its
per-pixel map over the mask (PSNR: MSE over the masked pixels, then ``10 log10(1 / MSE)``).

- PSNR: ``10 log10(1 / MSE)`` with the peak value 1 (per image, then averaged over images), capped at
  :data:`PSNR_MAX_DB` = 100 dB (MSE <= 1e-10, identical images included), as several benchmarks do: an
  infinite PSNR would make the mean over images infinite and hide every other image.
- SSIM: ``kornia.metrics.ssim`` with an 11-px Gaussian window (Wang et al., TIP 2004) and 'same' padding,
  so the SSIM map has the image size and can be masked; the full-image value is the mean of that map.

:func:`psnr_per_image` and :func:`ssim_per_image` are the whole-image values: ``evaluate.py`` (through
:func:`metrics.report.score`) and training validation (:func:`training.loop.validate`) both report these, so a
validation number and an evaluation number of the same image pair are the same number.
- LPIPS (Zhang et al., CVPR 2018), VGG and AlexNet trunks, via the ``lpips`` package, with its spatial map.
- DISTS (Ding et al., TPAMI 2020) via ``piq``; a global score only, so it has no band/outside values.

Learned metrics need pretrained ImageNet trunks that are downloaded at run time. When they cannot be
obtained (offline), :func:`load_learned_metrics` reports them as unavailable with the reason: they are never
computed with random weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import kornia
import torch

SSIM_WINDOW = 11
# PSNR cap in dB: the PSNR of an MSE of 1e-10 (peak 1). Identical images score this, not +inf.
PSNR_MAX_DB = 100.0


def mse_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared error averaged over channels: ``(B, 1, H, W)``."""
    _check_pair(pred, target)
    return (pred.float() - target.float()).pow(2).mean(dim=1, keepdim=True)


def ssim_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM map ``(B, 1, H, W)`` (channel mean of kornia's per-channel map), values in [-1, 1]."""
    _check_pair(pred, target)
    return kornia.metrics.ssim(pred.float(), target.float(), SSIM_WINDOW, max_val=1.0).mean(dim=1, keepdim=True)


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Whole-image PSNR in dB per image, ``(B,)``: :func:`psnr_from_mse` of the mean of :func:`mse_map`
    (capped at :data:`PSNR_MAX_DB`). Inputs ``(B, 3, H, W)`` sRGB in [0, 1]."""
    return psnr_from_mse(masked_mean(mse_map(pred, target), None))


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Whole-image SSIM per image, ``(B,)`` in [-1, 1]: the mean of :func:`ssim_map` over all pixels.
    Inputs ``(B, 3, H, W)`` sRGB in [0, 1], at least :data:`SSIM_WINDOW` px on each side."""
    return masked_mean(ssim_map(pred, target), None)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of a ``(B, 1, H, W)`` map per image over ``mask`` (all pixels if None): ``(B,)``; NaN where the
    mask is empty (the metric is undefined there, and reports show it as such rather than as 0)."""
    if mask is None:
        return values.flatten(1).mean(dim=1)
    mask = mask.to(values.dtype)
    count = mask.flatten(1).sum(dim=1)
    total = (values * mask).flatten(1).sum(dim=1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for peak value 1, capped at :data:`PSNR_MAX_DB` (identical images, MSE 0, score the cap);
    NaN stays NaN (an empty mask)."""
    return 10.0 * torch.log10(1.0 / mse.clamp_min(10.0 ** (-PSNR_MAX_DB / 10.0)))


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(
            f"expected prediction and ground truth of one shape (B, 3, H, W); got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}. Render at the ground truth's size (or resize the prediction) first."
        )


@dataclass
class LearnedMetric:
    """A learned metric that loaded: ``fn(pred, target) -> (B, 1, h, w)`` map or ``(B,)`` global scores."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    spatial: bool


def _lpips(net: str, device: torch.device) -> LearnedMetric:
    import lpips

    model = lpips.LPIPS(net=net, spatial=True, verbose=False).to(device).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)

    def fn(pred, target):
        with torch.no_grad():
            return model(pred * 2 - 1, target * 2 - 1)  # lpips expects [-1, 1]

    return LearnedMetric(f"lpips_{net}", fn, spatial=True)


def _dists(device: torch.device) -> LearnedMetric:
    import piq

    model = piq.DISTS(reduction="none").to(device).eval()

    def fn(pred, target):
        with torch.no_grad():
            return model(pred, target)

    return LearnedMetric("dists", fn, spatial=False)


LEARNED_METRICS: dict[str, Callable[[torch.device], LearnedMetric]] = {
    "lpips_vgg": lambda device: _lpips("vgg", device),
    "lpips_alex": lambda device: _lpips("alex", device),
    "dists": _dists,
}


def load_learned_metrics(
    names, device: torch.device, factories: dict | None = None
) -> tuple[list[LearnedMetric], dict[str, str]]:
    """Build the requested learned metrics; return ``(loaded, unavailable)`` with ``unavailable`` mapping a
    metric name to the reason (e.g. the download error when the ImageNet trunk cannot be fetched)."""
    factories = LEARNED_METRICS if factories is None else factories
    loaded, unavailable = [], {}
    for name in names:
        if name not in factories:
            raise ValueError(f"unknown metric {name!r}; choose from {sorted(factories)}")
        try:
            loaded.append(factories[name](device))
        except (OSError, ImportError, RuntimeError) as error:  # download/file/state-dict failures; bugs propagate
            unavailable[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    return loaded, unavailable
