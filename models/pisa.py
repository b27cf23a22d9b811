"""PISA: physics-inspired self-attention (BokehDiff, ICCV 2025, Sec. 3.2 "Physics-Inspired Self-Attention").

For self-attention over tokens ``i`` (queries) and ``j`` (keys) at token centres ``p`` (pixels), the paper's
weights are (see ``docs/conventions.md``)

    s_ij = q_i . k_j / sqrt(d)                                          (scaled dot product)
    M_ij = sigmoid(log(hardness) * (r_j - |p_i - p_j|) / 10)            (CoC term; r_j = |coc_px| of key j)
    a_ij = exp(s_ij) M_ij / sum_i' exp(s_i'j) M_i'j                     (normalised over QUERIES: energy)
    A_ij = a_ij * (1 - O_ij)                                            (O: self-occlusion fraction)
    out_i = sum_j A_ij v_j

i.e. each key *scatters* its light (value) over the queries inside its circle of confusion, conserving
energy, and light is removed where a nearer surface blocks the thin-lens ray from key to query.

Implementations (same numbers; tests compare them):
- ``impl="reference"``: dense N x N tensors, autograd backward; the ground truth, O(N^2) memory.
- ``impl="chunked"``: one pass over key blocks. Because the normaliser runs over queries, a key block with
  *all* queries holds everything its columns need: ``L_j = logsumexp_i z_ij`` and the contribution
  ``A[:, J] @ v[J]``. Memory is O(N * block) forward and backward (custom autograd Function that saves only
  q, k, v and the per-key log-normaliser L, and recomputes each block, occlusion included, in the backward).
- ``impl="flex"``: FlexAttention (forward-only on CPU, eager); the CoC term, normaliser and occlusion
  enter as a score modification. Occlusion is passed to it as a dense (B, N, N) table (head-shared), so its
  memory is O(N^2) when occlusion is on.
- ``impl="sparse"``: only the (query, key) pairs that the bound below cannot rule out, in 2-D token tiles
  (:mod:`models.pisa_sparse`); forward and backward, occlusion sampled only for those pairs. Exact to
  ``SPARSE_TOL`` (1e-6) of ``max |v|``; O(N * neighbourhood) time instead of O(N^2).
- ``impl="flex_sparse"``: the fused form of ``sparse`` for GPUs (forward only): FlexAttention with a block
  mask from the same bound, tokens reordered so that a flex block is a 2-D tile, CoC term computed inside the
  kernel's score modification, occlusion sampled for the kept pairs only (:func:`models.pisa_sparse.flex_sparse_pisa`).
- ``impl="auto"``: ``sparse`` when its plan evaluates at most half of the N^2 pairs, or when at most half of
  them lie within reach (occlusion, the dominant cost, is sampled only there): near-hard CoC, radii small
  against the frame (inference, late training); else ``chunked`` (soft hardness early in training, huge CoC).

Sparse evaluation: the bound. Write ``z_ij = s_ij + log M_ij`` and ``L_j = logsumexp_i z_ij`` (normalisation
over the queries i of each key j), ``a_ij = exp(z_ij - L_j)``, ``kappa = log(hardness) / 10`` per unit of the
token positions ``p`` (pixels by default; ``compat`` positions use the published per-axis step, and the reach
below is in those same units, because it is measured with the same positions).
1. ``L_j >= z_jj``: the query at the key's own position is one term of the log-sum-exp.
2. ``log M_jj = logsigmoid(kappa r_j) >= log(1/2)`` since ``r_j >= 0``; ``log M_ij <= kappa (r_j - |p_i - p_j|)``
   since ``logsigmoid(x) <= x``.
3. ``s_ij - s_jj = (q_i - q_j) . k_j / sqrt(d) <= (max_i |q_i| + |q_j|) |k_j| / sqrt(d) =: R_j`` (per call,
   from the actual norms, maximised over heads and batch).
   So ``a_ij <= exp(z_ij - z_jj) <= exp(R_j + log 2 - kappa (|p_i - p_j| - r_j))``, and the queries farther
   than the reach ``rho_j = r_j + (R_j + log 2 + log N + T) / kappa`` (at most N of them) together hold
   ``delta_j < e^-T`` of key j's unit of light.
4. The sparse path evaluates exactly the pairs with ``|p_i - p_j| <= rho_j`` (tiles decide what is computed,
   a per-pair mask what counts) and normalises over them: ``L'_j = L_j + log(1 - delta_j)``, so each kept
   weight becomes ``a_ij / (1 - delta_j)``. The column's total change is ``sum_i |a'_ij - a_ij| = 2 delta_j``.
5. Output: ``|out'_i - out_i| <= sum_j |a'_ij - a_ij| g max|v_j| <= 2 g N e^-T max|v|`` with ``g`` the largest
   gate (1; ``1/(1-p)`` with dropout). ``T = log(2 g N / tol)`` makes this ``<= tol * max |v|`` per (batch,
   head); ``tol = SPARSE_TOL = 1e-6``. (Example, N = 4096, hardness 1e7, unit-variance q, k with d = 64:
   ``R ~ 21`` (max over 10 heads), ``rho_j - r_j`` = 31..36 px, about 2 tokens beyond the CoC.) A hard step
   (hardness inf) has ``M_ij = 0`` beyond ``r_j``: ``rho_j = r_j``, exact. No CoC term: no bound (every pair
   is kept).
6. Gradients: the sparse backward is the exact gradient of the sparse forward; every term of the dense
   gradient it drops or rescales is a weight difference from step 4 times ``|g_out|``, ``|v|``, ``|q|`` or
   ``|k|``, so the gradient error is of the same relative order (tests check 1e-4 absolute).
Rounding: the score range carries a relative slack (1e-5 fp32, 1e-2 for half-precision matmuls).

Occlusion (``O_ij``): the segment between query ``i`` and key ``j`` is sampled at ``S`` fractions
``p_s = linspace(0.1, 0.9, S)`` (the published discretisation), each with ``P`` supersamples (sample 0 at the
exact point, samples 1..P-1 jittered by up to half a token on each axis). A sample is *blocked* when the
scene disparity at its image position exceeds the disparity of the ray there; ``O_ij`` is the fraction of
supersamples with at least one blocked segment sample. Jitter comes from a counter-based hash of
``(seed, i, j)`` rotating a seeded table over ``(sample, segment, axis)``, so it does not depend on block size, device or call order: the
reference and chunked paths (and the chunked backward's recomputation) see identical samples.

Geometry of the segment (disparity ``d`` in [0, 1], 1 = nearest, treated as the camera plane): the ray
from key ``j`` toward the camera passes disparity ``t_s = p_s d_j + (1 - p_s)`` and projects at
``x = x_i + f_s (x_j - x_i)`` with ``f_s = g(d_j) / g(t_s)``, ``g(d) = d / (1 - d)``.
Since ``1 - t_s = p_s (1 - d_j)``, ``f_s = p_s d_j / t_s`` exactly, which is finite everywhere.

``compat=True`` reproduces the published discretisation so the published weights behave as trained;
deliberate deviations of the default (``compat=False``) from it:
1. The published code computes ``f_s`` with the *query's* ray disparity ``t_s(d_i)`` in ``(1 - t)/t`` and the
   key's in ``d/(1-d)``, but thresholds against the *key's* ``t_s(d_j)`` (index mix-up); and it divides by
   ``1 - d_j``, which is infinite at ``d_j = 1``. Default: the key's ray throughout, with the cancelled form
   ``f_s = p_s d_j / t_s``. ``compat``: the mixed formula, with ``1 - d_j`` clamped to ``1e-6`` (the published
   code yields inf/nan there; clamping maps those samples far off-image, i.e. "not blocked", which is what
   grid_sample's zero padding gave for the inf case).
2. Token distances: the published code uses ``linspace(0, 1, n) * 51.2`` in units of 10 px, i.e. a token
   step of ``px_per_token * n / (n - 1)`` on its 512-px tiles; ``compat`` uses that per-axis step, the default
   uses exact token centres ``(index + 0.5) * px_per_token``. (The published code also swapped the two axes
   for non-square grids; both modes here use each axis' own size, unless ``published_geometry=True``, which
   reproduces the published units -- every frame 512 px per axis -- and its occlusion grid exactly.)
3. Disparity outside the image: ``compat`` reads 0 (grid_sample zero padding, as published; this also
   darkens bilinear lookups next to the border); default clamps to the border value. Default also requires
   a margin of 1e-5 before a sample counts as blocked, so flat scenes at ``d = 1`` are never self-occluded by
   rounding.
4. Jitter: published uses ``torch.rand`` (unseeded, block-dependent) scaled by ``1 / height`` on both axes;
   both modes here use the hashed, seeded jitter of +-half a token per axis.
5. Normalisation: the published code subtracts each key's max score, exponentiates and multiplies by M;
   here ``logsumexp`` over ``s + log M`` (``log M = logsigmoid``) is used: identical in exact arithmetic,
   but it cannot underflow to 0/0 when a key's column is dominated by tiny sigmoid values.
6. Dropout: published always applies dropout 0.1 to the attention weights, also at inference; here only
   ``dropout_p`` while ``training``. The clamp of ``O`` to 0.99 (published: while ``hard < 1e6``, i.e. while
   training) is applied in both modes when ``training=True``.
7. Hardness: published mutates a counter per call (``hard += 1``); here it is an explicit argument.
"""

