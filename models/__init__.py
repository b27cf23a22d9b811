"""BokehDiff models: PISA attention and its diffusers processors, the tiny SDXL stack for tests."""

from .tiny import build_tiny_sdxl, save_tiny_sdxl

__all__ = ["build_tiny_sdxl", "save_tiny_sdxl"]
