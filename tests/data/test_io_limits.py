"""data.io against hostile or careless files: decompression bombs refused from headers, EXIF orientation applied,
temporary files that cannot be redirected, empty arrays named."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

import data.io as io
from data.exr import read_exr, read_exr_shape, write_exr
from data.io import PixelLimitError, read_disparity, read_image, save_image


def _png_header_only(path, width: int, height: int) -> None:
    """A PNG that declares ``width x height`` px (8-bit RGB) and carries no pixel data: its header is all a
    reader must look at to refuse it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _npy_header_only(path, shape) -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})


def test_png_declaring_a_huge_frame_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 20000, 20000)
    with pytest.raises(PixelLimitError, match=r"bomb\.png.*above the limit.*--max_pixels"):
        read_image(bomb)
    with pytest.raises(PixelLimitError, match="bomb.png"):
        read_disparity(bomb)
    # Below PIL's own bomb limit but above ours: refused from the header, with the declared size.
    _png_header_only(bomb, 12000, 12000)
    with pytest.raises(PixelLimitError, match=r"bomb\.png' declares 12000 x 12000 \(144 Mpx\)"):
        read_image(bomb)


def test_the_pixel_limit_is_a_setting(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    save_image(path, np.full((3, 40, 50), 0.5, np.float32))
    assert read_image(path).shape == (3, 40, 50)
    monkeypatch.setattr(io, "MAX_PIXELS", 40 * 50 - 1)
    with pytest.raises(PixelLimitError, match="small.png"):
        read_image(path)
    io.set_max_pixels(40 * 50)
    assert read_image(path).shape == (3, 40, 50)
    with pytest.raises(ValueError, match="> 0"):
        io.set_max_pixels(0)


def test_arrays_declaring_a_huge_frame_are_refused_from_their_header(tmp_path):
    npy = tmp_path / "huge.npy"
    _npy_header_only(npy, (200000, 200000))
    with pytest.raises(PixelLimitError, match=r"huge\.npy.*200000 x 200000"):
        read_disparity(npy)
    npz = tmp_path / "huge.npz"
    import zipfile

    with zipfile.ZipFile(npz, "w") as archive:
        with archive.open("disparity.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (90000, 90000)})
    with pytest.raises(PixelLimitError, match=r"huge\.npz:disparity\.npy"):
        read_disparity(npz)


def test_empty_and_truncated_arrays_name_the_file(tmp_path):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot read disparity map '.*empty\.npy'"):
        read_disparity(empty)
    bad_zip = tmp_path / "bad.npz"
    bad_zip.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match=r"bad\.npz"):
        read_disparity(bad_zip)


def test_exr_header_gives_the_shape_without_pixels(tmp_path):
    path = tmp_path / "d.exr"
    write_exr(path, {"Z": np.zeros((5, 7), np.float32)})
    assert read_exr_shape(path) == (5, 7) == read_exr(path)["Z"].shape


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_photo_viewers_do(tmp_path, orientation):
    # An asymmetric picture stored sideways/mirrored; PIL's exif_transpose is the independent reference.
    rng = np.random.default_rng(orientation)
    stored = (rng.random((12, 20, 3)) * 255).astype(np.uint8)
    path = tmp_path / "photo.png"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif)  # PNG: lossless, so pixels compare exactly
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    got = read_image(path)
    assert got.shape == (3, *expected.shape[:2])
    np.testing.assert_array_equal(np.round(got.transpose(1, 2, 0) * 255).astype(np.uint8), expected)


def test_exif_rotated_jpeg_matches_a_map_made_on_the_upright_photo(tmp_path):
    upright = np.zeros((30, 40, 3), np.uint8)
    upright[:10] = 255  # bright top rows, as a viewer shows the photo
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 3  # stored upside down
    Image.fromarray(upright[::-1, ::-1].copy()).save(path, exif=exif, quality=95)
    image = read_image(path)
    assert image.shape == (3, 30, 40)
    assert image[:, :10].mean() > 0.9 and image[:, 20:].mean() < 0.1


def test_a_planted_symlink_at_a_temporary_name_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out" / "render.png"
    out.parent.mkdir()
    (out.parent / f".{out.name}.tmp").symlink_to(victim)  # the name an older version wrote through
    save_image(out, np.zeros((3, 4, 4), np.float32))
    io.write_text_atomic(out.parent / "run.json", "{}")
    assert victim.read_text() == "precious"
    assert read_image(out).shape == (3, 4, 4)
    leftovers = {p.name for p in out.parent.iterdir()} - {"render.png", "run.json", f".{out.name}.tmp"}
    assert not leftovers, leftovers


def test_contact_sheet_of_an_extreme_aspect_stays_small():
    from data.io import SHEET_MAX_ASPECT, contact_sheet

    tall = np.ones((3, 7000, 3), np.float32)
    sheet = contact_sheet([tall, tall], ["a", "b"], columns=2, width=320)
    assert sheet.shape == (3, 22 + SHEET_MAX_ASPECT * 320, 640)
    tile = sheet[:, 22:, :320]
    assert tile.max() == 1.0 and tile[:, :, 2:].max() == 0.0  # a 1-px-wide bright column, the rest dark
    ordinary = np.random.default_rng(0).random((3, 30, 40)).astype(np.float32)
    assert contact_sheet([ordinary], columns=1, width=80).shape == (3, 22 + 60, 80)  # unchanged for usual aspects