from __future__ import annotations

import collections
import fnmatch
import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["pisa_attention", "PISAAttnProcessor", "PassthroughAttnProcessor", "install_pisa_processors"]

_IMPLS = ("reference", "chunked", "sparse", "flex", "flex_sparse", "auto")
_COC_UNIT_PX = 10.0  # the published slope: coordinates in units of 10 px (51.2 per 512-px tile)
_OCC_MARGIN = 1e-5  # default mode: a sample must exceed the ray's disparity by this much to block it
_COMPAT_ONE_MINUS_D_MIN = 1e-6
_TRAIN_OCC_MAX = 0.99  # published: occlusion clamped while training so blocked keys keep a gradient path
_MASK32 = 0xFFFFFFFF
_PUBLISHED_FRAME_PX = 512.0  # published protocol: every frame PISA sees spans 512 px per axis (51.2 x 10 px)


# --------------------------------------------------------------------------------------------------------
# Counter-based random numbers: identical for every blocking, device and call order.
# --------------------------------------------------------------------------------------------------------
def _hash32(x: torch.Tensor) -> torch.Tensor:
    """32-bit integer mixer (xorshift-multiply, "lowbias32" constants) on int64 tensors holding uint32.

    Products are masked back to 32 bits, so int64 wrap-around never matters.
    """
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _hash_scalar(*values: int) -> int:
    h = 0x9E3779B9
    for v in values:
        h = int(_hash32(torch.tensor((h ^ (int(v) & _MASK32)), dtype=torch.int64)))
    return h


def _unit_uniform(h: torch.Tensor) -> torch.Tensor:
    """Hash -> float32 uniform in [0, 1) with 24-bit resolution (exact in float32)."""
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


# --------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    """Everything but q, k, v that defines one PISA call (tensors here never require grad)."""

    h: int
    w: int
    disparity: torch.Tensor  # (B, N) float32, token grid, [0, 1], 1 = near
    radius_px: torch.Tensor  # (B, N) float32, |coc| in image pixels
    lookup: torch.Tensor  # (B, 1, Ho, Wo) float32 disparity used for occlusion lookups
    pos_px: torch.Tensor  # (N, 2) float32 token positions (y, x) in pixels for the CoC distance
    uv: torch.Tensor  # (N, 2) float32 token centres in grid_sample coordinates (x, y) in [-1, 1]
    log_hardness: float | None  # None: no CoC term (M = 1); inf: hard step
    occlusion: bool
    n_segments: int
    n_supersamples: int
    seed: int
    compat: bool
    training: bool
    dropout_p: float
    dropout_seed: int


