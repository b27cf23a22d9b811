"""``impl="flex_sparse"``: the fused form of ``impl="sparse"`` for GPUs (forward only): FlexAttention with a
block mask from the same bound (:mod:`models.pisa.sparse`), tokens reordered so that a flex block is a 2-D
tile, the CoC term computed inside the kernel's score modification, occlusion sampled for the kept pairs only."""

from __future__ import annotations

import math
import warnings

import torch

from .coc import COC_UNIT_PX
from .flex import compiled_flex
from .occlusion import has_occlusion, occlusion_counts_kept, occlusion_fraction
from .sparse import SPARSE_TOL, key_reach, plan_tiles
from .spec import PISASpec

FLEX_TILE_CUDA = (8, 16)  # 128 tokens per flex block: the block size of the compiled GPU kernels


def flex_sparse_pisa(q, k, v, spec: PISASpec, scale: float, tile: tuple[int, int] | None = None,
                     tol: float = SPARSE_TOL) -> torch.Tensor:
    """PISA as two FlexAttention calls restricted to the bound's pairs (forward only).

    Tokens are reordered tile-major (tiles of ``tile`` tokens = one flex block; default 8 x 16 = 128 on
    CUDA, 4 x 4 elsewhere), so a flex block is a compact 2-D tile and the block mask is the tile plan of
    :func:`models.pisa.sparse.plan_tiles` (key tile -> query tiles within its reach). Inside kept blocks a
    ``mask_mod`` applies the per-pair reach ``|p_i - p_j| <= rho_j``: the evaluated set is exactly the sparse
    path's.
    (1) The per-key normaliser ``L_j`` over the kept queries: flex with queries and keys swapped, returning its
    log-sum-exp. (2) ``out_i = sum_j exp(z_ij - L_j) (1 - O_ij) v_j``: flex's key-normalised output times
    ``exp`` of its own log-sum-exp. The CoC term is computed inside ``score_mod`` from the token positions;
    occlusion is sampled for the kept pairs only (same seeded samples as every other path) into a table of
    the kept block pairs that ``score_mod`` reads.
    """
    from torch.nn.attention.flex_attention import AuxRequest, BlockMask, flex_attention

    if spec.training and spec.dropout_p > 0:
        raise ValueError("impl='flex_sparse' does not support dropout; use impl='sparse' or dropout_p=0.")
    if q.is_cuda:
        flex_attention = compiled_flex()
    B, H, N, _ = q.shape
    device = q.device
    th, tw = tile or (FLEX_TILE_CUDA if q.is_cuda else (4, 4))
    plan = plan_tiles(spec, key_reach(spec, q, k, scale, tol), (th, tw))
    th, tw = plan.tile
    nty, ntx = plan.tiles
    n_tiles, slots = nty * ntx, th * tw
    n_pad = n_tiles * slots

    # Tile-pair matrix in (key tile, query tile) orientation, from the plan's groups.
    pair = torch.zeros(n_tiles, n_tiles, dtype=torch.bool, device=device)
    for group in plan.groups:
        if group.offsets is None:
            pair[group.key_tiles] = True
            continue
        ty = group.key_tiles[:, None] // ntx + group.offsets[None, :, 0]
        tx = group.key_tiles[:, None] % ntx + group.offsets[None, :, 1]
        inside = (ty >= 0) & (ty < nty) & (tx >= 0) & (tx < ntx)
        rows = group.key_tiles[:, None].expand_as(ty)[inside]
        pair[rows, (ty * ntx + tx)[inside]] = True

    perm = plan.tile_tokens.reshape(-1)  # (n_pad,) token per flex position; N = padding
    valid = perm < N
    tok = perm.clamp(max=N - 1)
    pos = spec.pos_px[tok]  # (n_pad, 2)
    radius = spec.radius_px[:, tok]  # (B, n_pad)
    reach = plan.reach[tok]
    kappa = None if spec.log_hardness is None else spec.log_hardness / COC_UNIT_PX
    hard_step = kappa is not None and math.isinf(kappa)  # decided here: score_mod is traced

    def permute(x):
        return x[:, :, tok] * valid[:, None].to(x.dtype)

    qp, kp, vp = permute(q), permute(k), permute(v)

    def pair_dist(i, j):
        return torch.sqrt((pos[i, 0] - pos[j, 0]) ** 2 + (pos[i, 1] - pos[j, 1]) ** 2)

    def log_m(b, i, j):  # query position i, key position j (flex positions)
        if kappa is None:
            return torch.zeros_like(pair_dist(i, j))
        margin = radius[b, j] - pair_dist(i, j)
        if hard_step:
            return torch.where(margin >= 0, torch.zeros_like(margin), torch.full_like(margin, -math.inf))
        return torch.nn.functional.logsigmoid(margin * kappa)

    def keep(i, j):
        return valid[i] & valid[j] & (pair_dist(i, j) <= reach[j])

    # Occlusion for the kept block pairs (query tile I, key tile J): one table slot per pair.
    kt_idx, qt_idx = torch.nonzero(pair, as_tuple=True)
    slot_of = torch.full((n_tiles, n_tiles), 0, dtype=torch.int64, device=device)  # (query tile, key tile)
    slot_of[qt_idx, kt_idx] = torch.arange(kt_idx.numel(), device=device)
    log_gate = None
    if has_occlusion(spec):
        qpos = qt_idx[:, None] * slots + torch.arange(slots, device=device)  # (n_slots, slots) flex positions
        kpos = kt_idx[:, None] * slots + torch.arange(slots, device=device)
        kept = keep(qpos[:, :, None], kpos[:, None, :])  # (n_slots, slots, slots)
        counts = occlusion_counts_kept(spec, tok[qpos], tok[kpos], kept)
        log_gate = torch.log1p(-occlusion_fraction(counts, spec))  # (B, n_slots, slots, slots)
        # The compiled kernel is specialised to the shapes of the tensors it reads: round the slot count up
        # to a power of two so that frames of one size with different CoC maps reuse a few compilations.
        bucket = 1 << max(0, (log_gate.shape[1] - 1).bit_length())
        log_gate = torch.nn.functional.pad(log_gate, (0, 0, 0, 0, 0, bucket - log_gate.shape[1]))

    def mask_key_major(b, h, q_idx, kv_idx):  # pass 1: "query" = our key j, "key" = our query i
        return keep(kv_idx, q_idx)

    def mask_query_major(b, h, q_idx, kv_idx):
        return keep(q_idx, kv_idx)

    def blocks(matrix, mask_mod):
        counts = matrix.sum(-1).to(torch.int32)
        order = torch.argsort((~matrix).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return BlockMask.from_kv_blocks(counts[None, None], order[None, None], BLOCK_SIZE=slots, mask_mod=mask_mod,
                                        seq_lengths=(n_pad, n_pad))

    def coc_swapped(score, b, h, q_idx, kv_idx):
        return score + log_m(b, kv_idx, q_idx)

    def scatter(score, b, h, q_idx, kv_idx):
        score = score - lse_key[b, h, kv_idx] + log_m(b, q_idx, kv_idx)
        if log_gate is not None:
            slot = slot_of[q_idx // slots, kv_idx // slots]
            score = score + log_gate[b, slot, q_idx % slots, kv_idx % slots]
        return score

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        _, aux = flex_attention(kp, qp, vp, score_mod=coc_swapped, block_mask=blocks(pair, mask_key_major),
                                scale=scale, return_aux=AuxRequest(lse=True))
        lse_key = aux.lse.to(torch.float32)  # (B, H, n_pad): L_j over the kept queries, read by `scatter`
        out, aux = flex_attention(qp, kp, vp, score_mod=scatter,
                                  block_mask=blocks(pair.T.contiguous(), mask_query_major), scale=scale,
                                  return_aux=AuxRequest(lse=True))
    weight = torch.exp(aux.lse.to(torch.float32))[..., None]
    out = torch.nan_to_num(out.to(torch.float32) * weight)
    where = torch.empty(N, dtype=torch.int64, device=device)
    where[perm[valid]] = torch.nonzero(valid).flatten()
    return out[:, :, where].to(q.dtype)
