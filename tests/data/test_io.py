"""Image/disparity I/O (data/io.py) and the bundled demo pair (data/demo.py)."""

import warnings

import cv2
import numpy as np
import pytest
import torch

from data.demo import load_motorcycle
from data.io import (
    InputWarning, clean_disparity, contact_sheet, fill_invalid, linear_to_srgb, read_disparity, read_image,
    resize_map, save_image, srgb_to_linear,
)


def _random_image(h=24, w=32, seed=0):
    return np.random.default_rng(seed).random((3, h, w)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("bits", [8, 16])
def test_save_read_round_trip_is_exact_to_quantisation(tmp_path, bits):
    image = _random_image()
    path = save_image(tmp_path / "sub" / "x.png", image, bits=bits)  # parent folder is created
    back = read_image(path)
    assert back.shape == (3, 24, 32) and back.dtype == np.float32
    step = 1.0 / (2**bits - 1)
    assert np.abs(back - image).max() <= step / 2 + 1e-7
    # Written in RGB order: a red-only image reads back red (no BGR swap leaks through).
    red = np.zeros((3, 4, 4), np.float32)
    red[0] = 1
    assert np.array_equal(read_image(save_image(tmp_path / "red.png", red, bits=bits)), red)
    assert not list(tmp_path.rglob(".*.tmp"))  # the temporary file was renamed, not left behind


def test_save_image_accepts_torch_and_rejects_bad_bits(tmp_path):
    image = torch.rand(3, 8, 8)
    back = read_image(save_image(tmp_path / "t.png", image, bits=16))
    assert np.abs(back - image.numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="bits"):
        save_image(tmp_path / "b.png", image, bits=12)


def test_read_image_gray_rgba_16bit(tmp_path):
    gray = (np.arange(12 * 10).reshape(12, 10) % 256).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    rgb = read_image(tmp_path / "gray.png")
    assert rgb.shape == (3, 12, 10)
    assert np.array_equal(rgb[0], rgb[2]) and np.allclose(rgb[1], gray / 255.0)

    bgra = np.zeros((12, 10, 4), np.uint8)
    bgra[..., 2], bgra[..., 3] = 255, 128  # red, half transparent
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    with pytest.warns(InputWarning, match="alpha"):
        rgb = read_image(tmp_path / "rgba.png")
    assert rgb.shape == (3, 12, 10) and rgb[0].min() == 1.0 and rgb[1:].max() == 0.0
    rgb, alpha = read_image(tmp_path / "rgba.png", with_alpha=True)
    assert alpha.shape == (1, 12, 10) and np.allclose(alpha, 128 / 255)

    deep = np.full((12, 10, 3), 40000, np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    assert np.allclose(read_image(tmp_path / "deep.png"), 40000 / 65535)


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        read_image(tmp_path / "bad.png")


# ----------------------------------------------------------------------------------------------- gamma
@pytest.mark.parametrize("gamma", [1.0, 2.2, 2.4])
def test_gamma_round_trip_numpy_and_torch(gamma):
    x = np.linspace(0, 1, 101, dtype=np.float64)
    assert np.allclose(linear_to_srgb(srgb_to_linear(x, gamma), gamma), x, atol=1e-12)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(srgb_to_linear(linear_to_srgb(t, gamma), gamma), t, atol=1e-12)
    assert srgb_to_linear(np.array([0.5]), 2.2)[0] == pytest.approx(0.5**2.2)


# ------------------------------------------------------------------------------------------- disparity
def test_fill_invalid_takes_the_nearest_valid_value():
    values = np.array([[1.0, np.nan, np.nan, 4.0]])
    valid = np.isfinite(values)
    assert np.array_equal(fill_invalid(values, valid), [[1.0, 1.0, 4.0, 4.0]])
    same = np.ones((2, 2))
    assert fill_invalid(same, np.ones((2, 2), bool)) is same
    with pytest.raises(ValueError, match="no valid"):
        fill_invalid(values, np.zeros_like(valid))


def test_clean_disparity_keeps_normalised_maps_quietly():
    values = np.array([[0.2, 0.4], [0.6, 0.8]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        out = clean_disparity(values)
    assert out.shape == (1, 2, 2) and out.dtype == np.float32 and np.allclose(out[0], values)
    assert np.allclose(clean_disparity(values, normalise="always")[0], [[0, 1 / 3], [2 / 3, 1]])


def test_clean_disparity_fills_nan_inf_and_normalises_out_of_range_with_warnings():
    values = np.array([[np.nan, 10.0], [20.0, np.inf]])
    with pytest.warns(InputWarning) as record:
        out = clean_disparity(values, source="d")
    messages = " ".join(str(w.message) for w in record)
    assert "2 invalid pixels" in messages and "min-max normalised" in messages
    assert np.isfinite(out).all() and out.min() == 0.0 and out.max() == 1.0
    assert out[0, 0, 0] in (0.0, 1.0)  # filled from a neighbour, never a blend or NaN


def test_clean_disparity_converts_depth_near_is_one():
    depth = np.array([[1.0, 2.0], [4.0, 0.0]])  # 0 = invalid depth
    with pytest.warns(InputWarning) as record:
        out = clean_disparity(depth, is_depth=True)
    messages = " ".join(str(w.message) for w in record)
    # Depth units are arbitrary, so 1/depth is always normalised, even when it already lies in [0, 1].
    assert "non-positive depth" in messages and "min-max normalised" in messages
    # 1/depth = 1, 0.5, 0.25 (+ the hole filled from a neighbour), min-max normalised: nearest -> 1, farthest -> 0.
    assert out[0, 0, 0] == 1.0 and out[0, 1, 0] == 0.0 and out[0, 0, 1] == pytest.approx(1 / 3)


def test_clean_disparity_shapes_and_errors():
    assert clean_disparity(np.zeros((3, 4, 1))).shape == (1, 3, 4)
    with pytest.raises(ValueError, match="single-channel"):
        clean_disparity(np.zeros((3, 4, 2)))
    with pytest.raises(ValueError, match="no valid"):
        clean_disparity(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="normalise"):
        clean_disparity(np.zeros((2, 2)), normalise="sometimes")


def test_read_disparity_formats(tmp_path):
    values = np.random.default_rng(1).random((6, 8)).astype(np.float32)
    np.save(tmp_path / "d.npy", values)
    assert np.allclose(read_disparity(tmp_path / "d.npy")[0], values)
    np.savez(tmp_path / "named.npz", rgb=np.zeros(3), disparity=values)
    assert np.allclose(read_disparity(tmp_path / "named.npz")[0], values)
    np.savez(tmp_path / "both.npz", disparity=values, depth=values + 1)  # a preferred key wins
    assert np.allclose(read_disparity(tmp_path / "both.npz")[0], values)
    np.savez(tmp_path / "only.npz", values)
    assert np.allclose(read_disparity(tmp_path / "only.npz")[0], values)
    np.savez(tmp_path / "ambiguous.npz", a=values, b=values)
    with pytest.raises(ValueError, match="ambiguous.npz.*disparity"):
        read_disparity(tmp_path / "ambiguous.npz")
    for dtype in (np.uint8, np.uint16):
        top = np.iinfo(dtype).max
        cv2.imwrite(str(tmp_path / f"d{top}.png"), np.round(values * top).astype(dtype))
        assert np.abs(read_disparity(tmp_path / f"d{top}.png")[0] - values).max() <= 0.5 / top + 1e-6


def test_read_disparity_resizes_to_the_image_with_a_warning(tmp_path):
    np.save(tmp_path / "d.npy", np.full((6, 8), 0.5, np.float32))
    with pytest.warns(InputWarning, match="resized"):
        out = read_disparity(tmp_path / "d.npy", size=(12, 16))
    assert out.shape == (1, 12, 16) and np.allclose(out, 0.5)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        read_disparity(tmp_path / "missing.npy")


def test_resize_map_shape():
    assert resize_map(np.zeros((2, 5, 7), np.float32), (10, 3)).shape == (2, 10, 3)


# ---------------------------------------------------------------------------------------- contact sheet
def test_contact_sheet_shape_and_area_downscale():
    images = [np.full((3, 50, 100), i / 4, np.float32) for i in range(5)]
    sheet = contact_sheet(images, [f"#{i}" for i in range(5)], columns=3, width=60)
    assert sheet.shape == (3, 2 * (30 + 22), 180) and sheet.dtype == np.float32
    assert sheet[:, 22 + 15, 30] == pytest.approx(0.0) and sheet[:, 22 + 15, 150] == pytest.approx(0.5, abs=1 / 255)
    assert sheet[:, :16, :60].max() > 0.5  # the label is drawn on the strip
    # A fine checkerboard averages to grey (area interpolation), instead of aliasing to black or white.
    board = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)[None].repeat(3, 0)
    tile = contact_sheet([board], columns=1, width=8)[:, 22:, :]
    assert np.allclose(tile, 0.5, atol=1 / 255 + 1e-6)
    with pytest.raises(ValueError, match="at least one"):
        contact_sheet([])


# ------------------------------------------------------------------------------------------------- demo
def test_load_motorcycle_is_clean_and_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the expected hole filling is quiet; anything else would warn
        image, disparity = load_motorcycle()
    assert image.shape == (3, 500, 741) and disparity.shape == (1, 500, 741)
    assert image.dtype == disparity.dtype == np.float32
    assert 0 <= image.min() and image.max() <= 1 and np.isfinite(disparity).all()
    assert disparity.min() == 0.0 and disparity.max() == 1.0
    # 1 = near: the floor at the bottom is nearer than the back wall at the top.
    assert disparity[0, -20:].mean() > disparity[0, :20].mean() + 0.3


def test_exr_image_and_depth_are_read(tmp_path):
    from data.exr import write_exr

    rgb = np.random.default_rng(0).uniform(0, 0.9, size=(6, 9, 3)).astype(np.float32)
    write_exr(tmp_path / "image.exr", {c: rgb[:, :, i] for i, c in enumerate("RGB")})
    image = read_image(tmp_path / "image.exr")
    assert image.shape == (3, 6, 9)
    # EXR colour is scene-linear: encoded to sRGB as x ** (1 / 2.2), as the BLB loader encodes it.
    np.testing.assert_allclose(image, rgb.transpose(2, 0, 1) ** (1 / 2.2), atol=1e-6)
    # Non-colour data (masks) is read as stored.
    np.testing.assert_allclose(read_image(tmp_path / "image.exr", exr_linear=False), rgb.transpose(2, 0, 1), atol=1e-6)

    depth = np.linspace(1.0, 4.0, 54, dtype=np.float32).reshape(6, 9)
    write_exr(tmp_path / "depth.exr", {"Z": depth})
    with pytest.warns(InputWarning, match="normalised"):
        disparity = read_disparity(tmp_path / "depth.exr", is_depth=True)
    assert disparity[0, 0, 0] == pytest.approx(1.0) and disparity[0, -1, -1] == pytest.approx(0.0)  # near = 1


def test_exr_photo_is_encoded_like_blb_and_its_highlights_are_clipped_with_a_warning(tmp_path):
    from data.exr import write_exr
    from data.io import encode_linear_exr

    linear = np.random.default_rng(1).uniform(0, 1.5, size=(5, 7, 3)).astype(np.float32)  # HDR highlights
    alpha = np.random.default_rng(2).uniform(0, 1, size=(5, 7)).astype(np.float32)
    write_exr(tmp_path / "hdr.exr", {**{c: linear[:, :, i] for i, c in enumerate("RGB")}, "A": alpha})
    with pytest.warns(InputWarning, match="outside"):
        rgb, got_alpha = read_image(tmp_path / "hdr.exr", with_alpha=True)
    expected = np.clip(linear, 0, 1) ** (1 / 2.2)
    np.testing.assert_allclose(rgb, expected.transpose(2, 0, 1), atol=1e-6)
    np.testing.assert_allclose(rgb, encode_linear_exr(linear).transpose(2, 0, 1), atol=0)
    np.testing.assert_allclose(got_alpha[0], alpha, atol=1e-6)  # coverage: never gamma-encoded
    assert rgb.max() == 1.0


# ---------------------------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writers_honour_the_umask(tmp_path, umask):
    """Outputs get the mode a plain ``open()`` would give them (0644 under umask 022), never the temporary
    file's 0600, and no temporary is left behind."""
    import os
    import stat

    from data.io import atomic_write, write_text_atomic

    old = os.umask(umask)
    try:
        paths = [save_image(tmp_path / "a.png", _random_image()), write_text_atomic(tmp_path / "b.txt", "x")]
        with atomic_write(tmp_path / "c.bin") as tmp:
            os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))  # a writer that creates its file private
        paths.append(tmp_path / "c.bin")
    finally:
        os.umask(old)
    assert [oct(stat.S_IMODE(p.stat().st_mode)) for p in paths] == [oct(0o666 & ~umask)] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.txt", "c.bin"]


def test_atomic_write_removes_its_temporary_on_failure(tmp_path):
    from data.io import atomic_write

    (tmp_path / "c.bin").write_text("old")
    with pytest.raises(OSError, match="disk"):
        with atomic_write(tmp_path / "c.bin") as tmp:
            tmp.write_text("partial")
            raise OSError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["c.bin"] and (tmp_path / "c.bin").read_text() == "old"


# ------------------------------------------------------------------------ map size vs image size (issue 12)
def test_a_transposed_disparity_is_refused_naming_the_cause(tmp_path):
    """A 500x741 map for a 741x500 image is not stretched into place: the error says it looks transposed."""
    from data.io import read_disparity

    np.save(tmp_path / "d.npy", np.random.default_rng(0).random((741, 500)).astype(np.float32))
    with pytest.raises(ValueError, match=r"is 500x741 .* image is 741x500 .* looks transposed"):
        read_disparity(tmp_path / "d.npy", size=(500, 741))


def test_a_map_of_another_aspect_is_refused_and_a_scaled_one_resized(tmp_path):
    from data.io import InputWarning, fit_map_to_image

    with pytest.raises(ValueError, match="map of another image"):
        fit_map_to_image(np.zeros((1, 100, 100), np.float32), (500, 741), source="disparity 'x'")
    # Half size with odd rounding (370x250 for 741x500) and a network-rounded size (770x518): resized.
    for h, w in ((250, 370), (518, 770)):
        with pytest.warns(InputWarning, match="resized"):
            assert fit_map_to_image(np.zeros((1, h, w), np.float32), (500, 741), source="d").shape == (1, 500, 741)


def test_large_disparity_values_hint_at_depth_without_guessing():
    """Values 2.7-30 read as disparity are normalised as disparity (a disparity in pixels is legitimate), and
    the warning names the remedy in case they are depth."""
    from data.io import InputWarning, clean_disparity

    depth_like = np.linspace(2.7, 30.0, 64, dtype=np.float32).reshape(8, 8)
    with pytest.warns(InputWarning, match=r"If these are depth values .* pass --depth") as record:
        out = clean_disparity(depth_like, depth_hint="--depth")
    assert out[0, -1, -1] == 1.0 and out[0, 0, 0] == 0.0  # not inverted: no guess
    assert len(record) == 1
    with pytest.warns(InputWarning) as record:  # no hint when the caller has no such flag
        clean_disparity(depth_like)
    assert "depth" not in str(record[0].message)
