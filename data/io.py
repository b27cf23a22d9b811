"""Reading and writing images and disparity maps, with the repository's conventions enforced at the boundary.

Conventions (see docs/conventions.md):
- images are float32 arrays/tensors in [0, 1], channel-first ``(3, H, W)``, sRGB-encoded unless a name says
  ``linear``; linear light is ``srgb ** gamma`` (:mod:`kernels.colour`; gamma 2.2 by default, 1 disables);
  EXR files are scene-linear and are encoded on reading (:func:`encode_linear_exr`);
- disparity is float32 ``(1, H, W)`` in [0, 1] with **1 = nearest**; depth inputs become ``1 / depth``;
  invalid values (NaN, inf, depth <= 0) are filled from the nearest valid pixel, never propagated.

Every reader raises an error naming the file and the fix; every repair (resize, fill, renormalise) is
reported with an :class:`InputWarning` so nothing is silently changed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

import cv2

from data.disk import DiskFullError, disk_full_error, is_disk_full

# The sRGB/linear transfer lives at the bottom of the stack (kernels.colour); re-exported here.
from kernels.colour import DEFAULT_GAMMA, linear_to_srgb, srgb_to_linear  # noqa: F401

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".exr")
DISPARITY_EXTENSIONS = (".npy", ".npz", ".png", ".tif", ".tiff", ".exr")


class InputWarning(UserWarning):
    """An input was repaired (resized, filled, renormalised); the message says what and why."""


class PixelLimitError(ValueError):
    """A file declares a frame above :data:`MAX_PIXELS`; it was not decoded."""


#: Largest image or map accepted, in pixels (H * W), checked from the file's header before decoding: a small
#: compressed file can declare a huge frame (a 389 KB PNG of 20000 x 20000 px decodes to ~27 GB). 2**27 px is
#: ~11600 x 11600 (1.6 GB as float32 RGB). Change it with :func:`set_max_pixels` (the CLIs' ``--max_pixels``).
MAX_PIXELS = 2**27


def set_max_pixels(limit: int) -> None:
    """Set :data:`MAX_PIXELS` for this process (``limit`` > 0, in pixels)."""
    global MAX_PIXELS
    if not int(limit) > 0:
        raise ValueError(f"the pixel limit must be > 0, got {limit}")
    MAX_PIXELS = int(limit)


def check_pixel_count(path: str | os.PathLike, shape: Sequence[int], what: str = "image") -> None:
    """Refuse a file whose declared frame (``shape``: its array shape, or ``(H, W)``) exceeds :data:`MAX_PIXELS`."""
    dims = [int(d) for d in shape]
    # Arrays: the two largest axes are the frame (H, W); a channel axis is small. Counting all elements
    # instead would refuse nothing a frame count accepts, but would name a misleading size.
    frame = sorted(dims, reverse=True)[:2]
    pixels = int(np.prod(frame, dtype=np.float64)) if frame else 0
    elements = float(np.prod(dims, dtype=np.float64)) if dims else 0.0
    if pixels > MAX_PIXELS or elements > 8 * MAX_PIXELS:
        raise PixelLimitError(
            f"{what} '{path}' declares {' x '.join(map(str, dims))} ({pixels / 1e6:.0f} Mpx), above the limit of "
            f"{MAX_PIXELS / 1e6:.0f} Mpx ({MAX_PIXELS} px); it was not decoded. Downscale the file, or raise the "
            f"limit with --max_pixels if the memory allows."
        )


# EXIF orientation tag (0x0112) -> how to turn the stored pixels into the upright view every photo viewer
# shows: (number of 90-degree counter-clockwise turns, then mirror left-right). TIFF/EXIF 2.3, Sec. 4.6.4.
_EXIF_ORIENTATION = {2: (0, True), 3: (2, False), 4: (2, True), 5: (3, True), 6: (3, False), 7: (1, True),
                     8: (1, False)}


def _header(path: Path) -> tuple[tuple[int, int] | None, int]:
    """``((H, W) or None, EXIF orientation)`` from the file's header, without decoding pixels (PIL's lazy open).
    ``None`` where PIL cannot read the header (OpenCV may still decode the file; it is checked after).

    Raises:
        PixelLimitError: PIL refuses the frame as a decompression bomb (over twice ``Image.MAX_IMAGE_PIXELS``)
            and :data:`MAX_PIXELS` is below that.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides, below
            with Image.open(path) as im:
                width, height = im.size
                try:
                    orientation = int(im.getexif().get(0x0112, 1))
                except Exception:  # a malformed EXIF block: the pixels are still valid, keep them as stored
                    orientation = 1
                return (height, width), orientation
    except Image.DecompressionBombError as error:
        pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if MAX_PIXELS < pil_limit:
            raise PixelLimitError(
                f"image '{path}' declares more than {pil_limit / 1e6:.0f} Mpx ({error}), above the limit of "
                f"{MAX_PIXELS / 1e6:.0f} Mpx ({MAX_PIXELS} px); it was not decoded. Downscale the file, or raise "
                f"the limit with --max_pixels if the memory allows."
            ) from None
        return None, 1
    except Exception:
        return None, 1


