"""Physics of the classical scatter renderer (CPU, torch reference)."""

import math

import pytest
import torch

from kernels import render_classical, render_scatter


def _point_scene(size=65, radius=8.0, value=1.0):
    img = torch.zeros(1, 3, size, size, dtype=torch.float64)
    c = size // 2
    img[..., c, c] = value
    coc = torch.full((1, 1, size, size), radius, dtype=torch.float64)
    return img, coc, c


@pytest.mark.parametrize("blades", [0, 6])
@pytest.mark.parametrize("radius", [3.0, 8.0])
def test_point_renders_aperture_of_radius_r_and_conserves_energy(blades, radius):
    img, coc, c = _point_scene(radius=radius)
    out = render_scatter(img, coc, blades=blades, impl="torch")[0, 0]
    assert abs(out.sum().item() - 1.0) < 0.01  # energy within 1 %
    mask = out > 0.5 * out.max()
    area = mask.sum().item()
    # Disc: area pi r^2; hexagon of circumradius r: (3 sqrt(3) / 2) r^2. Equivalent radius within 1 px.
    shape_area = math.pi if blades == 0 else 1.5 * math.sqrt(3.0)
    assert abs(math.sqrt(area / shape_area) - radius) < 1.0
    ys, xs = torch.nonzero(mask, as_tuple=True)
    extent = torch.sqrt((ys - c).double() ** 2 + (xs - c).double() ** 2).max().item()
    assert abs(extent - radius) <= 1.0  # farthest lit pixel (the vertices for the hexagon) at r within 1 px
    if blades == 6:
        # A hexagon, not a disc: its area is 3 sqrt(3) / (2 pi) = 0.83 of the circumscribed disc's.
        assert area < 0.9 * math.pi * radius**2


def test_uniform_image_stays_uniform_under_any_depth():
    torch.manual_seed(1)
    img = torch.full((2, 3, 40, 48), 0.37)
    coc = torch.randn(2, 1, 40, 48) * 5.0
    out = render_scatter(img, coc, impl="torch")
    assert (out - 0.37).abs().max().item() < 1e-5


def test_in_focus_pixels_are_unchanged_exactly():
    torch.manual_seed(2)
    img = torch.rand(1, 3, 48, 64)
    coc = torch.rand(1, 1, 48, 64) * 0.98 - 0.49  # |coc| < 0.5 everywhere
    coc[..., :, 40:] = -6.0  # a blurred region on the right
    out = render_scatter(img, coc, impl="torch")
    # Columns < 40 - 7 are out of reach of the blurred sources (radius 6, soft edge 0.5): bit-exact.
    assert torch.equal(out[..., :33], img[..., :33])
    assert not torch.allclose(out[..., 45:], img[..., 45:])


def test_sharp_foreground_keeps_its_edge_over_blurred_background():
    # Foreground (left, in focus, coc 0) is dark; background (right, coc -8, behind focus) is bright.
    img = torch.zeros(1, 3, 32, 64)
    img[..., 32:] = 1.0
    coc = torch.zeros(1, 1, 32, 64)
    coc[..., 32:] = -8.0
    out = render_scatter(img, coc, impl="torch")
    # Bound: a sharp pixel receives no light from sources more than 1.5 px of CoC behind it -> exactly 0.
    assert out[..., :32].abs().max().item() == 0.0
    # The background keeps its own colour (normalisation fills the hidden part), no dark halo.
    assert (out[..., 32:] - 1.0).abs().max().item() < 1e-5


def test_blurred_foreground_spreads_over_sharp_background():
    # The converse: a near, defocused bright object bleeds over the in-focus background behind it.
    img = torch.zeros(1, 3, 32, 64)
    img[..., :32] = 1.0
    coc = torch.zeros(1, 1, 32, 64)
    coc[..., :32] = 6.0
    out = render_scatter(img, coc, impl="torch")[0, 0, 16]
    assert 0.1 < out[33].item() < 0.6  # partial coverage just outside the edge
    assert out[40].item() == 0.0  # beyond the radius + soft edge


