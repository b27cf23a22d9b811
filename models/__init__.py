"""BokehDiff models: PISA attention and its diffusers processors, the tiny SDXL stack for tests."""

from .pisa import PassthroughAttnProcessor, PISAAttnProcessor, install_pisa_processors, pisa_attention
from .tiny import build_tiny_sdxl, save_tiny_sdxl

__all__ = [
    "pisa_attention",
    "PISAAttnProcessor",
    "PassthroughAttnProcessor",
    "install_pisa_processors",
    "build_tiny_sdxl",
    "save_tiny_sdxl",
]
