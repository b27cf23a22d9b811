"""Dropout on PISA's attention weights (training only): hashed keep-masks, so a mask depends on
(seed, b, h, i, j) alone and every implementation and blocking drops the same pairs."""

from __future__ import annotations

import torch

from .hashing import hash32, hash_scalar, unit_uniform
from .spec import PISASpec


def dropout_keep_pairs(spec: PISASpec, B: int, H: int, qi: torch.Tensor, kj: torch.Tensor) -> torch.Tensor:
    """Dropout keep-mask scaled by 1/(1-p) for query/key index tensors broadcastable to a pair shape P:
    (B, H, *P) float32; the hash of (seed, b, h, i, j) makes it independent of how pairs are grouped."""
    ones = [1] * max(qi.ndim, kj.ndim)
    bh = torch.arange(B * H, device=qi.device, dtype=torch.int64).view(B, H, *ones)
    h = hash32(hash32(hash32(bh ^ hash_scalar(spec.dropout_seed, 2)) ^ qi) ^ kj)
    keep = unit_uniform(h) >= spec.dropout_p
    return keep.to(torch.float32) / (1.0 - spec.dropout_p)


def dropout_keep(spec: PISASpec, shape: tuple[int, int, int, int], j0: int, j1: int, device) -> torch.Tensor:
    """Dropout keep-mask scaled by 1/(1-p) for all queries and keys [j0, j1): (B, H, N, Bk) float32."""
    B, H, N, Bk = shape
    qi = torch.arange(N, device=device, dtype=torch.int64).view(N, 1)
    kj = torch.arange(j0, j1, device=device, dtype=torch.int64).view(1, Bk)
    return dropout_keep_pairs(spec, B, H, qi, kj)
