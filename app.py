"""Interactive refocusing in the browser (``make app``): serves the Gradio page, then open http://127.0.0.1:7860.

    python app.py
    python app.py --pretrained_model_name_or_path DIR --adapter DIR   # BokehDiff as a second renderer

Starts offline on the bundled demo with the classical renderer; every ``inference_hf.py`` flag sets a starting
value. Options: run it with --help. The page and its logic live in ``webapp/``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from data.inference_io import DEMO_K, PAIR_NORMALISE
from kernels.device import resolve_device
from webapp.core import RenderOptions, upload_scene
from webapp.options import build_parser, parse_args
from webapp.renderers import renderer_factories
from webapp.serve import launch_options

__all__ = ["build_parser", "main", "parse_args", "renderer_factories"]  # importable from here as before


def main(argv: list[str] | None = None) -> int:
    args, render_args, names = parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    # Gradio keeps uploads and displayed images in GRADIO_TEMP_DIR (read when gradio is imported): keep it
    # inside the output folder, and send no usage statistics.
    os.environ["GRADIO_TEMP_DIR"] = str(output_dir / "gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    from webapp.ui import Callbacks, build_app

    device = resolve_device(render_args.device)
    torch.manual_seed(render_args.seed)
    try:
        factories = renderer_factories(render_args, names, device)
        depth = None
        if args.depth_model is not None:
            from models.depth import load_depth_estimator

            depth = load_depth_estimator(args.depth_model, device=device)
        scene = None
        if render_args.image is not None:
            scene = upload_scene(render_args.image, render_args.disparity, is_depth=render_args.depth,
                                 normalise=render_args.disparity_normalise or PAIR_NORMALISE)
        first = {key: getattr(render_args, key)[:1] if getattr(render_args, key) else None
                 for key in ("focus_disparity", "focus_percentile")}
        callbacks = Callbacks(
            factories, output_dir, initial_scene=scene, preview_side=args.preview_side, depth_estimator=depth,
            focus_choice={**first, "focus_xy": render_args.focus_xy},
            initial_options=RenderOptions(
                "classical", render_args.K[0], render_args.blades, render_args.rotation_deg,
                render_args.highlight_gain, RenderOptions.highlight_threshold if render_args.highlight_threshold is None
                else render_args.highlight_threshold))
    except (ImportError, RuntimeError, OSError, ValueError) as error:  # OSError: missing/unreachable weights
        print(f"error: {error}", file=sys.stderr)
        return 2
    several = len(render_args.K) > 1 or any(len(v or []) > 1 for v in (render_args.focus_disparity,
                                                                         render_args.focus_percentile))
    if several and not (render_args.demo and render_args.K == list(DEMO_K)):  # the demo's own defaults: no note
        print("note: the app starts with the first --K / focus value given; the others are set with the sliders")
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # system fonts: works offline
                              font_mono=["ui-monospace", "monospace"])
    # Loopback: foreign Host / Origin refused; uploads capped; nothing of output_dir served directly
    # (webapp.serve).
    build_app(callbacks).queue().launch(server_port=args.port, theme=theme,
                                        **launch_options(args.host, output_dir, args.max_upload_mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
