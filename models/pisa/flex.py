"""``impl="flex"``: PISA as two FlexAttention calls (forward; eager on CPU, compiled on CUDA). The CoC term,
the normaliser over queries and occlusion enter as score modifications; occlusion is passed as a dense
(B, N, N) table (head-shared), so memory is O(N^2) when occlusion is on."""

from __future__ import annotations

import functools
import warnings

import torch

from .coc import log_coc_term
from .occlusion import has_occlusion, occlusion_block
from .spec import PISASpec


def flex_available() -> bool:
    """Whether ``torch.nn.attention.flex_attention`` exists (PyTorch >= 2.5)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def compiled_flex():
    """``torch.compile``d flex_attention (one per process; used for CUDA inputs)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def pisa_flex(q, k, v, spec: PISASpec, scale: float) -> torch.Tensor:
    """Two FlexAttention calls: (1) the per-key normaliser over queries, as the log-sum-exp of an attention
    with the roles of queries and keys swapped; (2) out_i = sum_j exp(z_ij - L_j) (1 - O_ij) v_j, obtained
    from flex's key-normalised output times exp of its own log-sum-exp (flex always normalises over keys)."""
    from torch.nn.attention.flex_attention import AuxRequest, flex_attention

    if q.is_cuda:
        flex_attention = compiled_flex()
    if spec.training and spec.dropout_p > 0:
        raise ValueError("impl='flex' does not support dropout; use impl='chunked' or dropout_p=0.")
    B, H, N, _ = q.shape
    log_m = log_coc_term(spec, 0, N)  # (B, 1, N, N) or None: O(N^2), head-shared
    log_gate = None
    if has_occlusion(spec):
        log_gate = torch.log1p(-occlusion_block(spec, 0, N))  # (B, N, N), -inf where fully blocked

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
