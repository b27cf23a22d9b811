"""Sparse PISA (models/pisa/sparse.py) against the dense paths: outputs, gradients, the bound, the plan."""

import math

import pytest
import torch
import torch.nn.functional as F

import models.pisa.occlusion as occlusion
import models.pisa.sparse as sparse
from models.pisa import pisa_attention
from models.pisa.flex import flex_available
from models.pisa.geometry import pair_distance
from models.pisa.occlusion import occlusion_counts, occlusion_counts_pairs
from models.pisa.published import discretisation
from models.pisa.spec import PISASpec, make_spec


def _inputs(B=2, H=2, h=13, w=15, d=16, seed=0, coc_px=30.0):
    g = torch.Generator().manual_seed(seed)
    N = h * w
    q, k, v = (torch.randn(B, H, N, d, generator=g).requires_grad_() for _ in range(3))
    disparity = torch.rand(B, h, w, generator=g)
    coc = (torch.rand(B, h, w, generator=g) * 2 - 1) * coc_px  # signed, |coc| <= coc_px
    lookup = F.interpolate(disparity[:, None], scale_factor=3, mode="bilinear")[:, 0]
    return q, k, v, disparity, coc, lookup


def _spec_and_plan(q, k, disparity, coc, hardness, compat=False, tile=None):
    """The plan pisa_attention builds for this call (its own spec construction)."""
    spec = make_spec(q, disparity, coc, hardness=hardness, px_per_token=16.0, seed=3,
                     geometry=discretisation(compat=compat))
    return spec, sparse.plan_for_call(spec, q, k, 1.0 / math.sqrt(q.shape[-1]), tile=tile)


def _compare(inputs, hardness, compat=False, **kw):
    q, k, v, disparity, coc, lookup = inputs
    args = dict(hardness=hardness, px_per_token=16.0, compat=compat, occlusion_disparity=lookup, seed=3, **kw)
    ref = pisa_attention(q, k, v, disparity, coc, impl="reference", **args)
    out = pisa_attention(q, k, v, disparity, coc, impl="sparse", **args)
    assert (out - ref).abs().max() <= 1e-5
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        assert (a - b).abs().max() <= 1e-4


@pytest.mark.parametrize("hardness,compat,tile,h,w", [
    (1e7, False, None, 13, 15), (1e7, True, None, 15, 13), (1e6, False, (2, 2), 13, 15),
    (float("inf"), False, (2, 2), 13, 15), (1e7, False, (4, 4), 21, 23),
])
def test_sparse_equals_reference_and_really_skips(hardness, compat, tile, h, w, monkeypatch):
    """Inference and late-training hardness on odd grids, batch 2, occlusion on: the plan evaluates a
    fraction of the pairs, and output / gradients match the dense reference."""
    inputs = _inputs(h=h, w=w, coc_px=30.0 if h * w < 300 else 12.0)
    q, k, _, disparity, coc, _ = inputs
    _, plan = _spec_and_plan(q, k, disparity, coc, hardness, compat, tile)
    assert plan.fraction < 0.5
    if tile is not None:
        monkeypatch.setattr(sparse, "TILE_SIDES", (tile[0],))
    _compare(inputs, hardness, compat)


@pytest.mark.parametrize("hardness", [3.0, 30.0])
def test_sparse_equals_reference_at_training_hardness(hardness):
    """Soft hardness (start of the training schedule): the reach covers most of the frame; still exact."""
    _compare(_inputs(h=9, w=11, seed=1), hardness)


def test_sparse_one_huge_radius_makes_only_its_tile_dense():
    inputs = _inputs(h=21, w=19, seed=2, coc_px=8.0)
    q, k, v, disparity, coc, lookup = inputs
    coc = coc.detach().clone()
    coc[1, 7, 6] = -5000.0  # one key's light covers the whole frame
    inputs = (q, k, v, disparity, coc, lookup)
    _, plan = _spec_and_plan(q, k, disparity, coc, 1e7)
    kinds = {g.offsets is None for g in plan.groups}
    assert kinds == {True, False}  # one "all queries" group (the huge key's tile), windows elsewhere
    assert plan.fraction < 0.2
    _compare(inputs, 1e7)


