"""The published protocol (``protocol="published"``): each element of the released code's inference path,
pinned on the tiny stack against the released code's equations (written out here, not imported)."""

import math

import numpy as np
import pytest
import torch

from models.onestep import ddpm_x0_clip
from models.pipeline import (
    BokehDiffPipeline, PUBLISHED_TILE_LATENT, default_gamma, protocol_for, published_tile_starts,
    published_tile_window,
)
from models.pisa import PISAAttnProcessor, pisa_attention
from models.pisa.geometry import token_uv
from models.pisa.published import PUBLISHED, PUBLISHED_GEOMETRY, token_uv_published
from models.tiny import SCHEDULER_CONFIG, build_tiny_sdxl
from tests.tiny_weights import trained_tiny_stack, write_published_adapter

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------------
# Choosing the protocol
# ----------------------------------------------------------------------------------------------------------
def test_auto_protocol_follows_the_adapter_metadata():
    assert protocol_for({"format": "bokehdiff-train", "pisa": {}}) == "corrected"
    assert protocol_for({}) == "published"  # the released adapter has no metadata
    assert protocol_for({"format": "something-else"}) == "published"
    assert protocol_for(None) == "corrected"  # no adapter: our ablation, nothing to reproduce
    assert default_gamma("published") == 1.0 and default_gamma("corrected") == 2.2


def test_from_pretrained_auto_picks_published_for_the_released_layout(tmp_path):
    from models.tiny import save_tiny_sdxl

    base = save_tiny_sdxl(tmp_path / "base", seed=0)
    adapter = write_published_adapter(trained_tiny_stack(seed=3), tmp_path / "adapter")
    pipe = BokehDiffPipeline.from_pretrained(base, adapter=adapter, pisa={"n_segments": 2, "n_supersamples": 1})
    assert pipe.info["protocol"] == "published" and pipe.protocol == "published"
    assert pipe.model.gamma == 1.0
    # The tiny scheduler config has no clip_sample key: diffusers' DDPM default (true) applies.
    assert pipe.model.x0_clip == 1.0
    proc = next(p for p in pipe.model.unet.attn_processors.values() if isinstance(p, PISAAttnProcessor))
    assert proc.compat and proc.published_geometry and proc.n_supersamples == 1
    corrected = BokehDiffPipeline.from_pretrained(base, adapter=adapter, protocol="corrected", pisa={"n_segments": 2})
    assert corrected.model.gamma == 2.2 and corrected.model.x0_clip is None
    assert BokehDiffPipeline.from_pretrained(base, adapter=adapter, protocol="published", gamma=2.2).model.gamma == 2.2
    with pytest.raises(ValueError, match="protocol"):
        BokehDiffPipeline.from_pretrained(base, adapter=adapter, protocol="paper")


