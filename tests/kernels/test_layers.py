"""Physics of the layered thin-lens ray tracer (CPU, torch reference)."""

import pytest
import torch

from kernels import render_layers, render_scatter


def _fronto(disparities, b=1):
    """Planes (B, L, 3) for fronto-parallel layers at the given disparities: A = B = 0, C = 1 / d."""
    return torch.tensor([[[0.0, 0.0, 1.0 / d] for d in disparities]] * b, dtype=torch.float64)


def _composite(images, alphas):
    """Reference front-to-back "over" composite of straight-colour layers (B, L, ...)."""
    out = torch.zeros_like(images[:, 0])
    trans = torch.ones_like(alphas[:, 0])
    for layer in range(images.shape[1]):
        out = out + trans * (alphas[:, layer] * images[:, layer])
        trans = trans * (1 - alphas[:, layer])
    return out, 1 - trans


def test_opaque_layer_at_focus_returns_input():
    torch.manual_seed(0)
    img = torch.rand(1, 1, 3, 20, 24, dtype=torch.float64)
    alpha = torch.ones(1, 1, 1, 20, 24, dtype=torch.float64)
    colour, weight = render_layers(img, alpha, _fronto([0.6]), 30.0, 0.6, n_samples=32, impl="torch")
    assert (colour / weight - img[:, 0]).abs().max().item() < 1e-12
    assert (weight - 1).abs().max().item() < 1e-12


def test_zero_k_returns_the_composite_exactly_for_tilted_planes():
    torch.manual_seed(1)
    imgs = torch.rand(2, 3, 3, 16, 20, dtype=torch.float64)
    alphas = torch.rand(2, 3, 1, 16, 20, dtype=torch.float64)
    alphas[:, -1] = 1.0
    planes = torch.tensor([[0.01, -0.02, 1.5], [0.003, 0.01, 2.0], [0.0, 0.005, 5.0]], dtype=torch.float64)
    planes = planes.expand(2, 3, 3).contiguous()
    colour, weight = render_layers(imgs, alphas, planes, torch.zeros(2), torch.tensor([0.3, 0.8]), impl="torch")
    ref, cov = _composite(imgs, alphas)
    assert torch.equal(colour, ref)
    assert torch.equal(weight, cov)


