"""Choosing the focal disparity ``disp_focus`` for an image.

Every function returns one float in [0, 1] on the repository's disparity scale (1 = nearest), the value
that makes ``coc_px = K * (disparity - disp_focus)`` zero on the focused surface (docs/conventions.md). The CLI flags
that feed these functions (``--focus_disparity``, ``--focus_xy``) are named in the errors so a user knows
what to change.

- :func:`focus_from_value`: a value given by the user, validated.
- :func:`focus_from_pixel`: the median disparity in a small window around a clicked pixel.
- :func:`focus_from_mask`: the median disparity of a subject mask (the paper's test protocol focuses on
  the salient subject).
- :func:`focus_from_gt`: with a ground-truth bokeh image, the disparity whose pixels stay sharp in the GT
  (in-focus edge agreement); for test sets that do not store the focus distance.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_map(values, name: str) -> np.ndarray:
    """(1, H, W) or (H, W) numpy/torch -> float64 numpy (H, W)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise ValueError(f"{name}: expected shape (1, H, W) or (H, W), got {tuple(values.shape)}")
    return values


def focus_from_value(value) -> float:
    """Validate a focal disparity given by the user (``--focus_disparity``): a finite number in [0, 1]."""
    try:
        value = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--focus_disparity must be a number in [0, 1] (1 = nearest), got {value!r}") from error
    if not np.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"--focus_disparity must be in [0, 1] on the disparity scale (1 = nearest, 0 = farthest), got {value}"
        )
    return value


def focus_from_pixel(disparity, x: int, y: int, *, window: int = 5) -> float:
    """Median disparity in a ``window`` x ``window`` box centred on column ``x``, row ``y`` (``--focus_xy``).

    Args:
        disparity: ``(1, H, W)`` or ``(H, W)`` numpy array or torch tensor in [0, 1], 1 = nearest.
        x, y: pixel column and row (0-based, origin top-left) in the disparity map's resolution.
        window: side of the box in pixels (odd; clipped at the image border). The median rather than the
            single pixel keeps a click on a depth edge or a noisy estimate from picking an outlier.

    Returns:
        ``disp_focus`` in [0, 1].
    """
    values = _as_map(disparity, "disparity")
    height, width = values.shape
    if int(x) != x or int(y) != y:
        raise ValueError(f"--focus_xy must be integer pixel coordinates, got ({x}, {y})")
    x, y = int(x), int(y)
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(
            f"--focus_xy ({x}, {y}) is outside the image: x (column) must be in [0, {width - 1}] and "
            f"y (row) in [0, {height - 1}] for a {width}x{height} disparity map"
        )
    if window < 1:
        raise ValueError(f"window must be >= 1 pixel, got {window}")
    half = window // 2
    patch = values[max(0, y - half) : y + half + 1, max(0, x - half) : x + half + 1]
    return float(np.clip(np.median(patch), 0.0, 1.0))


def focus_from_mask(disparity, mask, *, threshold: float = 0.5) -> float:
    """Median disparity over the subject mask (pixels with ``mask > threshold``).

    Args:
        disparity: ``(1, H, W)`` or ``(H, W)`` in [0, 1], 1 = nearest (numpy or torch).
        mask: same spatial size, values in [0, 1] (soft masks are thresholded).

    Returns:
        ``disp_focus`` in [0, 1]. The median is robust to the mask's soft border, which straddles the
        background.
    """
    values = _as_map(disparity, "disparity")
    mask = _as_map(mask, "mask")
    if mask.shape != values.shape:
        raise ValueError(
            f"mask is {mask.shape[1]}x{mask.shape[0]} but the disparity is {values.shape[1]}x{values.shape[0]}; "
            "resize the mask to the disparity's size (or pass --focus_disparity / --focus_xy instead)"
        )
    selected = mask > threshold
    if not selected.any():
        raise ValueError(
            f"the subject mask is empty (no pixel > {threshold}); cannot focus on it. Provide a non-empty "
            "mask, or choose the focus with --focus_disparity or --focus_xy"
        )
    return float(np.clip(np.median(values[selected]), 0.0, 1.0))


def _gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """Luma gradient magnitude (central differences) of an ``(3, H, W)`` or ``(H, W)`` image."""
    if image.ndim == 3:
        image = image.mean(axis=0)
    gy, gx = np.gradient(image)
    return np.hypot(gx, gy)


def focus_from_gt(image, gt, disparity, *, n_bins: int = 64, edge_quantile: float = 0.9) -> float:
    """Estimate the focal disparity from a ground-truth bokeh image (in-focus edge agreement).

    In-focus surfaces keep their edges in the GT, so at strong all-in-focus edges the ratio
    ``|grad gt| / |grad image|`` is near 1 where the scene is in focus and small where it is blurred. We
    histogram these edge pixels by disparity and return the disparity bin with the highest median ratio
    (ties are broken towards bins with more edges). Only the focus is taken from the GT; nothing of the GT
    reaches the model's input.

    Args:
        image: all-in-focus input ``(3, H, W)`` in [0, 1] (sRGB).
        gt: ground-truth bokeh ``(3, H, W)`` in [0, 1], same size.
        disparity: ``(1, H, W)`` in [0, 1], 1 = nearest.
        n_bins: disparity bins across [0, 1].
        edge_quantile: only pixels whose all-in-focus gradient is above this quantile count as edges.

    Returns:
        ``disp_focus`` in [0, 1] (a bin centre refined by the median disparity of its edge pixels).
    """
    image = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    gt = gt.detach().cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
    values = _as_map(disparity, "disparity")
    if image.shape[-2:] != values.shape or gt.shape[-2:] != values.shape:
        raise ValueError(
            f"focus_from_gt: image {image.shape}, gt {gt.shape} and disparity {values.shape} must share H, W"
        )
    grad_in = _gradient_magnitude(image.astype(np.float64))
    grad_gt = _gradient_magnitude(gt.astype(np.float64))
    threshold = np.quantile(grad_in, edge_quantile)
    edges = grad_in > max(threshold, 1e-3)
    if edges.sum() < 16:
        raise ValueError("focus_from_gt: the image has too few edges to locate the focus; give the focus explicitly")
    ratio = np.clip(grad_gt[edges] / grad_in[edges], 0.0, 2.0)
    edge_disp = values[edges]
    bins = np.clip((edge_disp * n_bins).astype(int), 0, n_bins - 1)
    best, best_key = None, None
    for b in np.unique(bins):
        in_bin = bins == b
        count = int(in_bin.sum())
        if count < 8:  # too few edges for a stable median
            continue
        key = (float(np.median(ratio[in_bin])), count)
        if best_key is None or key > best_key:
            best, best_key = b, key
    if best is None:
        raise ValueError("focus_from_gt: no disparity range has enough edges; give the focus explicitly")
    return float(np.clip(np.median(edge_disp[bins == best]), 0.0, 1.0))
