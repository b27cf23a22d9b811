"""The dense paths' PISA terms for all queries and a block of keys [j0, j1): the logits ``z = s + log M``
(normalised over queries afterwards) and the gate ``(1 - O) * dropout`` applied after normalisation
(docs/conventions.md, "PISA", steps 1-4)."""

from __future__ import annotations

import torch

from .coc import log_coc_term
from .dropout import dropout_keep
from .occlusion import has_occlusion, occlusion_counts, occlusion_fraction
from .spec import PISASpec


def logits(q: torch.Tensor, k_blk: torch.Tensor, spec: PISASpec, j0: int, j1: int, scale: float) -> torch.Tensor:
    """z_ij = s_ij + log M_ij in float32: (B, H, N, Bk). The matmul runs in the inputs' dtype."""
    z = (q @ k_blk.transpose(-1, -2)).to(torch.float32) * scale
    log_m = log_coc_term(spec, j0, j1)
    return z if log_m is None else z + log_m


def gate(spec: PISASpec, shape, j0: int, j1: int, device, counts: torch.Tensor | None = None) -> torch.Tensor | None:
    """Multiplicative factor applied after normalisation: (1 - O) and dropout. (B, 1|H, N, Bk) or None.

    ``counts``: this block's occlusion counts if already computed (uint8, see :func:`occlusion_counts`)."""
    g = None
    if has_occlusion(spec):
        if counts is None:
            counts = occlusion_counts(spec, j0, j1)
        g = (1.0 - occlusion_fraction(counts, spec))[:, None]
    if spec.training and spec.dropout_p > 0:
        keep = dropout_keep(spec, shape, j0, j1, device)
        g = keep if g is None else g * keep
    return g