def _apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """``(H, W[, C])`` stored pixels -> the upright view for an EXIF ``orientation`` (1..8)."""
    turns, mirror = _EXIF_ORIENTATION.get(orientation, (0, False))
    if turns:
        array = np.rot90(array, turns, axes=(0, 1))
    if mirror:
        array = array[:, ::-1]
    return np.ascontiguousarray(array)


# ----------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------
def _require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: '{path}'. Check the path (it must be an existing file).")
    return path


def _imread_any(path: Path) -> np.ndarray:
    """cv2.imread with every channel and the original bit depth; BGR(A) -> RGB(A), turned upright by the EXIF
    orientation. The declared size is checked against :data:`MAX_PIXELS` before decoding. EXR goes through
    :mod:`data.exr` (the OpenEXR bindings; the pinned OpenCV wheel has no OpenEXR)."""
    if path.suffix.lower() == ".exr":
        from data.exr import read_exr_array, read_exr_shape

        check_pixel_count(path, read_exr_shape(path))

        try:
            array = read_exr_array(path)
        except (ValueError, IndexError) as error:
            raise ValueError(f"cannot decode EXR image '{path}': {error}") from error
        return array[:, :, 0] if array.shape[2] == 1 else array
    size, orientation = _header(path)
    if size is not None:
        check_pixel_count(path, size)
    data = np.fromfile(str(path), dtype=np.uint8)  # np.fromfile copes with non-ASCII paths, cv2.imread doesn't
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if array is not None and size is None:  # a format PIL cannot parse: checked on what OpenCV decoded
        check_pixel_count(path, array.shape[:2])
    if array is None:
        raise ValueError(
            f"cannot decode image '{path}': the file is empty, corrupt or not an image format OpenCV reads "
            f"({', '.join(IMAGE_EXTENSIONS)}). Re-export it as PNG or JPEG."
        )
    if array.ndim == 3 and array.shape[2] == 3:
        array = array[:, :, ::-1]
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, [2, 1, 0, 3]]
    return _apply_orientation(array, orientation)


def _to_unit_float(array: np.ndarray, path: Path) -> np.ndarray:
    """Integer images are scaled by their dtype's maximum (8 and 16 bit); float images are kept as they are."""
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    raise ValueError(f"image '{path}' has unsupported pixel type {array.dtype}; save it as 8- or 16-bit PNG.")


#: The gamma of :func:`encode_linear_exr` when an EXR is read as a photo (:func:`read_image`), the BLB loader's
#: default too: the file format's convention, independent of a renderer's ``--gamma``.
EXR_GAMMA = DEFAULT_GAMMA


def encode_linear_exr(linear: np.ndarray, gamma: float = EXR_GAMMA) -> np.ndarray:
    """Scene-linear colour (an EXR's RGB: linear light, HDR values above 1 allowed) -> sRGB-encoded values in
    [0, 1], any shape: clipped to [0, 1] first (no tone mapping: highlights above 1 become 1, negative values
    0), then ``x ** (1 / gamma)`` (gamma 2.2 by default; 1 keeps the clipped linear values). The one encoding
    of EXR photos in this repository: :func:`read_image` and the BLB loader (:mod:`data.loaders`) use it, so a
    photo saved as a linear EXR (``srgb ** 2.2``) reads back as its sRGB original."""
    return linear_to_srgb(np.clip(linear, 0.0, 1.0), gamma)


