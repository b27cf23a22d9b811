"""Focus selection: values, pixels, masks, and the GT-based estimate."""

import numpy as np
import pytest
import torch

from data.focus import focus_from_gt, focus_from_mask, focus_from_pixel, focus_from_value


def _two_plane_disparity():
    disparity = np.full((1, 32, 48), 0.2, dtype=np.float32)
    disparity[:, 8:24, 10:30] = 0.8  # near rectangle
    return disparity


def test_focus_from_value_validates():
    assert focus_from_value("0.25") == 0.25
    for bad in (-0.1, 1.5, float("nan"), "abc"):
        with pytest.raises(ValueError, match="--focus_disparity"):
            focus_from_value(bad)


@pytest.mark.parametrize("as_torch", [False, True])
def test_focus_from_pixel_is_window_median(as_torch):
    disparity = _two_plane_disparity()
    values = torch.from_numpy(disparity) if as_torch else disparity
    assert focus_from_pixel(values, 15, 12) == pytest.approx(0.8)
    assert focus_from_pixel(values, 40, 2) == pytest.approx(0.2)
    # A window mostly on the far plane, touching the rectangle's corner: the median ignores the few near pixels.
    assert focus_from_pixel(values, 9, 7, window=5) == pytest.approx(0.2)
    # Corner pixel: the window is clipped, not an error.
    assert focus_from_pixel(values, 0, 0) == pytest.approx(0.2)


def test_focus_from_pixel_out_of_bounds_names_flag():
    with pytest.raises(ValueError, match="--focus_xy.*x \\(column\\) must be in \\[0, 47\\]"):
        focus_from_pixel(_two_plane_disparity(), 48, 3)
    with pytest.raises(ValueError, match="--focus_xy"):
        focus_from_pixel(_two_plane_disparity(), 3, -1)


def test_focus_from_mask():
    disparity = _two_plane_disparity()
    mask = np.zeros((1, 32, 48), dtype=np.float32)
    mask[:, 10:20, 12:25] = 0.9
    assert focus_from_mask(disparity, mask) == pytest.approx(0.8)
    assert focus_from_mask(torch.from_numpy(disparity), torch.from_numpy(mask)[0]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="mask is empty"):
        focus_from_mask(disparity, np.full_like(mask, 0.4))
    with pytest.raises(ValueError, match="resize the mask"):
        focus_from_mask(disparity, mask[:, :16])


def test_focus_from_gt_finds_the_sharp_plane():
    """Texture everywhere; the GT blurs the far plane only, so the focus must be the near plane's disparity."""
    import cv2

    rng = np.random.default_rng(0)
    disparity = _two_plane_disparity()
    image = rng.random((3, 32, 48)).astype(np.float32)
    blurred = np.stack([cv2.GaussianBlur(c, (0, 0), 3.0) for c in image])
    near = disparity[0] > 0.5
    gt = np.where(near[None], image, blurred)
    assert focus_from_gt(image, gt, disparity) == pytest.approx(0.8, abs=0.02)
    gt_far = np.where(near[None], blurred, image)
    assert focus_from_gt(image, gt_far, disparity) == pytest.approx(0.2, abs=0.02)
