"""PISA attention: reference vs chunked (vs flex), the paper's constraints, occlusion, and the processor."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from models.pisa import PassthroughAttnProcessor, PISAAttnProcessor, install_pisa_processors, pisa_attention
from models.pisa.flex import flex_available


def _inputs(B=2, H=3, h=5, w=6, d=8, dtype=torch.float32, seed=0, coc_scale=60.0):
    g = torch.Generator().manual_seed(seed)
    N = h * w
    q, k, v = (torch.randn(B, H, N, d, generator=g).to(dtype).requires_grad_() for _ in range(3))
    disparity = torch.rand(B, h, w, generator=g)
    coc = (torch.rand(B, h, w, generator=g) - 0.5) * coc_scale
    return q, k, v, disparity, coc


def _run(q, k, v, disparity, coc, impl, **kw):
    kw.setdefault("hardness", 30.0)
    kw.setdefault("px_per_token", 16.0)
    return pisa_attention(q, k, v, disparity, coc, impl=impl, **kw)


@pytest.mark.parametrize(
    "B,H,h,w,block,compat",
    [(1, 1, 4, 4, 1, False), (2, 3, 5, 6, 7, False), (2, 2, 6, 6, 16, True), (1, 4, 7, 9, 64, False)],
)
def test_chunked_equals_reference_fp32(B, H, h, w, block, compat):
    q, k, v, disparity, coc = _inputs(B, H, h, w)
    lookup = F.interpolate(disparity[:, None], scale_factor=3, mode="bilinear")[:, 0]
    kw = dict(compat=compat, occlusion_disparity=lookup, seed=3)
    ref = _run(q, k, v, disparity, coc, "reference", **kw)
    out = _run(q, k, v, disparity, coc, "chunked", block_size=block, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, (q, k, v), grad)
    g_out = torch.autograd.grad(out, (q, k, v), grad)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_backward_without_occlusion_cache(monkeypatch):
    """Above OCCLUSION_CACHE_BYTES the backward resamples occlusion per block: same gradients."""
    import models.pisa.occlusion as occlusion

    q, k, v, disparity, coc = _inputs(h=5, w=5)
    ref = _run(q, k, v, disparity, coc, "reference", seed=7)
    monkeypatch.setattr(occlusion, "OCCLUSION_CACHE_BYTES", 0)
    out = _run(q, k, v, disparity, coc, "chunked", seed=7, block_size=4)
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_equals_reference_training_mode_with_dropout():
    q, k, v, disparity, coc = _inputs()
    torch.manual_seed(5)
    ref = _run(q, k, v, disparity, coc, "reference", training=True, dropout_p=0.2)
    torch.manual_seed(5)  # same global RNG state -> same hashed dropout mask, whatever the blocking
    out = _run(q, k, v, disparity, coc, "chunked", training=True, dropout_p=0.2, block_size=7)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_equals_reference_bf16():
    """bfloat16 inputs: matmuls run in bf16 (8-bit mantissa), softmax and accumulation in fp32.
    Stated tolerance: 2e-2 of the output's max magnitude (outputs) and of the gradient's (gradients)."""
    q, k, v, disparity, coc = _inputs(h=6, w=6, dtype=torch.bfloat16)
    ref = _run(q, k, v, disparity, coc, "reference")
    out = _run(q, k, v, disparity, coc, "chunked", block_size=8)
    assert out.dtype == torch.bfloat16
    scale = ref.float().abs().max()
    assert (out.float() - ref.float()).abs().max() <= 2e-2 * scale
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        assert (a.float() - b.float()).abs().max() <= 2e-2 * b.float().abs().max()


def test_coc_constraint_key_reaches_only_its_circle():
    """Occlusion off, hardness large: key j adds nothing to queries farther than r_j + 1 token."""
    h = w = 8
    ppt = 16.0
    q, k, _, disparity, _ = _inputs(B=1, H=2, h=h, w=w)
    N = h * w
    v = torch.eye(N).expand(1, 2, N, N)  # one-hot values: out[..., i, j] = A_ij
    coc = torch.rand(1, h, w, generator=torch.Generator().manual_seed(2)) * 40.0  # radii 0..40 px
    weights = _run(q, k, v, disparity, coc, "chunked", hardness=1e7, px_per_token=ppt, occlusion=False, block_size=10)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()], -1).float() * ppt
    dist = torch.cdist(pos, pos)  # (N_query, N_key) pixels
    far = dist > coc.flatten()[None, :] + ppt
    assert far.any()
    assert weights[0][:, far].abs().max() < 1e-6
    near = dist <= coc.flatten()[None, :] - 1.0  # well inside: weights are positive there
    assert (weights[0][:, near] > 0).all()


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_coc_term_closed_form_two_tokens(impl):
    """Two tokens 16 px apart, zero scores: A = M / sum_i M (query-axis normalisation) with
    M_ij = sigmoid(log(hardness) * (r_j - |p_i - p_j|) / 10), checked against the formula by hand."""
    hardness, ppt = 50.0, 16.0
    radius = torch.tensor([[[20.0, 6.0]]])  # key 0 reaches 20 px, key 1 only 6 px; (B, h=1, w=2)
    zeros = torch.zeros(1, 1, 2, 4)
    v = torch.eye(2)[None, None]
    weights = pisa_attention(zeros, zeros, v, torch.full((1, 1, 2), 0.5), radius, hardness=hardness,
                             px_per_token=ppt, occlusion=False, impl=impl)[0, 0]  # (query, key)
    slope = math.log(hardness) / 10.0
    for j, r in enumerate((20.0, 6.0)):
        m_self, m_other = torch.sigmoid(torch.tensor(slope * r)), torch.sigmoid(torch.tensor(slope * (r - ppt)))
        total = m_self + m_other
        assert weights[j, j].item() == pytest.approx((m_self / total).item(), rel=1e-5)
        assert weights[1 - j, j].item() == pytest.approx((m_other / total).item(), rel=1e-5)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_energy_conservation_over_queries(impl):
    """Before occlusion, each key's weights sum to 1 over the queries."""
    h, w = 5, 7
    N = h * w
    q, k, _, disparity, coc = _inputs(B=2, H=2, h=h, w=w)
    v = torch.eye(N).expand(2, 2, N, N)
    weights = _run(q, k, v, disparity, coc, impl, occlusion=False, block_size=6)
    torch.testing.assert_close(weights.sum(dim=-2), torch.ones(2, 2, N), rtol=1e-5, atol=1e-5)