def _token_positions_px(
    h: int, w: int, px_per_token: float, compat: bool, device, frame_px: float | None = None
) -> torch.Tensor:
    rows = torch.arange(h, device=device, dtype=torch.float32)
    cols = torch.arange(w, device=device, dtype=torch.float32)
    if frame_px is not None:
        # Published protocol: each axis of the frame PISA sees spans ``frame_px`` pixels whatever its size
        # (the published ``linspace(0, 1, n) * 51.2`` in 10-px units, i.e. every frame treated as 512 px).
        y = torch.linspace(0.0, 1.0, h, device=device, dtype=torch.float32) * frame_px
        x = torch.linspace(0.0, 1.0, w, device=device, dtype=torch.float32) * frame_px
    elif compat:
        # Published: linspace(0, 1, n) * 51.2 (10-px units) on n = 32 tokens per 512 px -> step ppt * n/(n-1).
        y = rows * (px_per_token * h / max(h - 1, 1))
        x = cols * (px_per_token * w / max(w - 1, 1))
    else:
        y = (rows + 0.5) * px_per_token
        x = (cols + 0.5) * px_per_token
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([yy.flatten(), xx.flatten()], dim=-1)


def _token_uv(h: int, w: int, device) -> torch.Tensor:
    """Token centres in grid_sample's align_corners=False coordinates: (x, y), each in (-1, 1)."""
    x = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (2.0 / w) - 1.0
    y = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (2.0 / h) - 1.0
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=-1)


