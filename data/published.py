"""Test-set input handling of the published BokehDiff release (``--protocol published``): EBB, BLB, folder, pngdepth.

Written from the released code's equations (``dataset.py``'s ``TestDataset``, ``inference_hf.py``), so the
released adapter sees its inputs exactly as its authors fed them. EBB (:func:`load_published_ebb`):

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

``folder`` and ``pngdepth`` (:func:`load_published_folder`, :func:`load_published_pngdepth`), as the released
``TestDataset(organization="folder" | "pngdepth", split="inference")`` reads them (the equivalent of its
``--test_data_dir "<root>/*/image.jpg"``, ``"<root>/*.jpg"`` or ``"<root>/original/*"``):

- **Disparity**, ``folder``: ``disp_refine.jpg`` beside the image, when there is one, wins: its 8-bit grey
  levels over 255 (1 = near), LANCZOS-resized to the image's stored size, not normalised. Otherwise the
  ``.npy`` goes through :func:`published_disparity` (min-max, then the opening re-normalisation), except that a
  path containing ``val300/`` gets the min-max step only. ``pngdepth``: the depth PNG as 8-bit grey ``g``
  (bright = far), ``d = 1 - g / 255``, min-max normalised. The released code pairs ``original/*`` with the
  sorted ``depth/*depth*.png`` by position (:func:`list_published_pngdepth`).
- **Mask**: ``folder``: the image's name with ``image.jpg`` replaced by ``mask_portrait.jpg``; for a name
  without ``image.jpg`` that is the image itself, and the released code then takes the image (8-bit grey,
  > 0.5) as its mask: reproduced, with a warning. ``pngdepth``: ``mask/<name>`` with ``.jpg`` replaced by
  ``.png``. Focus as for EBB (:func:`published_focus`, on the map at its stored size).
- **Size**: with ``(W, H)`` the image's size, a landscape image (``H < W``) gets width ``max(1024, W)`` and
  height ``width * H / W``, any other height ``max(1024, H)`` and width ``height * W / H``; both are rounded
  *up* to multiples of 8 (``((int(x) + 7) // 8) * 8``) and the 8-bit image is LANCZOS-resized to that
  (:func:`published_inference_size`). The disparity keeps its stored size there, and the released script
  resizes each render (8-bit, LANCZOS) back to the disparity's size. Here the disparity is resized bilinearly
  (``align_corners=False``) to the image, as this pipeline needs equal sizes (exact when nothing is resized;
  the released 512-px tiles crop a smaller map with the image's coordinates, i.e. misaligned), the focus planes
  span the stored map's range (``disparity_range``), and renders go back to ``output_size`` with
  :func:`published_resize_output`.

Where the released code cannot run an input (a missing ``mask_portrait.jpg`` or ``mask/`` file, no ``mask/``
folder, depth PNGs its glob does not find), the layout's own mask (``data/loaders.py``) or the central box is
used and a warning says so; where it would read the image itself as the disparity (``disp_refine.jpg`` beside
an image not named ``*image.jpg``), or a 16-bit depth PNG above 255 (its 8-bit conversion clips it), the
input is refused. Paths come from the layout, not from the released string replacements over the whole path
(``image`` -> ``depth`` anywhere in it).
"""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data.io import InputWarning

