"""Counter-based random numbers for PISA: a value depends only on its counters (seed, token indices), never on
blocking, device or call order, so every implementation (and a backward's recomputation) sees the same draws."""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """32-bit integer mixer (xorshift-multiply, "lowbias32" constants) on int64 tensors holding uint32.

    Products are masked back to 32 bits, so int64 wrap-around never matters.
    """
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def hash_scalar(*values: int) -> int:
    """Chain :func:`hash32` over Python ints (e.g. ``(seed, stream)``): a uint32 stream key."""
    h = 0x9E3779B9
    for v in values:
        h = int(hash32(torch.tensor((h ^ (int(v) & MASK32)), dtype=torch.int64)))
    return h


def unit_uniform(h: torch.Tensor) -> torch.Tensor:
    """Hash -> float32 uniform in [0, 1) with 24-bit resolution (exact in float32)."""
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))