def _token_uv_published(h: int, w: int, device) -> torch.Tensor:
    """The published occlusion sample grid: token ``k`` (row-major, ``k = r * w + c``) sits at
    ``x = u_h[k % h]``, ``y = u_w[k // h]`` with ``u_n = linspace(-1 + 1/n, 1 - 1/n, n)``.

    For square grids this is every token's own centre; for ``h != w`` the published code pairs the x axis
    with the *row* count and enumerates tokens column-count-major, so tokens look up shifted positions. Kept
    as is under the published protocol (the released weights were trained with it).
    """
    k = torch.arange(h * w, device=device)
    u_h = torch.linspace(-1.0 + 1.0 / h, 1.0 - 1.0 / h, h, device=device, dtype=torch.float32)
    u_w = torch.linspace(-1.0 + 1.0 / w, 1.0 - 1.0 / w, w, device=device, dtype=torch.float32)
    return torch.stack([u_h[k % h], u_w[k // h]], dim=-1)


def _pair_distance(pos_q: torch.Tensor, pos_k: torch.Tensor) -> torch.Tensor:
    """|p_i - p_j| for broadcastable (..., 2) position tensors: (...) float32, same units as the positions.

    The one distance formula of every PISA path (dense, chunked, sparse, flex). Elementwise and exact to
    rounding: cdist's default matrix-multiply form follows allow_tf32 on GPUs and loses tens of pixels at
    1024 px, which a near-hard CoC step turns into wrong masks; and cdist's direct form rounds differently
    from this one in the last bit, which a hard step (hardness inf: ``M = 0`` for ``|p_i - p_j| > r_j``)
    turns into a pair kept by one path and dropped by another when ``r_j`` equals a token distance.
    """
    diff = pos_q - pos_k
    return (diff[..., 0].square() + diff[..., 1].square()).sqrt()


def _log_coc_term(spec: _Spec, j0: int, j1: int) -> torch.Tensor | None:
    """log M_ij for all queries i and keys j in [j0, j1): (B, 1, N, Bk) float32, or None without CoC term.

    M_ij = sigmoid(log(hardness) * (r_j - |p_i - p_j|) / 10); logsigmoid keeps tiny values representable.
    """
    if spec.log_hardness is None:
        return None
    dist = _pair_distance(spec.pos_px[:, None], spec.pos_px[None, j0:j1])  # (N, Bk) px
    margin = spec.radius_px[:, None, j0:j1] - dist[None]  # (B, N, Bk) pixels; > 0 inside the key's CoC
    return _log_m(spec, margin)[:, None]


def _log_m(spec: _Spec, margin: torch.Tensor) -> torch.Tensor:
    """log M from the margin ``r_j - |p_i - p_j|`` (pixels, any shape): logsigmoid, or a hard 0 / -inf step."""
    if math.isinf(spec.log_hardness):
        zero = torch.zeros((), dtype=margin.dtype, device=margin.device)
        return torch.where(margin >= 0, zero, torch.full_like(zero, -math.inf))
    return F.logsigmoid(margin * (spec.log_hardness / _COC_UNIT_PX))


def _occlusion_block(spec: _Spec, j0: int, j1: int) -> torch.Tensor:
    """Self-occlusion fraction O_ij for all queries i and keys j in [j0, j1): (B, N, Bk) float32 in [0, 1]."""
    return _occlusion_fraction(_occlusion_counts(spec, j0, j1), spec)


def _occlusion_fraction(counts: torch.Tensor, spec: _Spec) -> torch.Tensor:
    occ = counts.to(torch.float32) / spec.n_supersamples
    if spec.training:
        occ = occ.clamp(max=_TRAIN_OCC_MAX)
    return occ


def _occlusion_counts(spec: _Spec, j0: int, j1: int) -> torch.Tensor:
    """Number of blocked supersamples (0..P) per query i and key j in [j0, j1): (B, N, Bk) uint8."""
    device = spec.disparity.device
    qi = torch.arange(spec.disparity.shape[1], device=device, dtype=torch.int64)[:, None]
    kj = torch.arange(j0, j1, device=device, dtype=torch.int64)[None, :]
    return _occlusion_counts_pairs(spec, qi, kj)


def _occlusion_counts_pairs(spec: _Spec, qi: torch.Tensor, kj: torch.Tensor) -> torch.Tensor:
    """Number of blocked supersamples (0..P) per pair of query ``qi`` and key ``kj`` (int64 token indices,
    broadcastable to a pair shape P whose last axis runs over keys): (B, *P) uint8.

    Every pair's samples depend only on (seed, i, j), so any set of pairs (all queries x a key block for the
    chunked path, spatial tile pairs for the sparse path) sees identical samples. Loops over supersamples so
    the working set is (B, S, *P) points, never P * S * |P|.
    """
    B = spec.disparity.shape[0]
    device = spec.disparity.device
    S, P = spec.n_segments, spec.n_supersamples
    shape = torch.broadcast_shapes(qi.shape, kj.shape)
    ones = [1] * len(shape)
    ps = torch.linspace(0.1, 0.9, S, device=device, dtype=torch.float32).view(1, S, *ones)  # (1, S, 1...)
    d_q = spec.disparity[:, qi][:, None]  # (B, 1, *qi.shape)
    d_k = spec.disparity[:, kj][:, None]  # (B, 1, *kj.shape)
    thr = ps * d_k + (1.0 - ps)  # (B, S, ...): disparity of the ray key -> camera at fraction p_s
    if spec.compat:
        t_q = ps * d_q + (1.0 - ps)  # published index mix-up: the query's ray disparity in the step factor
        frac = (1.0 - t_q) * d_k / (t_q * (1.0 - d_k).clamp_min(_COMPAT_ONE_MINUS_D_MIN))
        margin, padding = 0.0, "zeros"
    else:
        frac = ps * d_k / thr  # = g(d_j) / g(t_s) with (1 - d_j) cancelled: finite for d_j = 1
        margin, padding = _OCC_MARGIN, "border"
    frac = frac.expand(B, S, *shape)
    uv_q = spec.uv[qi][None, None]  # (1, 1, *qi.shape, 2)
    uv_k = spec.uv[kj][None, None]  # (1, 1, *kj.shape, 2)
    base = uv_q + frac[..., None] * (uv_k - uv_q)  # (B, S, *P, 2)

    pair_shift = offsets = None
    if P > 1:
        # Jitter = per-pair random shift (2 hashes of (seed, i, j)) of a seeded table of per-(sample,
        # segment, axis) offsets, modulo 1 (a Cranley-Patterson rotation): every jitter value is uniform,
        # pairs are independent, and it costs O(1) hashes per pair instead of one per sample.
        pair = _hash32(_hash32(qi ^ _hash_scalar(spec.seed, 1)) ^ kj)  # (*P)
        pair_shift = torch.stack([_unit_uniform(pair), _unit_uniform(_hash32(pair ^ 0x68E31DA4))], dim=-1)
        counters = torch.arange((P - 1) * S * 2, device=device, dtype=torch.int64)
        offsets = _unit_uniform(_hash32(counters ^ _hash_scalar(spec.seed, 3))).view(P - 1, S, *ones, 2)
    half_token = torch.tensor([1.0 / spec.w, 1.0 / spec.h], device=device)  # half a token in uv units

    blocked_count = torch.zeros(B, *shape, device=device, dtype=torch.uint8)
    for p in range(P):
        pts = base
        if p > 0:
            u = torch.remainder(pair_shift + offsets[p - 1], 1.0)  # (S, *P, 2) in [0, 1)
            pts = base + (u * 2.0 - 1.0) * half_token  # +- half a token per axis
        sampled = F.grid_sample(
            spec.lookup, pts.reshape(B, -1, shape[-1], 2), mode="bilinear", padding_mode=padding,
            align_corners=False,
        ).reshape(B, S, *shape)
        blocked_count += (sampled > thr + margin).any(dim=1).to(torch.uint8)
    return blocked_count


def _dropout_keep(spec: _Spec, shape: tuple[int, int, int, int], j0: int, j1: int, device) -> torch.Tensor:
    """Dropout keep-mask scaled by 1/(1-p) for keys [j0, j1): (B, H, N, Bk) float32, hashed per element."""
    B, H, N, Bk = shape
    qi = torch.arange(N, device=device, dtype=torch.int64).view(N, 1)
    kj = torch.arange(j0, j1, device=device, dtype=torch.int64).view(1, Bk)
    return _dropout_keep_pairs(spec, B, H, qi, kj)


def _dropout_keep_pairs(spec: _Spec, B: int, H: int, qi: torch.Tensor, kj: torch.Tensor) -> torch.Tensor:
    """Dropout keep-mask scaled by 1/(1-p) for query/key index tensors broadcastable to a pair shape P:
    (B, H, *P) float32; the hash of (seed, b, h, i, j) makes it independent of how pairs are grouped."""
    ones = [1] * max(qi.ndim, kj.ndim)
    bh = torch.arange(B * H, device=qi.device, dtype=torch.int64).view(B, H, *ones)
    h = _hash32(_hash32(_hash32(bh ^ _hash_scalar(spec.dropout_seed, 2)) ^ qi) ^ kj)
    keep = _unit_uniform(h) >= spec.dropout_p
    return keep.to(torch.float32) / (1.0 - spec.dropout_p)


def _has_occlusion(spec: _Spec) -> bool:
    return spec.occlusion and spec.n_segments > 0 and spec.n_supersamples > 0


def _gate(spec: _Spec, shape, j0: int, j1: int, device, counts: torch.Tensor | None = None) -> torch.Tensor | None:
    """Multiplicative factor applied after normalisation: (1 - O) and dropout. (B, 1|H, N, Bk) or None.

    ``counts``: this block's occlusion counts if already computed (uint8, see ``_occlusion_counts``)."""
    gate = None
    if _has_occlusion(spec):
        if counts is None:
            counts = _occlusion_counts(spec, j0, j1)
        gate = (1.0 - _occlusion_fraction(counts, spec))[:, None]
    if spec.training and spec.dropout_p > 0:
        keep = _dropout_keep(spec, shape, j0, j1, device)
        gate = keep if gate is None else gate * keep
    return gate


def _logits(q: torch.Tensor, k_blk: torch.Tensor, spec: _Spec, j0: int, j1: int, scale: float) -> torch.Tensor:
    """z_ij = s_ij + log M_ij in float32: (B, H, N, Bk). The matmul runs in the inputs' dtype."""
    z = (q @ k_blk.transpose(-1, -2)).to(torch.float32) * scale
    log_m = _log_coc_term(spec, j0, j1)
    return z if log_m is None else z + log_m


# --------------------------------------------------------------------------------------------------------
# Implementations
# --------------------------------------------------------------------------------------------------------
def _pisa_reference(q, k, v, spec: _Spec, scale: float) -> torch.Tensor:
    B, H, N, _ = q.shape
    z = _logits(q, k, spec, 0, N, scale)  # (B, H, N, N)
    # Normalise each key's column over the queries (energy conservation); logsumexp subtracts the max.
    a = torch.exp(z - torch.logsumexp(z, dim=-2, keepdim=True))
    gate = _gate(spec, (B, H, N, N), 0, N, q.device)
    if gate is not None:
        a = a * gate
    return (a.to(v.dtype) @ v).to(q.dtype)


# The chunked backward needs O_ij again. Sampling it dominates the cost, so when the whole table fits in
# this many bytes (one uint8 count per (b, i, j), head-shared: N <= 8192 at B = 1) the forward keeps it;
# larger calls recompute it per block and stay strictly O(N * block).
OCCLUSION_CACHE_BYTES = 64 * 2**20


class _ChunkedPISA(torch.autograd.Function):
    """O(N * block) forward and backward; saves q, k, v, the per-key log-normaliser (B, H, N) and, when it
    fits in ``OCCLUSION_CACHE_BYTES``, the occlusion counts (B, N, N) uint8."""

    @staticmethod
    def forward(ctx, q, k, v, spec: _Spec, scale: float, block: int, needs_backward: bool):
        B, H, N, _ = q.shape
        out = torch.zeros(B, H, N, v.shape[-1], dtype=torch.float32, device=q.device)
        lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
        cache = None
        if _has_occlusion(spec) and needs_backward and B * N * N <= OCCLUSION_CACHE_BYTES:
            cache = torch.empty(B, N, N, dtype=torch.uint8, device=q.device)
        for j0 in range(0, N, block):
            j1 = min(j0 + block, N)
            z = _logits(q, k[:, :, j0:j1], spec, j0, j1, scale)
            lse_blk = torch.logsumexp(z, dim=-2, keepdim=True)  # (B, H, 1, Bk)
            lse[:, :, j0:j1] = lse_blk[:, :, 0]
            a = torch.exp(z - lse_blk)
            counts = None
            if cache is not None:
                counts = cache[:, :, j0:j1] = _occlusion_counts(spec, j0, j1)
            gate = _gate(spec, (B, H, N, j1 - j0), j0, j1, q.device, counts)
            if gate is not None:
                a = a * gate
            out += (a.to(v.dtype) @ v[:, :, j0:j1]).to(torch.float32)
        ctx.save_for_backward(q, k, v, lse)
        ctx.spec, ctx.scale, ctx.block, ctx.occ_cache = spec, scale, block, cache
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, lse = ctx.saved_tensors
        spec, scale, block = ctx.spec, ctx.scale, ctx.block
        B, H, N, _ = q.shape
        g = grad_out.to(torch.float32)
        qf, kf, vf = q.to(torch.float32), k.to(torch.float32), v.to(torch.float32)
        dq = torch.zeros_like(qf)
        dk = torch.zeros_like(kf)
        dv = torch.zeros_like(vf)
        for j0 in range(0, N, block):
            j1 = min(j0 + block, N)
            z = _logits(q, k[:, :, j0:j1], spec, j0, j1, scale)
            a = torch.exp(z - lse[:, :, None, j0:j1])  # softmax over queries, recomputed
            counts = None if ctx.occ_cache is None else ctx.occ_cache[:, :, j0:j1]
            gate = _gate(spec, (B, H, N, j1 - j0), j0, j1, q.device, counts)
            weights = a if gate is None else a * gate
            dv[:, :, j0:j1] = weights.transpose(-1, -2) @ g
            da = g @ vf[:, :, j0:j1].transpose(-1, -2)  # dL/dA_ij = g_i . v_j
            if gate is not None:
                da = da * gate
            # Softmax over the query axis: dz_ij = a_ij (da_ij - sum_i' a_i'j da_i'j).
            dz = a * (da - (a * da).sum(dim=-2, keepdim=True))
            dq += (dz @ kf[:, :, j0:j1]) * scale
            dk[:, :, j0:j1] = (dz.transpose(-1, -2) @ qf) * scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _pisa_flex(q, k, v, spec: _Spec, scale: float) -> torch.Tensor:
    """Two FlexAttention calls: (1) the per-key normaliser over queries, as the log-sum-exp of an attention
    with the roles of queries and keys swapped; (2) out_i = sum_j exp(z_ij - L_j) (1 - O_ij) v_j, obtained
    from flex's key-normalised output times exp of its own log-sum-exp (flex always normalises over keys)."""
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    if q.is_cuda:
        flex_attention = _compiled_flex()
    if spec.training and spec.dropout_p > 0:
        raise ValueError("impl='flex' does not support dropout; use impl='chunked' or dropout_p=0.")
    B, H, N, _ = q.shape
    log_m = _log_coc_term(spec, 0, N)  # (B, 1, N, N) or None: O(N^2), head-shared
    log_gate = None
    if _has_occlusion(spec):
        log_gate = torch.log1p(-_occlusion_block(spec, 0, N))  # (B, N, N), -inf where fully blocked

    def coc_swapped(score, b, h, q_idx, kv_idx):  # "query" = our key j, "key" = our query i
        return score if log_m is None else score + log_m[b, 0, kv_idx, q_idx]

    def scatter(score, b, h, q_idx, kv_idx):
        score = score - lse_key[b, h, kv_idx]
        if log_m is not None:
            score = score + log_m[b, 0, q_idx, kv_idx]
        if log_gate is not None:
            score = score + log_gate[b, q_idx, kv_idx]
        return score

    with warnings.catch_warnings():
        # Eager flex (CPU) warns that it materialises the scores; that is the documented CPU behaviour.
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        _, aux = flex_attention(k, q, v, score_mod=coc_swapped, scale=scale, return_aux=AuxRequest(lse=True))
        lse_key = aux.lse.to(torch.float32)  # (B, H, N): L_j, read by `scatter`
        out, aux = flex_attention(q, k, v, score_mod=scatter, scale=scale, return_aux=AuxRequest(lse=True))
    lse_q = aux.lse
    # flex returned sum_j e^{x_ij} v_j / sum_j e^{x_ij}; multiply back by sum_j e^{x_ij} = exp(lse_q).
    # Queries that receive no light at all have lse_q = -inf and out = 0 (nan guarded).
    weight = torch.exp(lse_q.to(torch.float32))[..., None]
    return torch.nan_to_num(out.to(torch.float32) * weight).to(q.dtype)


# --------------------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------------------
def pisa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    disparity: torch.Tensor,
    coc_px: torch.Tensor,
    *,
    hardness: float | None,
    px_per_token: float,
    occlusion: bool = True,
    n_segments: int = 7,
    n_supersamples: int = 5,
    seed: int = 0,
    compat: bool = False,
    impl: str = "auto",
    block_size: int = 256,
    dropout_p: float = 0.0,
    training: bool = False,
    occlusion_disparity: torch.Tensor | None = None,
    published_geometry: bool = False,
    return_impl: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, str]:
    """Physics-inspired self-attention (paper Sec. 3.2; the equations are in this module's docstring).

    Args:
        q, k, v: ``(B, heads, N, d)`` query/key/value of one self-attention layer, any float dtype; ``N = h*w``
            tokens in row-major order of the token grid.
        disparity: ``(B, h, w)`` token-grid disparity in [0, 1], 1 = nearest (used for occlusion).
        coc_px: ``(B, h, w)`` token-grid circle-of-confusion radius in **image pixels**; the sign is ignored
            (``|coc_px|`` is the radius ``r_j``).
        hardness: slope of the CoC step, > 1 (the paper grows it during training; the published inference
            uses 1e7). ``float('inf')`` is a hard step; ``None`` drops the CoC term (M = 1).
        px_per_token: image pixels per token (e.g. 16 for SDXL's ``down_blocks.1``: image H / h).
        occlusion: multiply by ``1 - O_ij``; with ``n_segments`` S fractions and ``n_supersamples`` P samples.
        seed: seeds the occlusion jitter (hashed per pair; independent of ``impl`` and ``block_size``).
        compat: reproduce the published discretisation (deviations listed in the module docstring).
        impl: ``"reference"`` (dense), ``"chunked"`` (O(N*block) memory, forward and backward), ``"sparse"``
            (pairs within the proven reach only, forward and backward; see the module docstring), ``"flex"``
            (FlexAttention; forward-only on CPU), ``"flex_sparse"`` (FlexAttention with the sparse block mask;
            forward only) or ``"auto"`` (sparse when it skips at least half the pairs or at least half the
            occlusion work, else chunked).
        block_size: keys per block for ``"chunked"``.
        dropout_p: dropout on the attention weights, applied only when ``training`` (hashed masks drawn
            from the global torch RNG per call, so a seeded run is reproducible).
        training: training mode: enables dropout and clamps ``O`` to 0.99 (the published training recipe).
        occlusion_disparity: optional ``(B, Ho, Wo)`` disparity in [0, 1] covering the same image extent,
            looked up (bilinear) for occlusion samples; defaults to ``disparity``. A finer map (e.g. 3x the
            token grid, as published) resolves thin occluders.
        published_geometry: the published release's geometry (needs ``compat``): token distances on a frame
            of 512 px per axis whatever the frame's size (``linspace(0, 1, n) * 512`` px), and its occlusion
            sample grid including its axis order for non-square grids (:func:`_token_uv_published`).
        return_impl: also return the implementation that ran (``"auto"`` resolved to ``"sparse"`` or
            ``"chunked"``).

    Returns:
        ``(B, heads, N, d)`` in ``q``'s dtype: ``out_i = sum_j A_ij v_j``. Gradients flow to q, k, v only;
        disparity and CoC are treated as data (detached). With ``return_impl``: ``(out, impl_that_ran)``.
    """
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}.")
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"q, k, v must be (B, heads, N, d) with equal B, heads, N; got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}."
        )
    B, H, N, d = q.shape
    if disparity.ndim != 3 or disparity.shape[0] != B or disparity.shape[1] * disparity.shape[2] != N:
        raise ValueError(
            f"disparity must be (B, h, w) with B={B} and h*w = N = {N}; got {tuple(disparity.shape)}."
        )
    if coc_px.shape != disparity.shape:
        raise ValueError(f"coc_px must have disparity's shape {tuple(disparity.shape)}; got {tuple(coc_px.shape)}.")
    if hardness is not None and not hardness > 1:
        raise ValueError(f"hardness must be > 1 (log(hardness) is the sigmoid slope) or None; got {hardness}.")
    if not px_per_token > 0:
        raise ValueError(f"px_per_token must be > 0; got {px_per_token}.")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1); got {dropout_p}.")
    if published_geometry and not compat:
        raise ValueError("published_geometry=True reproduces the published code and needs compat=True as well.")
    spec = _make_spec(
        q, disparity, coc_px, hardness=hardness, px_per_token=px_per_token, occlusion=occlusion,
        n_segments=n_segments, n_supersamples=n_supersamples, seed=seed, compat=compat, dropout_p=dropout_p,
        training=training, occlusion_disparity=occlusion_disparity, published_geometry=published_geometry,
    )
    out, ran = _dispatch(q, k, v, spec, 1.0 / math.sqrt(d), impl, block_size)
    return (out, ran) if return_impl else out


