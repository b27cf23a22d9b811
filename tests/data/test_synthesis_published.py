"""The released data synthesis as options of data.synthesis (configs/train_published.yaml): its scene
distributions, capped and clipped brightness, sRGB-composited input, CoC conditioning and aperture sample count."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from data.io import InputWarning
from data.synthesis import OnTheFlyDataset, SceneConfig, composite_window, published_aperture_count, sample_scene

OTF = Path(__file__).resolve().parents[2] / "test_data" / "otf"
SIZE = 64
pytestmark = pytest.mark.usefixtures("one_thread")
PUBLISHED_SCENE = SceneConfig(n_foregrounds=(1, 1), fg_scale_range=(0.53125, 1.0625), fg_tilt_p=0.0, fg_gap=0.0,
                              bg_far_range=(0.001, 0.001), bg_span_range=(0.0, 0.249), bg_tilt_direction="square")


def _items(dataset, indices):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        return [dataset[i] for i in indices]


def test_published_scene_distributions():
    """One fronto-parallel foreground in front of a background whose disparity spans [0.001, 0.001 + U(0, 0.249)]
    over the padded canvas."""
    from data.synthesis import crop_to_alpha

    rgb = np.random.default_rng(0).random((3, 40, 30)).astype(np.float32)
    alpha = np.zeros((1, 40, 30), np.float32)
    alpha[:, 5:35, 5:25] = 1
    fg = crop_to_alpha(rgb, alpha)
    bg = np.random.default_rng(1).random((3, 120, 120)).astype(np.float32)
    spans = []
    for seed in range(40):
        scene = sample_scene([fg], bg, np.random.default_rng(seed), 96, 96, PUBLISHED_SCENE, margin=20)
        assert len(scene.layers) == 2
        (d0, gx, gy), (b0, bgx, bgy) = scene.layers[0].plane, scene.layers[1].plane
        assert gx == 0 and gy == 0  # fronto-parallel
        m = 20  # the plane spans the padded canvas (the given margin exceeds margin_for(largest CoC) = 14)
        corners = [b0 + bgx * x + bgy * y for x in (-m, 95 + m) for y in (-m, 95 + m)]
        assert min(corners) == pytest.approx(0.001, abs=1e-9)
        spans.append(max(corners) - min(corners))
        assert max(corners) <= d0 <= 1.0  # foreground in front of the background's nearest point (fg_gap 0)
    assert max(spans) <= 0.249 + 1e-9 and max(spans) > 0.15 and min(spans) < 0.1


def test_square_tilt_direction_is_not_uniform_in_angle():
    """Directions uniform in [-1, 1]^2 favour the diagonals: |gx| ~ |gy| more often than uniform angles give."""
    from data.synthesis import crop_to_alpha

    fg = crop_to_alpha(np.ones((3, 8, 8), np.float32), np.ones((1, 8, 8), np.float32))
    bg = np.ones((3, 64, 64), np.float32)

    def diagonal_share(direction):
        config = SceneConfig(n_foregrounds=(1, 1), bg_span_range=(0.2, 0.2), bg_tilt_direction=direction)
        near = 0
        for seed in range(400):
            _, gx, gy = sample_scene([fg], bg, np.random.default_rng(seed), 48, 48, config).layers[-1].plane
            angle = math.degrees(math.atan2(abs(gy), abs(gx)))
            near += 30 <= angle <= 60
        return near / 400

    # Uniform angle: 1/3 of directions within 15 degrees of a diagonal; the square: about 0.42.
    assert diagonal_share("square") > diagonal_share("angle") + 0.04


def test_capped_brightness_clips_and_needs_consent():
    plain = OnTheFlyDataset(OTF, SIZE, length=2, seed=4, flip_p=0.0, brightness_p=0.0)
    bright = OnTheFlyDataset(OTF, SIZE, length=2, seed=4, flip_p=0.0, brightness_p=1.0, brightness_range=(1.5, 1.7),
                             brightness_cap=1.1, brightness_clip=True)
    for p, b in zip(_items(plain, [0, 1]), _items(bright, [0, 1])):
        assert float(b["brightness"]) == pytest.approx(1.1)
        for key in ("aif", "bokeh"):
            torch.testing.assert_close(b[key], (p[key] * 1.1).clamp(0, 1), atol=1e-6, rtol=0)
        assert float(b["aif"].max()) <= 1.0
    with pytest.raises(ValueError, match="brightness_clip=True"):
        OnTheFlyDataset(OTF, SIZE, brightness_range=(0.7, 1.7), brightness_cap=1.1)


def test_srgb_composited_input_published_conditioning_and_unchanged_draws():
    """aif_composite='srgb' composites on sRGB values; coc_condition='published' only rescales coc_px by
    U(2/3, 1) * max(f, 1 - f); the scene, crop, target and every other map stay the same."""
    common = dict(length=2, seed=9)
    ours = OnTheFlyDataset(OTF, SIZE, **common)
    released = OnTheFlyDataset(OTF, SIZE, aif_composite="srgb", coc_condition="published", **common)
    for index, (a, b) in enumerate(zip(_items(ours, range(2)), _items(released, range(2)))):
        for key in ("bokeh", "disparity", "K", "disp_focus", "crop_top_left", "flip", "brightness"):
            assert torch.equal(a[key], b[key]), key
        f = float(a["disp_focus"])
        ratio = b["coc_px"] / (a["K"] * (a["disparity"] - a["disp_focus"]) * max(f, 1 - f))
        valid = (a["disparity"] - a["disp_focus"]).abs() > 1e-3
        assert float(ratio[valid].std()) < 1e-4 and 2 / 3 - 1e-5 <= float(ratio[valid].mean()) <= 1 + 1e-5
        # The sRGB composite, computed here from the scene's layers (flip and brightness applied after).
        scene, rng = released.sample_scene(index)
        top, left = (int(v) for v in a["crop_top_left"])
        images, alphas, planes = (torch.from_numpy(x)[None] for x in scene.window(top, left, SIZE, SIZE))
        cover = 1 - torch.cumprod(1 - alphas, dim=1)
        visible = alphas * torch.cat([torch.ones_like(cover[:, :1]), 1 - cover[:, :-1]], dim=1)
        srgb = (visible * images).sum(dim=1)[0]
        if bool(b["flip"][0]):
            srgb = srgb.flip(-1)
        if bool(b["flip"][1]):
            srgb = srgb.flip(-2)
        torch.testing.assert_close(b["aif"], srgb * b["brightness"], atol=1e-5, rtol=0)
    linear_aif = composite_window(images, alphas, planes)[0][0]
    assert float((linear_aif - composite_window(images, alphas, planes, gamma=1.0)[0][0]).abs().max()) > 1e-3


def test_published_aperture_count():
    """The release's count (classical_renderer/mpi_multi_reverse.py): torch.linspace(-1, 1, int(21 t)) on both
    axes, the points with X**2 + Y**2 <= 1."""
    for times in (0.25, 1.0, 2 ** 1.5, 8.0):
        axis = torch.linspace(-1, 1, steps=int(21 * times))
        X, Y = torch.meshgrid(axis, axis, indexing="ij")
        assert published_aperture_count(times) == int(((X ** 2 + Y ** 2) <= 1).sum())
    assert published_aperture_count(1.0) == pytest.approx(math.pi / 4 * 21 ** 2, rel=0.1)


def test_published_sample_count_reaches_the_renderer_in_both_modes(monkeypatch):
    """The count travels with each item (``render_samples``) so rendering on the accelerator uses it too; a
    small stand-in count keeps the CPU test fast."""
    import data.synthesis as synthesis
    import data.synthesis.published as synthesis_published
    from torch.utils.data import default_collate

    monkeypatch.setattr(synthesis_published, "published_aperture_count", lambda times: 6)
    common = dict(length=2, seed=3)
    cpu = OnTheFlyDataset(OTF, SIZE, aperture_samples="published", **common)
    device_mode = OnTheFlyDataset(OTF, SIZE, aperture_samples="published", synthesize_on_device=True, **common)
    auto = OnTheFlyDataset(OTF, SIZE, **common)
    reference, items, plain = _items(cpu, [0, 1]), _items(device_mode, [0, 1]), _items(auto, [0, 1])
    assert [int(item["render_samples"]) for item in items] == [6, 6]
    rendered = synthesis.synthesize_batch(default_collate(items), "cpu")
    for row in range(2):
        torch.testing.assert_close(rendered["bokeh"][row], reference[row]["bokeh"], atol=1e-5, rtol=0)
    assert max(float((r["bokeh"] - p["bokeh"]).abs().max()) for r, p in zip(reference, plain)) > 1e-3