def is_exr(path: str | os.PathLike) -> bool:
    """Whether :func:`read_image` reads ``path`` as an EXR (scene-linear colour), by its extension."""
    return Path(path).suffix.lower() == ".exr"


def read_image(path: str | os.PathLike, *, with_alpha: bool = False, exr_linear: bool = True):
    """Read an image file as float32 ``(3, H, W)`` in [0, 1], sRGB-encoded.

    Grayscale is replicated to three channels; 8- and 16-bit integers are scaled by their maximum and kept as
    stored (sRGB-encoded). EXR files hold scene-linear light by the format's convention: their colour is
    encoded with :func:`encode_linear_exr` (clipped to [0, 1], then ``x ** (1 / 2.2)``; a warning names a
    file with values above 1). ``exr_linear=False`` takes an EXR's values as stored (masks and other
    non-colour data). Other float files (float TIFF) are clipped to [0, 1] with a warning if they exceed it.
    With ``with_alpha`` the result is ``(rgb, alpha)`` where alpha is ``(1, H, W)`` (ones for images without
    an alpha channel; an EXR's alpha is coverage, never gamma-encoded); without it, an alpha channel is
    dropped with a warning (colours are used as stored, not composited).
    """
    path = _require_file(path, "image")
    array = _to_unit_float(_imread_any(path), path)
    if array.ndim == 2:
        array = array[:, :, None]
    channels = array.shape[2]
    if channels == 1:
        rgb, alpha = np.repeat(array, 3, axis=2), None
    elif channels == 2:  # gray + alpha
        rgb, alpha = np.repeat(array[:, :, :1], 3, axis=2), array[:, :, 1:]
    elif channels == 3:
        rgb, alpha = array, None
    elif channels == 4:
        rgb, alpha = array[:, :, :3], array[:, :, 3:]
    else:
        raise ValueError(f"image '{path}' has {channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA).")
    if rgb.max(initial=0) > 1.0 + 1e-6 or rgb.min(initial=0) < -1e-6:
        linear = " (linear light, before the sRGB encoding; no tone mapping)" if exr_linear and is_exr(path) else ""
        warnings.warn(f"image '{path}' has values outside [0, 1] (float file); clipping{linear}.", InputWarning)
    rgb = encode_linear_exr(rgb) if exr_linear and is_exr(path) else np.clip(rgb, 0, 1)
    rgb = rgb.astype(np.float32).transpose(2, 0, 1).copy()
    if with_alpha:
        alpha = np.ones_like(rgb[:1]) if alpha is None else np.clip(alpha, 0, 1).transpose(2, 0, 1).copy()
        return rgb, alpha
    if alpha is not None:
        warnings.warn(f"image '{path}' has an alpha channel; it is ignored (colours used as stored).", InputWarning)
    return rgb


def has_alpha_channel(path: str | os.PathLike) -> bool:
    """Whether the stored image has an alpha channel (gray + alpha or RGBA), as :func:`read_image` sees it."""
    array = _imread_any(Path(path))
    return array.ndim == 3 and array.shape[2] in (2, 4)


def save_image(path: str | os.PathLike, image, *, bits: int = 8) -> Path:
    """Write ``(3, H, W)`` or ``(H, W)`` values in [0, 1] (numpy or torch) as an 8- or 16-bit PNG/JPEG.

    The parent folder is created. Writing goes to a temporary file first, then is renamed, so an
    interrupted run never leaves a truncated output that a later ``--skip_existing`` would trust.
    """
    path = Path(path)
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image.transpose(1, 2, 0)
        if image.shape[2] == 3:
            image = image[:, :, ::-1]
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    dtype = np.uint8 if bits == 8 else np.uint16
    encoded = np.round(np.clip(image, 0, 1) * np.iinfo(dtype).max).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buffer = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(encoded))
    if not ok:
        raise ValueError(f"cannot encode '{path}': use a .png or .jpg file name")
    with atomic_write(path) as tmp:
        buffer.tofile(str(tmp))
    return path