def _make_spec(
    q: torch.Tensor,
    disparity: torch.Tensor,
    coc_px: torch.Tensor,
    *,
    hardness: float | None,
    px_per_token: float,
    occlusion: bool = True,
    n_segments: int = 7,
    n_supersamples: int = 5,
    seed: int = 0,
    compat: bool = False,
    dropout_p: float = 0.0,
    training: bool = False,
    occlusion_disparity: torch.Tensor | None = None,
    published_geometry: bool = False,
) -> _Spec:
    """The :class:`_Spec` of one :func:`pisa_attention` call (arguments as there, already validated; ``q`` gives
    B, N and the device). Draws the dropout seed from the global RNG when ``training`` with ``dropout_p > 0``."""
    B, N = q.shape[0], q.shape[2]
    h, w = disparity.shape[1:]
    disp = disparity.detach().to(torch.float32)
    lookup = disp if occlusion_disparity is None else occlusion_disparity.detach().to(torch.float32)
    if lookup.ndim != 3 or lookup.shape[0] != B:
        raise ValueError(f"occlusion_disparity must be (B, Ho, Wo) with B={B}; got {tuple(lookup.shape)}.")
    dropout_seed = 0
    if training and dropout_p > 0:
        dropout_seed = int(torch.randint(0, 2**31 - 1, (1,)))  # global RNG: reproducible under manual_seed
    spec = _Spec(
        h=h,
        w=w,
        disparity=disp.reshape(B, N),
        radius_px=coc_px.detach().to(torch.float32).abs().reshape(B, N),
        lookup=lookup[:, None],
        pos_px=_token_positions_px(
            h, w, float(px_per_token), compat, q.device, _PUBLISHED_FRAME_PX if published_geometry else None
        ),
        uv=_token_uv_published(h, w, q.device) if published_geometry else _token_uv(h, w, q.device),
        log_hardness=None if hardness is None else math.log(hardness),
        occlusion=occlusion,
        n_segments=int(n_segments),
        n_supersamples=int(n_supersamples),
        seed=int(seed),
        compat=compat,
        training=training,
        dropout_p=float(dropout_p),
        dropout_seed=dropout_seed,
    )
    return spec


