"""Moved to :mod:`models.pisa.sparse` and :mod:`models.pisa.flex_sparse`; this module only re-exports them."""

from .pisa.flex_sparse import FLEX_TILE_CUDA, flex_sparse_pisa
from .pisa.occlusion import occlusion_counts_kept
from .pisa.sparse import (
    DENSE_FRACTION,
    PAIR_BUDGET,
    SPARSE_TOL,
    TILE_SIDES,
    SparsePISA,
    SparsePlan,
    TileGroup,
    gate_max,
    key_reach,
    plan_for_call,
    plan_tiles,
    sparse_pisa,
    working_set_bytes,
)

# Former private names with a public twin (constants are copies: set them on models.pisa.sparse).
_TILE_SIDES, _Group, _SparsePISA, _chunk_counts = TILE_SIDES, TileGroup, SparsePISA, occlusion_counts_kept