@pytest.mark.parametrize("blades,rotation", [(0, 0.0), (5, 10.0)])
def test_horizontal_flip_commutes(blades, rotation):
    torch.manual_seed(3)
    img = torch.rand(1, 3, 24, 30, dtype=torch.float64)
    coc = torch.randn(1, 1, 24, 30, dtype=torch.float64) * 3.0
    out = render_scatter(img, coc, blades=blades, rotation_deg=rotation, impl="torch")
    # Mirroring x maps angle theta -> 180 - theta, so the polygon's rotation becomes 180 - rotation.
    out_f = render_scatter(img.flip(-1), coc.flip(-1), blades=blades, rotation_deg=180.0 - rotation, impl="torch")
    assert (out_f.flip(-1) - out).abs().max().item() < 1e-10


def test_highlight_boost_brightens_defocused_highlights_only():
    img, coc, c = _point_scene(radius=5.0, value=4.0)
    base = render_scatter(img, coc, impl="torch")
    boosted = render_scatter(img, coc, highlight_threshold=1.0, highlight_gain=2.0, impl="torch")
    # c' = c + gain * (c - threshold) = 4 + 2 * 3 = 10 -> 2.5x the energy.
    assert abs(boosted.sum().item() / base.sum().item() - 2.5) < 1e-6
    sharp = render_scatter(img, coc * 0, highlight_threshold=1.0, highlight_gain=2.0, impl="torch")
    assert torch.equal(sharp, img)


def test_render_classical_identity_at_zero_k_and_errors():
    torch.manual_seed(4)
    srgb = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    disp = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    out = render_classical(srgb, disp, 0.0, 0.5, impl="torch")
    assert (out - srgb).abs().max().item() < 1e-12  # gamma round trip only
    blurred = render_classical(srgb, disp, torch.tensor([10.0]), torch.tensor([0.2]), impl="torch")
    assert blurred.shape == srgb.shape and 0.0 <= blurred.min() and blurred.max() <= 1.0
    with pytest.raises(ValueError, match="K must be >= 0"):
        render_classical(srgb, disp, -1.0, 0.5)
    with pytest.raises(ValueError, match=r"disparity must have shape \(1, 1, 16, 16\); got \(1, 1, 8, 16\)"):
        render_classical(srgb, disp[..., :8, :], 1.0, 0.5)


