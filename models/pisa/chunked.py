"""``impl="chunked"``: PISA in one pass over key blocks, O(N * block) memory forward and backward.

Because the normaliser runs over queries, a key block with *all* queries holds everything its columns need:
``L_j = logsumexp_i z_ij`` and the contribution ``A[:, J] @ v[J]``. The autograd Function saves only q, k, v
and L, and recomputes each block (occlusion included, unless its counts fit the cache) in the backward.
"""

from __future__ import annotations

import torch

from .occlusion import has_occlusion, occlusion_cache_fits, occlusion_counts
from .spec import PISASpec
from .terms import gate, logits


class ChunkedPISA(torch.autograd.Function):
    """O(N * block) forward and backward; saves q, k, v, the per-key log-normaliser (B, H, N) and, when it
    fits in ``models.pisa.occlusion.OCCLUSION_CACHE_BYTES``, the occlusion counts (B, N, N) uint8.

    ``apply(q, k, v, spec, scale, block, needs_backward)``; ``needs_backward`` is decided by the caller
    (``forward`` runs with grad disabled)."""

    @staticmethod
    def forward(ctx, q, k, v, spec: PISASpec, scale: float, block: int, needs_backward: bool):
        B, H, N, _ = q.shape
        out = torch.zeros(B, H, N, v.shape[-1], dtype=torch.float32, device=q.device)
        lse = torch.empty(B, H, N, dtype=torch.float32, device=q.device)
        cache = None
        if has_occlusion(spec) and needs_backward and occlusion_cache_fits(B * N * N):
            cache = torch.empty(B, N, N, dtype=torch.uint8, device=q.device)
        for j0 in range(0, N, block):
            j1 = min(j0 + block, N)
            z = logits(q, k[:, :, j0:j1], spec, j0, j1, scale)
            lse_blk = torch.logsumexp(z, dim=-2, keepdim=True)  # (B, H, 1, Bk)
            lse[:, :, j0:j1] = lse_blk[:, :, 0]
            a = torch.exp(z - lse_blk)
            counts = None
            if cache is not None:
                counts = cache[:, :, j0:j1] = occlusion_counts(spec, j0, j1)
            g = gate(spec, (B, H, N, j1 - j0), j0, j1, q.device, counts)
            if g is not None:
                a = a * g
            out += (a.to(v.dtype) @ v[:, :, j0:j1]).to(torch.float32)
        ctx.save_for_backward(q, k, v, lse)
        ctx.spec, ctx.scale, ctx.block, ctx.occ_cache = spec, scale, block, cache
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, lse = ctx.saved_tensors
        spec, scale, block = ctx.spec, ctx.scale, ctx.block
        B, H, N, _ = q.shape
        g_out = grad_out.to(torch.float32)
        qf, kf, vf = q.to(torch.float32), k.to(torch.float32), v.to(torch.float32)
        dq = torch.zeros_like(qf)
        dk = torch.zeros_like(kf)
        dv = torch.zeros_like(vf)
        for j0 in range(0, N, block):
            j1 = min(j0 + block, N)
            z = logits(q, k[:, :, j0:j1], spec, j0, j1, scale)
            a = torch.exp(z - lse[:, :, None, j0:j1])  # softmax over queries, recomputed
            counts = None if ctx.occ_cache is None else ctx.occ_cache[:, :, j0:j1]
            g = gate(spec, (B, H, N, j1 - j0), j0, j1, q.device, counts)
            weights = a if g is None else a * g
            dv[:, :, j0:j1] = weights.transpose(-1, -2) @ g_out
            da = g_out @ vf[:, :, j0:j1].transpose(-1, -2)  # dL/dA_ij = g_i . v_j
            if g is not None:
                da = da * g
            # Softmax over the query axis: dz_ij = a_ij (da_ij - sum_i' a_i'j da_i'j).
            dz = a * (da - (a * da).sum(dim=-2, keepdim=True))
            dq += (dz @ kf[:, :, j0:j1]) * scale
            dk[:, :, j0:j1] = (dz.transpose(-1, -2) @ qf) * scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None