def _occlusion_weights(disparity, seed=0, compat=False):
    """A_ij for a depth map (1, h, w), random-free q, k (zeros) and one-hot values: (N, N)."""
    B, h, w = disparity.shape
    N = h * w
    zeros = torch.zeros(1, 1, N, 4)
    v = torch.eye(N)[None, None]
    coc = torch.full_like(disparity, 1e4)  # every key reaches every query: only occlusion removes light
    kw = dict(hardness=1e7, px_per_token=16.0, seed=seed, compat=compat)
    with_occ = pisa_attention(zeros, zeros, v, disparity, coc, impl="chunked", block_size=5, **kw)[0, 0]
    without = pisa_attention(zeros, zeros, v, disparity, coc, impl="chunked", occlusion=False, **kw)[0, 0]
    return with_occ, without


def test_occlusion_near_token_between_blocks_key():
    # One row of 11 tokens: key at column 0 and query at column 10 at mid depth; a near wall in between.
    disparity = torch.full((1, 1, 11), 0.5)
    disparity[0, 0, 3:8] = 1.0
    with_occ, without = _occlusion_weights(disparity)
    query, key = 10, 0
    assert without[query, key] > 0
    assert with_occ[query, key] == 0  # fully blocked: every supersample sees the wall
    # The wall itself is not occluded by the mid-depth tokens behind it.
    torch.testing.assert_close(with_occ[10, 5], without[10, 5])


# compat at d = 1 is left out on purpose: the published discretisation divides by 1 - d there (clamped).
@pytest.mark.parametrize("depth,compat", [(0.0, False), (0.3, False), (0.8, False), (1.0, False),
                                          (0.0, True), (0.3, True), (0.8, True)])
