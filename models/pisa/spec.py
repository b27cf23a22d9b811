"""The spec of one PISA call: everything but q, k, v that the implementations read (token-grid maps, token
positions from the chosen :class:`~models.pisa.geometry.Discretisation`, hardness, occlusion and dropout settings)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .geometry import CORRECTED, Discretisation

# PISA settings of the published model at inference (a near-hard CoC step; the released occlusion sampling).
DEFAULT_PISA = dict(hardness=1e7, n_segments=7, n_supersamples=5, occlusion=True)


@dataclass(frozen=True)
class PISASpec:
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
    geometry: Discretisation  # how positions, occlusion steps and out-of-image lookups are discretised
    training: bool
    dropout_p: float
    dropout_seed: int


def make_spec(
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
    geometry: Discretisation = CORRECTED,
    dropout_p: float = 0.0,
    training: bool = False,
    occlusion_disparity: torch.Tensor | None = None,
) -> PISASpec:
    """The :class:`PISASpec` of one :func:`models.pisa.pisa_attention` call (arguments as there, already
    validated; ``q`` gives B, N and the device; ``geometry`` from :func:`models.pisa.published.discretisation`).
    Draws the dropout seed from the global RNG when ``training`` with ``dropout_p > 0``."""
    B, N = q.shape[0], q.shape[2]
    h, w = disparity.shape[1:]
    disp = disparity.detach().to(torch.float32)
    lookup = disp if occlusion_disparity is None else occlusion_disparity.detach().to(torch.float32)
    if lookup.ndim != 3 or lookup.shape[0] != B:
        raise ValueError(f"occlusion_disparity must be (B, Ho, Wo) with B={B}; got {tuple(lookup.shape)}.")
    dropout_seed = 0
    if training and dropout_p > 0:
        dropout_seed = int(torch.randint(0, 2**31 - 1, (1,)))  # global RNG: reproducible under manual_seed
    return PISASpec(
        h=h,
        w=w,
        disparity=disp.reshape(B, N),
        radius_px=coc_px.detach().to(torch.float32).abs().reshape(B, N),
        lookup=lookup[:, None],
        pos_px=geometry.token_positions_px(h, w, float(px_per_token), q.device),
        uv=geometry.token_uv(h, w, q.device),
        log_hardness=None if hardness is None else math.log(hardness),
        occlusion=occlusion,
        n_segments=int(n_segments),
        n_supersamples=int(n_supersamples),
        seed=int(seed),
        geometry=geometry,
        training=training,
        dropout_p=float(dropout_p),
        dropout_seed=dropout_seed,
    )