def new_file_mode() -> int:
    """The permission bits a plain ``open(path, "w")`` gives a new file: ``0o666`` minus the process umask."""
    umask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for a writer to fill; publish it as ``path`` when the block ends.

    An interrupted or failing write leaves the old file (or none), never a truncated one, and its temporary is
    removed; a full device, however the writer says so, becomes one :class:`data.disk.DiskFullError` naming the
    folder. The published file gets the mode of any other new file (:func:`new_file_mode`): some writers
    (safetensors) create their file 0600, which would make published weights unreadable to others. The parent
    folder is created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name created exclusively (O_CREAT | O_EXCL, mode 0600): a file or symlink planted at a
    # predictable temporary name cannot redirect the write (a fixed ".name.tmp" would be followed).
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(error, path) from error
        raise
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, Exception) and not isinstance(error, DiskFullError) and is_disk_full(error):
            raise disk_full_error(error, path) from error
        raise


def path_key(path: str | os.PathLike) -> str:
    """One spelling per file, existing or not: symlinks and ``..`` resolved, case folded where the OS ignores
    case. Two paths name the same file when their keys are equal."""
    return os.path.normcase(os.path.realpath(path))


def replaced_inputs(outputs: Sequence[str | os.PathLike], inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The paths of ``outputs`` that name one of the files ``inputs`` (:func:`path_key`), in order: writing them
    would replace an input, which no tool here may do."""
    keys = {path_key(path) for path in inputs}
    return [Path(path) for path in outputs if path_key(path) in keys]


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file via a temporary file and a rename (:func:`atomic_write`): an interrupted run leaves the
    old file (or none), never a truncated one. The parent folder is created."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------
# Disparity
# ----------------------------------------------------------------------------------------------------------
def fill_invalid(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace invalid pixels by the value of the nearest valid pixel (Euclidean distance transform)."""
    if valid.all():
        return values
    if not valid.any():
        raise ValueError("no valid value to fill from")
    from scipy.ndimage import distance_transform_edt

    _, (iy, ix) = distance_transform_edt(~valid, return_indices=True)
    return values[iy, ix]


#: What each ``normalise`` mode of :func:`clean_disparity` does (``inference_hf.py --disparity_normalise``).
NORMALISE_MODES = {
    "auto": "a map already in [0, 1] is kept, one outside it is min-max normalised with a warning",
    "always": "every map is min-max normalised to [0, 1] (relative disparity)",
    "never": "kept as stored",
}


def clean_disparity(
    values: np.ndarray, *, source: str = "disparity", is_depth: bool = False, normalise: str = "auto",
    depth_hint: str | None = None,
) -> np.ndarray:
    """Turn raw disparity (or depth) ``(H, W)`` into the convention: float32 in [0, 1], 1 = nearest, no holes.

    - ``is_depth``: values are depth (larger = farther); converted with ``1 / depth`` first.
    - Invalid entries (NaN, +-inf; depth <= 0) are filled from the nearest valid pixel, with a warning.
    - ``normalise="auto"`` min-max normalises only when values leave [0, 1] or are converted depth (with a
      warning), so already-normalised disparity keeps its absolute scale (and with it the meaning of ``K``);
      ``"always"`` always min-max normalises (relative disparity, e.g. from a monocular estimator).
    - ``depth_hint``: how the caller marks a map as depth (e.g. ``"--depth"``). When a map read as disparity
      is normalised because its values exceed 1 and none is negative, the warning adds that such values may be
      depth and names this remedy. It is a hint, not a guess: a disparity in pixels looks the same.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[:, :, 0]
    if values.ndim != 2:
        raise ValueError(f"{source}: expected a single-channel map (H, W), got shape {tuple(values.shape)}")
    valid = np.isfinite(values)
    if is_depth:
        valid &= values > 0
        values = np.where(valid, 1.0 / np.where(valid, values, 1.0), 0.0)
    if not valid.any():
        raise ValueError(f"{source}: no valid (finite{', positive' if is_depth else ''}) value in the map")
    n_bad = int((~valid).sum())
    if n_bad:
        warnings.warn(
            f"{source}: {n_bad} invalid pixels ({100.0 * n_bad / valid.size:.1f}%, NaN/inf"
            f"{'/non-positive depth' if is_depth else ''}) filled from the nearest valid pixel.",
            InputWarning,
        )
        values = fill_invalid(values, valid)
    lo, hi = float(values.min()), float(values.max())
    # Depth has arbitrary units (metres, millimetres...), so 1 / depth has no absolute scale: always normalised.
    if normalise == "always" or (normalise == "auto" and (is_depth or lo < 0 or hi > 1)):
        if normalise == "auto" or is_depth:
            hint = ""
            if depth_hint and not is_depth and lo >= 0 and hi > 1:
                hint = (f" If these are depth values (larger = farther) rather than disparity (larger = nearer), "
                        f"pass {depth_hint}: read as disparity, near and far are swapped.")
            warnings.warn(f"{source}: values span [{lo:.4g}, {hi:.4g}]; min-max normalised to [0, 1].{hint}",
                          InputWarning)
        values = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    elif normalise not in ("auto", "always", "never"):
        raise ValueError(f"normalise must be 'auto', 'always' or 'never', got {normalise!r}")
    return values.astype(np.float32)[None]


def _npy_header_shape(fileobj, path: Path) -> tuple[int, ...]:
    """The array shape an ``.npy`` stream declares (its header), without reading the data."""
    try:
        version = np.lib.format.read_magic(fileobj)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(fileobj)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(fileobj)
    except (ValueError, EOFError) as error:
        raise ValueError(f"not a valid .npy array (empty, truncated or another format: {error})") from error
    return tuple(shape)


def check_array_file(path: Path) -> None:
    """Refuse an ``.npy`` / ``.npz`` whose arrays declare more than :data:`MAX_PIXELS` (headers only)."""
    if path.suffix.lower() == ".npy":
        with open(path, "rb") as f:
            check_pixel_count(path, _npy_header_shape(f, path), "disparity map")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith(".npy"):
                    with archive.open(member) as f:
                        check_pixel_count(f"{path}:{member}", _npy_header_shape(f, path), "disparity map")
    except zipfile.BadZipFile as error:
        raise ValueError(f"not a valid .npz archive (empty, truncated or another format: {error})") from error


def read_disparity(
    path: str | os.PathLike,
    *,
    is_depth: bool = False,
    size: tuple[int, int] | None = None,
    normalise: str = "auto",
    depth_hint: str | None = None,
) -> np.ndarray:
    """Read a disparity (or, with ``is_depth``, depth) map as float32 ``(1, H, W)`` in [0, 1], 1 = nearest.

    Accepted: ``.npy``; ``.npz`` (key ``disparity``, ``disp``, ``depth`` or the only array); 8- or 16-bit
    PNG/TIFF (scaled by the dtype's maximum, i.e. already in [0, 1]); float EXR/TIFF. ``size=(H, W)``
    resizes (bilinear) to the image size, with a warning saying so, and refuses a map of another aspect ratio
    (:func:`fit_map_to_image`). See :func:`clean_disparity` (``depth_hint``).
    """
    path = _require_file(path, "disparity map")
    suffix = path.suffix.lower()
    try:
        if suffix in (".npy", ".npz"):
            check_array_file(path)
        if suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                # A preferred name wins (the first of them, in this order); otherwise the only array.
                keys = [k for k in ("disparity", "disp", "depth") if k in archive.files]
                if not keys and len(archive.files) != 1:
                    raise ValueError(f"archive holds {archive.files}; name the array 'disparity'")
                values = archive[(keys or archive.files)[0]]
        else:
            values = _imread_any(path)
            if values.ndim == 3:
                warnings.warn(f"disparity '{path}' has {values.shape[2]} channels; using the first.", InputWarning)
                values = values[:, :, 0]
            values = _to_unit_float(values, path)
    except PixelLimitError:
        raise
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(
            f"cannot read disparity map '{path}': {error}. Expected .npy/.npz arrays or 8/16-bit PNG."
        ) from error
    disparity = clean_disparity(values, source=f"disparity '{path}'", is_depth=is_depth, normalise=normalise,
                                depth_hint=depth_hint)
    if size is not None:
        disparity = fit_map_to_image(disparity, size, source=f"disparity '{path}'")
    return disparity


#: Largest relative difference between a map's aspect ratio and its image's that is resized without complaint
#: (plus one pixel of rounding, see :func:`fit_map_to_image`): maps saved at a reduced or network-rounded size.
ASPECT_TOLERANCE = 0.02


def fit_map_to_image(values: np.ndarray, size: tuple[int, int], *, source: str,
                     interpolation: int = cv2.INTER_LINEAR, how: str = "bilinear") -> np.ndarray:
    """A channel-first map ``(C, h, w)`` at the image size ``size = (H, W)``.

    Same size: returned as is. Same aspect ratio (within :data:`ASPECT_TOLERANCE` plus one pixel of rounding):
    resized, with an :class:`InputWarning`. Another aspect ratio: ``ValueError`` naming the likely cause (a
    transposed or rotated map, or the map of another image), because stretching it would put every depth edge
    in the wrong place silently."""
    height, width = int(values.shape[1]), int(values.shape[2])
    if (height, width) == tuple(size):
        return values
    image_aspect, aspect = size[1] / size[0], width / height
    allowed = ASPECT_TOLERANCE + 1.0 / min(height, width)
    if abs(aspect / image_aspect - 1) > allowed:
        transposed = abs((height / width) / image_aspect - 1) <= allowed
        cause = ("it looks transposed (rows and columns swapped, e.g. saved as (W, H), or the photo carries an "
                 "EXIF rotation the map does not)" if transposed else "it is probably the map of another image, "
                 "or a crop of it")
        raise ValueError(
            f"{source} is {width}x{height} (aspect {aspect:.3f}) but the image is {size[1]}x{size[0]} (aspect "
            f"{image_aspect:.3f}): {cause}. Pass the map of this image at its size or a scaled copy; a map "
            f"predicted at a fixed size (e.g. square) must be resized to the image by you."
        )
    warnings.warn(f"{source} is {width}x{height} but the image is {size[1]}x{size[0]}; resized ({how}) to the "
                  f"image size.", InputWarning)
    return resize_map(values, size, interpolation=interpolation)


def resize_map(values: np.ndarray, size: tuple[int, int], *, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Resize a channel-first float map ``(C, h, w)`` to ``(C, H, W)``; ``size = (H, W)``."""
    channels = [cv2.resize(c, (int(size[1]), int(size[0])), interpolation=interpolation) for c in values]
    return np.stack(channels).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Contact sheets
# ----------------------------------------------------------------------------------------------------------
#: Tallest contact-sheet row, in tile widths (see :func:`contact_sheet`).
SHEET_MAX_ASPECT = 4


def contact_sheet(
    images: Sequence[np.ndarray], labels: Sequence[str] | None = None, *, columns: int = 3, width: int = 320
) -> np.ndarray:
    """Tile images ``(3, H, W)`` in [0, 1] into one labelled sheet ``(3, H', W')`` in [0, 1].

    Each tile is resized to ``width`` pixels wide (aspect kept, the first image's aspect sets the row
    height) and gets its label drawn on a dark strip above it. Rows are at most :data:`SHEET_MAX_ASPECT` times
    ``width`` tall: a tile taller than that (a 7000 x 3 px image) is shrunk to fit, aspect kept, so the sheet
    stays small whatever the input.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    labels = list(labels) if labels is not None else [""] * len(images)
    first = np.asarray(images[0])
    height = max(1, round(width * first.shape[1] / first.shape[2]))
    fit = height > SHEET_MAX_ASPECT * width
    height = min(height, SHEET_MAX_ASPECT * width)
    strip = 22
    rows = (len(images) + columns - 1) // columns
    sheet = np.zeros((rows * (height + strip), columns * width, 3), dtype=np.uint8)
    for index, (image, label) in enumerate(zip(images, labels)):
        image = np.asarray(image, dtype=np.float32).transpose(1, 2, 0)
        size = (width, height)
        if fit:  # inside (width, height), aspect kept
            scale = min(width / image.shape[1], height / image.shape[0])
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        tile = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        r, c = divmod(index, columns)
        y, x = r * (height + strip), c * width
        sheet[y + strip : y + strip + size[1], x : x + size[0]] = np.round(np.clip(tile, 0, 1) * 255).astype(np.uint8)
        # OpenCV draws text on 8-bit images only, hence the uint8 sheet.
        cv2.putText(sheet, label, (x + 4, y + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return sheet.transpose(2, 0, 1).astype(np.float32) / 255.0
