"""Render lens blur for images with disparity: BokehDiff (default), or the classical, Gaussian or identity renderer.

Inputs (one of):
  ``--demo``                                the offline demo (Middlebury motorcycle, shipped in scikit-image);
  ``--image PATH --disparity PATH``         one photo + its disparity (``.npy``/``.npz``/8- or 16-bit PNG/EXR;
                                            ``--depth`` if it is depth) and optionally ``--mask PATH``;
  ``--test_data_dir DIR|GLOB [--data_id]``  test-set folders read by ``data.loaders`` (``--data_id`` filters).

Focus (disparity in [0, 1], 1 = near): ``--focus_disparity v [v ...]`` | ``--focus_xy X Y`` (input pixels) |
``--focus_percentile p [p ...]`` | automatic: the subject mask's median, else the image centre (5 x 5 median).
Strength: ``--K`` (one or several; CoC radius in px per unit disparity at the working resolution).

Outputs in ``--output_dir``: ``<name>_K<K>_f<focus>.png`` per render (focus with two decimals), a labelled
contact sheet (``contact_sheet.png``; ``<name>_contact_sheet.png`` for folder inputs), and
``run_config.json`` (the resolved arguments; the outputs this and earlier runs wrote there). ``<name>`` is
the input's name with runs of characters other than letters (Unicode included), digits, ``.``, ``-`` made
``_``; inputs whose names clean alike (``my scene``, ``my_scene``) stay apart (the changed one gets
``-<6 hex digits>``). No output ever replaces an input file: it is written as ``<stem>-2.png`` instead, with
a note. Files listed in an earlier ``run_config.json`` of ``--output_dir`` are outputs, not inputs, so
rendering into the input folder and running again works. Exit code 0 if every input rendered, 1 if any
failed (a missing or corrupt file fails its input only; the others are still written), 2 for invalid arguments.

Demo (``make demo`` = ``--renderer classical --demo --output_dir outputs/demo``): the 741 x 500 motorcycle at
focus percentiles 90 / 50 / 10 (front of the motorcycle, its rear, the back wall: disparity 0.88 / 0.56 /
0.09) x K = 10, 20 -> six PNGs ``motorcycle_K{10,20}_f{0.88,0.56,0.09}.png`` + ``contact_sheet.png``
(1280 x 476: input and disparity in the first column, one row per K): 6 renders of 0.37 MP, largest CoC
radius 18 px (measured times: README "Quick start" and BENCHMARKS.md "Renderers"). The scatter renderer's cost
grows with the square of the largest CoC radius: ``--K 6 12`` needs about 40 % of that, ``--max_side``
shrinks it further.

Renderers are a seam: ``RENDERERS`` maps ``--renderer`` to a builder ``(args, device) -> render`` where
``render(image, disparity, K, disp_focus)`` takes ``(1, 3, H, W)`` sRGB in [0, 1], ``(1, 1, H, W)`` disparity,
floats ``K`` and ``disp_focus``, and returns ``(1, 3, H, W)`` sRGB in [0, 1]. The builder loads models once.

Baselines for evaluation: ``--renderer gaussian`` (depth-dependent Gaussian blur) and ``--renderer identity``.

``--renderer bokehdiff`` (default; ``models/pipeline.py``): the one-step diffusion model. Weights: the SDXL base
``--pretrained_model_name_or_path`` (hub id or local diffusers folder) plus ``--adapter`` (hub id, local folder
or LoRA file; ``--resume_from_checkpoint DIR`` is the published spelling of a local adapter), every tensor
verified. Full frame, or overlapping tiles for images too large for memory (``--tile_mode``). Offline without
cached weights it stops with one message naming the fixes (a local folder, or ``--renderer classical``).

The published README command still runs::

    python inference_hf.py --test_data_dir DIR --output_dir OUT --data_id RUN --K 20 \
        --enable_xformers_memory_efficient_attention

``--data_id`` is optional. A glob pattern, or the name of an input, selects those inputs; a plain name that
matches no input is read as the published script read it, the name of this run: outputs go to ``OUT/RUN``
(a notice says so). ``--enable_xformers_memory_efficient_attention``, ``--organization`` and ``--local_rank``
are accepted for compatibility (PyTorch's fused attention is always used; layouts are detected).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Callable

import glob
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from data.inference_io import (
    DEFAULT_K, DEMO_FOCUS_PERCENTILES, DEMO_K, MANIFEST_NAME, InputItem, OutputFiles, StageTimer, choose_focus,
    demo_inputs, disparity_value, folder_inputs, input_roots, item_contact_sheet, limit_size, output_name,
    pair_inputs, percentile, previous_outputs, sheet_name, strength_K, unique_focus,
)
from data.io import InputWarning, save_image, write_text_atomic

RenderFn = Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]


# ----------------------------------------------------------------------------------------------------------
# Renderers
# ----------------------------------------------------------------------------------------------------------
CLASSICAL_GAMMA = 2.2  # --gamma's default for the classical and gaussian renderers


def classical_gamma(args: argparse.Namespace) -> float:
    """``--gamma``, or :data:`CLASSICAL_GAMMA` when not given (bokehdiff resolves its own default)."""
    return CLASSICAL_GAMMA if args.gamma is None else float(args.gamma)


# A render taking longer than this shows a second bar with its progress in image rows (a 4000 x 3000 render
# takes minutes on a CPU; the per-render bar alone would sit at 0 % meanwhile).
ROW_PROGRESS_DELAY_S = 2.0


def build_classical(args: argparse.Namespace, device: torch.device) -> RenderFn:
    """The classical scatter renderer (``kernels.render_classical``), configured from the CLI."""
    import kernels

    def render(image, disparity, K, disp_focus):
        with tqdm(total=image.shape[-2], unit="row", desc=f"  K={K:g} f={disp_focus:.2f}", leave=False,
                  delay=ROW_PROGRESS_DELAY_S) as rows:
            return kernels.render_classical(
                image, disparity, K, disp_focus, gamma=classical_gamma(args), impl=args.impl, blades=args.blades,
                rotation_deg=args.rotation_deg, highlight_threshold=args.highlight_threshold,
                highlight_gain=args.highlight_gain, progress=lambda done, total: rows.update(done - rows.n),
            )

    return render


def build_bokehdiff(args: argparse.Namespace, device: torch.device) -> RenderFn:
    """The BokehDiff one-step pipeline: base model + adapter loaded and verified once, then rendered per call."""
    from models.pipeline import BokehDiffPipeline

    if args.allow_tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    adapter = args.resume_from_checkpoint or args.adapter
    if adapter is not None and str(adapter).lower() == "none":
        adapter = None
    # PISA overrides (an empty dict means the published inference settings); compat "auto" lets the
    # pipeline pick the discretisation the adapter was trained with.
    pisa = {} if args.pisa_hardness is None else {"hardness": args.pisa_hardness}
    if args.pisa_compat != "auto":
        pisa["compat"] = args.pisa_compat == "on"
    if args.pisa_segments is not None:
        pisa["n_segments"] = args.pisa_segments
    if args.pisa_supersamples is not None:
        pisa["n_supersamples"] = args.pisa_supersamples
    start = time.perf_counter()
    pipe = BokehDiffPipeline.from_pretrained(
        args.pretrained_model_name_or_path, adapter=adapter, adapter_variant=args.variant,
        vae_weights=args.vae_weights, revision=args.revision, timestep=args.train_T, gamma=args.gamma,
        pisa=pisa if not args.no_pisa else False, seed=args.seed, tile_size=args.tile_size,
        tile_overlap=args.tile_overlap, protocol=args.protocol,
    ).to(device, dtype=args.mixed_precision)
    args.protocol_resolved = pipe.protocol
    if pipe.protocol == "published" and (args.tile_size, args.tile_overlap) != (1024, 256):
        print("note: --tile_size / --tile_overlap are not used by the published protocol (512-px tiles, its offsets)")
    print(f"bokehdiff: --protocol {args.protocol} -> {pipe.protocol} (gamma {pipe.model.gamma:g}"
          f"{' from --gamma' if args.gamma is not None else ''}, x0 clamp "
          f"{pipe.model.x0_clip}, PISA {pipe.pisa_settings})")
    if not args.no_pisa and "pisa_compat" in pipe.info:
        print(f"bokehdiff: PISA with the {'published' if pipe.info['pisa_compat'] else 'corrected'} occlusion "
              f"discretisation (--pisa_compat {args.pisa_compat})")
    lora, vae = pipe.info.get("lora"), pipe.info.get("vae")
    weights = ([f"LoRA rank {lora['rank']}: {lora['tensors']} tensors"] if lora else []) + (
        [f"VAE {vae['tensors']} tensors"] if vae else [])
    print(f"bokehdiff: base '{args.pretrained_model_name_or_path}', "
          + (f"adapter '{adapter}' ({', '.join(weights)}, all verified)" if weights
             else "no adapter (base UNet: the renders are not bokeh)")
          + f" loaded in {time.perf_counter() - start:.1f} s on {device}, UNet {pipe.model.unet.dtype}")
    vae_tiling = {"auto": "auto", "on": True, "off": False}[args.vae_tiling]

    reported = set()

    def render(image, disparity, K, disp_focus):
        out = pipe(image, disparity, K=K, disp_focus=disp_focus, mode=args.tile_mode, vae_tiling=vae_tiling)
        key = (tuple(image.shape[-2:]), pipe.last_plan.mode)
        if key not in reported:  # full frame vs tiles changes the output: say which ran, once per size
            reported.add(key)
            tqdm.write(f"bokehdiff: {image.shape[-1]}x{image.shape[-2]} rendered {pipe.last_plan.reason}")
        return out

    return render


def build_gaussian(args: argparse.Namespace, device: torch.device) -> RenderFn:
    """Baseline: depth-dependent Gaussian blur, sigma = |coc| / 2 (``kernels.render_gaussian``), in linear light."""
    import kernels
    from data.io import linear_to_srgb, srgb_to_linear

    def render(image, disparity, K, disp_focus):
        coc = K * (disparity - disp_focus)
        gamma = classical_gamma(args)
        return linear_to_srgb(kernels.render_gaussian(srgb_to_linear(image, gamma), coc), gamma)

    return render


def build_identity(args: argparse.Namespace, device: torch.device) -> RenderFn:
    """Baseline: the all-in-focus input returned unchanged (the floor every renderer must beat)."""
    return lambda image, disparity, K, disp_focus: image.clone()


def with_upsample(render: RenderFn, factor: float) -> RenderFn:
    """Render at ``factor`` x the input size (published ``--upsample``): the image is resized (bicubic), the
    disparity bilinearly, K is scaled by ``factor`` (CoC radii are pixels of the working resolution), and the
    render is resized back to the input size (antialiased)."""
    if factor == 1:
        return render

    def wrapped(image, disparity, K, disp_focus):
        height, width = image.shape[-2:]
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        big = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=factor < 1).clamp(0, 1)
        disp = F.interpolate(disparity, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)
        out = render(big, disp.clamp(0, 1), K * factor, disp_focus)
        return F.interpolate(out, size=(height, width), mode="bicubic", align_corners=False,
                             antialias=factor > 1).clamp(0, 1)

    return wrapped


RENDERERS: dict[str, Callable[[argparse.Namespace, torch.device], RenderFn]] = {
    "classical": build_classical,
    "bokehdiff": build_bokehdiff,
    "gaussian": build_gaussian,
    "identity": build_identity,
}
DEFAULT_RENDERER = "bokehdiff"


# ----------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------
class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The epilog keeps its line breaks; every option shows its default, once: an option whose help already
    states it ("default ...") or whose default is None / off gets no ``(default: ...)`` suffix."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    # --help shows the module docstring's inputs, focus and outputs/exit-code paragraphs (the user's reference).
    paragraphs = __doc__.replace("``", "").split("\n\n")
    parser = argparse.ArgumentParser(description=paragraphs[0], formatter_class=HelpFormatter,
                                     epilog="\n\n".join(paragraphs[1:4]))
    parser.add_argument("--renderer", choices=sorted(RENDERERS), default=None,
                        help=f"default {DEFAULT_RENDERER}; classical for --demo (the offline demo needs no weights)")
    src = parser.add_argument_group("inputs (choose one)")
    src.add_argument("--demo", action="store_true", help="the offline Middlebury motorcycle demo")
    src.add_argument("--image", help="input photo (PNG/JPEG/TIFF/EXR; gray, RGB, RGBA; 8 or 16 bit)")
    src.add_argument("--disparity", help="disparity for --image: .npy, .npz, 8/16-bit PNG, EXR (1 = near)")
    src.add_argument("--depth", action="store_true", help="--disparity holds depth (larger = farther)")
    src.add_argument("--disparity_normalise", choices=("auto", "always", "never"), default="auto",
                     help="min-max normalise the map: auto = only if outside [0, 1] (default); always = relative maps")
    src.add_argument("--mask", help="subject mask for --image (white = subject); focus defaults to its median")
    src.add_argument("--test_data_dir", help="test-set folder(s) (folder or glob; layouts EBB, folder, pngdepth, BLB "
                                             "as in data/loaders.py); subject masks there set the auto focus")
    src.add_argument("--data_id", help="with --test_data_dir: only inputs with this name (or glob pattern); "
                                       "default all. A plain name matching no input names the run (published "
                                       "meaning): outputs go to OUTPUT_DIR/DATA_ID")
    src.add_argument("--upsample", type=float, default=1.0,
                     help="render at this many times the input size, K scaled alike, then resize back (published)")
    src.add_argument("--organization", default=None,
                     help="published layout flag (EBB, folder, pngdepth): accepted; layouts are detected")
    src.add_argument("--max_side", type=int, default=None, help="shrink inputs so the longer side is at most this (px)")
    foc = parser.add_argument_group("focus and strength")
    foc.add_argument("--focus_disparity", type=disparity_value, nargs="+", help="focal disparity value(s) in [0, 1]")
    foc.add_argument("--focus_xy", type=int, nargs=2, metavar=("X", "Y"), help="focus on this input pixel (column, row)")
    foc.add_argument("--focus_percentile", type=percentile, nargs="+",
                     help=f"focus at disparity percentile(s) (demo: {' '.join(f'{p:g}' for p in DEMO_FOCUS_PERCENTILES)})")
    foc.add_argument("--focus_protocol", choices=("default", "published"), default="default",
                     help="published: the released script's three focus planes per image (far, subject, near: "
                          "focus + 0.6 x the map's extremes around the automatic focus)")
    foc.add_argument("--K", type=strength_K, nargs="+", default=None,
                     help=f"blur strength(s), CoC px per unit disparity (default {DEFAULT_K[0]:g}; demo "
                          f"{' '.join(f'{k:g}' for k in DEMO_K)})")
    cls = parser.add_argument_group("classical renderer")
    cls.add_argument("--gamma", type=float, default=None,
                     help=f"linear light = srgb ** gamma (1 disables); classical blurs in it (default "
                          f"{CLASSICAL_GAMMA:g}), bokehdiff feeds it to the VAE (default: the model gamma an adapter "
                          f"trained here records; else from --protocol: published 1, corrected {CLASSICAL_GAMMA:g})")
    cls.add_argument("--blades", type=int, default=0, help="aperture polygon blades (0 = disc, else >= 3)")
    cls.add_argument("--rotation_deg", type=float, default=0.0, help="aperture polygon rotation (degrees)")
    cls.add_argument("--highlight_threshold", type=float, default=None, help="boost linear values above this")
    cls.add_argument("--highlight_gain", type=float, default=0.0, help="highlight boost gain (0 = off)")
    cls.add_argument("--impl", choices=("auto", "torch", "cuda"), default="auto", help="kernel implementation")
    bd = parser.add_argument_group("bokehdiff renderer")
    bd.add_argument("--pretrained_model_name_or_path", default="SG161222/RealVisXL_V5.0",
                    help="SDXL base model: hub id or local diffusers folder")
    bd.add_argument("--adapter", default="zcx65535/bokehdiff",
                    help="BokehDiff weights: hub id, local folder (pytorch_lora_weights.safetensors + vae.ckpt), "
                         "LoRA file, or 'none' (base UNet only)")
    bd.add_argument("--resume_from_checkpoint", default=None,
                    help="published spelling of a local adapter folder (overrides --adapter)")
    bd.add_argument("--variant", default="small", help="adapter subfolder searched first (published: small)")
    bd.add_argument("--vae_weights", default=None, help="partial VAE state dict (overrides the adapter's vae.ckpt)")
    bd.add_argument("--revision", default=None, help="hub revision of the base model")
    bd.add_argument("--train_T", type=int, default=499, help="the one-step timestep t (as trained)")
    bd.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no", help="UNet precision")
    bd.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs")
    bd.add_argument("--tile_mode", choices=("auto", "full", "tiled"), default="auto",
                    help="full frame, overlapping latent tiles, or auto (full frame when it fits in memory)")
    bd.add_argument("--tile_size", type=int, default=1024, help="tile side in px (multiple of 32)")
    bd.add_argument("--tile_overlap", type=int, default=256, help="tile overlap in px (> the largest CoC radius)")
    bd.add_argument("--vae_tiling", choices=("auto", "on", "off"), default="auto", help="tiled VAE encode/decode")
    bd.add_argument("--pisa_hardness", type=float, default=None, help="PISA CoC hardness (default 1e7, as published)")
    bd.add_argument("--pisa_compat", choices=("auto", "on", "off"), default="auto",
                    help="PISA occlusion discretisation: on = the published code's (what the published adapter was "
                         "trained with), off = corrected; auto = from the adapter's metadata (default)")
    bd.add_argument("--pisa_segments", type=int, default=None,
                    help="PISA occlusion samples per ray (default 7, as published; 0 = no occlusion test)")
    bd.add_argument("--pisa_supersamples", type=int, default=None,
                    help="PISA occlusion supersamples per token pair (default 5, as published; 1 = no jitter, "
                         "faster and deterministic in the geometry)")
    bd.add_argument("--protocol", choices=("auto", "published", "corrected"), default="auto",
                    help="published: reproduce the released code's inference path (gamma 1, its PISA geometry, "
                         "512-px Gaussian-blended tiles, VAE tiling, x0 clamp from the scheduler config, its test-set "
                         "input handling); corrected: this repository's; auto: published for adapters without our "
                         "training metadata (the released one), corrected for ours (default)")
    bd.add_argument("--no_pisa", action="store_true", help="ablation: stock attention instead of PISA")
    bd.add_argument("--enable_xformers_memory_efficient_attention", action="store_true",
                    help="published flag, accepted: PyTorch's fused attention is used in any case")
    bd.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default="outputs/inference",
                     help="folder for the renders, contact sheets and run_config.json (created)")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda if available")
    run.add_argument("--seed", type=int, default=0, help="global RNG seed; bokehdiff: PISA's occlusion-sampling seed")
    run.add_argument("--no_contact_sheet", action="store_true", help="skip the contact sheet")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate; invalid combinations exit with code 2 and a message naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    sources = [args.demo, args.image is not None, args.test_data_dir is not None]
    if sum(sources) != 1:
        parser.error("give exactly one input: --demo, --image PATH --disparity PATH, or --test_data_dir DIR")
    if (args.image is None) != (args.disparity is None):
        parser.error("--image and --disparity go together (the disparity map of that image)")
    if args.mask and args.image is None:
        parser.error("--mask goes with --image (folder inputs bring their own masks)")
    if args.data_id is not None and args.test_data_dir is None:
        parser.error("--data_id selects items of --test_data_dir; give --test_data_dir too")
    for flag in ("image", "disparity", "mask"):
        path = getattr(args, flag)
        if path is not None and not Path(path).is_file():
            parser.error(f"--{flag}: file not found: '{path}' (it must be an existing file)")
    if sum(x is not None for x in (args.focus_disparity, args.focus_xy, args.focus_percentile)) > 1:
        parser.error("give at most one of --focus_disparity, --focus_xy, --focus_percentile")
    if args.focus_xy is not None and min(args.focus_xy) < 0:
        parser.error(f"--focus_xy must be non-negative pixel coordinates (column, row), got {args.focus_xy}")
    if args.max_side is not None and args.max_side < 16:
        parser.error(f"--max_side must be >= 16 pixels, got {args.max_side}")
    if args.blades not in (0,) and args.blades < 3:
        parser.error(f"--blades must be 0 (disc) or >= 3, got {args.blades}")
    if args.gamma is not None and args.gamma <= 0:
        parser.error(f"--gamma must be > 0 (2.2 = sRGB-like, 1 = no linearisation), got {args.gamma}")
    if not args.upsample > 0:
        parser.error(f"--upsample must be > 0 (1 = render at input size), got {args.upsample}")
    if args.tile_size % 32 or args.tile_size < 64:
        parser.error(f"--tile_size must be a multiple of 32 and >= 64 px, got {args.tile_size}")
    if not 0 <= args.tile_overlap < args.tile_size or args.tile_overlap % 8:
        parser.error(f"--tile_overlap must be a multiple of 8 in [0, --tile_size), got {args.tile_overlap}")
    if args.no_pisa and (args.pisa_hardness is not None or args.pisa_compat != "auto"
                         or args.pisa_segments is not None or args.pisa_supersamples is not None):
        parser.error("--no_pisa turns PISA off; drop --pisa_hardness / --pisa_compat / --pisa_segments / "
                     "--pisa_supersamples, or drop --no_pisa")
    if args.pisa_segments is not None and args.pisa_segments < 0:
        parser.error(f"--pisa_segments must be >= 0 (0 = no occlusion test), got {args.pisa_segments}")
    if args.pisa_supersamples is not None and args.pisa_supersamples < 1:
        parser.error(f"--pisa_supersamples must be >= 1 (1 = no jitter), got {args.pisa_supersamples}")
    if args.focus_protocol == "published" and (args.focus_disparity is not None or args.focus_xy is not None
                                                or args.focus_percentile is not None):
        parser.error("--focus_protocol published derives its three planes from the automatic focus; drop "
                     "--focus_disparity / --focus_xy / --focus_percentile")
    if args.pisa_hardness is not None and not args.pisa_hardness > 1:
        parser.error(f"--pisa_hardness must be > 1, got {args.pisa_hardness}")
    if args.resume_from_checkpoint is not None and not Path(args.resume_from_checkpoint).exists():
        parser.error(f"--resume_from_checkpoint: no such file or folder: '{args.resume_from_checkpoint}'")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here; use --device cpu (or auto)")
    if args.renderer is None:
        args.renderer = "classical" if args.demo else DEFAULT_RENDERER
    if args.demo:  # demo defaults, still overridable
        args.K = args.K or list(DEMO_K)
        if args.focus_disparity is None and args.focus_xy is None:
            args.focus_percentile = args.focus_percentile or list(DEMO_FOCUS_PERCENTILES)
    args.K = list(dict.fromkeys(args.K or DEFAULT_K))  # keep order, drop repeats (same file names)
    return args


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------
def _inputs(args):
    if args.demo:
        return demo_inputs()
    if args.image is not None:
        return pair_inputs(args.image, args.disparity, mask=args.mask, is_depth=args.depth,
                           normalise=args.disparity_normalise)
    protocol = getattr(args, "protocol_resolved", None) or ("published" if args.protocol == "published" else "corrected")
    # Renders an earlier run wrote among the inputs are outputs, not inputs (run_config.json lists them).
    inputs = folder_inputs(args.test_data_dir, args.data_id, exclude=previous_outputs(args.output_dir),
                           protocol=protocol)
    if not inputs and args.data_id is not None and not glob.has_magic(args.data_id):
        # The published script's --data_id named the run (outputs in OUTPUT_DIR/DATA_ID); keep that meaning when
        # the plain name selects nothing, so the published README command runs unchanged.
        print(f"note: no input is named '{args.data_id}': reading --data_id as the run name (published meaning); "
              f"rendering every input into {Path(args.output_dir) / args.data_id}")
        args.output_dir = str(Path(args.output_dir) / args.data_id)
        inputs = folder_inputs(args.test_data_dir, None, exclude=previous_outputs(args.output_dir), protocol=protocol)
    return inputs


def _output_files(args, inputs) -> OutputFiles:
    """Where this run's outputs go: never onto one of its input files (nor any other file of the input
    folders), never two outputs onto one path."""
    roots = input_roots(args.test_data_dir) if args.test_data_dir else []
    return OutputFiles(args.output_dir, protected=[path for pending in inputs for path in pending.sources],
                       protected_dirs=roots, own=previous_outputs(args.output_dir))


def _write_manifest(files: OutputFiles, config: dict) -> None:
    """``run_config.json``: the resolved arguments and every output written so far, with those of earlier runs
    into this folder that still exist (a rerun into an input folder reads them as outputs, not as inputs)."""
    paths = files.own_paths + files.claimed
    outputs = list(dict.fromkeys(path.name for path in paths if path.name != MANIFEST_NAME and path.exists()))
    write_text_atomic(files.folder / MANIFEST_NAME, json.dumps({**config, "outputs": outputs}, indent=2) + "\n")


# Flags that only one family of renderers reads; set for another renderer they are reported as ignored.
_CLASSICAL_FLAGS = ("blades", "rotation_deg", "highlight_threshold", "highlight_gain", "impl")
_BOKEHDIFF_FLAGS = ("pretrained_model_name_or_path", "adapter", "resume_from_checkpoint", "variant", "vae_weights",
                    "revision", "train_T", "mixed_precision", "allow_tf32", "tile_mode", "tile_size", "tile_overlap",
                    "vae_tiling", "pisa_hardness", "pisa_compat", "no_pisa", "pisa_segments", "pisa_supersamples")


def _compatibility_notes(args) -> None:
    """Flags that change nothing in this run are accepted and said so (never silently ignored): published
    flags without effect, and flags of another renderer."""
    defaults = build_parser().parse_args(["--demo"])
    unused = {"bokehdiff": _CLASSICAL_FLAGS, "classical": _BOKEHDIFF_FLAGS}.get(
        args.renderer, _BOKEHDIFF_FLAGS + _CLASSICAL_FLAGS)
    for flag in unused:
        if getattr(args, flag) != getattr(defaults, flag):
            print(f"note: --{flag} is ignored by --renderer {args.renderer}")
    if args.test_data_dir is not None and (args.depth or args.disparity_normalise != "auto"):
        print("note: --depth / --disparity_normalise apply to --image/--disparity; test-set layouts define their own")
    if args.local_rank != -1:
        print("note: --local_rank is accepted for launcher compatibility; inference runs in one process")
    if args.enable_xformers_memory_efficient_attention:
        print("note: --enable_xformers_memory_efficient_attention: PyTorch's fused scaled-dot-product attention is "
              "used (PISA layers pick their own kernel: sparse where the CoC bound skips enough pairs, else chunked); "
              "xformers is not needed")
    if args.organization is not None:
        print(f"note: --organization {args.organization}: the test-set layout is detected from the folder's contents")


def _render_item(item: InputItem, focus, args, render: RenderFn, device, timer, progress,
                 files: OutputFiles) -> dict:
    """All (K, focus) renders of one item; returns {(K, focus): (3, H, W) numpy} and writes each PNG."""
    image = torch.from_numpy(item.image)[None].to(device)
    disparity = torch.from_numpy(item.disparity)[None].to(device)
    renders = {}
    for K in args.K:
        for disp_focus, _ in focus:
            with timer.stage("render"), torch.inference_mode():
                out = render(image, disparity, K, disp_focus)[0].float().cpu().numpy()
            with timer.stage("save"):
                save_image(files.claim(output_name(item.name, K, disp_focus)), out)
            renders[(K, disp_focus)] = out
            progress.update(1)
    return renders


def _above_progress_bars(show):
    """``warnings.showwarning`` hook (the stdlib's documented extension point) that clears the progress bar
    before ``show`` prints and redraws it after: printed directly, a warning lands at the end of the bar's line."""

    def show_above(*args, **kwargs):
        with tqdm.external_write_mode(file=sys.stderr):
            show(*args, **kwargs)

    return show_above


def resolve_device(name: str) -> torch.device:
    """``--device``: ``auto`` = CUDA when available, else the CPU (``cuda`` without CUDA is refused by
    :func:`parse_args`)."""
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    _compatibility_notes(args)
    try:
        # The renderer is built first: --protocol auto is resolved from the adapter, and the test-set input
        # handling follows the resolved protocol.
        render = with_upsample(RENDERERS[args.renderer](args, device), args.upsample)
        inputs = _inputs(args)  # may redirect --output_dir (published --data_id meaning)
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        files = _output_files(args, inputs)
        config = {**vars(args), "device": str(device)}
        if files.claim(MANIFEST_NAME) != output_dir / MANIFEST_NAME:
            raise FileExistsError(f"--output_dir '{output_dir}' holds an input file named {MANIFEST_NAME}, which "
                                  f"this run would replace by its own; choose another --output_dir")
        _write_manifest(files, config)
    except (ImportError, RuntimeError, OSError, ValueError) as error:  # OSError: missing/unreachable weights
        print(f"error: {error}", file=sys.stderr)
        return 2

    timer, failures, n_inputs, n_renders, megapixels = StageTimer(), [], 0, 0, 0.0
    n_focus = 3 if args.focus_protocol == "published" else len(args.focus_disparity or args.focus_percentile or [None])
    total = len(inputs) * len(args.K) * n_focus if isinstance(inputs, list) else None
    single_input = not args.test_data_dir
    with warnings.catch_warnings(), tqdm(total=total, unit="render", desc=args.renderer) as progress:
        warnings.simplefilter("always", InputWarning)  # every repaired input is announced, not just the first
        warnings.showwarning = _above_progress_bars(warnings.showwarning)  # restored by catch_warnings
        for pending in inputs:
            n_inputs += 1
            try:
                with timer.stage("load"):
                    item = pending.load()
                    focus = unique_focus(choose_focus(item, focus_disparity=args.focus_disparity,
                                                      focus_xy=args.focus_xy, focus_percentile=args.focus_percentile,
                                                      focus_protocol=args.focus_protocol),
                                         item.name)
                    item = limit_size(item, args.max_side)
                renders = _render_item(item, focus, args, render, device, timer, progress, files)
                if not args.no_contact_sheet:
                    with timer.stage("save"):
                        sheet = item_contact_sheet(item, renders, args.K, focus)
                        save_image(files.claim(sheet_name(item.name, single_input)), sheet)
                n_renders += len(renders)
                megapixels += len(renders) * item.image.shape[1] * item.image.shape[2] / 1e6
            except Exception as error:  # noqa: BLE001 - one bad input is reported and skipped (CONTRIBUTING)
                failures.append((pending.name, f"{type(error).__name__}: {error}"))
                progress.write(f"FAILED {pending.name}: {type(error).__name__}: {error}", file=sys.stderr)
            _write_manifest(files, config)

    print(f"{args.renderer}: {timer.summary(n_renders, megapixels)}; outputs in {output_dir}")
    for requested, given in files.renamed:
        print(f"note: '{requested}' would have replaced an input file or another output; written as '{given}'")
    if n_inputs == 0:
        print(f"error: no input found in --test_data_dir '{args.test_data_dir}'"
              + (f" matching --data_id '{args.data_id}'" if args.data_id else ""), file=sys.stderr)
        return 1
    if failures:
        print(f"{len(failures)} input(s) failed and were skipped:", file=sys.stderr)
        for name, message in failures:
            print(f"  {name}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