def test_sparse_training_mode_with_dropout_and_without_occlusion_cache(monkeypatch):
    inputs = _inputs(h=12, w=9, seed=4, coc_px=10.0)
    q, k, v, disparity, coc, lookup = inputs
    monkeypatch.setattr(occlusion, "OCCLUSION_CACHE_BYTES", 0)  # the backward resamples occlusion per chunk
    monkeypatch.setattr(sparse, "PAIR_BUDGET", 3000)  # many chunks per group
    kw = dict(hardness=1e7, px_per_token=16.0, occlusion_disparity=lookup, training=True, dropout_p=0.2)
    torch.manual_seed(5)
    ref = pisa_attention(q, k, v, disparity, coc, impl="reference", **kw)
    torch.manual_seed(5)  # same global RNG state -> same hashed dropout mask
    out = pisa_attention(q, k, v, disparity, coc, impl="sparse", **kw)
    assert (out - ref).abs().max() <= 1e-5
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        assert (a - b).abs().max() <= 1e-4


def test_bound_holds_on_dense_weights():
    """The documented bound itself: per key, the dense weights of all queries beyond rho_j sum to < e^-T, and
    the reach is finite (the bound really rules pairs out)."""
    h, w = 12, 14
    q, k, _, disparity, coc, _ = _inputs(B=1, H=2, h=h, w=w, seed=6, coc_px=20.0)
    q, k = q.detach() * 2.0, k.detach() * 2.0  # large scores: the score range matters
    N = h * w
    v = torch.eye(N).expand(1, 2, N, N)  # one-hot values: out[..., i, j] = a_ij
    hardness = 1e7
    weights = pisa_attention(q, k, v, disparity, coc, hardness=hardness, px_per_token=16.0, occlusion=False,
                             impl="reference")[0]  # (H, N_query, N_key)
    spec, plan = _spec_and_plan(q, k, disparity, coc, hardness)
    pos = spec.pos_px
    beyond = torch.cdist(pos, pos) > plan.reach[None, :]  # (query, key)
    assert beyond.any()
    t = math.log(2.0 * N / sparse.SPARSE_TOL)
    leaked = (weights * beyond).sum(dim=1)  # (H, N_key)
    assert leaked.max() < math.exp(-t)
    assert (plan.reach - spec.radius_px[0]).max() < 4 * 16.0  # within a few tokens of the CoC
    # impl="auto" estimates the occlusion work from above (borders ignored), so it never under-rates dense.
    assert plan.reach_pairs >= (~beyond).sum()


def test_occlusion_pairs_identical_to_block_samples():
    """Seeded occlusion is a function of (seed, i, j) only: any set of pairs reproduces the dense table bit
    for bit, in both discretisations."""
    for compat in (False, True):
        q, k, _, disparity, coc, lookup = _inputs(B=2, h=7, w=9, seed=7)
        spec, _ = _spec_and_plan(q, k, disparity, coc, 1e7, compat=compat)
        dense = occlusion_counts(spec, 0, 63)  # (B, N, 63)
        g = torch.Generator().manual_seed(0)
        qi = torch.randint(0, 63, (5, 11), generator=g)
        kj = torch.randint(0, 63, (5, 11), generator=g)
        assert torch.equal(occlusion_counts_pairs(spec, qi, kj), dense[:, qi, kj])


def test_auto_dispatch_and_determinism():
    """auto = sparse at inference hardness on a frame larger than the reach (bit-identical to impl='sparse'),
    chunked at soft hardness (bit-identical to impl='chunked'); repeated calls are bit-identical."""
    q, k, v, disparity, coc, lookup = (t.detach() if t.requires_grad else t for t in _inputs(B=1, h=16, w=16))
    kw = dict(px_per_token=16.0, occlusion_disparity=lookup)
    hard = [pisa_attention(q, k, v, disparity, coc, hardness=1e7, impl=impl, **kw)
            for impl in ("auto", "sparse", "sparse", "chunked")]
    assert torch.equal(hard[0], hard[1]) and torch.equal(hard[1], hard[2])
    assert not torch.equal(hard[0], hard[3])  # a different path (equal only to rounding)
    soft = [pisa_attention(q, k, v, disparity, coc, hardness=2.0, impl=impl, **kw) for impl in ("auto", "chunked")]
    assert torch.equal(soft[0], soft[1])
    # return_impl names the path that ran (what PISAAttnProcessor.last_impl reports).
    for hardness, expected in ((1e7, "sparse"), (2.0, "chunked")):
        out, ran = pisa_attention(q, k, v, disparity, coc, hardness=hardness, impl="auto", return_impl=True, **kw)
        assert ran == expected and torch.equal(out, hard[0] if expected == "sparse" else soft[0])
    assert pisa_attention(q, k, v, disparity, coc, hardness=2.0, impl="reference", return_impl=True, **kw)[1] == "reference"


