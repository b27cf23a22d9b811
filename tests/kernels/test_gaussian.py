import kornia
import pytest
import torch

from kernels import render_gaussian


def _image(h=40, w=52, seed=0):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_zero_coc_is_identity():
    image = _image()
    assert torch.equal(render_gaussian(image, torch.zeros(1, 1, 40, 52, dtype=torch.float64)), image)


@pytest.mark.parametrize("coc", [2.0, 3.0, 5.0])
def test_uniform_coc_matches_kornia_gaussian_blur(coc):
    # sigma = coc / 2 falls exactly on a stack level, so the result is one Gaussian blur: compare with kornia.
    image = _image()
    ours = render_gaussian(image, torch.full((1, 1, 40, 52), coc, dtype=torch.float64))
    sigma = coc / 2
    size = 2 * int(torch.ceil(torch.tensor(3 * sigma))) + 1
    reference = kornia.filters.gaussian_blur2d(image, (size, size), (sigma, sigma), border_type="reflect")
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_between_levels_interpolates_and_sign_does_not_matter():
    image = _image()
    low = render_gaussian(image, torch.full((1, 1, 40, 52), 2.0, dtype=torch.float64))
    high = render_gaussian(image, torch.full((1, 1, 40, 52), 3.0, dtype=torch.float64))
    mid = render_gaussian(image, torch.full((1, 1, 40, 52), -2.5, dtype=torch.float64))
    torch.testing.assert_close(mid, (low + high) / 2, atol=1e-9, rtol=0)


def test_uniform_image_stays_uniform_and_bad_shapes_error():
    image = torch.full((2, 3, 16, 20), 0.3)
    coc = torch.rand(2, 1, 16, 20) * 8
    torch.testing.assert_close(render_gaussian(image, coc), image, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="coc_px"):
        render_gaussian(image, coc[:, :, :8])


@pytest.mark.parametrize("h, w", [(1, 1), (2, 7), (5, 3), (12, 12), (9, 31)])
@pytest.mark.parametrize("coc", [1.0, 4.0, 10.0, 25.0])
def test_uniform_image_stays_uniform_on_images_smaller_than_the_kernel(h, w, coc):
    # 3 sigma = 1.5 coc exceeds the image side here; the reflect padding then cuts the kernel short, and the cut
    # kernel must still sum to 1 (12 x 12 at coc 10 used to come out 4 % dark).
    image = torch.full((1, 3, h, w), 0.5, dtype=torch.float64)
    out = render_gaussian(image, torch.full((1, 1, h, w), coc, dtype=torch.float64))
    assert out.shape == image.shape
    assert (out - 0.5).abs().max().item() < 1e-12
