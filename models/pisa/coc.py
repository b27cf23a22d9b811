"""PISA's circle-of-confusion term ``log M_ij`` (paper Sec. 3.2; docs/conventions.md, "PISA", step 2):
``M_ij = sigmoid(log(hardness) * (r_j - |p_i - p_j|) / COC_UNIT_PX)``, computed as a logsigmoid."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .geometry import pair_distance
from .spec import PISASpec

COC_UNIT_PX = 10.0  # the trained model's slope: distances in units of 10 px (docs/conventions.md, "PISA")


def log_m(spec: PISASpec, margin: torch.Tensor) -> torch.Tensor:
    """log M from the margin ``r_j - |p_i - p_j|`` (pixels, any shape): logsigmoid, or a hard 0 / -inf step."""
    if math.isinf(spec.log_hardness):
        zero = torch.zeros((), dtype=margin.dtype, device=margin.device)
        return torch.where(margin >= 0, zero, torch.full_like(zero, -math.inf))
    return F.logsigmoid(margin * (spec.log_hardness / COC_UNIT_PX))


def log_coc_term(spec: PISASpec, j0: int, j1: int) -> torch.Tensor | None:
    """log M_ij for all queries i and keys j in [j0, j1): (B, 1, N, Bk) float32, or None without CoC term.

    logsigmoid keeps tiny values of M representable.
    """
    if spec.log_hardness is None:
        return None
    dist = pair_distance(spec.pos_px[:, None], spec.pos_px[None, j0:j1])  # (N, Bk) px
    margin = spec.radius_px[:, None, j0:j1] - dist[None]  # (B, N, Bk) pixels; > 0 inside the key's CoC
    return log_m(spec, margin)[:, None]
