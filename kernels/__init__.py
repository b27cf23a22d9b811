"""Physical bokeh renderers (linear light, pixel units): classical scatter and layered ray tracing.

Public API (docs/conventions.md): ``render_scatter``, ``render_classical``, ``render_layers``, ``cuda_available``,
and ``check_blur_radius`` (the bound on the blur radius every renderer applies, the neural pipeline included).
Each renderer has ``impl="auto" | "cuda" | "torch"``: a pure-PyTorch reference that runs anywhere and a
lazily compiled CuPy RawKernel (sources in ``kernels/cuda/``) used for CUDA tensors when CuPy works.
Aperture shapes and samples shared by both live in ``kernels.aperture``. ``render_gaussian`` is the naive
depth-dependent Gaussian-blur baseline (PyTorch only). The sRGB/linear transfer and the default gamma are
``kernels.colour`` (a leaf every layer above imports).
"""

from ._backend import check_blur_radius, cuda_available
from .gaussian import render_gaussian
from .layers import auto_n_samples, render_layers
from .scatter import render_classical, render_scatter

__all__ = ["auto_n_samples", "check_blur_radius", "cuda_available", "render_classical", "render_gaussian",
           "render_layers", "render_scatter"]
