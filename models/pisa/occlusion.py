"""PISA's self-occlusion fraction ``O_ij`` (paper Sec. 3.2; docs/conventions.md, "PISA", step 4 and
"Occlusion sampling"): the segment from query ``i`` to key ``j`` is sampled at S fractions x P seeded
supersamples; ``O_ij`` is the fraction of supersamples with a blocked segment sample. The segment's
discretisation comes from ``spec.geometry`` (:class:`models.pisa.geometry.Discretisation`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .hashing import hash32, hash_scalar, unit_uniform
from .spec import PISASpec

# While training, O is clamped so that fully blocked keys keep a gradient path (the released training recipe;
# applied in every discretisation).
TRAIN_OCC_MAX = 0.99
# Backward passes need O_ij again. Sampling it dominates the cost, so when the table of the evaluated pairs
# fits in this many bytes (one uint8 count per (b, i, j), head-shared: N <= 8192 at B = 1 for the dense table)
# the forward keeps it; larger calls recompute it per block. Read at call time (tests lower it).
OCCLUSION_CACHE_BYTES = 64 * 2**20


def occlusion_cache_fits(n_bytes: int) -> bool:
    """Whether a forward may keep ``n_bytes`` of occlusion counts for its backward (:data:`OCCLUSION_CACHE_BYTES`)."""
    return n_bytes <= OCCLUSION_CACHE_BYTES


def has_occlusion(spec: PISASpec) -> bool:
    """Whether the call has an occlusion term (on, with at least one segment and one supersample)."""
    return spec.occlusion and spec.n_segments > 0 and spec.n_supersamples > 0


def occlusion_fraction(counts: torch.Tensor, spec: PISASpec) -> torch.Tensor:
    """O from blocked-supersample counts (uint8, any shape): float32 in [0, 1] (<= 0.99 while training)."""
    occ = counts.to(torch.float32) / spec.n_supersamples
    if spec.training:
        occ = occ.clamp(max=TRAIN_OCC_MAX)
    return occ


def occlusion_counts_pairs(spec: PISASpec, qi: torch.Tensor, kj: torch.Tensor) -> torch.Tensor:
    """Number of blocked supersamples (0..P) per pair of query ``qi`` and key ``kj`` (int64 token indices,
    broadcastable to a pair shape P whose last axis runs over keys): (B, *P) uint8.

    Every pair's samples depend only on (seed, i, j), so any set of pairs (all queries x a key block for the
    chunked path, spatial tile pairs for the sparse path) sees identical samples. Loops over supersamples so
    the working set is (B, S, *P) points, never P * S * |P|.
    """
    B = spec.disparity.shape[0]
    device = spec.disparity.device
    S, P = spec.n_segments, spec.n_supersamples
    geometry = spec.geometry
    shape = torch.broadcast_shapes(qi.shape, kj.shape)
    ones = [1] * len(shape)
    ps = torch.linspace(0.1, 0.9, S, device=device, dtype=torch.float32).view(1, S, *ones)  # (1, S, 1...)
    d_q = spec.disparity[:, qi][:, None]  # (B, 1, *qi.shape)
    d_k = spec.disparity[:, kj][:, None]  # (B, 1, *kj.shape)
    thr = ps * d_k + (1.0 - ps)  # (B, S, ...): disparity of the ray key -> camera at fraction p_s
    frac = geometry.segment_fraction(ps, d_q, d_k, thr).expand(B, S, *shape)
    uv_q = spec.uv[qi][None, None]  # (1, 1, *qi.shape, 2)
    uv_k = spec.uv[kj][None, None]  # (1, 1, *kj.shape, 2)
    base = uv_q + frac[..., None] * (uv_k - uv_q)  # (B, S, *P, 2)

    pair_shift = offsets = None
    if P > 1:
        # Jitter = per-pair random shift (2 hashes of (seed, i, j)) of a seeded table of per-(sample,
        # segment, axis) offsets, modulo 1 (a Cranley-Patterson rotation): every jitter value is uniform,
        # pairs are independent, and it costs O(1) hashes per pair instead of one per sample.
        pair = hash32(hash32(qi ^ hash_scalar(spec.seed, 1)) ^ kj)  # (*P)
        pair_shift = torch.stack([unit_uniform(pair), unit_uniform(hash32(pair ^ 0x68E31DA4))], dim=-1)
        counters = torch.arange((P - 1) * S * 2, device=device, dtype=torch.int64)
        offsets = unit_uniform(hash32(counters ^ hash_scalar(spec.seed, 3))).view(P - 1, S, *ones, 2)
    half_token = torch.tensor([1.0 / spec.w, 1.0 / spec.h], device=device)  # half a token in uv units

    blocked_count = torch.zeros(B, *shape, device=device, dtype=torch.uint8)
    for p in range(P):
        pts = base
        if p > 0:
            u = torch.remainder(pair_shift + offsets[p - 1], 1.0)  # (S, *P, 2) in [0, 1)
            pts = base + (u * 2.0 - 1.0) * half_token  # +- half a token per axis
        sampled = F.grid_sample(
            spec.lookup, pts.reshape(B, -1, shape[-1], 2), mode="bilinear", padding_mode=geometry.padding_mode,
            align_corners=False,
        ).reshape(B, S, *shape)
        blocked_count += (sampled > thr + geometry.occlusion_margin).any(dim=1).to(torch.uint8)
    return blocked_count


def occlusion_counts(spec: PISASpec, j0: int, j1: int) -> torch.Tensor:
    """Number of blocked supersamples (0..P) per query i and key j in [j0, j1): (B, N, Bk) uint8."""
    device = spec.disparity.device
    qi = torch.arange(spec.disparity.shape[1], device=device, dtype=torch.int64)[:, None]
    kj = torch.arange(j0, j1, device=device, dtype=torch.int64)[None, :]
    return occlusion_counts_pairs(spec, qi, kj)


def occlusion_block(spec: PISASpec, j0: int, j1: int) -> torch.Tensor:
    """Self-occlusion fraction O_ij for all queries i and keys j in [j0, j1): (B, N, Bk) float32 in [0, 1]."""
    return occlusion_fraction(occlusion_counts(spec, j0, j1), spec)


def occlusion_counts_kept(spec: PISASpec, qi: torch.Tensor, kj: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Occlusion counts (B, n, Qn, Kt) uint8 for query indices ``qi`` (n|1, Qn) x key indices ``kj`` (n, Kt),
    sampled only for the ``keep`` (n, Qn, Kt) pairs (0 elsewhere): the sparse paths' occlusion."""
    n, Qn, Kt = keep.shape
    q_flat = qi[:, :, None].expand(n, Qn, Kt)[keep]
    k_flat = kj[:, None, :].expand(n, Qn, Kt)[keep]
    counts = torch.zeros(spec.disparity.shape[0], n, Qn, Kt, dtype=torch.uint8, device=keep.device)
    counts[:, keep] = occlusion_counts_pairs(spec, q_flat, k_flat)
    return counts