def _dispatch(q, k, v, spec: _Spec, scale: float, impl: str, block_size: int) -> tuple[torch.Tensor, str]:
    """Run ``impl`` (``"auto"`` resolved here): the output and the name of the implementation that ran."""
    if impl == "reference":
        return _pisa_reference(q, k, v, spec, scale), impl
    if impl == "flex":
        if not _flex_available():
            raise ValueError("impl='flex' needs torch.nn.attention.flex_attention (PyTorch >= 2.5); use 'chunked'.")
        return _pisa_flex(q, k, v, spec, scale), impl
    if impl == "flex_sparse":
        if not _flex_available():
            raise ValueError(
                "impl='flex_sparse' needs torch.nn.attention.flex_attention (PyTorch >= 2.5); use 'sparse'."
            )
        from .pisa_sparse import flex_sparse_pisa

        return flex_sparse_pisa(q, k, v, spec, scale), impl
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1; got {block_size}.")
    # (autograd.Function.forward runs with grad disabled, so whether a backward will follow is decided here.)
    needs_backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if impl in ("sparse", "auto"):
        from .pisa_sparse import DENSE_FRACTION, plan_for_call, sparse_pisa

        plan = plan_for_call(spec, q, k, scale)
        # auto: the sparse path only where the bound skips enough pairs to pay for its gathers; otherwise
        # (soft hardness, huge CoC everywhere) the chunked path, i.e. never slower than the dense evaluation.
        if impl == "sparse" or min(plan.fraction, plan.reach_fraction) <= DENSE_FRACTION:
            return sparse_pisa(q, k, v, spec, scale, plan, needs_backward), "sparse"
    return _ChunkedPISA.apply(q, k, v, spec, scale, int(block_size), needs_backward), "chunked"