# ----------------------------------------------------------------------------------------------------------
# Scheduler: the x0 clamp follows the config
# ----------------------------------------------------------------------------------------------------------
def test_x0_clamp_follows_the_scheduler_config():
    from diffusers import DDPMScheduler, EulerDiscreteScheduler

    assert "clip_sample" not in EulerDiscreteScheduler(**SCHEDULER_CONFIG).config
    assert ddpm_x0_clip(EulerDiscreteScheduler(**SCHEDULER_CONFIG)) == 1.0  # absent -> DDPM default: clamp
    assert ddpm_x0_clip(DDPMScheduler(clip_sample=False)) is None
    assert ddpm_x0_clip(DDPMScheduler(clip_sample=True, clip_sample_range=2.5)) == 2.5
    with pytest.raises(ValueError, match="thresholding"):
        ddpm_x0_clip(DDPMScheduler(thresholding=True))

    stack = build_tiny_sdxl(seed=0)
    pipe = BokehDiffPipeline.from_components(**stack, pisa=False, protocol="published")
    model = pipe.model
    z = torch.randn(1, 4, 4, 4) * 3
    eps = torch.randn(1, 4, 4, 4)
    a = float(stack["scheduler"].alphas_cumprod[499])
    expected = ((z - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)  # DDPM step with clip_sample
    assert torch.allclose(model.noise_to_x0(z, eps), expected, atol=1e-6)
    assert (model.noise_to_x0(z, eps).abs() <= 1).all()
    model.x0_clip = None
    assert model.noise_to_x0(z, eps).abs().max() > 1


# ----------------------------------------------------------------------------------------------------------
# PISA geometry
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h, w", [(32, 32), (12, 16), (48, 64)])
def test_token_distances_in_published_units(h, w):
    # Released code: i = linspace(0, 1, h), j = linspace(0, 1, w), distance * 51.2 in 10-px units.
    pos = PUBLISHED_GEOMETRY.token_positions_px(h, w, 16.0, "cpu")  # frame_px = 512
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    expected = np.stack([rows.ravel() / (h - 1) * 512.0, cols.ravel() / (w - 1) * 512.0], axis=-1)
    assert np.allclose(pos.numpy(), expected, atol=1e-4)
    # On a 512-px frame (16 px per token, 32 tokens) the published units equal the compat discretisation.
    if (h, w) == (32, 32):
        assert torch.allclose(pos, PUBLISHED.token_positions_px(h, w, 16.0, "cpu"), atol=1e-4)
    else:
        assert not torch.allclose(pos, PUBLISHED.token_positions_px(h, w, 16.0, "cpu"), atol=1e-2)


def test_occlusion_grid_has_the_published_axis_order():
    assert torch.allclose(token_uv_published(8, 8, "cpu"), token_uv(8, 8, "cpu"), atol=1e-6)
    h, w = 3, 5  # released: meshgrid(lin_h, lin_w, indexing="xy"), flattened, stacked as (x, y)
    uv = token_uv_published(h, w, "cpu").numpy()
    for k in range(h * w):
        x = -1 + (2 * (k % h) + 1) / h
        y = -1 + (2 * (k // h) + 1) / w
        assert np.allclose(uv[k], (x, y), atol=1e-6), k
    assert not np.allclose(uv, token_uv(h, w, "cpu").numpy())


def test_published_geometry_changes_non_512_frames_only():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 16, 4, generator=g) for _ in range(3))
    disp = torch.rand(1, 4, 4, generator=g) * 0.9
    coc = torch.rand(1, 4, 4, generator=g) * 200
    common = dict(hardness=1e7, n_segments=3, n_supersamples=1, compat=True, impl="reference")
    # 4 tokens of 128 px = a 512-px frame: published units equal compat's per-axis step
    a = pisa_attention(q, k, v, disp, coc, px_per_token=128.0, **common)
    b = pisa_attention(q, k, v, disp, coc, px_per_token=128.0, published_geometry=True, **common)
    assert torch.allclose(a, b, atol=1e-5)
    c = pisa_attention(q, k, v, disp, coc, px_per_token=64.0, **common)  # a 256-px frame: units differ
    d = pisa_attention(q, k, v, disp, coc, px_per_token=64.0, published_geometry=True, **common)
    assert not torch.allclose(c, d, atol=1e-3)
    with pytest.raises(ValueError, match="compat"):
        pisa_attention(q, k, v, disp, coc, px_per_token=64.0, hardness=1e7, published_geometry=True)


# ----------------------------------------------------------------------------------------------------------
# Tiling
# ----------------------------------------------------------------------------------------------------------
def test_published_tile_offsets_and_window():
    T = PUBLISHED_TILE_LATENT

    def released(length):  # n = 1 + (L - T/4) // (3T/4) offsets, linspace(0, L - T, n) truncated to int
        n = 1 + (length - T // 4) // (T * 3 // 4)
        return [0] if n <= 1 else [math.floor(i * (length - T) / (n - 1) + 1e-9) for i in range(n)]

    assert published_tile_starts(128) == [0, 32, 64]
    assert published_tile_starts(96) == [0, 32]
    for length in (64, 80, 96, 128, 150, 200, 333):
        assert published_tile_starts(length) == released(length), length
    win = published_tile_window()
    u = np.linspace(-2, 2, T)
    assert np.allclose(win.numpy(), np.exp(-(u[:, None] ** 2 + u[None] ** 2)), atol=1e-6)
    assert win.min() > 0


def test_tiled_published_blends_noise_with_gaussian_weights_and_published_time_ids(monkeypatch):
    pipe = BokehDiffPipeline.from_components(**build_tiny_sdxl(seed=0), pisa=False, protocol="published")
    h, w = 72, 136  # latent px: 72 * 136 > 2 * 64^2 -> tiled; offsets rows [0, 8], columns [0, 36, 72]
    plan = pipe.plan(h * 8, w * 8)
    assert plan.mode == "tiled" and plan.vae_tiling and plan.n_tiles == 6
    z = torch.randn(1, 4, h, w)
    disp = torch.rand(1, 1, h * 8, w * 8)
    coc = torch.rand(1, 1, h * 8, w * 8)
    calls = []

    def fake_noise(zt, d, c, *, original_size, crop_top_left, target_size, pisa_hardness):
        calls.append(dict(z=zt, d=d, c=c, original=original_size, crop=crop_top_left, target=target_size))
        return torch.full_like(zt, float(len(calls)))  # tile number as its noise prediction

    monkeypatch.setattr(pipe.model, "predict_noise", fake_noise)
    pipe.model.x0_clip = None
    x0 = pipe.tiler.predict_tiled(pipe.model, z, disp, coc, plan, None)
    rows, cols = [0, 8], [0, 36, 72]
    order = [(y, x) for x in cols for y in rows]  # released: all row offsets of a column, column by column
    assert [c["crop"] for c in calls] == order  # crop top-left in latent px
    assert all(c["original"] == (h * 8, w * 8) and c["target"] == (h * 8, w * 8) for c in calls)
    for c, (y, x) in zip(calls, order):
        assert torch.equal(c["z"], z[..., y:y + 64, x:x + 64])
        assert torch.equal(c["d"], disp[..., y * 8:(y + 64) * 8, x * 8:(x + 64) * 8])
    # expected noise = sum_t g_t * t / sum_t g_t with the Gaussian window of each tile
    u = torch.linspace(-2, 2, 64, dtype=torch.float64)
    g = torch.exp(-(u[:, None] ** 2 + u[None] ** 2))
    num = torch.zeros(h, w, dtype=torch.float64)
    den = torch.zeros(h, w, dtype=torch.float64)
    for t, (y, x) in enumerate(order, start=1):
        num[y:y + 64, x:x + 64] += g * t
        den[y:y + 64, x:x + 64] += g
    a = pipe.model.alpha_t
    expected = (z.double() - math.sqrt(1 - a) * (num / den)) / math.sqrt(a)
    assert torch.allclose(x0.double(), expected.expand_as(x0), atol=1e-5)


def test_published_plan_threshold_and_vae_tiling():
    pipe = BokehDiffPipeline.from_components(**build_tiny_sdxl(seed=0), pisa=False, protocol="published")
    assert pipe.plan(512, 512).mode == "full"  # 64 x 64 latent = 2 * 64^2 / 2
    assert pipe.plan(768, 768).mode == "tiled"  # 96 * 96 > 2 * 64^2
    assert pipe.plan(1024, 512).mode == "full"  # 128 * 64 = 2 * 64^2: not above the threshold
    assert pipe.plan(1024, 520).mode == "tiled"
    plan = pipe.plan(100, 61)
    assert plan.padded_hw == (104, 64) and plan.vae_tiling  # VAE factor only; VAE tiling always enabled
    assert not BokehDiffPipeline.from_components(**build_tiny_sdxl(seed=0), pisa=False).plan(100, 61).vae_tiling


def test_published_render_enables_diffusers_vae_tiling_above_the_config_size(monkeypatch):
    stack = build_tiny_sdxl(seed=0)
    pipe = BokehDiffPipeline.from_components(**stack, pisa=False, protocol="published")
    vae = pipe.model.vae
    assert vae.config.sample_size == 128  # tiny VAE: diffusers tiles inputs above 128 px
    seen = []
    original = type(vae)._tiled_encode

    def spy(self, x):
        seen.append(tuple(x.shape[-2:]))
        return original(self, x)

    monkeypatch.setattr(type(vae), "_tiled_encode", spy)
    image = torch.rand(1, 3, 136, 64)
    pipe(image, torch.rand(1, 1, 136, 64), K=10, disp_focus=0.5)
    assert seen == [(136, 64)]
    pipe(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64), K=10, disp_focus=0.5)
    assert seen == [(136, 64)]  # below the config size: no tiling, as in diffusers
    assert not vae.use_tiling  # restored after the call


def test_published_passes_abs_coc_before_the_resize(monkeypatch):
    stack = build_tiny_sdxl(seed=0)
    pipe = BokehDiffPipeline.from_components(**stack, pisa={"n_segments": 0}, protocol="published")
    seen = []
    original = pipe.model.predict_x0

    def spy(z, d, c, **kw):
        seen.append(c)
        return original(z, d, c, **kw)

    monkeypatch.setattr(pipe.model, "predict_x0", spy)
    disp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 1, 64, 64).contiguous()
    pipe(torch.rand(1, 3, 64, 64), disp, K=10, disp_focus=0.5)
    assert torch.allclose(seen[0], (10 * (disp - 0.5)).abs())
