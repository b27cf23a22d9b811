"""The app's renderer factories ``(options, scale) -> render`` (``webapp.core.RendererFactory``), built from
``inference.renderers.RENDERERS`` with ``inference_hf.py``'s options."""

from __future__ import annotations

import argparse

import torch

from inference.renderers import RENDERERS, build_classical, with_upsample

from .core import RenderOptions


def renderer_factories(render_args: argparse.Namespace, names: list[str], device: torch.device) -> dict:
    """Renderer name -> ``(options, scale) -> render``: the classical renderer takes the aperture and highlight
    options per request; the others are built (weights loaded) once. ``scale`` goes to ``with_upsample``."""

    def classical(options: RenderOptions, scale: float):
        per_request = argparse.Namespace(**{
            **vars(render_args), "blades": options.blades, "rotation_deg": options.rotation_deg,
            "highlight_gain": options.highlight_gain,
            "highlight_threshold": options.highlight_threshold if options.highlight_gain else None})
        return with_upsample(build_classical(per_request, device), scale)

    factories = {"classical": classical}
    for name in names:
        if name != "classical":
            built = RENDERERS[name](render_args, device)
            factories[name] = lambda options, scale, built=built: with_upsample(built, scale)
    return factories
