"""Assets of the synthesised scenes: RGBA foreground cut-outs and background photos, loaded and resized.

Images are ``(C, H, W)`` float32 sRGB in [0, 1]. A file that cannot make a sample raises
:class:`BadSampleError` with a short ``reason`` (one of :data:`SKIP_REASONS`), so the on-the-fly dataset can
skip it and report it (``data/synthesis/dataset.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from data.io import IMAGE_EXTENSIONS, has_alpha_channel, read_image

ALPHA_EPS = 1.0 / 255.0  # alpha below one 8-bit step counts as empty

#: Why a sample was skipped (:attr:`BadSampleError.reason`), as counted by ``OnTheFlyDataset.skip_report``.
SKIP_REASONS = ("unreadable", "empty_alpha", "no_alpha", "fg_larger_than_bg", "bg_smaller_than_crop")


class TrainingDataError(RuntimeError):
    """``--train_data_dir`` cannot give a single training sample (an empty ``fg/`` or ``bg/``, no usable
    foreground or background); the message names the folder, what is wrong with its files and the fix."""


class BadSampleError(ValueError):
    """A foreground/background (pair) that cannot make a training sample; ``reason`` is a short key."""

    def __init__(self, message: str, *, reason: str, key: str):
        super().__init__(message)
        self.reason = reason
        self.key = key


def list_images(folder: Path) -> list[Path]:
    """The image files of ``folder`` (extensions :data:`data.io.IMAGE_EXTENSIONS`), sorted by path."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


@dataclass
class Foreground:
    """An RGBA cut-out cropped to its alpha bounding box: ``rgb`` (3, h, w) sRGB [0, 1], ``alpha`` (1, h, w)."""

    rgb: np.ndarray
    alpha: np.ndarray
    source: str = ""


def load_foreground(path: str | Path) -> Foreground:
    """Read an RGBA image and crop it to its alpha bounding box (alpha > 1/255).

    Raises :class:`BadSampleError` (reason ``"empty_alpha"``) when no pixel has alpha, ``"no_alpha"`` when the
    file has no alpha channel at all (RGB, JPEG: it would be pasted as an opaque rectangle), ``"unreadable"``
    when the file cannot be decoded. (Cut-outs made from files whose alpha must be derived, like
    scikit-image's ``logo.png``, go through :func:`crop_to_alpha` directly, see
    ``data.synthesis.samples.logo_cutout``.)
    """
    try:
        rgb, alpha = read_image(path, with_alpha=True)
    except (ValueError, OSError) as error:
        raise BadSampleError(f"unreadable foreground '{path}': {error}", reason="unreadable", key=str(path)) from error
    # read_image gives an all-ones alpha for files without one; only then look at the stored channels (a file
    # with a real, fully opaque alpha channel is used as stored).
    if float(alpha.min()) >= 1.0 and not has_alpha_channel(path):
        kind = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "RGB or gray"
        raise BadSampleError(
            f"foreground '{path}' has no alpha channel ({kind} file); it would be pasted as an opaque "
            "rectangle. Save cut-outs as PNG with alpha (RGBA)",
            reason="no_alpha",
            key=str(path),
        )
    return crop_to_alpha(rgb, alpha, source=str(path))


def crop_to_alpha(rgb: np.ndarray, alpha: np.ndarray, *, source: str = "") -> Foreground:
    """Crop ``rgb`` (3, H, W) and ``alpha`` (1, H, W) to the bounding box of ``alpha > 1/255``."""
    rows = np.flatnonzero((alpha[0] > ALPHA_EPS).any(axis=1))
    cols = np.flatnonzero((alpha[0] > ALPHA_EPS).any(axis=0))
    if rows.size == 0:
        raise BadSampleError(
            f"foreground '{source}' has an empty alpha channel (no pixel above 1/255); it cannot be composited",
            reason="empty_alpha",
            key=source,
        )
    box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return Foreground(np.ascontiguousarray(rgb[box]), np.ascontiguousarray(alpha[box]), source)


def load_background(path: str | Path) -> np.ndarray:
    """Read a background photo as (3, H, W) sRGB [0, 1]; an alpha channel, if any, is dropped quietly
    (backgrounds are opaque by definition). Raises :class:`BadSampleError` (``"unreadable"``)."""
    try:
        rgb, _ = read_image(path, with_alpha=True)
    except (ValueError, OSError) as error:
        raise BadSampleError(f"unreadable background '{path}': {error}", reason="unreadable", key=str(path)) from error
    return rgb


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (C, h, w) -> (C, height, width): area averaging to shrink (no aliasing), bicubic to enlarge
    (clipped back to [0, 1] because bicubic overshoots)."""
    if image.shape[1:] == (height, width):
        return image
    shrink = height * width < image.shape[1] * image.shape[2]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    planes = [cv2.resize(c, (width, height), interpolation=interpolation) for c in image]
    return np.clip(np.stack(planes), 0.0, 1.0).astype(np.float32)


def resize_foreground(fg: Foreground, height: int, width: int) -> Foreground:
    """Resize an RGBA cut-out in premultiplied form, so the colour of transparent pixels (often black or
    garbage) does not bleed into the visible edge, then un-premultiply."""
    premultiplied = resize_image(np.concatenate([fg.rgb * fg.alpha, fg.alpha]), height, width)
    alpha = premultiplied[3:]
    rgb = np.where(alpha > 1e-6, premultiplied[:3] / np.maximum(alpha, 1e-6), 0.0)
    return Foreground(np.clip(rgb, 0, 1).astype(np.float32), alpha, fg.source)


def cover_crop(image: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Scale (aspect kept) so the image covers ``height x width``, then take a random crop of that size."""
    _, h, w = image.shape
    scale = max(height / h, width / w)
    new_h, new_w = max(height, math.ceil(h * scale - 1e-9)), max(width, math.ceil(w * scale - 1e-9))
    image = resize_image(image, new_h, new_w)
    top = int(rng.integers(0, new_h - height + 1))
    left = int(rng.integers(0, new_w - width + 1))
    return np.ascontiguousarray(image[:, top : top + height, left : left + width])