@pytest.mark.skipif(not flex_available(), reason="torch.nn.attention.flex_attention is not available")
@pytest.mark.parametrize("hardness,compat,h,w", [(1e7, False, 13, 15), (30.0, True, 9, 11)])
def test_flex_sparse_forward_equals_reference(hardness, compat, h, w):
    """The fused path (FlexAttention, block mask from the same bound; eager on CPU) against the reference."""
    q, k, v, disparity, coc, lookup = (t.detach() for t in _inputs(h=h, w=w, seed=8))
    kw = dict(hardness=hardness, px_per_token=16.0, compat=compat, occlusion_disparity=lookup, seed=3)
    with torch.no_grad():
        ref = pisa_attention(q, k, v, disparity, coc, impl="reference", **kw)
        out = pisa_attention(q, k, v, disparity, coc, impl="flex_sparse", **kw)
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["sparse", "flex_sparse"])
def test_sparse_paths_on_cuda_equal_reference(impl):
    """CUDA: sparse (forward + backward) and the compiled flex block-mask path (forward) against the dense
    reference on the same device; bit-reproducible across calls."""
    inputs = [t.detach().cuda() for t in _inputs(h=24, w=20, seed=9, coc_px=20.0)]
    q, k, v = (t.requires_grad_(impl == "sparse") for t in inputs[:3])
    disparity, coc, lookup = inputs[3:]
    kw = dict(hardness=1e7, px_per_token=16.0, occlusion_disparity=lookup, seed=3)
    ref = pisa_attention(q, k, v, disparity, coc, impl="reference", **kw)
    out = pisa_attention(q, k, v, disparity, coc, impl=impl, **kw)
    again = pisa_attention(q, k, v, disparity, coc, impl=impl, **kw)
    # flex's compiled kernels may run fp32 dots in TF32 on Hopper: 1e-3 there, 1e-5 for the sparse path.
    assert (out - ref).abs().max() <= (1e-5 if impl == "sparse" else 1e-3)
    assert torch.equal(out, again)
    if impl == "sparse":
        grad = torch.randn_like(ref)
        for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
            assert (a - b).abs().max() <= 1e-4


def test_sparse_bf16_close_to_chunked():
    """bfloat16 inputs (the GPU inference dtype): scores in bf16, softmax and sums in fp32, as the chunked
    path; stated tolerance 2e-2 of the largest output / gradient magnitude."""
    g = torch.Generator().manual_seed(10)
    h, w = 20, 18
    q, k, v = (torch.randn(1, 2, h * w, 16, generator=g).bfloat16().requires_grad_() for _ in range(3))
    disparity, coc = torch.rand(1, h, w, generator=g), (torch.rand(1, h, w, generator=g) - 0.5) * 30
    kw = dict(hardness=1e7, px_per_token=16.0)
    ref = pisa_attention(q, k, v, disparity, coc, impl="chunked", **kw)
    out = pisa_attention(q, k, v, disparity, coc, impl="sparse", **kw)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref.float()).abs().max() <= 2e-2 * ref.float().abs().max()
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        assert a.dtype == torch.bfloat16
        assert (a.float() - b.float()).abs().max() <= 2e-2 * b.float().abs().max()


def test_hard_step_sparse_equals_dense_when_radius_equals_a_token_distance():
    """Hardness inf is a 0 / -inf step at ``|p_i - p_j| = r_j``: every path must measure distances with the
    same float32 formula, or a radius equal to a token distance (to the last bit) is inside the CoC for one
    path and outside for the other. Radii: token distances as the dense (cdist) and the explicit formula
    round them."""
    h = w = 13
    N = h * w
    pos = discretisation(compat=False).token_positions_px(h, w, 16.0, "cpu")
    radii = set()
    for j in (19, 2 * w + 5, 4 * w + 7):  # offsets (1, 6), (2, 5), (4, 7) tokens from token 0
        radii.add(float(torch.cdist(pos[:1], pos[j:j + 1], compute_mode="donot_use_mm_for_euclid_dist")))
        radii.add(float((pos[0] - pos[j]).square().sum().sqrt()))
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 2, N, 8, generator=g) for _ in range(3))
    disparity = torch.rand(1, h, w, generator=g)
    kw = dict(hardness=float("inf"), px_per_token=16.0, occlusion=False)
    for r in sorted(radii):
        coc = torch.full((1, h, w), r)
        ref = pisa_attention(q, k, v, disparity, coc, impl="reference", **kw)
        out = pisa_attention(q, k, v, disparity, coc, impl="sparse", **kw)
        assert (out - ref).abs().max() <= 1e-5, r