def test_bad_inputs_name_expected_and_actual():
    img = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"image_linear must have shape \(\*, 3, \*, \*\); got \(1, 4, 8, 8\)"):
        render_scatter(torch.rand(1, 4, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"coc_px must have shape \(1, 1, 8, 8\); got \(1, 1, 8, 9\)"):
        render_scatter(img, torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="NaN or inf"):
        render_scatter(img, torch.full((1, 1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="blades must be 0"):
        render_scatter(img, torch.zeros(1, 1, 8, 8), blades=2)
    with pytest.raises(ValueError, match="impl must be one of"):
        render_scatter(img, torch.zeros(1, 1, 8, 8), impl="cupy")


def _fast_and_reference(img, coc, blades=0, rotation_deg=0.0, threshold=None, gain=0.0):
    """Both torch gathers on the same (boosted) sources, composed as ``render_scatter`` does."""
    from kernels import aperture, scatter

    radius = coc.abs()
    colour = scatter.boost_highlights(img, radius, threshold, gain)
    offsets = scatter._offsets(float(radius.max()), blades, rotation_deg)
    apothem = aperture.apothem_ratio(blades)
    outs = []
    for gather in (scatter._scatter_torch, scatter._scatter_torch_reference):
        acc_c, acc_w, self_w = gather(colour, coc, offsets, apothem)
        out = torch.where(acc_w == 0, colour, (acc_c + self_w * colour) / (acc_w + self_w))
        outs.append((out, acc_w))
    return outs


@pytest.mark.parametrize("blades,rotation", [(0, 0.0), (6, 15.0), (5, -40.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_gather_matches_reference(blades, rotation, seed):
    # Random images with random CoC maps: smooth depth layers (occlusion both ways: sharp over blurred and
    # blurred over sharp), a patch in focus, highlights above the boost threshold, odd sizes, batch of 2.
    gen = torch.Generator().manual_seed(seed)
    b, h, w = 2, 37, 53
    img = torch.rand(b, 3, h, w, generator=gen) * 1.5
    coarse = torch.randn(b, 1, 5, 7, generator=gen) * 5.0
    coc = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    coc = coc + 0.5 * torch.randn(b, 1, h, w, generator=gen)
    coc[0, :, 5:15, 5:20] = 0.2  # an in-focus patch next to blurred surroundings
    coc[1, :, :, : w // 2] = -7.0  # a far blurred half behind a near, less blurred one
    coc[1, :, :, w // 2:] = coc[1, :, :, w // 2:].clamp(-2.0, 3.0)
    (fast, w_fast), (ref, w_ref) = _fast_and_reference(img, coc, blades, rotation, threshold=1.0, gain=2.0)
    assert (fast - ref).abs().max().item() < 1e-5
    assert (w_fast - w_ref).abs().max().item() < 1e-5
    assert torch.equal(w_fast == 0, w_ref == 0)  # same pixels take the bit-exact in-focus branch


def test_fast_gather_matches_reference_on_ramp_and_float64():
    # The benchmark scene (every radius up to R over the rows, occlusion on one side) and a float64 run.
    gen = torch.Generator().manual_seed(5)
    img = torch.rand(1, 3, 40, 96, generator=gen)
    coc = torch.linspace(-9.0, 9.0, 40).view(1, 1, 40, 1).expand(1, 1, 40, 96).contiguous()
    (fast, _), (ref, _) = _fast_and_reference(img, coc)
    assert (fast - ref).abs().max().item() < 1e-5
    (fast, _), (ref, _) = _fast_and_reference(img.double(), coc.double() * 0.7, blades=7, rotation_deg=3.0)
    assert (fast - ref).abs().max().item() < 1e-12


@pytest.mark.parametrize("blades", [0, 5, 6])
def test_aperture_orientation_follows_the_sign_of_coc(blades):
    # In front of focus (coc > 0) the splat is the aperture point-reflected, behind focus (coc < 0) upright,
    # as the thin lens images it (kernels/aperture.py; compared with the ray tracer in test_layers.py).
    img, coc, c = _point_scene(size=41, radius=9.0, value=10.0)
    front = render_scatter(img, coc, blades=blades, rotation_deg=20.0, impl="torch")
    behind = render_scatter(img, -coc, blades=blades, rotation_deg=20.0, impl="torch")
    # The point reflection of each other, for every blade count (same normaliser for both signs); for even
    # counts only up to rounding of the edge heights, which are not computed bit-symmetrically.
    assert (front - behind.flip(-1, -2)).abs().max().item() < 1e-12
    if blades % 2 == 0:
        # Disc and hexagon are point symmetric: the sign changes nothing, bit for bit (and the renderer does
        # no reflection work for them, so their results are what they were before the convention existed).
        assert torch.equal(front, behind)
    else:
        assert torch.equal(front, behind.flip(-1, -2))  # exactly: the reflected heights are the same numbers
        # A pentagon's reflection is a different shape: the two splats differ by a large fraction.
        assert ((front - behind).abs().sum() / behind.sum()).item() > 0.2
    # Both orientations through the reference gather too.
    for sign in (1.0, -1.0):
        (fast, _), (ref, _) = _fast_and_reference(img, sign * coc, blades, 20.0)
        assert (fast - ref).abs().max().item() < 1e-12


def test_progress_reports_rows_of_long_renders(one_thread):
    """Long renders report their progress in target rows: increasing, ending at H, with intermediate steps
    when the image takes several strips (here 72 rows of 256 px at radius 8, one thread: strips of 30 rows)."""
    from kernels.scatter import render_scatter

    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 72, 256, generator=g)
    coc = torch.rand(1, 1, 72, 256, generator=g) * 16 - 8
    calls = []
    out = render_scatter(image, coc, impl="torch", progress=lambda done, total: calls.append((done, total)))
    assert calls == [(30, 72), (60, 72), (72, 72)]
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert torch.equal(out, render_scatter(image, coc, impl="torch"))  # reporting changes nothing


def test_strip_size_changes_speed_not_the_render():
    """The strip size follows the thread count (2^17 elements per thread); any size gives the same render up to
    float rounding (strips bound which offsets a row visits, never which sources reach a target)."""
    from kernels import aperture
    from kernels.scatter import _default_strip_elems, _offsets, _scatter_torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _default_strip_elems()
        torch.set_num_threads(2)
        assert (one, _default_strip_elems()) == (1 << 17, 1 << 18)
    finally:
        torch.set_num_threads(before)
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 40, 64, generator=g)
    coc = torch.rand(1, 1, 40, 64, generator=g) * 12 - 6
    offsets, apothem = _offsets(6.0, 0, 0.0), aperture.apothem_ratio(0)
    outputs = [_scatter_torch(image, coc, offsets, apothem, strip_elems=n) for n in (1, 1 << 12, 1 << 30)]
    for other in outputs[1:]:
        for a, b in zip(outputs[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
