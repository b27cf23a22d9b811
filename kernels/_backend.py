"""Backend selection for the renderers: pure-PyTorch reference or a lazily compiled CuPy RawKernel.

Follows the `impl="auto" | "cuda" | "torch"` contract of docs/conventions.md: "auto" uses CUDA when the inputs live
on a CUDA device and CuPy works, otherwise torch; "cuda" raises a RuntimeError with the install hint when
it cannot run.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

INSTALL_HINT = "pip install -r requirements-gpu.txt (CuPy for your CUDA version, e.g. cupy-cuda12x)"
_IMPLS = ("auto", "cuda", "torch")
_CUDA_DIR = Path(__file__).with_name("cuda")


@functools.lru_cache(maxsize=1)
def _cupy_status() -> tuple[bool, str]:
    """(works, reason). Cached: importing CuPy and probing the device is slow and does not change."""
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a broken CuPy wheel raising at import
        return False, f"CuPy is not importable ({type(exc).__name__}: {exc})"
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    try:
        cupy.cuda.runtime.getDeviceCount()
        cupy.zeros(1).sum().item()  # a real launch: catches driver/toolkit mismatches
    except Exception as exc:
        return False, f"CuPy cannot run on this machine ({type(exc).__name__}: {exc})"
    return True, ""


def cuda_available() -> bool:
    """True when CuPy imports and can launch a kernel on a CUDA device (what ``impl="cuda"`` needs)."""
    return _cupy_status()[0]


def resolve_impl(impl: str, tensor: torch.Tensor, op: str) -> str:
    """Map the user's ``impl`` to "cuda" or "torch" for inputs living on ``tensor.device``."""
    if impl not in _IMPLS:
        raise ValueError(f"{op}: impl must be one of {_IMPLS}; got {impl!r}")
    if impl == "torch":
        return "torch"
    ok, reason = _cupy_status()
    on_cuda = tensor.device.type == "cuda"
    if impl == "auto":
        return "cuda" if (ok and on_cuda) else "torch"
    if not ok:
        raise RuntimeError(f"{op}: impl='cuda' cannot run: {reason}. Install it with `{INSTALL_HINT}`, "
                           "or use impl='torch' (or 'auto').")
    if not on_cuda:
        raise RuntimeError(f"{op}: impl='cuda' needs CUDA tensors; got tensors on {tensor.device}. Move the "
                           "inputs with .to('cuda') or use impl='torch'.")
    return "cuda"


@functools.lru_cache(maxsize=None)
def load_kernel(file_name: str, kernel_name: str, device_index: int):
    """Compile (once per device) and return a CuPy RawKernel from ``kernels/cuda/<file_name>``."""
    import cupy

    source = (_CUDA_DIR / file_name).read_text()
    with cupy.cuda.Device(device_index):
        return cupy.RawKernel(source, kernel_name, options=("--std=c++14",))


def check_shape(name: str, t: torch.Tensor, expected: tuple, op: str) -> None:
    """Check ``t.shape`` against ``expected`` (ints or None for "any"), naming both in the error."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor; got {type(t).__name__}")
    ok = t.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, t.shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{op}: {name} must have shape {want}; got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor; got {t.dtype}")


def as_cupy(t: torch.Tensor):
    """Zero-copy CuPy view of a contiguous CUDA tensor (DLPack), for passing to a RawKernel."""
    import cupy

    return cupy.from_dlpack(t.detach().contiguous())


def per_batch_scalar(name: str, value, b: int, dtype, device, op: str) -> torch.Tensor:
    """``value`` (a float or a ``(B,)`` tensor) as a finite ``(B,)`` tensor; errors name ``op`` and ``name``."""
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if t.dim() == 0:
        t = t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"{op}: {name} must be a float or a tensor of shape ({b},); got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{op}: {name} must be finite; got {t.tolist()}")
    return t


#: The largest blur radius accepted, in multiples of the image diagonal. A disc a few diagonals wide already
#: covers the whole frame from every pixel; the cost grows with the radius squared, so an unbounded K (1e4 on a
#: 320 x 240 image needs 22 GB; 1e30 never ends) is refused rather than run.
MAX_RADIUS_DIAGONALS = 2.0
#: ... but never below this many px, so that thumbnails and tests on tiny frames keep any ordinary K.
MIN_RADIUS_LIMIT_PX = 64.0


def check_blur_radius(max_radius_px: float, height: int, width: int, op: str, hint: str = "lower K",
                      clamp_hint: bool = True) -> None:
    """Refuse a blur radius (px) that is not finite or exceeds :data:`MAX_RADIUS_DIAGONALS` image diagonals
    (or :data:`MIN_RADIUS_LIMIT_PX`, whichever is larger). ``clamp_hint``: the message also suggests the
    renderer's ``max_coc_px`` clamp (the scatter renderers have one; the neural pipeline does not)."""
    limit = max(MAX_RADIUS_DIAGONALS * math.hypot(height, width), MIN_RADIUS_LIMIT_PX)
    if not math.isfinite(max_radius_px) or max_radius_px > limit:
        raise ValueError(
            f"{op}: the largest blur radius is {max_radius_px:.4g} px, more than the limit of {limit:.0f} px "
            f"({MAX_RADIUS_DIAGONALS:g} x the {height} x {width} image's diagonal, at least "
            f"{MIN_RADIUS_LIMIT_PX:.0f} px): the frame is covered long before that and the "
            f"cost grows with the radius squared. {hint[0].upper() + hint[1:]} (K is the blur radius in px per "
            f"unit of disparity)" + (", or pass max_coc_px to clamp." if clamp_hint else ".")
        )
