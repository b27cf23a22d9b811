"""Monocular disparity from Depth Anything (V1/V2) through transformers, in the repository's convention.

Output convention (docs/conventions.md): disparity ``(B, 1, H, W)`` float32 in [0, 1], **1 = nearest**, at the input
image's size.

Orientation, decided from the model's documented output rather than guessed:

- ``depth_estimation_type == "relative"`` (the ``Depth-Anything-V2-{Small,Base,Large}-hf`` checkpoints): the
  network predicts an affine-invariant *disparity* (inverse depth), larger = nearer. The Depth Anything paper
  (Yang et al. 2024, Sec. 3.1) trains on ``d = 1 / t`` normalised per image, the authors confirm the output is
  disparity (github.com/LiheYoung/Depth-Anything issue 72, DepthAnything/Depth-Anything-V2 issue 213), and in
  transformers' ``DepthAnythingDepthEstimationHead`` the relative head ends in an unbounded ReLU (a scale-
  and shift-free quantity), whereas the metric head ends in ``sigmoid * max_depth`` (depth in metres). So the
  relative output is min-max normalised as it is; it is **not** inverted (inverting it puts the far
  background at 1, the bug of the public script).
- ``depth_estimation_type == "metric"`` (``Depth-Anything-V2-Metric-*-hf``): the output is depth in metres,
  converted with ``1 / depth`` first.

Per-image min-max normalisation is the right (and only possible) step for relative disparity: it is defined
up to an unknown scale and shift, so no absolute ``K`` can be attached to it anyway.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data.io import clean_disparity
from models.hub import LocalPathMissingError, WeightsUnavailableError, check_source, local_source

__all__ = [
    "DEFAULT_DEPTH_MODEL",
    "DepthEstimator",
    "WeightsUnavailableError",
    "load_depth_estimator",
    "network_size",
    "prediction_to_disparity",
    "resolve_source",
]

DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Large-hf"

# Depth Anything's documented preprocessing (preprocessor_config.json of the -hf checkpoints): keep the
# aspect ratio, shorter side at least 518 px, both sides multiples of the ViT patch (14), bicubic, ImageNet
# mean/std.
DEPTH_ANYTHING_INPUT_SIZE = 518
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def prediction_to_disparity(prediction: np.ndarray, *, estimation_type: str, source: str = "depth") -> np.ndarray:
    """Convert one Depth Anything prediction ``(H, W)`` to disparity ``(1, H, W)`` float32 in [0, 1], 1 = nearest.

    ``estimation_type="relative"``: ``prediction`` is relative inverse depth (larger = nearer); it is min-max
    normalised, not inverted. ``"metric"``: ``prediction`` is depth in metres; it becomes ``1 / depth`` first.
    Non-finite values (and non-positive metric depth) are filled from the nearest valid pixel by
    :func:`data.io.clean_disparity`, with an :class:`data.io.InputWarning`.
    """
    if estimation_type == "relative":
        return clean_disparity(prediction, source=source, is_depth=False, normalise="always")
    if estimation_type == "metric":
        return clean_disparity(prediction, source=source, is_depth=True, normalise="always")
    raise ValueError(f"estimation_type must be 'relative' or 'metric', got {estimation_type!r}")


def network_size(height: int, width: int, *, shorter_side: int, multiple: int) -> tuple[int, int]:
    """The ``(h, w)`` the network sees: aspect kept, shorter side ~``shorter_side`` px, sides multiples of
    ``multiple`` (the ViT patch size, so no patch is cropped), each side at least one patch."""
    scale = shorter_side / min(height, width)
    h = max(multiple, int(round(height * scale / multiple)) * multiple)
    w = max(multiple, int(round(width * scale / multiple)) * multiple)
    return h, w


class DepthEstimator:
    """Disparity from an ``AutoModelForDepthEstimation`` Depth Anything model.

    ``__call__(images)`` takes sRGB images ``(B, 3, H, W)`` in [0, 1] (any device; they are moved to the
    model's device and dtype) and returns disparity ``(B, 1, H, W)`` float32 in [0, 1], 1 = nearest, on the
    images' device, at the images' size (the prediction is resized back bilinearly).
    """

    def __init__(self, model: torch.nn.Module, *, input_size: int = DEPTH_ANYTHING_INPUT_SIZE):
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type != "depth_anything":
            raise ValueError(
                f"depth model of type {model_type!r} is not supported: the disparity orientation is verified "
                "for Depth Anything only. Use a depth-anything/Depth-Anything-V2-*-hf checkpoint (or a local copy)."
            )
        self.model = model.eval()
        self.estimation_type = getattr(config, "depth_estimation_type", "relative")
        patch = getattr(config, "patch_size", 14)
        self.multiple = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        self.input_size = int(input_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The network's raw output for sRGB images ``(B, 3, H, W)`` in [0, 1], resized back (bilinear) to
        ``(B, H, W)`` float32 on the model's device: relative inverse depth, or metric depth in metres
        (``self.estimation_type``). :meth:`disparities` / ``__call__`` convert it to the disparity convention."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W) sRGB in [0, 1], got shape {tuple(images.shape)}")
        height, width = images.shape[-2:]
        x = images.to(self.device, torch.float32)
        size = network_size(height, width, shorter_side=self.input_size, multiple=self.multiple)
        # Bicubic overshoots at edges; clamp back to the valid range before normalising.
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.dtype)
        prediction = self.model(pixel_values=x).predicted_depth  # (B, h, w), see module docstring
        return F.interpolate(prediction.float()[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]

    def disparities(self, images: torch.Tensor) -> list[np.ndarray | ValueError]:
        """Per image of the batch: disparity ``(1, H, W)`` float32 in [0, 1] (1 = nearest), or the
        ``ValueError`` that made its prediction unusable (e.g. no finite value), so one bad image does not
        take its batch with it. Errors of the forward pass itself (shape, out of memory) still raise."""
        results: list[np.ndarray | ValueError] = []
        for index, p in enumerate(self.predict(images).cpu().numpy()):
            try:
                results.append(prediction_to_disparity(p, estimation_type=self.estimation_type,
                                                       source=f"depth prediction for image {index} of the batch"))
            except ValueError as error:
                results.append(error)
        return results

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Disparity ``(B, 1, H, W)`` float32 on the images' device; raises the first per-image ``ValueError``
        (use :meth:`disparities` to keep the good images of a batch)."""
        results = self.disparities(images)
        for result in results:
            if isinstance(result, ValueError):
                raise result
        return torch.from_numpy(np.stack(results)).to(images.device)


def resolve_source(source: str, *, what: str) -> str:
    """A local folder (returned expanded) or a hub id ``owner/name`` (returned as is). Something that can only
    be a path (absolute, relative with ``./``, ``~``, or deeper than ``owner/name``) must exist."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return str(folder)
    check_source(source, what)
    if folder.exists():
        raise LocalPathMissingError(f"{what}: '{source}' is a file; pass the model's folder (config.json + weights)")
    return source


def load_depth_estimator(
    source: str = DEFAULT_DEPTH_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    input_size: int = DEPTH_ANYTHING_INPUT_SIZE,
) -> DepthEstimator:
    """Load Depth Anything from a hub id (e.g. ``depth-anything/Depth-Anything-V2-Small-hf``) or a local
    folder holding ``config.json`` + weights (what ``save_pretrained`` or ``hf download REPO --local-dir DIR`` writes).

    ``device``: where the model runs (the caller decides, e.g. ``prepare_data.py --device``); ``None`` leaves it
    where ``from_pretrained`` put it. ``__call__`` follows the model's device whatever it is.

    Raises :class:`WeightsUnavailableError` when the weights cannot be loaded (no network and not cached,
    wrong id, missing folder); its message says where they were looked for.
    """
    from transformers import AutoModelForDepthEstimation

    source = resolve_source(source, what="depth model")
    # Hub unreachable: the cached snapshot's folder, or HubUnreachableError at once (models/hub.py).
    source = local_source(source, "depth model")
    try:
        model = AutoModelForDepthEstimation.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
        raise WeightsUnavailableError(f"cannot load depth model '{source}': {first_line}") from error
    return DepthEstimator(model if device is None else model.to(device), input_size=input_size)
