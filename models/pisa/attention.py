"""``pisa_attention``: physics-inspired self-attention (paper Sec. 3.2; equations in docs/conventions.md,
"PISA"). Validates the inputs, builds the call's :class:`~models.pisa.spec.PISASpec` (with the discretisation
chosen once from ``compat`` / ``published_geometry``) and dispatches to one implementation."""

from __future__ import annotations

import math

import torch

from .chunked import ChunkedPISA
from .flex import flex_available, pisa_flex
from .flex_sparse import flex_sparse_pisa
from .published import discretisation
from .reference import pisa_reference
from .sparse import DENSE_FRACTION, plan_for_call, sparse_pisa
from .spec import PISASpec, make_spec

IMPLS = ("reference", "chunked", "sparse", "flex", "flex_sparse", "auto")


def pisa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    disparity: torch.Tensor,
    coc_px: torch.Tensor,
    *,
    hardness: float | None,
    px_per_token: float,
    occlusion: bool = True,
    n_segments: int = 7,
    n_supersamples: int = 5,
    seed: int = 0,
    compat: bool = False,
    impl: str = "auto",
    block_size: int = 256,
    dropout_p: float = 0.0,
    training: bool = False,
    occlusion_disparity: torch.Tensor | None = None,
    published_geometry: bool = False,
    return_impl: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, str]:
    """Physics-inspired self-attention (paper Sec. 3.2; the equations are in docs/conventions.md, "PISA").

    Args:
        q, k, v: ``(B, heads, N, d)`` query/key/value of one self-attention layer, any float dtype; ``N = h*w``
            tokens in row-major order of the token grid.
        disparity: ``(B, h, w)`` token-grid disparity in [0, 1], 1 = nearest (used for occlusion).
        coc_px: ``(B, h, w)`` token-grid circle-of-confusion radius in **image pixels**; the sign is ignored
            (``|coc_px|`` is the radius ``r_j``).
        hardness: slope of the CoC step, > 1 (the paper grows it during training; inference uses 1e7).
            ``float('inf')`` is a hard step; ``None`` drops the CoC term (M = 1).
        px_per_token: image pixels per token (e.g. 16 for SDXL's ``down_blocks.1``: image H / h).
        occlusion: multiply by ``1 - O_ij``; with ``n_segments`` S fractions and ``n_supersamples`` P samples.
        seed: seeds the occlusion jitter (hashed per pair; independent of ``impl`` and ``block_size``).
        compat: the released code's discretisation (:mod:`models.pisa.published`, ``PUBLISHED``).
        impl: ``"reference"`` (dense), ``"chunked"`` (O(N*block) memory, forward and backward), ``"sparse"``
            (pairs within the proven reach only, forward and backward; docs/conventions.md, "Sparse PISA"),
            ``"flex"`` (FlexAttention; forward-only on CPU), ``"flex_sparse"`` (FlexAttention with the sparse
            block mask; forward only) or ``"auto"`` (sparse when it skips at least half the pairs or at least
            half the occlusion work, else chunked).
        block_size: keys per block for ``"chunked"``.
        dropout_p: dropout on the attention weights, applied only when ``training`` (hashed masks drawn
            from the global torch RNG per call, so a seeded run is reproducible).
        training: training mode: enables dropout and clamps ``O`` to 0.99 (the released training recipe).
        occlusion_disparity: optional ``(B, Ho, Wo)`` disparity in [0, 1] covering the same image extent,
            looked up (bilinear) for occlusion samples; defaults to ``disparity``. A finer map (e.g. 3x the
            token grid, as the released model uses) resolves thin occluders.
        published_geometry: with ``compat``, also the released units and occlusion grid
            (:mod:`models.pisa.published`, ``PUBLISHED_GEOMETRY``).
        return_impl: also return the implementation that ran (``"auto"`` resolved to ``"sparse"`` or
            ``"chunked"``).

    Returns:
        ``(B, heads, N, d)`` in ``q``'s dtype: ``out_i = sum_j A_ij v_j``. Gradients flow to q, k, v only;
        disparity and CoC are treated as data (detached). With ``return_impl``: ``(out, impl_that_ran)``.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}.")
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"q, k, v must be (B, heads, N, d) with equal B, heads, N; got {tuple(q.shape)}, {tuple(k.shape)}, "
            f"{tuple(v.shape)}."
        )
    B, H, N, d = q.shape
    if disparity.ndim != 3 or disparity.shape[0] != B or disparity.shape[1] * disparity.shape[2] != N:
        raise ValueError(
            f"disparity must be (B, h, w) with B={B} and h*w = N = {N}; got {tuple(disparity.shape)}."
        )
    if coc_px.shape != disparity.shape:
        raise ValueError(f"coc_px must have disparity's shape {tuple(disparity.shape)}; got {tuple(coc_px.shape)}.")
    if hardness is not None and not hardness > 1:
        raise ValueError(f"hardness must be > 1 (log(hardness) is the sigmoid slope) or None; got {hardness}.")
    if not px_per_token > 0:
        raise ValueError(f"px_per_token must be > 0; got {px_per_token}.")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1); got {dropout_p}.")
    geometry = discretisation(compat=compat, published_geometry=published_geometry)
    spec = make_spec(
        q, disparity, coc_px, hardness=hardness, px_per_token=px_per_token, occlusion=occlusion,
        n_segments=n_segments, n_supersamples=n_supersamples, seed=seed, geometry=geometry, dropout_p=dropout_p,
        training=training, occlusion_disparity=occlusion_disparity,
    )
    out, ran = dispatch(q, k, v, spec, 1.0 / math.sqrt(d), impl, block_size)
    return (out, ran) if return_impl else out


def dispatch(q, k, v, spec: PISASpec, scale: float, impl: str, block_size: int) -> tuple[torch.Tensor, str]:
    """Run ``impl`` (``"auto"`` resolved here): the output and the name of the implementation that ran."""
    if impl == "reference":
        return pisa_reference(q, k, v, spec, scale), impl
    if impl == "flex":
        if not flex_available():
            raise ValueError("impl='flex' needs torch.nn.attention.flex_attention (PyTorch >= 2.5); use 'chunked'.")
        return pisa_flex(q, k, v, spec, scale), impl
    if impl == "flex_sparse":
        if not flex_available():
            raise ValueError(
                "impl='flex_sparse' needs torch.nn.attention.flex_attention (PyTorch >= 2.5); use 'sparse'."
            )
        return flex_sparse_pisa(q, k, v, spec, scale), impl
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1; got {block_size}.")
    # (autograd.Function.forward runs with grad disabled, so whether a backward will follow is decided here.)
    needs_backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if impl in ("sparse", "auto"):
        plan = plan_for_call(spec, q, k, scale)
        # auto: the sparse path only where the bound skips enough pairs to pay for its gathers; otherwise
        # (soft hardness, huge CoC everywhere) the chunked path, i.e. never slower than the dense evaluation.
        if impl == "sparse" or min(plan.fraction, plan.reach_fraction) <= DENSE_FRACTION:
            return sparse_pisa(q, k, v, spec, scale, plan, needs_backward), "sparse"
    return ChunkedPISA.apply(q, k, v, spec, scale, int(block_size), needs_backward), "chunked"