__all__ = [
    "published_disparity",
    "published_focus",
    "published_focus_planes",
    "load_published_ebb",
    "load_published_blb",
    "load_published_folder",
    "load_published_pngdepth",
    "list_published_pngdepth",
    "published_folder_files",
    "published_inference_size",
    "published_resize_output",
    "PublishedItem",
    "PUBLISHED_INFERENCE_SIDE",
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
PUBLISHED_INFERENCE_SIDE = 1024  # folder / pngdepth: the long side (a square's height) is enlarged to this
PUBLISHED_TILED_ABOVE_PX = 2 * 512 ** 2  # its pipeline tiles above 2 x 64^2 latent px, i.e. 2 x 512^2 image px


def published_disparity(raw: np.ndarray, opening: bool = True) -> np.ndarray:
    """Published EBB disparity normalisation (module docstring): ``(H, W)`` raw map -> ``(H, W)`` in [0, 1].

    Computed in the map's own float precision (float64 stays float64; float16 and integers become float32).
    ``opening=False``: the min-max step only (the released ``folder`` path for ``val300/`` inputs).

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
    if not opening:
        return d
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


# ----------------------------------------------------------------------------------------------------------
# folder and pngdepth (module docstring)
# ----------------------------------------------------------------------------------------------------------
class PublishedItem(NamedTuple):
    """One ``folder`` / ``pngdepth`` input as the released code reads it.

    Attributes:
        image: ``(3, H, W)`` float32 sRGB in [0, 1] at :func:`published_inference_size`.
        disparity: ``(1, H, W)`` float32 in [0, 1] (1 = near), the stored map resized bilinearly to the image.
        focus: the focal disparity (mask median or central box, on the stored map).
        output_size: ``(h, w)`` of the stored map: the size the released script writes its renders at.
        disparity_range: ``(min, max)`` of the stored map (the released focus planes span it).
    """

    image: np.ndarray
    disparity: np.ndarray
    focus: float
    output_size: tuple[int, int]
    disparity_range: tuple[float, float]


def published_inference_size(width: int, height: int) -> tuple[int, int]:
    """The released ``folder`` / ``pngdepth`` model size ``(width, height)`` for an image of ``width x height``
    px (module docstring): the long side (a square's height) at least 1024, aspect kept, then each side rounded
    up to a multiple of 8 after truncating it to an integer."""
    if height < width:
        new_width = max(PUBLISHED_INFERENCE_SIDE, width)
        new_height = new_width * height / width
    else:
        new_height = max(PUBLISHED_INFERENCE_SIDE, height)
        new_width = new_height * width / height
    m = PUBLISHED_MULTIPLE
    return (int(new_width) + m - 1) // m * m, (int(new_height) + m - 1) // m * m


def published_folder_files(image: str | Path, disparity: str | Path,
                           layout_mask: str | Path | None = None) -> tuple[Path, Path | None, list[str]]:
    """The files the released code reads for a ``folder`` input ``image`` (module docstring).

    Args:
        image, disparity: the image and its ``.npy`` as the layout lists them (``data/loaders.py``).
        layout_mask: the layout's own mask, used only where the released mask file is missing.

    Returns:
        ``(disparity file, mask file or None, notes)``: ``disp_refine.jpg``'s counterpart or ``disparity``;
        the mask (possibly the image itself); warnings to give when the item is read.

    Raises:
        ValueError: ``disp_refine.jpg`` is beside an image whose name lacks ``image.jpg`` (the released code
            would read the image itself as the disparity).
        FileNotFoundError: the refined map the released code reads for that name is missing.
    """
    image = Path(image)
    notes = []
    if (image.parent / "disp_refine.jpg").is_file():
        refined = image.with_name(image.name.replace("image.jpg", "disp_refine.jpg"))
        if refined == image:
            raise ValueError(f"'{image.parent / 'disp_refine.jpg'}' is next to '{image.name}': the released code "
                             f"then reads the image name with image.jpg replaced by disp_refine.jpg, i.e. the image "
                             f"itself, as the disparity; rename the image image.jpg, or use --protocol corrected")
        if not refined.is_file():
            raise FileNotFoundError(f"'{refined}' is missing: with disp_refine.jpg in its folder the released code "
                                    f"reads the disparity of '{image.name}' from it")
        disparity = refined
    mask = image.with_name(image.name.replace("image.jpg", "mask_portrait.jpg"))
    if mask == image:
        notes.append(f"'{image}': the released code reads the subject mask from the name with image.jpg replaced by "
                     f"mask_portrait.jpg, which for this name is the image itself: the focus is the median "
                     f"disparity over its bright pixels, as there (give a focus flag, or --protocol corrected, "
                     f"to choose it otherwise)")
    elif not mask.is_file():
        fallback = f"'{layout_mask}'" if layout_mask is not None else "the central box"
        notes.append(f"'{mask}' is missing (the released code cannot read this input without it); focus from "
                     f"{fallback}")
        mask = Path(layout_mask) if layout_mask is not None else None
    return Path(disparity), mask, notes


def list_published_pngdepth(root: str | Path) -> list[dict]:
    """The inputs of a ``pngdepth`` folder as the released code pairs them: the images in ``original/`` (sorted)
    with the sorted ``depth/*depth*.png`` by position, and ``mask/<name>`` with ``.jpg`` -> ``.png``.

    Where the released code cannot read the folder, this repository's rule stands in, with a warning: depth
    PNGs paired by name (``depth/<stem>.png``, ``data/loaders.py``) when the glob finds another count, the
    layout's ``mask/<stem>.*`` when the released mask file is missing, the central box without ``mask/``.

    Returns:
        Entries ``{"name", "input_name", "image", "disparity", "mask", "notes"}`` (paths; ``mask`` may be None;
        ``notes`` are warnings to give when the item is read).

    Raises:
        FileNotFoundError: neither pairing works (the message names both).
    """
    from data.loaders import find_file, input_names, list_images

    root = Path(root)
    images = list_images(root / "original", report=True)
    depths = [Path(p) for p in sorted(glob.glob(os.path.join(glob.escape(str(root / "depth")), "*depth*.png")))]
    if len(depths) != len(images):
        by_name = [find_file(root / "depth", image.stem, (".png",)) for image in images]
        if any(path is None for path in by_name):
            raise FileNotFoundError(
                f"'{root}': the released code pairs the {len(images)} images of original/ with the sorted "
                f"depth/*depth*.png by position, and finds {len(depths)}; this repository pairs depth/<name>.png "
                f"by name, and {sum(p is None for p in by_name)} are missing. Give one depth PNG per image")
        warnings.warn(f"'{root}': the released code cannot read this folder (its glob depth/*depth*.png finds "
                      f"{len(depths)} files for {len(images)} images); depth/<name>.png paired by name instead.",
                      InputWarning)
        depths = by_name
    names = input_names(images)
    entries = []
    for image, depth in zip(images, depths):
        notes = []
        if (root / "mask").is_dir():
            mask = root / "mask" / image.name.replace(".jpg", ".png")
            if not mask.is_file():
                layout_mask = find_file(root / "mask", image.stem)
                notes.append(f"'{mask}' is missing (the released code cannot read this input without it); focus "
                             f"from {repr(str(layout_mask)) if layout_mask else 'the central box'}")
                mask = layout_mask
        else:
            mask = None
            notes.append(f"'{root}' has no mask/ folder (the released code raises NotImplementedError without "
                         f"masks or ground truths); focus from the central box")
        entries.append({"name": names[image], "input_name": names[image], "image": image, "disparity": depth,
                        "mask": mask, "notes": notes})
    return entries


def _pngdepth_disparity(path: Path) -> np.ndarray:
    """``1 - grey / 255``, min-max normalised, float64 (module docstring)."""
    with Image.open(path) as png:
        if png.mode.startswith(("I", "F")) and png.getextrema()[1] > 255:
            raise ValueError(f"'{path}' is a {png.mode} PNG with values above 255: the released code's 8-bit "
                             f"conversion clips them to 255; save it as 8-bit, or use --protocol corrected")
        d = 1 - np.asarray(png.convert("L")) / 255.0
    lo, hi = d.min(), d.max()
    if not hi > lo:
        raise ValueError(f"'{path}' is constant; min-max normalisation is undefined")
    return (d - lo) / (hi - lo)


def _published_item(image: Image.Image, disparity: np.ndarray, mask_path: Path | None) -> PublishedItem:
    """Focus on the stored map, the size rule on the image, the map resized bilinearly to it."""
    if mask_path is None:
        focus = published_focus(disparity, None)
    else:
        with Image.open(mask_path) as mask:
            focus = published_focus(disparity, mask)
    size = published_inference_size(image.width, image.height)
    image = image.resize(size, resample=Image.Resampling.LANCZOS)  # a copy when the size is unchanged
    disp = torch.from_numpy(np.ascontiguousarray(disparity, dtype=np.float32))[None]
    if tuple(disp.shape[1:]) != (size[1], size[0]):
        if size[0] * size[1] > PUBLISHED_TILED_ABOVE_PX:
            warnings.warn(f"the released code cannot render this input: its 512-px tiles crop the "
                          f"{disparity.shape[1]}x{disparity.shape[0]} disparity with the {size[0]}x{size[1]} "
                          f"image's coordinates (it fails, or reads the wrong part of the map); here the disparity "
                          f"is resized to the image", InputWarning)
        disp = F.interpolate(disp[None], (size[1], size[0]), mode="bilinear", align_corners=False)[0]
    rgb = (np.asarray(image, dtype=np.float32) / 255.0).transpose(2, 0, 1)
    return PublishedItem(np.ascontiguousarray(rgb), disp.numpy(), focus, tuple(disparity.shape),
                         (float(disparity.min()), float(disparity.max())))


def load_published_folder(image_path: str | Path, disparity_path: str | Path,
                          layout_mask: str | Path | None = None) -> PublishedItem:
    """One ``folder`` input as the released code reads it (module docstring; files from
    :func:`published_folder_files`, whose notes are given as :class:`~data.io.InputWarning`)."""
    image_path = Path(image_path)
    disparity_path, mask_path, notes = published_folder_files(image_path, disparity_path, layout_mask)
    for note in notes:
        warnings.warn(note, InputWarning)
    with Image.open(image_path) as file:
        image = file.convert("RGB")
    if disparity_path.suffix.lower() == ".jpg":  # disp_refine.jpg: grey / 255 at the image's size
        with Image.open(disparity_path) as refined:
            disparity = np.asarray(refined.resize(image.size, resample=Image.Resampling.LANCZOS).convert("L")) / 255.0
    else:
        disparity = published_disparity(np.load(disparity_path), opening="val300/" not in image_path.as_posix())
    return _published_item(image, disparity, mask_path)


def load_published_pngdepth(image_path: str | Path, disparity_path: str | Path,
                            mask_path: str | Path | None = None) -> PublishedItem:
    """One ``pngdepth`` input as the released code reads it (module docstring; pairing and mask from
    :func:`list_published_pngdepth`)."""
    with Image.open(image_path) as file:
        image = file.convert("RGB")
    return _published_item(image, _pngdepth_disparity(Path(disparity_path)),
                           Path(mask_path) if mask_path is not None else None)


def published_resize_output(render: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A render ``(3, H, W)`` float in [0, 1] resized to ``size = (h, w)`` with PIL's LANCZOS, per channel in
    float (the released script applies the same filter to its 8-bit render), clipped to [0, 1]. Unchanged when
    the size already matches."""
    render = np.asarray(render, dtype=np.float32)
    h, w = size
    if render.shape[1:] == (h, w):
        return render
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize((w, h), resample=Image.Resampling.LANCZOS))
                for c in render]
    return np.clip(np.stack(channels), 0, 1)
