"""PISA: physics-inspired self-attention (BokehDiff, ICCV 2025, Sec. 3.2). Equations, the sparse bound and
the module map: docs/conventions.md, "PISA". Public entry points: :func:`pisa_attention` and the diffusers
processors; the released code's discretisation is :mod:`models.pisa.published`."""

from .attention import IMPLS, dispatch, pisa_attention
from .chunked import ChunkedPISA
from .coc import COC_UNIT_PX, log_coc_term, log_m
from .dropout import dropout_keep, dropout_keep_pairs
from .flex import compiled_flex, flex_available, pisa_flex
from .flex_sparse import FLEX_TILE_CUDA, flex_sparse_pisa
from .geometry import (
    CORRECTED,
    OCC_MARGIN,
    Discretisation,
    pair_distance,
    positions_from_axes,
    token_centres_px,
    token_grid,
    token_uv,
)
from .hashing import MASK32, hash32, hash_scalar, unit_uniform
from .occlusion import (
    OCCLUSION_CACHE_BYTES,  # a copy: to change the cache limit, set models.pisa.occlusion.OCCLUSION_CACHE_BYTES
    TRAIN_OCC_MAX,
    has_occlusion,
    occlusion_block,
    occlusion_cache_fits,
    occlusion_counts,
    occlusion_counts_kept,
    occlusion_counts_pairs,
    occlusion_fraction,
)
from .processor import PassthroughAttnProcessor, PISAAttnProcessor, install_pisa_processors
from .published import (
    ONE_MINUS_D_MIN,
    PUBLISHED,
    PUBLISHED_FRAME_PX,
    PUBLISHED_GEOMETRY,
    PublishedDiscretisation,
    PublishedGeometry,
    discretisation,
    token_positions_published_px,
    token_uv_published,
)
from .reference import pisa_reference
from .sparse import DENSE_FRACTION, SPARSE_TOL, SparsePlan, plan_for_call, sparse_pisa, working_set_bytes
from .spec import DEFAULT_PISA, PISASpec, make_spec
from .terms import gate, logits

__all__ = ["pisa_attention", "PISAAttnProcessor", "PassthroughAttnProcessor", "install_pisa_processors"]

# Names of the former single module models/pisa.py, kept importable; new code uses the public names above.
_IMPLS, _COC_UNIT_PX, _OCC_MARGIN, _TRAIN_OCC_MAX, _MASK32 = IMPLS, COC_UNIT_PX, OCC_MARGIN, TRAIN_OCC_MAX, MASK32
_COMPAT_ONE_MINUS_D_MIN, _PUBLISHED_FRAME_PX = ONE_MINUS_D_MIN, PUBLISHED_FRAME_PX
_hash32, _hash_scalar, _unit_uniform = hash32, hash_scalar, unit_uniform
_Spec = PISASpec  # its ``compat: bool`` field is now ``geometry: Discretisation``
_token_uv, _token_uv_published, _token_grid, _pair_distance = token_uv, token_uv_published, token_grid, pair_distance
_log_coc_term, _log_m = log_coc_term, log_m
_occlusion_block, _occlusion_fraction, _has_occlusion = occlusion_block, occlusion_fraction, has_occlusion
_occlusion_counts, _occlusion_counts_pairs = occlusion_counts, occlusion_counts_pairs
_dropout_keep, _dropout_keep_pairs, _gate, _logits = dropout_keep, dropout_keep_pairs, gate, logits
_pisa_reference, _ChunkedPISA, _pisa_flex, _dispatch = pisa_reference, ChunkedPISA, pisa_flex, dispatch
_flex_available, _compiled_flex = flex_available, compiled_flex


def _make_spec(q, disparity, coc_px, *, compat: bool = False, published_geometry: bool = False, **kwargs) -> PISASpec:
    """The former ``make_spec`` signature (flags instead of a :class:`Discretisation`)."""
    return make_spec(q, disparity, coc_px, geometry=discretisation(compat, published_geometry), **kwargs)


def _token_positions_px(h: int, w: int, px_per_token: float, compat: bool, device, frame_px: float | None = None):
    """The former token-position helper: a discretisation's ``token_positions_px`` chosen by flags."""
    if frame_px is None and not compat:
        return token_centres_px(h, w, px_per_token, device)
    return token_positions_published_px(h, w, px_per_token, device, frame_px)