def test_defocused_foreground_shows_partial_occlusion():
    # Near layer: opaque red on the left half (x < 32), empty on the right; far layer: opaque blue, in focus.
    h, w = 40, 64
    imgs = torch.zeros(1, 2, 3, h, w, dtype=torch.float64)
    imgs[0, 0, 0] = 1.0
    imgs[0, 1, 2] = 1.0
    alphas = torch.ones(1, 2, 1, h, w, dtype=torch.float64)
    alphas[0, 0, :, :, 32:] = 0.0
    k = 20.0  # foreground disparity 0.9, focus 0.5 -> coc = 20 * 0.4 = 8 px
    colour, weight = render_layers(imgs, alphas, _fronto([0.9, 0.5]), k, 0.5, n_samples=128, impl="torch")
    red = (colour / weight)[0, 0, h // 2]
    # The edge lies between columns 31 and 32; a disc of radius r half-covers it there.
    assert abs(red[31].item() - 0.5) < 0.15 and abs(red[32].item() - 0.5) < 0.15
    # Just outside the foreground its blur is see-through: background mixes in (0 < red < 1) ...
    assert 0.05 < red[34].item() < 0.45
    # ... and just inside, the background shows through the defocused foreground's edge.
    assert 0.55 < red[29].item() < 0.95
    # Beyond the radius, pure layers; coverage is full everywhere (opaque far layer).
    assert red[31 - 10].item() > 0.999 and red[32 + 10].item() < 1e-3
    assert (weight - 1).abs().max().item() < 1e-9
    inner = red[12:52]  # the grid border (rays leaving the layer) aside, the transition is monotonic
    assert torch.all(inner[1:] <= inner[:-1] + 1e-9)


def test_horizontal_flip_commutes():
    torch.manual_seed(2)
    h, w = 18, 26
    imgs = torch.rand(1, 2, 3, h, w, dtype=torch.float64)
    alphas = torch.rand(1, 2, 1, h, w, dtype=torch.float64)
    alphas[:, 1] = 1.0
    # Tilt only along y so that the mirrored plane has the same coefficients.
    planes = torch.tensor([[[0.0, 0.01, 1.2], [0.0, -0.004, 3.0]]], dtype=torch.float64)
    out = render_layers(imgs, alphas, planes, 12.0, 0.5, n_samples=24, blades=5, rotation_deg=10.0, impl="torch")
    out_f = render_layers(imgs.flip(-1), alphas.flip(-1), planes, 12.0, 0.5, n_samples=24, blades=5,
                          rotation_deg=170.0, impl="torch")
    for a, b in zip(out, out_f):
        assert (b.flip(-1) - a).abs().max().item() < 1e-9


def test_agrees_with_scatter_on_a_single_fronto_parallel_layer():
    # Smooth texture so that the comparison measures the blur kernels, not aliasing.
    torch.manual_seed(3)
    h, w, r = 48, 48, 4.0
    tex = torch.nn.functional.avg_pool2d(torch.rand(1, 3, h + 4, w + 4, dtype=torch.float64), 5, 1)
    imgs = tex[:, None]
    alphas = torch.ones(1, 1, 1, h, w, dtype=torch.float64)
    colour, weight = render_layers(imgs, alphas, _fronto([0.7]), 10.0, 0.3, n_samples=256, impl="torch")
    traced = colour / weight
    scattered = render_scatter(tex, torch.full((1, 1, h, w), r, dtype=torch.float64), impl="torch")
    inner = (..., slice(8, -8), slice(8, -8))  # away from the border, where the two normalise differently
    diff = (traced - scattered)[inner].abs()
    # Tolerance: mean 0.5 %, max 2 % of the [0, 1] range (texture contrast here is about 0.25).
    assert diff.mean().item() < 0.005 and diff.max().item() < 0.02


def test_auto_samples_and_seed_determinism():
    torch.manual_seed(4)
    imgs = torch.rand(1, 2, 3, 12, 12)
    alphas = torch.ones(1, 2, 1, 12, 12)
    a = render_layers(imgs, alphas, _fronto([0.9, 0.2]).float(), 40.0, 0.5, seed=7, impl="torch")
    b = render_layers(imgs, alphas, _fronto([0.9, 0.2]).float(), 40.0, 0.5, seed=7, impl="torch")
    assert torch.equal(a[0], b[0]) and a[0].dtype == torch.float32


def test_bad_inputs_name_expected_and_actual():
    imgs = torch.rand(1, 2, 3, 8, 8)
    alphas = torch.ones(1, 2, 1, 8, 8)
    planes = _fronto([0.9, 0.2]).float()
    with pytest.raises(ValueError, match=r"alphas must have shape \(1, 2, 1, 8, 8\); got \(1, 2, 8, 8\)"):
        render_layers(imgs, alphas[:, :, 0], planes, 1.0, 0.5)
    with pytest.raises(ValueError, match=r"planes must have shape \(1, 2, 3\); got \(1, 3, 3\)"):
        render_layers(imgs, alphas, torch.ones(1, 3, 3), 1.0, 0.5)
    with pytest.raises(ValueError, match="K must be >= 0"):
        render_layers(imgs, alphas, planes, -2.0, 0.5)
    with pytest.raises(ValueError, match=r"K must be a float or a tensor of shape \(1,\); got \(2,\)"):
        render_layers(imgs, alphas, planes, torch.ones(2), 0.5)
    with pytest.raises(ValueError, match="C\\) must be > 0"):
        render_layers(imgs, alphas, torch.zeros(1, 2, 3), 1.0, 0.5)


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["in-front-of-focus", "behind-focus"])
def test_odd_blade_point_agrees_with_scatter_at_both_signs(sign):
    # A pentagon is not point symmetric, so this checks the orientation convention (kernels/aperture.py): the
    # thin lens images a point of CoC r at p = x - r*u, i.e. the aperture point-reflected in front of focus
    # (r > 0) and upright behind it (r < 0); the scatter renderer must splat the same shape at both signs.
    size, value, r = 33, 50.0, 12.0
    img = torch.zeros(1, 3, size, size, dtype=torch.float64)
    img[..., size // 2, size // 2] = value
    disp, focus = (0.7, 0.3) if sign > 0 else (0.3, 0.7)  # coc = K (disp - focus) = +-12 with K = 30
    opts = dict(blades=5, rotation_deg=20.0)
    colour, weight = render_layers(img[:, None], torch.ones(1, 1, 1, size, size, dtype=torch.float64),
                                   _fronto([disp]), 30.0, focus, n_samples=1024, impl="torch", **opts)
    traced = (colour / weight)[0, 0]
    scattered = render_scatter(img, torch.full((1, 1, size, size), sign * r, dtype=torch.float64), impl="torch",
                               **opts)[0, 0]

    def rel_l1(a, b):
        return ((a - b).abs().sum() / b.abs().sum()).item()

    # Tolerance: normalised L1 0.1 (measured 0.059 with 1024 samples; the rest is the ray tracer's sampling
    # noise and its bilinear/mip footprint). The wrongly oriented pentagon is at 0.24, so the bound separates.
    assert rel_l1(scattered, traced) < 0.1
    assert rel_l1(scattered.flip(-1, -2), traced) > 0.18


@pytest.mark.parametrize("shape", [(0, 2, 3, 8, 8), (1, 2, 3, 0, 8), (2, 1, 3, 5, 0)])
def test_empty_images_return_empty_outputs(shape):
    b, n_layers, _, h, w = shape
    imgs = torch.rand(shape)
    alphas = torch.ones(b, n_layers, 1, h, w)
    planes = torch.tensor([0.0, 0.0, 1.1]).expand(b, n_layers, 3)  # defocused: coc = 10 (1/1.1 - 0.5) = 4 px
    colour, weight = render_layers(imgs, alphas, planes, 10.0, 0.5, impl="torch")
    assert colour.shape == (b, 3, h, w) and weight.shape == (b, 1, h, w)
    assert colour.dtype == weight.dtype == torch.float32


def test_no_layers_planes_and_alphas_errors_are_clear():
    imgs = torch.rand(1, 2, 3, 8, 8)
    alphas = torch.ones(1, 2, 1, 8, 8)
    planes = _fronto([0.9, 0.2]).float()
    with pytest.raises(ValueError, match=r"no layers \(shape \(1, 0, 3, 8, 8\), L = 0\)"):
        render_layers(imgs[:, :0], alphas[:, :0], planes[:, :0], 1.0, 0.5, impl="torch")
    bad = planes.clone()
    bad[0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="planes must be finite"):
        render_layers(imgs, alphas, bad, 1.0, 0.5, impl="torch")
    # Planes are moved to the images' device like K and disp_focus; one that cannot be (no data) is named.
    with pytest.raises(ValueError, match=r"planes is on meta and cannot be moved to the images' device cpu"):
        render_layers(imgs, alphas, planes.to("meta"), 1.0, 0.5, impl="torch")
    with pytest.raises(ValueError, match=r"alphas is on meta but images_linear is on cpu"):
        render_layers(imgs, alphas.to("meta"), planes, 1.0, 0.5, impl="torch")
    # float64 planes with float32 images are converted (no dtype error).
    out = render_layers(imgs, alphas, planes.double(), 1.0, 0.5, impl="torch")
    assert out[0].dtype == torch.float32


def test_aperture_sample_count_and_spacing_agree_for_odd_counts():
    from kernels import aperture

    for n in range(1, 10):
        u, w = aperture.aperture_samples(n, blades=5)
        assert u.shape == (aperture.sample_count(n), 2) and w.shape == (aperture.sample_count(n),)
        assert abs(w.sum().item() - 1.0) < 1e-12
    assert [aperture.sample_count(n) for n in (1, 2, 3, 23, 24)] == [1, 2, 4, 24, 24]
    # An odd request traces the next even count, and the mip prefilter's sample spacing follows what is
    # traced, so 23 and 24 samples render the same image bit for bit (defocus large enough that the
    # prefilter is active: spacing ~ 18 px * sqrt(pi / 24) = 6.5 px).
    torch.manual_seed(5)
    imgs = torch.rand(1, 2, 3, 20, 24, dtype=torch.float64)
    alphas = torch.rand(1, 2, 1, 20, 24, dtype=torch.float64)
    planes = _fronto([0.9, 0.3])
    odd = render_layers(imgs, alphas, planes, 30.0, 0.3, n_samples=23, impl="torch")
    even = render_layers(imgs, alphas, planes, 30.0, 0.3, n_samples=24, impl="torch")
    for a, b in zip(odd, even):
        assert torch.equal(a, b)
