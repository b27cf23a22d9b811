"""Subject masks: a small segmenter interface and its BiRefNet implementation.

A segmenter maps sRGB images ``(B, 3, H, W)`` in [0, 1] to soft subject masks ``(B, 1, H, W)`` float32 in
[0, 1] (1 = subject), on the images' device and at the images' size. Implement :meth:`Segmenter.segment`;
:meth:`Segmenter.__call__` checks shapes and ranges at the boundary so every implementation is held to the
same contract.

BiRefNet (Zheng et al., "Bilateral Reference for High-Resolution Dichotomous Image Segmentation", 2024) is
loaded through transformers' remote code (``ZhengPeng7/BiRefNet``, ``trust_remote_code=True``: the model's
Python code comes from that repository or from the local folder given). A hub id is loaded at a pinned commit
(:data:`BIREFNET_REVISION`), so code pushed to the repository later does not run unreviewed. Its documented use: resize to
1024 x 1024, normalise with ImageNet mean/std, take the last of the returned predictions (logits), sigmoid.
"""

from __future__ import annotations

import abc
from pathlib import Path

import torch
import torch.nn.functional as F

from models.depth import IMAGENET_MEAN, IMAGENET_STD, resolve_source
from models.hub import WeightsUnavailableError, local_source

__all__ = ["BIREFNET_REVISION", "DEFAULT_MASK_MODEL", "PINNED_REVISIONS", "BiRefNetSegmenter", "Segmenter",
           "load_birefnet", "mask_model_revision"]

DEFAULT_MASK_MODEL = "ZhengPeng7/BiRefNet"
# BiRefNet runs Python code from its hub repository (trust_remote_code), so a hub id is loaded at a fixed
# commit: whatever is pushed to the repository later does not run here until this pin is moved. A snapshot
# of this commit is what other projects cache and pin (models--ZhengPeng7--BiRefNet/snapshots/<this>).
BIREFNET_REVISION = "26e7919b869d089e5096e898c0492898f935604c"
# Hub ids with a pinned revision; another hub id needs an explicit revision (its code is unreviewed here).
PINNED_REVISIONS = {DEFAULT_MASK_MODEL: BIREFNET_REVISION}
BIREFNET_RESOLUTION = 1024


class Segmenter(abc.ABC):
    """Subject segmenter: ``images (B, 3, H, W)`` sRGB in [0, 1] -> ``masks (B, 1, H, W)`` float32 in [0, 1]."""

    @abc.abstractmethod
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Return masks ``(B, 1, H, W)`` in [0, 1] for validated images ``(B, 3, H, W)`` in [0, 1]."""

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) sRGB in [0, 1], got shape {tuple(images.shape)}")
        masks = self.segment(images)
        expected = (images.shape[0], 1, *images.shape[-2:])
        if tuple(masks.shape) != expected:
            raise ValueError(f"{type(self).__name__} returned masks of shape {tuple(masks.shape)}, expected {expected}")
        if not torch.isfinite(masks).all() or masks.min() < 0 or masks.max() > 1:
            raise ValueError(f"{type(self).__name__} returned mask values outside [0, 1] (or non-finite)")
        return masks.to(device=images.device, dtype=torch.float32)


class BiRefNetSegmenter(Segmenter):
    """BiRefNet (or any module with its output convention) as a :class:`Segmenter`.

    ``module(x)`` takes ImageNet-normalised images ``(B, 3, R, R)`` (``R = resolution``, 1024 for the
    published weights) and returns logits ``(B, 1, R, R)``, or a list/tuple of them whose last entry is the
    final prediction (BiRefNet returns its multi-scale predictions, coarse to fine). The mask is
    ``sigmoid(logits)`` resized back to the image size (bilinear).
    """

    def __init__(self, module: torch.nn.Module, *, resolution: int = BIREFNET_RESOLUTION):
        self.module = module.eval()
        self.resolution = int(resolution)

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        parameter = next(self.module.parameters())
        height, width = images.shape[-2:]
        x = images.to(parameter.device, torch.float32)
        # BiRefNet was trained on square 1024 x 1024 inputs (aspect not kept), so resize the same way.
        x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=True)
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        output = self.module(((x - mean) / std).to(parameter.dtype))
        if isinstance(output, (list, tuple)):
            output = output[-1]
        logits = getattr(output, "logits", output)
        if logits.ndim != 4 or logits.shape[1] != 1:
            raise ValueError(f"segmentation module returned logits of shape {tuple(logits.shape)}, expected (B, 1, h, w)")
        masks = torch.sigmoid(logits.float())
        masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
        return masks.clamp(0, 1)


def mask_model_revision(source: str, revision: str | None) -> str | None:
    """The hub revision ``source`` is loaded at: ``revision`` if given, else the pinned one
    (:data:`PINNED_REVISIONS`); ``None`` for a local folder. A hub id without either is refused: its remote
    code would run at whatever commit the repository holds today."""
    if Path(source).expanduser().is_dir():
        if revision is not None:
            raise ValueError(f"mask model '{source}' is a local folder; a revision ({revision}) applies to hub ids only")
        return None
    revision = revision or PINNED_REVISIONS.get(source)
    if revision is None:
        raise ValueError(
            f"mask model '{source}' is a hub id with no pinned revision, and loading it runs the Python code of that "
            f"repository: review its code and pass the commit (prepare_data.py --mask_revision COMMIT), or "
            f"--mask_revision main to run whatever it holds today"
        )
    return revision


def load_birefnet(
    source: str = DEFAULT_MASK_MODEL,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    resolution: int = BIREFNET_RESOLUTION,
) -> BiRefNetSegmenter:
    """Load BiRefNet from a hub id or a local folder (``config.json`` with ``auto_map``, its ``*.py`` files and
    the weights) via ``AutoModelForImageSegmentation.from_pretrained(..., trust_remote_code=True)``.

    ``revision``: the hub commit (or branch) to load; default the pinned one (:data:`BIREFNET_REVISION` for
    ``ZhengPeng7/BiRefNet``, see :func:`mask_model_revision`). The remote code runs at that commit.

    ``device``: where the model runs (the caller decides); ``None`` leaves it where ``from_pretrained`` put it.

    Raises :class:`models.hub.WeightsUnavailableError` when the weights (or a package their code imports)
    are unavailable.
    """
    from transformers import AutoModelForImageSegmentation

    source = resolve_source(source, what="mask model")
    revision = mask_model_revision(source, revision)
    # Hub unreachable: the cached snapshot's folder, or HubUnreachableError at once (models/hub.py).
    local = local_source(source, "mask model", revision=revision)
    pinned = {} if Path(local).is_dir() else {"revision": revision, "code_revision": revision}
    try:
        module = AutoModelForImageSegmentation.from_pretrained(local, trust_remote_code=True, **pinned)
    except (OSError, ValueError, ImportError) as error:
        first_line = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
        raise WeightsUnavailableError(f"cannot load mask model '{source}': {first_line}") from error
    return BiRefNetSegmenter(module.to(device=device, dtype=dtype), resolution=resolution)
