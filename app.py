"""Interactive refocusing in the browser: ``python app.py`` (``make app``), then open http://127.0.0.1:7860.

Click the photo to focus there (the code of ``inference_hf.py --focus_xy``); sliders set K, the aperture
(blades, rotation) and the highlight boost; the page shows the render (a preview at ``--preview_side`` px),
the disparity with the focal plane marked and the focus value. "Render full resolution" writes a PNG to
download, "Focus pull" an animated GIF of a near-to-far sweep. Uploads: a photo with its disparity or depth
map (every format ``inference_hf.py --image/--disparity`` reads, with its ``--depth`` / normalisation choices),
or a photo alone when the app was started with ``--depth_model`` (loaded as ``prepare_data.py`` loads it).

Starts offline on the bundled Middlebury demo (``inference_hf.py --demo``: its K and focus defaults) with the
classical renderer. Every other flag is ``inference_hf.py``'s, validated by its parser: ``--image PATH
--disparity PATH [--depth]`` start on that photo; ``--K``, ``--blades``, ``--rotation_deg``,
``--highlight_gain``, ``--highlight_threshold``, ``--focus_xy`` / ``--focus_disparity`` / ``--focus_percentile``
set the starting values (the first value where several are given); ``--pretrained_model_name_or_path DIR
--adapter DIR`` (and the other BokehDiff flags) load BokehDiff as a second renderer; ``--renderer NAME`` adds
that renderer of ``inference_hf.py``.

The app writes only under ``--output_dir``: ``renders/`` (full-resolution PNGs), ``focus_pulls/`` (GIFs) and
``gradio/`` (Gradio's upload and display cache).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

import inference_hf
from data.inference_io import DEMO_K
from webapp.core import RenderOptions, upload_scene


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("``", ""), formatter_class=inference_hf.HelpFormatter,
        epilog="Every flag of inference_hf.py (python inference_hf.py --help) is accepted too:\n"
               "  --image PATH --disparity PATH [--depth]      start on that photo instead of the demo;\n"
               "  --K, --focus_xy / --focus_disparity / ...    starting values (the first where several);\n"
               "  --pretrained_model_name_or_path DIR --adapter DIR   add BokehDiff as a renderer.")
    group = parser.add_argument_group("app")
    group.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: the local network)")
    group.add_argument("--port", type=int, default=7860, help="port to serve on")
    group.add_argument("--output_dir", default="outputs/app", help="the only folder the app writes")
    group.add_argument("--preview_side", type=int, default=384,
                       help="longest side (px) of the preview a click renders (smaller for strong blur: "
                            "webapp.core.Scene.preview_scale)")
    group.add_argument("--depth_model", default=None,
                       help="Depth Anything hub id or local folder (as prepare_data.py --depth_model): estimates "
                            "disparity for uploaded photos without a map")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace, list[str]]:
    """(app flags, inference_hf.py flags validated by its parser, names of the renderers to offer)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.preview_side < 16:
        parser.error(f"--preview_side must be >= 16 px, got {args.preview_side}")
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in [1, 65535], got {args.port}")
    loose = inference_hf.build_parser().parse_args(rest + ["--demo"] if "--demo" not in rest else rest)
    if loose.test_data_dir is not None:
        parser.error("--test_data_dir: the app shows one photo; give --image PATH --disparity PATH "
                     "(or nothing: the demo)")
    if loose.image is None and "--demo" not in rest:
        rest = rest + ["--demo"]
    render_args = inference_hf.parse_args(rest)
    # BokehDiff is loaded only when asked for (weights are large; the demo must work offline).
    explicit = argparse.ArgumentParser(add_help=False)
    explicit.add_argument("--renderer")
    explicit.add_argument("--pretrained_model_name_or_path")
    asked, _ = explicit.parse_known_args(rest)
    names = ["classical"]
    if asked.renderer:
        names.append(asked.renderer)
    if asked.pretrained_model_name_or_path is not None:
        names.append("bokehdiff")
    return args, render_args, list(dict.fromkeys(names))


def renderer_factories(render_args: argparse.Namespace, names: list[str], device: torch.device) -> dict:
    """Renderer name -> ``(options, scale) -> render`` (``webapp.core.RendererFactory``) from
    ``inference_hf.RENDERERS``: the classical renderer takes the aperture and highlight options per request;
    the others are built (weights loaded) once. ``scale`` goes to ``inference_hf.with_upsample``."""

    def classical(options: RenderOptions, scale: float):
        per_request = argparse.Namespace(**{
            **vars(render_args), "blades": options.blades, "rotation_deg": options.rotation_deg,
            "highlight_gain": options.highlight_gain,
            "highlight_threshold": options.highlight_threshold if options.highlight_gain else None})
        return inference_hf.with_upsample(inference_hf.build_classical(per_request, device), scale)

    factories = {"classical": classical}
    for name in names:
        if name != "classical":
            built = inference_hf.RENDERERS[name](render_args, device)
            factories[name] = lambda options, scale, built=built: inference_hf.with_upsample(built, scale)
    return factories


def main(argv: list[str] | None = None) -> int:
    args, render_args, names = parse_args(argv)
    output_dir = Path(args.output_dir).resolve()
    # Gradio keeps uploads and displayed images in GRADIO_TEMP_DIR (read when gradio is imported): keep it
    # inside the output folder, and send no usage statistics.
    os.environ["GRADIO_TEMP_DIR"] = str(output_dir / "gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    from webapp.ui import Callbacks, build_app

    device = inference_hf.resolve_device(render_args.device)
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
                                 normalise=render_args.disparity_normalise)
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
    build_app(callbacks).queue().launch(server_name=args.host, server_port=args.port, theme=theme,
                                        allowed_paths=[str(output_dir)], max_file_size="200mb")
    return 0


if __name__ == "__main__":
    sys.exit(main())
