"""``app.py``'s options: its own flags (server, output folder, preview, depth model) plus every rendering flag of
``inference_hf.py``, validated by that parser (:mod:`inference.options`)."""

from __future__ import annotations

import argparse
import os

from inference import options as inference_options

from .core import PREVIEW_SIDE, PREVIEW_SIDE_MIN
from .serve import MAX_UPLOAD_MB

HOST, PORT = "127.0.0.1", 7860
# Gradio's own environment variables set the defaults, as in any Gradio app; the flags override them.
HOST_ENV, PORT_ENV = "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"
OUTPUT_DIR = "outputs/app"

DESCRIPTION = f"""\
Interactive refocusing in the browser: serves a page on http://HOST:PORT (default http://{HOST}:{PORT}).
Click the photo to focus there (as inference_hf.py --focus_xy); sliders set K, the aperture (blades, rotation)
and the highlight boost; the page shows the render (a preview at --preview_side px), the disparity with the
focal plane marked and the focus value. "Render full resolution" writes a PNG to download, "Focus pull" an
animated GIF of a near-to-far sweep. Uploads: a photo with its disparity or depth map, or a photo alone when
started with --depth_model. It starts offline on the bundled demo with the classical renderer, and writes only
under --output_dir: renders/<session>/ (PNGs), focus_pulls/<session>/ (GIFs; <session> is a random token per
browser session) and gradio/ (Gradio's upload and display cache, expired after 2 h). Bound to a loopback
address, it answers only requests for a loopback host from a loopback origin."""
EPILOG = """\
Every flag of inference_hf.py (python inference_hf.py --help) is accepted too:
  --image PATH --disparity PATH [--depth]      start on that photo instead of the demo;
  --K, --focus_xy / --focus_disparity / ...    starting values (the first where several);
  --pretrained_model_name_or_path DIR --adapter DIR   add BokehDiff as a renderer."""


def build_parser() -> argparse.ArgumentParser:
    """The app's own flags; the rest of the command line goes to :func:`inference.options.parse_args`."""
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=inference_options.HelpFormatter,
                                     epilog=EPILOG)
    group = parser.add_argument_group("app")
    env_port = os.environ.get(PORT_ENV, "").strip()
    group.add_argument("--host", default=os.environ.get(HOST_ENV) or HOST,
                       help=f"address to serve on (0.0.0.0: the local network); taken from ${HOST_ENV} when set")
    group.add_argument("--port", type=int, default=int(env_port) if env_port.isdigit() else PORT,
                       help=f"port to serve on; taken from ${PORT_ENV} when set")
    group.add_argument("--output_dir", default=OUTPUT_DIR, help="the only folder the app writes")
    group.add_argument("--max_upload_mb", type=int, default=MAX_UPLOAD_MB,
                       help="largest upload the server accepts, in MB (larger ones are refused with 413)")
    group.add_argument("--preview_side", type=int, default=PREVIEW_SIDE,
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
    if args.max_upload_mb < 1:
        parser.error(f"--max_upload_mb must be >= 1, got {args.max_upload_mb}")
    if args.preview_side < PREVIEW_SIDE_MIN:
        parser.error(f"--preview_side must be >= {PREVIEW_SIDE_MIN} px, got {args.preview_side}")
    env_port = os.environ.get(PORT_ENV, "").strip()
    if env_port and not env_port.isdigit():
        parser.error(f"${PORT_ENV} must be a port number in [1, 65535], got {env_port!r}")
    if not 0 < args.port < 65536:
        parser.error(f"--port (or ${PORT_ENV}) must be in [1, 65535], got {args.port}")
    loose = inference_options.build_parser().parse_args(rest + ["--demo"] if "--demo" not in rest else rest)
    if loose.test_data_dir is not None:
        parser.error("--test_data_dir: the app shows one photo; give --image PATH --disparity PATH "
                     "(or nothing: the demo)")
    if loose.image is None and "--demo" not in rest:
        rest = rest + ["--demo"]
    render_args = inference_options.parse_args(rest)
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
