"""OpenEXR images through the maintained OpenEXR bindings (PyPI ``openexr``, module ``OpenEXR``, pinned in
requirements.txt). The pinned opencv-python-headless wheel is built without OpenEXR.

The bindings read every standard file: scanline and tiled layouts, every compression (NONE, RLE, ZIPS, ZIP,
PIZ, PXR24, B44(A), DWAA/B, HTJ2K) and HALF/FLOAT/UINT channels; of a multi-part file, the first part. The
BLB test set (BokehMe) stores its linear HDR images and depth as EXR. Values are returned as stored (linear
light, HDR above 1 allowed, depth in scene units).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import OpenEXR

__all__ = ["COMPRESSIONS", "read_exr", "read_exr_array", "read_exr_shape", "write_exr"]

#: ``write_exr(compression=...)`` names -> OpenEXR compression.
COMPRESSIONS = {
    "none": OpenEXR.NO_COMPRESSION, "rle": OpenEXR.RLE_COMPRESSION, "zips": OpenEXR.ZIPS_COMPRESSION,
    "zip": OpenEXR.ZIP_COMPRESSION, "piz": OpenEXR.PIZ_COMPRESSION, "pxr24": OpenEXR.PXR24_COMPRESSION,
    "b44": OpenEXR.B44_COMPRESSION, "dwaa": OpenEXR.DWAA_COMPRESSION,
}


def read_exr_shape(path: str | Path) -> tuple[int, int]:
    """``(H, W)`` of an OpenEXR file's data window, from its header alone (no pixels decoded)."""
    try:
        with OpenEXR.File(str(path), header_only=True) as exr:
            (x0, y0), (x1, y1) = exr.header()["dataWindow"]
    except (RuntimeError, OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(
            f"cannot read EXR '{path}': {error}. The file is missing, truncated, corrupt or not OpenEXR; "
            "re-export or re-download it"
        ) from error
    return int(y1) - int(y0) + 1, int(x1) - int(x0) + 1


def read_exr(path: str | Path) -> dict[str, np.ndarray]:
    """Read an OpenEXR file as ``{channel name: (H, W) float32}`` (values as stored, HDR allowed).

    Raises ``ValueError`` naming the file when it is missing, truncated, corrupt or not OpenEXR, or when its
    channels are subsampled (different sizes)."""
    path = Path(path)
    try:
        with OpenEXR.File(str(path), separate_channels=True) as exr:
            planes = {name: np.asarray(channel.pixels, dtype=np.float32) for name, channel in exr.channels().items()}
    except (RuntimeError, OSError, ValueError, TypeError) as error:  # the bindings report bad files as RuntimeError
        raise ValueError(
            f"cannot read EXR '{path}': {error}. The file is missing, truncated, corrupt or not OpenEXR; "
            "re-export or re-download it"
        ) from error
    shapes = {name: plane.shape for name, plane in planes.items()}
    if not planes or len(set(shapes.values())) != 1 or any(len(s) != 2 for s in shapes.values()):
        raise ValueError(f"EXR '{path}': channels {shapes} are not full-resolution (H, W) planes of one size "
                         "(subsampled or deep data); re-save it with full-resolution channels")
    return planes


def write_exr(path: str | Path, channels: dict[str, np.ndarray], *, compression: str = "zip") -> Path:
    """Write ``{name: (H, W)}`` as a scanline EXR with FLOAT channels and the given compression (a key of
    :data:`COMPRESSIONS`; ``"zip"`` is lossless and small). Returns the path."""
    path = Path(path)
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)}, got {compression!r}")
    planes = {name: np.ascontiguousarray(values, dtype=np.float32) for name, values in channels.items()}
    header = {"compression": COMPRESSIONS[compression], "type": OpenEXR.scanlineimage}
    path.parent.mkdir(parents=True, exist_ok=True)
    OpenEXR.File(header, planes).write(str(path))
    return path


def read_exr_array(path: str | Path) -> np.ndarray:
    """EXR as float32 ``(H, W, C)`` in RGB(A) order, values as stored. Single-channel files (depth) give
    ``C = 1``: the first of R, Y, Z, V, depth.V, or the only channel."""
    planes = read_exr(path)
    if all(c in planes for c in "RGB"):
        return np.stack([planes[c] for c in ("R", "G", "B", "A") if c in planes], axis=2)
    for name in ("R", "Y", "Z", "V", "depth.V"):
        if name in planes:
            return planes[name][:, :, None]
    if len(planes) == 1:
        return next(iter(planes.values()))[:, :, None]
    raise ValueError(f"EXR '{path}' has channels {sorted(planes)}; expected R, G, B (image) or one depth channel")