def test_occlusion_none_at_uniform_depth(depth, compat):
    disparity = torch.full((1, 4, 5), depth)
    with_occ, without = _occlusion_weights(disparity, compat=compat)
    torch.testing.assert_close(with_occ, without)


def test_seeded_determinism_and_seed_dependence():
    q, k, v, disparity, coc = _inputs(h=6, w=6, coc_scale=200.0)
    a = _run(q, k, v, disparity, coc, "chunked", seed=1, block_size=8)
    b = _run(q, k, v, disparity, coc, "chunked", seed=1, block_size=8)
    c = _run(q, k, v, disparity, coc, "chunked", seed=2, block_size=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # the jitter really is seeded (random depth: partial occlusions exist)


@pytest.mark.skipif(not flex_available(), reason="torch.nn.attention.flex_attention is not available")
@pytest.mark.parametrize("occlusion", [False, True])
def test_flex_forward_equals_reference(occlusion):
    q, k, v, disparity, coc = (t.detach() for t in _inputs(h=4, w=8))  # flex is forward-only on CPU
    with torch.no_grad():
        ref = _run(q, k, v, disparity, coc, "reference", occlusion=occlusion)
        out = _run(q, k, v, disparity, coc, "flex", occlusion=occlusion)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    q, k, v, disparity, coc = _inputs()
    with pytest.raises(ValueError, match="h\\*w"):
        _run(q, k, v, disparity[:, :-1], coc[:, :-1], "chunked")
    with pytest.raises(ValueError, match="hardness"):
        _run(q, k, v, disparity, coc, "chunked", hardness=0.5)
    with pytest.raises(ValueError, match="impl"):
        _run(q, k, v, disparity, coc, "cuda")


# ---------------------------------------------------------------------------------------------- processor
@pytest.fixture(scope="module")
def tiny_unet_inputs():
    g = torch.Generator().manual_seed(4)
    image_px = 128
    disp = torch.rand(1, 1, image_px, image_px, generator=g)
    disp_coc = torch.cat([disp, 25.0 * (disp - 0.5)], dim=1)  # K = 25 px, focus at disparity 0.5
    return dict(
        sample=torch.randn(1, 4, image_px // 8, image_px // 8, generator=g),
        timestep=499,
        encoder_hidden_states=torch.randn(1, 77, 64, generator=g),
        added_cond_kwargs=dict(text_embeds=torch.randn(1, 32, generator=g), time_ids=torch.randn(1, 6, generator=g)),
    ), disp_coc


def _tiny_unet():
    from models.tiny import build_tiny_sdxl

    return build_tiny_sdxl(seed=0)["unet"]


def test_physics_off_equals_stock_processor(tiny_unet_inputs):
    from diffusers.models.attention_processor import AttnProcessor2_0

    inputs, disp_coc = tiny_unet_inputs
    unet = _tiny_unet()
    unet.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        stock = unet(**inputs).sample
    install_pisa_processors(unet, physics=False)
    with torch.no_grad():
        off = unet(**inputs, cross_attention_kwargs={"disp_coc": disp_coc}).sample
    assert torch.equal(off, stock)
    install_pisa_processors(unet, hardness=1e7)
    with torch.no_grad():
        on = unet(**inputs, cross_attention_kwargs={"disp_coc": disp_coc}).sample
    assert not torch.allclose(on, stock)


def test_install_patterns_and_errors():
    unet = _tiny_unet()
    names = install_pisa_processors(unet)
    assert names == ["down_blocks.1.attentions.0.transformer_blocks.0.attn1"]
    procs = unet.attn_processors
    assert isinstance(procs[names[0] + ".processor"], PISAAttnProcessor)
    others = [p for n, p in procs.items() if n != names[0] + ".processor"]
    assert others and all(isinstance(p, PassthroughAttnProcessor) for p in others)
    with pytest.raises(ValueError, match="matches no attention layer"):
        install_pisa_processors(unet, patterns=("mid_block.nothing.*",))
    with pytest.raises(ValueError, match="cross-attention"):
        install_pisa_processors(unet, patterns=("down_blocks.1.attentions.0.*.attn2",))


def test_processor_with_lora_gradients_no_warnings_deterministic(tiny_unet_inputs):
    from peft import LoraConfig

    inputs, disp_coc = tiny_unet_inputs
    unet = _tiny_unet()
    install_pisa_processors(unet, hardness=1e7, impl="chunked", block_size=16)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(0)
    for name, p in unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)  # non-zero B so lora_A receives gradient too
    # The processor still runs PISA after peft wrapped to_q/to_k/to_v/to_out.0.
    assert isinstance(unet.attn_processors["down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"],
                      PISAAttnProcessor)
    unet.train()
    kwargs = {"disp_coc": disp_coc, "pisa_hardness": 5.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # diffusers must not warn about unexpected cross_attention_kwargs
        out = unet(**inputs, cross_attention_kwargs=kwargs).sample
    out.square().mean().backward()
    pisa_lora = [p for n, p in unet.named_parameters()
                 if "lora" in n and "down_blocks.1.attentions.0.transformer_blocks.0.attn1." in n]
    assert len(pisa_lora) == 8
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pisa_lora)

    unet.eval()
    with torch.no_grad():
        a = unet(**inputs, cross_attention_kwargs=kwargs).sample
        b = unet(**inputs, cross_attention_kwargs=kwargs).sample
        soft = unet(**inputs, cross_attention_kwargs={"disp_coc": disp_coc, "pisa_hardness": 1.5}).sample
    assert torch.equal(a, b)
    assert not torch.allclose(a, soft)  # pisa_hardness reaches the processor


def test_processor_token_grid_and_px_per_token_non_square():
    """A (B, N, C) call on a 4x6 token grid from a 64x96 px disp_coc: area-resized, px_per_token = 16."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4).eval()
    hidden = torch.randn(1, 24, 8)
    disp = torch.rand(1, 1, 64, 96)
    disp_coc = torch.cat([disp, 30 * (disp - 0.4)], dim=1)
    proc = PISAAttnProcessor(hardness=50.0, occlusion=True, impl="reference")
    with torch.no_grad():
        out = proc(attn, hidden, disp_coc=disp_coc)
        q = attn.to_q(hidden).view(1, 24, 2, 4).transpose(1, 2)
        k = attn.to_k(hidden).view(1, 24, 2, 4).transpose(1, 2)
        v = attn.to_v(hidden).view(1, 24, 2, 4).transpose(1, 2)
        tok = F.interpolate(disp_coc, size=(4, 6), mode="area")
        lookup = F.interpolate(disp, size=(12, 18), mode="area")[:, 0]
        expected = pisa_attention(q, k, v, tok[:, 0], tok[:, 1], hardness=50.0, px_per_token=16.0,
                                  occlusion_disparity=lookup, impl="chunked", block_size=5)
        expected = attn.to_out[0](expected.transpose(1, 2).reshape(1, 24, 8))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="disp_coc"):
        proc(attn, hidden)
    assert math.isclose(proc.config()["hardness"], 50.0)


def test_published_step_factor_keeps_its_sign_above_one_and_is_floored_at_one():
    """The released factor (1 - t_q) d_k / (t_q (1 - d_k)): a raw BLB disparity above 1 gives its negative
    value (as released), |1 - d_k| < 1e-6 is floored at +1e-6 (the released code gives inf/nan there)."""
    from models.pisa.published import ONE_MINUS_D_MIN, PUBLISHED

    ps, d_q = torch.tensor([0.1, 0.5, 0.9]), torch.tensor(0.4)
    t_q = ps * d_q + (1 - ps)
    for d_k in (0.3, 1.25, 2.0):
        got = PUBLISHED.segment_fraction(ps, d_q, torch.tensor(d_k), None)
        assert torch.allclose(got, (1 - t_q) * d_k / (t_q * (1 - d_k)), rtol=1e-6)
    at_one = PUBLISHED.segment_fraction(ps, d_q, torch.tensor(1.0), None)
    assert torch.allclose(at_one, (1 - t_q) / (t_q * ONE_MINUS_D_MIN)) and bool((at_one > 0).all())
