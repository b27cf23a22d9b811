"""``impl="reference"``: PISA with dense N x N tensors and autograd's backward; the ground truth the other
implementations are tested against, O(N^2) memory."""

from __future__ import annotations

import torch

from .spec import PISASpec
from .terms import gate, logits


def pisa_reference(q, k, v, spec: PISASpec, scale: float) -> torch.Tensor:
    """PISA over all N x N pairs: q, k, v ``(B, H, N, d)``; returns ``(B, H, N, d_v)`` in ``q``'s dtype."""
    B, H, N, _ = q.shape
    z = logits(q, k, spec, 0, N, scale)  # (B, H, N, N)
    # Normalise each key's column over the queries (energy conservation); logsumexp subtracts the max.
    a = torch.exp(z - torch.logsumexp(z, dim=-2, keepdim=True))
    g = gate(spec, (B, H, N, N), 0, N, q.device)
    if g is not None:
        a = a * g
    return (a.to(v.dtype) @ v).to(q.dtype)
