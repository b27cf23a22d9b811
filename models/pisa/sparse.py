"""``impl="sparse"``: PISA over only the (query, key) pairs that can carry light, exact within a proven bound
(docs/conventions.md, "Sparse PISA: the bound"), forward and backward.

The bound gives every key ``j`` a reach ``rho_j`` (in the units of ``spec.pos_px``) beyond which all queries
together hold less than ``e^-T`` of its light. The per-key reach becomes a *tile plan*: tokens in 2-D tiles
of ``th x tw`` (the grid padded to whole tiles; padding slots point at a dummy token ``N``); for a key tile,
a query tile is kept when the minimum distance between their tokens (a function of the tile offset only, on
a uniform grid) is within the key tile's largest reach; key tiles with the same Chebyshev window radius form
a :class:`TileGroup` sharing one list of offsets (a superset of each key's needs), and a group whose window
would exceed the grid takes all query tiles (a huge CoC makes its tiles dense, not the whole call).

Evaluation (:class:`SparsePISA`) walks the groups in chunks of key tiles: one batched gather of the kept
queries, scores and CoC term for those pairs, the per-key log-normaliser over them, occlusion sampled only
for the kept pairs (the dense paths' per-pair seeded samples), and a scatter that adds one key tile per
query tile per call, so no index is hit twice in one call (bit-reproducible on GPUs too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .coc import COC_UNIT_PX, log_m
from .dropout import dropout_keep_pairs
from .geometry import pair_distance
from .occlusion import has_occlusion, occlusion_cache_fits, occlusion_counts_kept, occlusion_fraction
from .spec import PISASpec

SPARSE_TOL = 1e-6  # max |sparse - dense| output, as a fraction of max |v| (docs/conventions.md)
# impl="auto": sparse when it evaluates at most this fraction of the N^2 pairs, or when at most this fraction
# lies within reach (occlusion, the dominant cost, is sampled only there). Timed on CPU at N = 1024, fwd+bwd:
# sparse 1.7x slower than chunked at hardness 3 (everything within reach), equal at 10, faster from 30 on.
DENSE_FRACTION = 0.5
PAIR_BUDGET = 1 << 20  # token pairs (times the batch) evaluated per chunk: bounds the working set
TILE_SIDES = (2, 4, 8)  # tile sides (tokens) plan_for_call chooses from; read at call time
# Cost model used to pick the tile side: per evaluated pair, gathers and small matmuls move about H*d/Kt
# elements (Kt = keys per tile), against ~S*P = 35 bilinear samples of occlusion per pair within reach.
# Weight 1.0 ranks 4x4 tiles first at N = 4096 (CoC <= 32 px, hardness 1e7), as timed on CPU: 2x2 was 1.4x and
# 8x8 about 3x slower there.
_GATHER_WEIGHT = 1.0


@dataclass(frozen=True)
class TileGroup:
    """Key tiles that share one list of query-tile offsets."""

    key_tiles: torch.Tensor  # (n,) int64 tile ids
    offsets: torch.Tensor | None  # (n_off, 2) int64 tile offsets (dy, dx); None: every query tile


@dataclass(frozen=True)
class SparsePlan:
    """Which tile pairs a sparse PISA call evaluates.

    ``tile``: tile size (th, tw) in tokens; ``tiles``: tile grid (nty, ntx); ``tile_tokens``: (n_tiles, th*tw)
    int64 token index per tile slot, ``N`` for padding; ``evaluated_pairs``: token pairs evaluated (padding
    slots included), to compare with ``N * N``.
    """

    tile: tuple[int, int]
    tiles: tuple[int, int]
    tile_tokens: torch.Tensor
    groups: tuple[TileGroup, ...]
    evaluated_pairs: int
    n_tokens: int
    reach: torch.Tensor  # (N,) float32 per-key reach rho_j in pos_px units
    reach_pairs: float  # estimate (from above, borders ignored) of the pairs within reach: occlusion samples

    @property
    def fraction(self) -> float:
        """Evaluated pairs / N^2 (> 1 possible: padding slots of partial tiles count)."""
        return self.evaluated_pairs / float(self.n_tokens**2)

    @property
    def reach_fraction(self) -> float:
        """Estimated pairs within reach / N^2: the share of the dense occlusion work the sparse path does."""
        return self.reach_pairs / float(self.n_tokens**2)


# --------------------------------------------------------------------------------------------------------
# The bound: per-key reach
# --------------------------------------------------------------------------------------------------------
def gate_max(spec: PISASpec) -> float:
    """Largest factor applied after normalisation: (1 - O) <= 1, dropout keep / (1 - p)."""
    if spec.training and spec.dropout_p > 0:
        return 1.0 / (1.0 - spec.dropout_p)
    return 1.0


def key_reach(spec: PISASpec, q: torch.Tensor, k: torch.Tensor, scale: float,
              tol: float = SPARSE_TOL) -> torch.Tensor:
    """Reach ``rho_j`` of every key (docs/conventions.md, "Sparse PISA: the bound", steps 3 and 5): (N,)
    float32 in ``spec.pos_px`` units, the max over batch and heads. The score range ``R_j`` comes from the
    actual norms of q and k, ``T`` from ``tol`` and :func:`gate_max`, so that the output changes by at most
    ``tol * max |v|``. Hard step (hardness inf): ``rho_j = r_j`` exactly. No CoC term: ``inf``.
    """
    N = q.shape[2]
    if spec.log_hardness is None:
        return torch.full((N,), math.inf, device=q.device)
    if math.isinf(spec.log_hardness):
        return spec.radius_px.amax(0)
    kappa = spec.log_hardness / COC_UNIT_PX
    with torch.no_grad():
        qn = q.detach().to(torch.float32).norm(dim=-1)  # (B, H, N)
        kn = k.detach().to(torch.float32).norm(dim=-1)
        score_range = ((qn.amax(-1, keepdim=True) + qn) * kn * scale).amax(1)  # (B, N)
        # Slack for the rounding of the scores (bf16/fp16 matmuls carry ~2^-8 relative error of |q||k|).
        score_range = score_range * (1.0 + (1e-2 if q.dtype in (torch.float16, torch.bfloat16) else 1e-5))
        t = math.log(2.0 * gate_max(spec) * N / tol)
        threshold = score_range + math.log(2.0) + math.log(N) + t
        reach = (spec.radius_px + threshold / kappa).amax(0)
        return torch.nan_to_num(reach, nan=math.inf)  # non-finite inputs: keep every pair (dense semantics)


# --------------------------------------------------------------------------------------------------------
# The tile plan
# --------------------------------------------------------------------------------------------------------
def _grid_steps(spec: PISASpec) -> tuple[float, float]:
    """Smallest distance between neighbouring token rows / columns in ``pos_px`` units (0 for one row)."""
    pos = spec.pos_px.view(spec.h, spec.w, 2)
    ys, xs = pos[:, 0, 0], pos[0, :, 1]
    step_y = float((ys[1:] - ys[:-1]).abs().min()) if spec.h > 1 else 0.0
    step_x = float((xs[1:] - xs[:-1]).abs().min()) if spec.w > 1 else 0.0
    return step_y, step_x


def _tile_tokens(h: int, w: int, th: int, tw: int, device) -> torch.Tensor:
    nty, ntx = -(-h // th), -(-w // tw)
    ty = torch.arange(nty * th, device=device)[:, None]
    tx = torch.arange(ntx * tw, device=device)[None, :]
    idx = torch.where((ty < h) & (tx < w), ty * w + tx, torch.full_like(ty * tx, h * w))
    return idx.view(nty, th, ntx, tw).permute(0, 2, 1, 3).reshape(nty * ntx, th * tw).contiguous()


def plan_tiles(spec: PISASpec, reach: torch.Tensor, tile: tuple[int, int]) -> SparsePlan:
    """Tile plan for per-key ``reach`` (N,) (see the module docstring)."""
    h, w = spec.h, spec.w
    th, tw = min(tile[0], h), min(tile[1], w)
    N = h * w
    device = reach.device
    nty, ntx = -(-h // th), -(-w // tw)
    n_tiles, slots = nty * ntx, th * tw
    tokens = _tile_tokens(h, w, th, tw, device)
    padded = torch.cat([reach.to(torch.float32), reach.new_full((1,), -math.inf)])
    tile_reach = padded[tokens].amax(-1)  # (n_tiles,)

    step_y, step_x = _grid_steps(spec)
    dy = torch.arange(-(nty - 1), nty, device=device)[:, None]
    dx = torch.arange(-(ntx - 1), ntx, device=device)[None, :]
    gap_y = (dy.abs() * th - (th - 1)).clamp_min(0).to(torch.float32) * step_y  # nearest tokens' gap
    gap_x = (dx.abs() * tw - (tw - 1)).clamp_min(0).to(torch.float32) * step_x
    min_dist = torch.sqrt(gap_y.square() + gap_x.square()) * (1.0 - 1e-6)  # conservative by rounding
    cheb = torch.maximum(dy.abs(), dx.abs())
    n_rings = int(cheb.max()) + 1
    ring_min = torch.stack([min_dist[cheb == c].min() for c in range(n_rings)])  # increasing in c
    radius = (ring_min[None, :] <= tile_reach[:, None]).sum(-1) - 1  # (n_tiles,) Chebyshev window radius

    groups, evaluated = [], 0
    for c in torch.unique(radius).tolist():
        key_tiles = torch.nonzero(radius == c).flatten()
        need = min_dist <= tile_reach[key_tiles].max()
        offsets = torch.stack([(dy + 0 * dx)[need], (dx + 0 * dy)[need]], dim=-1)
        if offsets.shape[0] >= n_tiles:
            offsets = None
        n_query_tiles = n_tiles if offsets is None else offsets.shape[0]
        groups.append(TileGroup(key_tiles, offsets))
        evaluated += key_tiles.numel() * n_query_tiles * slots * slots
    # Queries within reach of each key: the grid points in a disc of radius rho_j (one row: a segment),
    # borders ignored, at most N. An upper bound: the grid cells (step_y x step_x) centred on those points are
    # disjoint and lie in the disc of radius rho_j + half a cell diagonal (pi rho^2 / cell alone undercounts
    # small discs: rho = 0 holds one point).
    if step_y > 0 and step_x > 0:
        half_diag = 0.5 * math.hypot(step_y, step_x)
        per_key = math.pi * (reach.to(torch.float64) + half_diag).square() / (step_y * step_x)
    elif max(step_y, step_x) > 0:
        per_key = 2.0 * reach.to(torch.float64) / max(step_y, step_x) + 1.0
    else:
        per_key = torch.full_like(reach, float(N), dtype=torch.float64)
    reach_pairs = float(per_key.clamp(max=N).nan_to_num(nan=N, posinf=N).sum())
    return SparsePlan((th, tw), (nty, ntx), tokens, tuple(groups), evaluated, N, reach.to(torch.float32), reach_pairs)


def plan_for_call(spec: PISASpec, q: torch.Tensor, k: torch.Tensor, scale: float,
                  tile: tuple[int, int] | None = None, tol: float = SPARSE_TOL) -> SparsePlan:
    """The cheapest tile plan for this call (tile side from ``TILE_SIDES`` unless ``tile`` is given)."""
    reach = key_reach(spec, q, k, scale, tol)
    if tile is not None:
        return plan_tiles(spec, reach, tile)
    H, d = q.shape[1], q.shape[-1]
    best = None
    for side in TILE_SIDES:
        plan = plan_tiles(spec, reach, (side, side))
        cost = plan.evaluated_pairs * (1.0 + _GATHER_WEIGHT * H * d / (plan.tile[0] * plan.tile[1] * 35.0))
        if best is None or cost < best[0]:
            best = (cost, plan)
        if plan.tile != (side, side):  # the grid is smaller than the tile: larger sides give the same plan
            break
    return best[1]


# --------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------
@dataclass
class _Chunk:
    kt: torch.Tensor  # (n,) key tile ids
    qt: torch.Tensor | None  # (n, n_q) query tile ids (n_tiles = padding tile); None: all tiles, in order
    kidx: torch.Tensor  # (n, Kt) key token indices, N = padding
    qidx: torch.Tensor  # (n | 1, Qn) query token indices, N = padding


def _chunks(plan: SparsePlan, batch: int):
    nty, ntx = plan.tiles
    slots = plan.tile[0] * plan.tile[1]
    tokens = _padded_tile_tokens(plan)
    n_tiles = nty * ntx
    for group in plan.groups:
        n_q = n_tiles if group.offsets is None else group.offsets.shape[0]
        step = max(1, PAIR_BUDGET // (batch * n_q * slots * slots))
        for s in range(0, group.key_tiles.numel(), step):
            kt = group.key_tiles[s:s + step]
            if group.offsets is None:
                yield _Chunk(kt, None, tokens[kt], tokens[:n_tiles].reshape(1, -1))
                continue
            ty = kt[:, None] // ntx + group.offsets[None, :, 0]
            tx = kt[:, None] % ntx + group.offsets[None, :, 1]
            inside = (ty >= 0) & (ty < nty) & (tx >= 0) & (tx < ntx)
            qt = torch.where(inside, ty * ntx + tx, torch.full_like(ty, n_tiles))
            yield _Chunk(kt, qt, tokens[kt], tokens[qt].reshape(kt.numel(), -1))


def _padded_tile_tokens(plan: SparsePlan) -> torch.Tensor:
    """(n_tiles + 1, slots) token index per tile slot; the extra tile is all padding (index N)."""
    dummy = plan.tile_tokens.new_full((1, plan.tile_tokens.shape[1]), plan.n_tokens)
    return torch.cat([plan.tile_tokens, dummy])


def _to_tiles(x: torch.Tensor, plan: SparsePlan) -> torch.Tensor:
    """(B, H, N, c) token order -> (B, H, n_tiles + 1, slots, c) tile-major, zeros in padding slots."""
    B, H, N, c = x.shape
    padded = torch.cat([x, x.new_zeros(B, H, 1, c)], dim=2)
    idx = _padded_tile_tokens(plan)
    return padded.index_select(2, idx.reshape(-1)).view(B, H, idx.shape[0], idx.shape[1], c)


def _from_tiles(x_t: torch.Tensor, plan: SparsePlan) -> torch.Tensor:
    """Inverse of :func:`_to_tiles` for real tokens: (B, H, n_tiles + 1, slots, c) -> (B, H, N, c)."""
    B, H, _, slots, c = x_t.shape
    flat = plan.tile_tokens.reshape(-1)
    where = torch.empty(plan.n_tokens + 1, dtype=torch.int64, device=flat.device)
    where[flat] = torch.arange(flat.numel(), device=flat.device)  # padding slots all write row N: unused
    return x_t.reshape(B, H, -1, c).index_select(2, where[: plan.n_tokens])


def _gather_tiles(x_t: torch.Tensor, tiles: torch.Tensor | None, n_tiles: int) -> torch.Tensor:
    """Tiles ``tiles`` (n, m) of a tile-major tensor as (B, H, n, m * slots, c); None: all real tiles."""
    B, H, _, slots, c = x_t.shape
    if tiles is None:
        return x_t[:, :, None, :n_tiles].reshape(B, H, 1, n_tiles * slots, c)
    n, m = tiles.shape
    return x_t.index_select(2, tiles.reshape(-1)).view(B, H, n, m * slots, c)


def _scatter_tiles(dst_t: torch.Tensor, ch: _Chunk, values: torch.Tensor) -> None:
    """dst_t[:, :, tile] += values for the chunk's query tiles; values (B, H, n, Qn, c), dst_t tile-major.

    One index_add per tile offset: within it each query tile is hit by one key tile only (deterministic on
    every device); out-of-grid slots land on the padding tile.
    """
    B, H, n, Qn, c = values.shape
    slots = dst_t.shape[3]
    if ch.qt is None:
        dst_t[:, :, : Qn // slots] += values.sum(dim=2).view(B, H, Qn // slots, slots, c)
        return
    n_q = ch.qt.shape[1]
    vals = values.view(B, H, n, n_q, slots, c)
    for o in range(n_q):
        dst_t.index_add_(2, ch.qt[:, o], vals[:, :, :, o])


def _chunk_terms(q_t, k_t, spec: PISASpec, reach, ch: _Chunk, n_tiles: int, N: int):
    """For one chunk (``q_t``: tile-major queries already multiplied by the score scale 1/sqrt(d)): gathered
    scaled queries (B, H, n|1, Qn, d) and keys (B, H, n, Kt, d), clamped query / key
    token indices, z = s + log M (B, H, n, Qn, Kt) float32 with -inf outside the evaluated set, that set
    ``keep`` (n, Qn, Kt) bool (real query and key, distance within the key's reach).

    Restricting to ``|p_i - p_j| <= rho_j`` pair by pair (not just tile by tile) makes the result the dense
    result restricted to exactly the set the bound is stated for, whatever the tiling, and lets occlusion be
    sampled for those pairs only.
    """
    qc = _gather_tiles(q_t, ch.qt, n_tiles)
    kc = k_t.index_select(2, ch.kt)  # (B, H, n, Kt, d)
    qi = ch.qidx.clamp(max=N - 1)
    kj = ch.kidx.clamp(max=N - 1)
    # pair_distance: the distance formula of the dense paths (a hard step needs the same bits);
    # computed once for the CoC term and the reach mask, applied to the head-shared bias before the heads broadcast.
    dist = pair_distance(spec.pos_px[qi][:, :, None], spec.pos_px[kj][:, None, :])  # (n|1, Qn, Kt)
    keep = (dist <= reach[kj][:, None, :]) & (ch.qidx < N)[:, :, None] & (ch.kidx < N)[:, None, :]
    if spec.log_hardness is None:
        bias = torch.zeros(keep.shape, device=dist.device).masked_fill(~keep, -math.inf)[None]
    else:
        bias = log_m(spec, spec.radius_px[:, kj][:, :, None, :] - dist[None]).masked_fill(~keep, -math.inf)
    z = (qc @ kc.transpose(-1, -2)).to(torch.float32) + bias[:, None]  # (B, H, n, Qn, Kt)
    return qc, kc, qi, kj, z, keep


def _chunk_gate(spec: PISASpec, shape, qi, kj, counts):
    """(1 - O) and dropout for the chunk's pairs: (B, 1|H, n, Qn, Kt) or None."""
    B, H = shape[:2]
    gate = None
    if counts is not None:
        gate = (1.0 - occlusion_fraction(counts, spec))[:, None]
    if spec.training and spec.dropout_p > 0:
        keep = dropout_keep_pairs(spec, B, H, qi[:, :, None], kj[:, None, :])
        gate = keep if gate is None else gate * keep
    return gate


class SparsePISA(torch.autograd.Function):
    """Forward and backward over the plan's tile pairs; saves q, k, v, the per-key log-normaliser over the
    evaluated queries (B, H, N) and, when they fit in ``models.pisa.occlusion.OCCLUSION_CACHE_BYTES``, the
    evaluated pairs' occlusion counts (uint8)."""

    @staticmethod
    def forward(ctx, q, k, v, spec, scale: float, plan: SparsePlan, needs_backward: bool):
        B, H, N, _ = q.shape
        n_tiles = plan.tiles[0] * plan.tiles[1]
        q_t, k_t, v_t = _to_tiles(q * scale, plan), _to_tiles(k, plan), _to_tiles(v, plan)
        out_t = torch.zeros(*v_t.shape[:-1], v.shape[-1], dtype=torch.float32, device=q.device)
        lse_t = torch.full(v_t.shape[:-1], math.inf, dtype=torch.float32, device=q.device)  # inf: padding keys
        occlusion = has_occlusion(spec)
        cache = [] if occlusion and needs_backward and occlusion_cache_fits(B * plan.evaluated_pairs) else None
        for ch in _chunks(plan, B):
            _, _, qi, kj, z, keep = _chunk_terms(q_t, k_t, spec, plan.reach, ch, n_tiles, N)
            # Softmax over the evaluated queries with one exp pass: a = e^(z - m) / sum, L = m + log(sum). Every
            # real key's column holds its own query (z_jj finite), so m is finite and sum >= 1 there.
            m = z.amax(dim=-2, keepdim=True)  # (B, H, n, 1, Kt)
            pad_key = (ch.kidx >= N)[:, None, :]
            m = m.masked_fill(pad_key, 0.0)  # padding keys: z = -inf on their whole column (``keep``)
            e = torch.exp(z - m)  # unnormalised weights
            total = e.sum(dim=-2, keepdim=True)  # (B, H, n, 1, Kt)
            # L = +inf for padding keys: exp(z - inf) = 0 in the backward, never inf * 0.
            lse_t[:, :, ch.kt] = (m + torch.log(total)).masked_fill(pad_key, math.inf)[:, :, :, 0]
            counts = occlusion_counts_kept(spec, qi, kj, keep) if occlusion else None
            if cache is not None:
                cache.append(counts)
            gate = _chunk_gate(spec, e.shape, qi, kj, counts)
            if gate is not None:
                e = e * gate
            # sum_j (e_ij / total_j) g_ij v_j: the per-key normalisation is applied to v_j (n*Kt rows), not to
            # every pair. Padding keys: e = 0, total 0 -> divide by 1.
            vc = v_t.index_select(2, ch.kt) / total.masked_fill(pad_key, 1.0).transpose(-1, -2)  # (B,H,n,Kt,dv)
            _scatter_tiles(out_t, ch, (e.to(v.dtype) @ vc.to(v.dtype)).to(torch.float32))
        ctx.save_for_backward(q, k, v, lse_t)
        ctx.spec, ctx.scale, ctx.plan, ctx.occ_cache = spec, scale, plan, cache
        return _from_tiles(out_t, plan).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, lse_t = ctx.saved_tensors
        spec, scale, plan = ctx.spec, ctx.scale, ctx.plan
        B, H, N, d = q.shape
        n_tiles = plan.tiles[0] * plan.tiles[1]
        # Scores recomputed in the inputs' dtype exactly as in the forward (consistent with the saved L);
        # gradient products in float32.
        q_t, k_t = _to_tiles(q * scale, plan), _to_tiles(k, plan)
        v_t, g_t = _to_tiles(v.to(torch.float32), plan), _to_tiles(grad_out.to(torch.float32), plan)
        dq_t = torch.zeros(q_t.shape, dtype=torch.float32, device=q.device)
        dk_t, dv_t = torch.zeros_like(dq_t), torch.zeros_like(v_t)
        occlusion = has_occlusion(spec)
        for n_chunk, ch in enumerate(_chunks(plan, B)):
            qc, kc, qi, kj, z, keep = _chunk_terms(q_t, k_t, spec, plan.reach, ch, n_tiles, N)
            a = torch.exp(z - lse_t[:, :, ch.kt].unsqueeze(3))  # recomputed softmax over queries
            counts = None
            if occlusion and ctx.occ_cache is not None:
                counts = ctx.occ_cache[n_chunk]
            elif occlusion:
                counts = occlusion_counts_kept(spec, qi, kj, keep)
            gate = _chunk_gate(spec, a.shape, qi, kj, counts)
            weights = a if gate is None else a * gate
            gq = _gather_tiles(g_t, ch.qt, n_tiles)  # (B, H, n|1, Qn, dv); padding slots are zero
            dv_t[:, :, ch.kt] = weights.transpose(-1, -2) @ gq
            da = gq @ v_t.index_select(2, ch.kt).transpose(-1, -2)  # dL/dA_ij = g_i . v_j
            if gate is not None:
                da = da * gate
            # Softmax over the (evaluated) queries: dz_ij = a_ij (da_ij - sum_i' a_i'j da_i'j).
            dz = a * (da - (a * da).sum(dim=-2, keepdim=True))
            dk_t[:, :, ch.kt] = dz.transpose(-1, -2) @ qc.to(torch.float32)  # qc already carries the scale
            _scatter_tiles(dq_t, ch, (dz @ kc.to(torch.float32)) * scale)
        return (_from_tiles(dq_t, plan).to(q.dtype), _from_tiles(dk_t, plan).to(k.dtype),
                _from_tiles(dv_t, plan).to(v.dtype), None, None, None, None)


def working_set_bytes(n_tokens: int, batch: int, heads: int, head_dim: int, n_segments: int = 7,
                      max_tile: int = max(TILE_SIDES)) -> int:
    """Peak extra bytes of one sparse PISA forward (float32 compute), for memory planning.

    Per chunk at most ``max(PAIR_BUDGET, batch * n_tokens * slots)`` pairs (a chunk holds at least one key tile,
    which may take every query); per pair: about 4 float32 (B, H) temporaries (scores, weights, gate,
    product) and the occlusion points (S segments x 2 coordinates, ~3 live copies). Per token: tile-major
    copies of q, k, v and the output accumulator. Independent of N^2: the sparse path needs no N x N table.
    """
    pairs = max(PAIR_BUDGET, batch * n_tokens * max_tile * max_tile)
    per_pair = 4 * (4 * heads + 3 * 2 * n_segments + 4)
    per_token = 4 * batch * heads * head_dim * 5
    return int(pairs * per_pair + n_tokens * per_token)


def sparse_pisa(q, k, v, spec: PISASpec, scale: float, plan: SparsePlan, needs_backward: bool) -> torch.Tensor:
    """Evaluate PISA over ``plan``'s tile pairs (see :func:`models.pisa.pisa_attention`)."""
    return SparsePISA.apply(q, k, v, spec, scale, plan, needs_backward)