# --------------------------------------------------------------------------------------------------------
# diffusers processors
# --------------------------------------------------------------------------------------------------------
def _token_grid(n_tokens: int, height_px: int, width_px: int) -> tuple[int, int]:
    """Token grid (h, w) with h * w = n_tokens whose aspect matches the image's H / W.

    SDXL's strided convs round odd sizes up, so h is not always H / 16 exactly: try the divisors of
    n_tokens near sqrt(n_tokens * H / W) and keep the one whose aspect is closest.
    """
    guess = math.sqrt(n_tokens * height_px / width_px)
    best = None
    for h in range(max(1, math.floor(guess) - 2), math.ceil(guess) + 3):
        if n_tokens % h:
            continue
        err = abs(math.log((h / (n_tokens // h)) / (height_px / width_px)))
        if best is None or err < best[0]:
            best = (err, h)
    if best is None or best[0] > 0.25:
        raise ValueError(
            f"disp_coc of size {height_px}x{width_px} px does not match a token grid of {n_tokens} tokens with "
            "the same aspect; pass disp_coc at the image resolution the UNet latents were encoded from."
        )
    return best[1], n_tokens // best[1]


class PassthroughAttnProcessor:
    """Stock ``AttnProcessor2_0`` behaviour for every layer that does not run PISA.

    It declares ``disp_coc`` and ``pisa_hardness`` so diffusers passes them without a per-call warning, and
    ignores them: ``cross_attention_kwargs={"disp_coc": ...}`` reaches every attention layer of the UNet.
    """

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self._stock = AttnProcessor2_0()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        disp_coc: torch.Tensor | None = None,
        pisa_hardness: float | None = None,
    ) -> torch.Tensor:
        return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class PISAAttnProcessor:
    """diffusers attention processor running :func:`pisa_attention` in a self-attention layer.

    Args:
        hardness: CoC sigmoid hardness (> 1; the published inference uses 1e7). Overridden per call by
            ``cross_attention_kwargs["pisa_hardness"]`` (the training schedule); never mutated.
        occlusion, n_segments, n_supersamples: the self-occlusion term (S segments x P supersamples).
        impl, block_size: see :func:`pisa_attention`.
        seed: occlusion-jitter seed (fixed: bit-reproducible inference). ``None`` draws a new seed per call
            from the global torch RNG (stochastic supersampling while training, reproducible under a seed).
        compat: reproduce the published discretisation (bilinear resize of ``disp_coc`` as published,
            plus the deviations listed in the module docstring).
        physics: ``False`` turns every PISA term off: the processor is then exactly ``AttnProcessor2_0``.
        dropout_p: attention-weight dropout, applied only while the attention module is in training mode.
        occlusion_upsample: occlusion lookups read a disparity map this many times finer than the token
            grid (published: 3).
        published_geometry: the published release's token distances and occlusion grid (with ``compat``;
            see :func:`pisa_attention`). Set by the pipeline's ``protocol="published"``.

    Attributes:
        last_impl: the implementation the latest call ran (``impl="auto"`` resolved to ``"sparse"`` or
            ``"chunked"``), ``None`` before the first call; ``impl_counts`` counts calls per implementation
            since construction (one processor serves every PISA layer it is installed on).

    Call contract: ``cross_attention_kwargs={"disp_coc": t, "pisa_hardness": optional float}``, with ``t``
    of shape ``(B, 2, H, W)`` at the full image resolution: channel 0 disparity in [0, 1] (1 = near),
    channel 1 signed CoC radius in image pixels. It is resized (area; bilinear with ``compat``) to this
    layer's token grid ``(h, w)``, with ``px_per_token = H / h`` and radius ``|coc|``. A batch of 1 is
    broadcast over the hidden states' batch (e.g. classifier-free guidance).
    """

    def __init__(
        self,
        hardness: float = 1e7,
        occlusion: bool = True,
        n_segments: int = 7,
        n_supersamples: int = 5,
        impl: str = "auto",
        seed: int | None = 0,
        compat: bool = False,
        physics: bool = True,
        dropout_p: float = 0.0,
        block_size: int = 256,
        occlusion_upsample: int = 3,
        published_geometry: bool = False,
    ):
        if impl not in _IMPLS:
            raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}.")
        if not hardness > 1:
            raise ValueError(f"hardness must be > 1; got {hardness}.")
        self.hardness = float(hardness)
        self.occlusion = bool(occlusion)
        self.n_segments = int(n_segments)
        self.n_supersamples = int(n_supersamples)
        self.impl = impl
        self.seed = seed
        self.compat = bool(compat)
        self.physics = bool(physics)
        self.dropout_p = float(dropout_p)
        self.block_size = int(block_size)
        self.occlusion_upsample = int(occlusion_upsample)
        self.published_geometry = bool(published_geometry)
        if self.published_geometry and not self.compat:
            raise ValueError("published_geometry=True reproduces the published code and needs compat=True as well.")
        self._stock = PassthroughAttnProcessor()
        self.last_impl: str | None = None
        self.impl_counts: collections.Counter = collections.Counter()

    def config(self) -> dict:
        """The settings, for checkpoint metadata."""
        keys = ("hardness", "occlusion", "n_segments", "n_supersamples", "impl", "seed", "compat", "physics",
                "dropout_p", "block_size", "occlusion_upsample", "published_geometry")
        return {key: getattr(self, key) for key in keys}

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.compat:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=size, mode="area")

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        disp_coc: torch.Tensor | None = None,
        pisa_hardness: float | None = None,
    ) -> torch.Tensor:
        if not self.physics:
            return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if encoder_hidden_states is not None:
            raise ValueError(
                "PISAAttnProcessor is for self-attention only (got encoder_hidden_states); install it on attn1 "
                "layers, e.g. install_pisa_processors(unet, patterns=('down_blocks.1.attentions.0.*.attn1',))."
            )
        if attention_mask is not None:
            raise ValueError("PISAAttnProcessor does not support attention_mask; self-attention in the UNet has none.")
        if disp_coc is None:
            raise ValueError(
                'PISAAttnProcessor needs cross_attention_kwargs={"disp_coc": (B, 2, H, W)} (disparity, signed CoC '
                "in pixels); pass it, or build the processor with physics=False."
            )
        if disp_coc.ndim != 4 or disp_coc.shape[1] != 2:
            raise ValueError(f"disp_coc must be (B, 2, H, W) (disparity, CoC px); got {tuple(disp_coc.shape)}.")

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, n_tokens, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        # disp_coc at image resolution -> this layer's token grid; units stay image pixels.
        H_img, W_img = disp_coc.shape[-2:]
        if input_ndim == 4:
            h, w = height, width
        else:
            h, w = _token_grid(n_tokens, H_img, W_img)
        dc = disp_coc.detach().to(device=hidden_states.device, dtype=torch.float32)
        if dc.shape[0] != batch_size:
            if dc.shape[0] != 1:
                raise ValueError(f"disp_coc batch {dc.shape[0]} must be 1 or match the hidden states' {batch_size}.")
            dc = dc.expand(batch_size, -1, -1, -1)
        tok = self._resize(dc, (h, w))
        occ_map = self._resize(dc[:, :1], (h * self.occlusion_upsample, w * self.occlusion_upsample))[:, 0]

        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)))
        hidden_states, self.last_impl = pisa_attention(
            query,
            key,
            value,
            tok[:, 0],
            tok[:, 1],
            hardness=self.hardness if pisa_hardness is None else float(pisa_hardness),
            px_per_token=H_img / h,
            occlusion=self.occlusion,
            n_segments=self.n_segments,
            n_supersamples=self.n_supersamples,
            seed=seed,
            compat=self.compat,
            impl=self.impl,
            block_size=self.block_size,
            dropout_p=self.dropout_p,
            training=attn.training,
            occlusion_disparity=occ_map,
            published_geometry=self.published_geometry,
            return_impl=True,
        )
        self.impl_counts[self.last_impl] += 1
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_pisa_processors(
    unet: torch.nn.Module,
    patterns: tuple[str, ...] | list[str] = ("down_blocks.1.attentions.0.*.attn1",),
    **pisa_kwargs,
) -> list[str]:
    """Set :class:`PISAAttnProcessor` on the self-attention layers matching ``patterns`` and
    :class:`PassthroughAttnProcessor` on every other attention layer of ``unet``.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (peft LoRA adapters may be attached).
        patterns: ``fnmatch`` patterns over attention-module names (``*`` also matches dots), e.g. the
            default ``"down_blocks.1.attentions.0.*.attn1"`` (SDXL's self-attention at 1/16 resolution).
        **pisa_kwargs: forwarded to ``PISAAttnProcessor`` (hardness, occlusion, impl, seed, ...).

    Returns:
        Sorted names of the attention modules given PISA.

    Raises:
        ValueError: a pattern matches no attention layer, or matches a cross-attention layer.
    """
    if isinstance(patterns, str):
        patterns = (patterns,)
    modules = dict(unet.named_modules())
    names = [key[: -len(".processor")] for key in unet.attn_processors]
    matched: dict[str, list[str]] = {p: [n for n in names if fnmatch.fnmatchcase(n, p)] for p in patterns}
    for pattern, hits in matched.items():
        if not hits:
            examples = ", ".join(names[:4])
            raise ValueError(
                f"PISA pattern {pattern!r} matches no attention layer of the UNet (e.g. {examples}); "
                "fix the pattern in the config (fnmatch syntax, '*' matches dots too)."
            )
    pisa_names = sorted({n for hits in matched.values() for n in hits})
    for name in pisa_names:
        if getattr(modules[name], "is_cross_attention", False):
            raise ValueError(f"PISA pattern matched cross-attention layer {name!r}; PISA applies to self-attention (attn1).")
    pisa = PISAAttnProcessor(**pisa_kwargs)
    passthrough = PassthroughAttnProcessor()
    unet.set_attn_processor({f"{n}.processor": (pisa if n in pisa_names else passthrough) for n in names})
    return pisa_names