@pytest.mark.parametrize("h,w,compat", [(9, 9, False), (5, 33, True), (1, 40, False)])
def test_reach_pairs_is_an_upper_bound_for_small_reach(h, w, compat):
    """impl="auto" rates the occlusion work by ``reach_pairs``, documented as an over-estimate: it must hold
    for reaches of zero to a few tokens too (the lattice points in a small disc outnumber pi r^2 / cell)."""
    N = h * w
    geometry = discretisation(compat=compat)
    pos = geometry.token_positions_px(h, w, 16.0, "cpu")
    spec = PISASpec(h=h, w=w, disparity=None, radius_px=None, lookup=None, pos_px=pos, uv=None, log_hardness=1.0,
                    occlusion=False, n_segments=0, n_supersamples=0, seed=0, geometry=geometry, training=False,
                    dropout_p=0.0, dropout_seed=0)
    dist = pair_distance(pos[:, None], pos[None])
    for reach in (torch.zeros(N), torch.full((N,), 16.0), torch.rand(N, generator=torch.Generator().manual_seed(0)) * 40):
        plan = sparse.plan_tiles(spec, reach, (4, 4))
        assert plan.reach_pairs >= (dist <= reach[None, :]).sum()


@pytest.mark.parametrize("h,w,compat,published", [(7, 12, True, True), (1, 30, False, False), (25, 1, True, False)])
def test_sparse_batch_items_with_opposite_coc_maps(h, w, compat, published):
    """Batch of an all-in-focus item (r = 0) and one with large radii: the reach is the max over the batch,
    each item still matches the dense reference (output and gradients, occlusion on, training mode with
    dropout so the hashed mask is checked too). Grids: the published protocol's geometry on a non-square
    frame, and single-row / single-column frames."""
    q, k, v, disparity, coc, lookup = _inputs(B=2, h=h, w=w, seed=12)
    coc = coc.detach().clone()
    coc[0] = 0.0
    coc[1] *= 4.0
    kw = dict(hardness=1e7, px_per_token=16.0, compat=compat, published_geometry=published, occlusion_disparity=lookup,
              seed=3, training=True, dropout_p=0.1)
    torch.manual_seed(0)
    ref = pisa_attention(q, k, v, disparity, coc, impl="reference", **kw)
    grad = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    for impl in ("sparse", "auto"):
        torch.manual_seed(0)  # same dropout seed
        out = pisa_attention(q, k, v, disparity, coc, impl=impl, **kw)
        assert (out - ref).abs().max() <= 1e-5
        for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), ref_grads):
            assert (a - b).abs().max() <= 1e-4


def test_huge_scores_widen_the_reach_to_the_whole_frame():
    """q, k norms so large that the score range beats any CoC falloff: the bound must keep every pair (no
    truncation), and auto must run the dense chunked path."""
    q, k, v, disparity, coc, lookup = (t.detach() for t in _inputs(B=1, h=9, w=10, seed=13))
    q, k = q * 300.0, k * 300.0
    spec, plan = _spec_and_plan(q, k, disparity, coc, 1e7)
    assert plan.fraction >= 1.0 and bool((plan.reach > 1e3).all())
    kw = dict(hardness=1e7, px_per_token=16.0, occlusion_disparity=lookup, seed=3)
    ref = pisa_attention(q, k, v, disparity, coc, impl="reference", **kw)
    out = pisa_attention(q, k, v, disparity, coc, impl="sparse", **kw)
    auto, ran = pisa_attention(q, k, v, disparity, coc, impl="auto", return_impl=True, **kw)
    assert ran == "chunked"
    # Scores of ~1e4: float32 rounding of the scores alone is ~1e-3 relative; no pair may be missing.
    assert (out - ref).abs().max() <= 1e-2 * ref.abs().max()
    assert (auto - ref).abs().max() <= 1e-5


def test_sparse_equals_reference_on_a_raw_map_above_one_published():
    """The published BLB protocol feeds raw 1 / depth (here up to 1.4): sparse still matches the reference."""
    q, k, v, disparity, coc, lookup = _inputs(h=13, w=15, seed=4)
    disparity = disparity * 1.4
    lookup = F.interpolate(disparity[:, None], scale_factor=3, mode="bilinear")[:, 0]
    _compare((q, k, v, disparity, coc, lookup), 1e7, compat=True)
