"""Test-set input handling of the published BokehDiff release (``--protocol published``), EBB layout.

Written from the released code's equations (``dataset.py``'s ``TestDataset``, ``inference_hf.py``), so the
released adapter sees its inputs exactly as its authors fed them:

- **Disparity** (``depth/<name>_pred.npy``, 1 = near): min-max normalised, then re-normalised by the range of
  its morphological opening (3 x 3 erosion then 3 x 3 dilation) and clipped to [0, 1]::

      d = (d - min d) / (max d - min d)
      o = dilate_3x3(erode_3x3(d))
      d = clip((d - min o) / (max o - min o), 0, 1)

  so isolated near (bright) pixels, e.g. a noisy near estimate, do not set the top of the range (an opening
  keeps isolated minima). Computed in the file's float precision (float16 files are read as float32: the
  released code's OpenCV erosion fails on them).
- **Focus** (:func:`published_focus`): the median normalised disparity over the subject mask (the mask resized
  to the disparity's size with LANCZOS, > 0.5); an empty mask is replaced by the central box
  ``[0.4 H, 0.6 H) x [0.4 W, 0.6 W)``.
- **Size**: no padding. The disparity is resized (bilinear) to the image; an image whose sides are not
  multiples of 8 is resized (LANCZOS, on the 8-bit image) to the next multiples, the disparity bilinearly
  (``align_corners=False``).
- **Focus planes** (:func:`published_focus_planes`, ``--focus_protocol published``): the released script
  renders three planes per image: with ``s = d - f`` over the resized map, focus ``f + 0.6 min s``, ``f``
  and ``f + 0.6 max s`` (towards the far end, the subject, towards the near end).

Shapes: image ``(3, H, W)`` float32 sRGB in [0, 1]; disparity ``(1, H, W)`` float32 in [0, 1], 1 = near.

BLB (BokehMe's Blender set, :func:`load_published_blb`), as the released ``TestDataset(organization="blb")``
reads it: the linear EXR image encoded as ``x ** (1 / 2.2)`` with **no clipping** (highlights above 1 reach the
VAE as they are), disparity ``1 / (depth + 1e-10)`` with **no normalisation** (sky, ``65504``, becomes
1.5e-5; a surface nearer than one scene unit has disparity above 1), focus ``1 / focus_distances[f]`` from
``info.json``, no resize. The released script lists the ``bokeh_04_*`` ground truths only (its ``blb_K = 4``)
and renders each at its ``--K``; ``blur_parameters[4]`` is read but not used.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "published_disparity",
    "published_focus",
    "published_focus_planes",
    "load_published_ebb",
    "load_published_blb",
    "PUBLISHED_BLB_BLUR_INDEX",
    "PUBLISHED_BLB_GAMMA",
    "PUBLISHED_MULTIPLE",
    "PUBLISHED_PLANE_FRACTION",
]

PUBLISHED_MULTIPLE = 8  # image sides are resized (not padded) to multiples of this
PUBLISHED_PLANE_FRACTION = 0.6  # the two extra focus planes move 60% of the way to the map's extremes
PUBLISHED_BLB_BLUR_INDEX = 4  # the released BLB loader lists bokeh_04_* only
PUBLISHED_BLB_GAMMA = 2.2  # its EXR encoding, x ** (1 / 2.2)
PUBLISHED_BLB_DEPTH_EPS = 1e-10  # its disparity 1 / (depth + 1e-10)


def published_disparity(raw: np.ndarray) -> np.ndarray:
    """Published EBB disparity normalisation (module docstring): ``(H, W)`` raw map -> ``(H, W)`` in [0, 1].

    Computed in the map's own float precision (float64 stays float64; float16 and integers become float32).

    Raises:
        ValueError: the map is not 2-D, has non-finite values, or is constant (no range to normalise).
    """
    d = np.asarray(raw)
    if d.ndim == 3 and d.shape[0] == 1:
        d = d[0]
    if d.ndim != 2:
        raise ValueError(f"disparity must be (H, W) or (1, H, W), got shape {tuple(d.shape)}")
    if d.dtype != np.float64:
        d = d.astype(np.float32)
    if not np.isfinite(d).all():
        raise ValueError("disparity has NaN/inf values; the published protocol has no hole filling: fix the file")
    lo, hi = d.min(), d.max()
    if not hi > lo:
        raise ValueError(f"disparity is constant ({lo}); min-max normalisation is undefined")
    d = (d - lo) / (hi - lo)
    kernel = np.ones((3, 3))
    opened = cv2.dilate(cv2.erode(d, kernel), kernel)
    o_lo, o_hi = opened.min(), opened.max()
    if not o_hi > o_lo:
        raise ValueError("disparity's morphological opening is constant (the map is noise at the pixel scale)")
    return np.clip((d - o_lo) / (o_hi - o_lo), 0, 1)


def published_focus(disparity: np.ndarray, mask: Image.Image | None) -> float:
    """Published focus: median of ``disparity`` (``(H, W)``, normalised) over ``mask`` > 0.5, the mask resized
    to ``W x H`` (LANCZOS) and converted to 8-bit grey first; an all-zero mask becomes the central box
    ``[0.4 H, 0.6 H) x [0.4 W, 0.6 W)``. ``mask=None``: the central box."""
    h, w = disparity.shape
    if mask is None:
        m = np.zeros((h, w))
    else:
        m = np.asarray(mask.resize((w, h), resample=Image.Resampling.LANCZOS).convert("L")) / 255.0
    if m.max() == 0:
        m = m.copy()
        m[int(h * 0.4):int(h * 0.6), int(w * 0.4):int(w * 0.6)] = 1
    return float(np.median(disparity[m > 0.5]))


def published_focus_planes(disparity, focus: float) -> list[float]:
    """The three published focus planes for ``disparity`` (any shape, the map the model sees): with
    ``s = disparity - focus``, ``[focus + 0.6 min s, focus, focus + 0.6 max s]``."""
    d = torch.as_tensor(disparity, dtype=torch.float32)
    s = d - float(focus)
    return [float(focus) + PUBLISHED_PLANE_FRACTION * float(s.min()), float(focus),
            float(focus) + PUBLISHED_PLANE_FRACTION * float(s.max())]


def load_published_ebb(image_path: str | Path, depth_path: str | Path,
                       mask_path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """One EBB item as the published release reads it (module docstring).

    Returns:
        ``(image, disparity, focus)``: ``(3, H8, W8)`` float32 sRGB in [0, 1], ``(1, H8, W8)`` float32 in
        [0, 1] (1 = near) with ``H8, W8`` the stored size rounded up to multiples of 8, and the focal
        disparity (mask median or central box, on the map before the multiple-of-8 resize).
    """
    image = Image.open(image_path).convert("RGB")
    disp = published_disparity(np.load(depth_path))
    mask = Image.open(mask_path) if mask_path is not None else None
    focus = published_focus(disp, mask)
    if disp.shape != (image.height, image.width):
        disp = cv2.resize(disp, (image.width, image.height), interpolation=cv2.INTER_LINEAR)
    disp_t = torch.from_numpy(np.ascontiguousarray(disp, dtype=np.float32))[None]
    m = PUBLISHED_MULTIPLE
    if image.height % m or image.width % m:
        size = (-(-image.width // m) * m, -(-image.height // m) * m)
        image = image.resize(size, resample=Image.Resampling.LANCZOS)
        disp_t = F.interpolate(disp_t[None], (size[1], size[0]), mode="bilinear", align_corners=False)[0]
    rgb = (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)
    return np.ascontiguousarray(rgb), disp_t.numpy(), focus


def load_published_blb(image_path: str | Path, depth_path: str | Path,
                       focus_distance: float) -> tuple[np.ndarray, np.ndarray, float]:
    """One BLB scene as the released code reads it (module docstring).

    Args:
        image_path, depth_path: the scene's ``image.exr`` (linear RGB) and ``depth.exr`` (first channel used).
        focus_distance: ``info.json``'s ``focus_distances[f]`` for the ground truth (scene units, > 0).

    Returns:
        ``(image, disparity, focus)``: ``(3, H, W)`` float32 ``linear ** (1 / 2.2)``, unclipped (>= 0);
        ``(1, H, W)`` float32 ``1 / (depth + 1e-10)`` in 1 / scene units (not normalised; may exceed 1);
        ``1 / focus_distance`` on that scale.

    Raises:
        ValueError: negative or non-finite image values (the released power gives NaN there), a depth map of
        another size, a non-positive or non-finite depth, or a non-positive focus distance.
    """
    from data.exr import read_exr_array

    linear = read_exr_array(image_path)[:, :, :3].astype(np.float32)
    if linear.shape[2] == 1:
        linear = np.repeat(linear, 3, axis=2)
    if not np.isfinite(linear).all() or linear.min() < 0:
        raise ValueError(f"'{image_path}' has negative or non-finite values; the published encoding "
                         "x ** (1 / 2.2) is undefined there (read it with --protocol corrected, which clips)")
    image = linear ** np.float32(1 / PUBLISHED_BLB_GAMMA)
    depth = read_exr_array(depth_path)[:, :, 0].astype(np.float32)
    if depth.shape != image.shape[:2]:
        raise ValueError(f"'{depth_path}' is {depth.shape[1]}x{depth.shape[0]}, the image "
                         f"{image.shape[1]}x{image.shape[0]}; the published BLB path does not resize")
    if not np.isfinite(depth).all() or depth.min() <= 0:
        raise ValueError(f"'{depth_path}' has non-positive or non-finite depths; BLB stores distances > 0 "
                         "(65504 for the sky)")
    if not (np.isfinite(focus_distance) and focus_distance > 0):
        raise ValueError(f"focus distance {focus_distance} must be > 0 (info.json focus_distances)")
    disparity = 1 / (depth + np.float32(PUBLISHED_BLB_DEPTH_EPS))
    return (np.ascontiguousarray(image.transpose(2, 0, 1)), disparity[None].astype(np.float32),
            1.0 / float(focus_distance))


def export_published_ebb(src: str | Path, dst: str | Path) -> list[str]:
    """Copy an EBB folder into the exact format the released code reads: ``input/<name>.<ext>`` (unchanged),
    ``depth/<name>_pred.npy`` as float32 (the released code's OpenCV erosion rejects float16) and
    ``mask/<name>.png``; no ``bokeh/`` folder (the released loader crashes when ``mask/`` and ``bokeh/`` are
    both present). Read it with the released script as ``--test_data_dir "<dst>/input/*"``.

    Returns:
        The names exported. Raises ``FileNotFoundError`` naming a missing depth or mask file.
    """
    import shutil

    src, dst = Path(src), Path(dst)
    names = []
    for sub in ("input", "depth", "mask"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for image in sorted(p for p in (src / "input").iterdir() if p.suffix.lower() in (".jpg", ".png")):
        depth, mask = src / "depth" / f"{image.stem}_pred.npy", src / "mask" / f"{image.stem}.png"
        for path in (depth, mask):
            if not path.is_file():
                raise FileNotFoundError(f"'{path}' is missing: the published format needs a depth and a mask per input")
        shutil.copyfile(image, dst / "input" / image.name)
        np.save(dst / "depth" / depth.name, np.load(depth).astype(np.float32))
        shutil.copyfile(mask, dst / "mask" / mask.name)
        names.append(image.stem)
    return names
