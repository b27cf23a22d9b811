"""OpenEXR images without OpenEXR: the pinned opencv-python-headless 5 wheel is built without it.

A small reader for scanline files (NONE, ZIPS, ZIP compression; HALF/FLOAT/UINT channels) and an
uncompressed FLOAT writer, following the published file layout (openexr.com, "OpenEXR File Layout").
The BLB test set (BokehMe) stores its linear HDR images and depth this way.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np

# ----------------------------------------------------------------------------------------------------------
_EXR_MAGIC = 20000630
_EXR_DTYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}
_EXR_LINES_PER_CHUNK = {0: 1, 2: 1, 3: 16}  # NONE, ZIPS, ZIP


def _exr_header(data: bytes, path) -> tuple[dict, int]:
    """Attributes of a single-part EXR header -> ({name: (type, raw bytes)}, offset after the header)."""
    magic, version = np.frombuffer(data[:8], "<i4")
    if magic != _EXR_MAGIC:
        raise ValueError(f"'{path}' is not an OpenEXR file")
    if version & 0x200 or version & 0x1000:  # tiled or multi-part
        raise ValueError(f"'{path}': tiled or multi-part EXR is not supported; re-save it as scanline EXR")
    pos, attributes = 8, {}
    while data[pos] != 0:
        name_end = data.index(b"\0", pos)
        type_end = data.index(b"\0", name_end + 1)
        size = int(np.frombuffer(data[type_end + 1 : type_end + 5], "<i4")[0])
        value = data[type_end + 5 : type_end + 5 + size]
        attributes[data[pos:name_end].decode()] = (data[name_end + 1 : type_end].decode(), value)
        pos = type_end + 5 + size
    return attributes, pos + 1


def _exr_channels(raw: bytes) -> list[tuple[str, int]]:
    channels, pos = [], 0
    while raw[pos] != 0:
        end = raw.index(b"\0", pos)
        # name\0, int32 pixel type, uint8 pLinear, 3 reserved bytes, int32 x sampling, int32 y sampling
        pixel_type = int(np.frombuffer(raw[end + 1 : end + 5], "<i4")[0])
        x_sampling, y_sampling = np.frombuffer(raw[end + 9 : end + 17], "<i4").tolist()
        if x_sampling != 1 or y_sampling != 1:
            raise ValueError("subsampled EXR channels are not supported")
        channels.append((raw[pos:end].decode(), int(pixel_type)))
        pos = end + 17
    return channels


def _unzip_exr(block: bytes, expected: int) -> bytes:
    """EXR ZIP(S): zlib, then undo the byte predictor (running sum - 128) and the even/odd byte split."""
    t = np.frombuffer(zlib.decompress(block), np.uint8).astype(np.int64)
    t = (np.cumsum(t - 128) + 128) % 256  # t[i] = t[i-1] + t[i] - 128 (mod 256)
    t = t.astype(np.uint8)
    out = np.empty_like(t)
    half = (t.size + 1) // 2
    out[0::2], out[1::2] = t[:half], t[half:]
    if out.size != expected:
        raise ValueError("corrupt ZIP block")
    return out.tobytes()


def read_exr(path: str | Path) -> dict[str, np.ndarray]:
    """Read a scanline OpenEXR file as ``{channel name: (H, W) float32}`` (values as stored, HDR allowed)."""
    path = Path(path)
    data = path.read_bytes()
    try:
        attributes, pos = _exr_header(data, path)
        channels = sorted(_exr_channels(attributes["channels"][1]))  # stored in name order
        compression = attributes["compression"][1][0]
        x0, y0, x1, y1 = np.frombuffer(attributes["dataWindow"][1], "<i4").tolist()
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"cannot parse EXR header of '{path}': {error}") from error
    if compression not in _EXR_LINES_PER_CHUNK:
        raise ValueError(
            f"'{path}' uses EXR compression {compression} (only NONE, ZIPS and ZIP are read without OpenEXR); "
            "install OpenCV with OpenEXR or re-save the file with ZIP compression"
        )
    unknown = sorted({t for _, t in channels if t not in _EXR_DTYPES})
    if unknown:
        raise ValueError(
            f"'{path}' has EXR pixel type(s) {unknown}; only 0 (UINT), 1 (HALF) and 2 (FLOAT) exist. "
            "The file is corrupt or not a standard OpenEXR file; re-export it"
        )
    width, height = x1 - x0 + 1, y1 - y0 + 1
    lines = _EXR_LINES_PER_CHUNK[compression]
    n_chunks = -(-height // lines)
    planes = {name: np.zeros((height, width), np.float32) for name, _ in channels}
    # A truncated file, a bad offset or a corrupt ZIP block surfaces as zlib.error, IndexError, KeyError or a
    # numpy ValueError without the file's name; callers catch ValueError, so report them all as one.
    try:
        offsets = np.frombuffer(data[pos : pos + 8 * n_chunks], "<u8")
        if offsets.size != n_chunks:
            raise ValueError(f"offset table holds {offsets.size} of {n_chunks} entries (file truncated)")
        for offset in offsets.tolist():
            y, size = np.frombuffer(data[offset : offset + 8], "<i4").tolist()
            if not y0 <= y <= y1 or size < 0:
                raise ValueError(f"chunk at byte {offset} claims line {y} and {size} bytes (data window {y0}..{y1})")
            block = data[offset + 8 : offset + 8 + size]
            n_lines = min(lines, y1 - y + 1)
            expected = n_lines * width * sum(_EXR_DTYPES[t].itemsize for _, t in channels)
            if compression != 0 and size < expected:
                block = _unzip_exr(block, expected)
            cursor = 0
            for line in range(n_lines):
                for name, pixel_type in channels:
                    dtype = _EXR_DTYPES[pixel_type]
                    row = np.frombuffer(block[cursor : cursor + width * dtype.itemsize], dtype)
                    planes[name][y - y0 + line] = row.astype(np.float32)
                    cursor += width * dtype.itemsize
    except (zlib.error, KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"'{path}': corrupt EXR pixel data ({type(error).__name__}: {error}); re-export or re-download the file"
        ) from error
    return planes


def write_exr(path: str | Path, channels: dict[str, np.ndarray]) -> Path:
    """Write ``{name: (H, W)}`` as an uncompressed scanline EXR with FLOAT channels (fixtures, small exports)."""
    path = Path(path)
    names = sorted(channels)
    height, width = np.asarray(channels[names[0]]).shape

    def attribute(name: str, kind: str, value: bytes) -> bytes:
        return name.encode() + b"\0" + kind.encode() + b"\0" + np.int32(len(value)).tobytes() + value

    chlist = b"".join(n.encode() + b"\0" + np.int32(2).tobytes() + bytes(4) + np.array([1, 1], "<i4").tobytes() for n in names) + b"\0"
    box = np.array([0, 0, width - 1, height - 1], "<i4").tobytes()
    header = (np.array([_EXR_MAGIC, 2], "<i4").tobytes()
              + attribute("channels", "chlist", chlist) + attribute("compression", "compression", bytes([0]))
              + attribute("dataWindow", "box2i", box) + attribute("displayWindow", "box2i", box)
              + attribute("lineOrder", "lineOrder", bytes([0])) + attribute("pixelAspectRatio", "float", np.float32(1).tobytes())
              + attribute("screenWindowCenter", "v2f", np.zeros(2, "<f4").tobytes())
              + attribute("screenWindowWidth", "float", np.float32(1).tobytes()) + b"\0")
    rows = [b"".join(np.ascontiguousarray(channels[n][y], "<f4").tobytes() for n in names) for y in range(height)]
    table_end = len(header) + 8 * height
    offsets, position = [], table_end
    for row in rows:
        offsets.append(position)
        position += 8 + len(row)
    body = b"".join(np.array([y, len(row)], "<i4").tobytes() + row for y, row in enumerate(rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + np.array(offsets, "<u8").tobytes() + body)
    return path


def read_exr_array(path: str | Path) -> np.ndarray:
    """EXR as float32 (H, W, C) in RGB(A) order, values as stored: OpenCV when it has OpenEXR, else
    :func:`read_exr`. Single-channel files (depth) give C = 1 (the first of R, Y, Z, or the only channel)."""
    path = Path(path)
    if cv2.haveImageReader(str(path)):
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is not None:
            array = array.astype(np.float32)
            array = array[:, :, None] if array.ndim == 2 else array
            if array.shape[2] >= 3:
                array = np.concatenate([array[:, :, 2::-1], array[:, :, 3:]], axis=2)
            return array
    planes = read_exr(path)
    if all(c in planes for c in "RGB"):
        return np.stack([planes[c] for c in "RGB"], axis=2)
    for name in ("R", "Y", "Z", "V", "depth.V"):
        if name in planes:
            return planes[name][:, :, None]
    if len(planes) == 1:
        return next(iter(planes.values()))[:, :, None]
    raise ValueError(f"EXR '{path}' has channels {sorted(planes)}; expected R, G, B (image) or one depth channel")
