"""``inference_hf.py``'s options: the parser and its help, validation, and notes on flags without effect.

``app.py`` and ``scripts/run_benchmark.py`` parse their rendering flags with the same :func:`parse_args`, so a
renderer is configured alike everywhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data.io import MAX_PIXELS, set_max_pixels
from data.inference_io import DEFAULT_K, DEMO_FOCUS_PERCENTILES, DEMO_K, disparity_value, percentile, strength_K
from kernels.colour import DEFAULT_GAMMA
from kernels.device import resolve_device
from models.onestep import DEFAULT_TIMESTEP
# Light modules only: parsing (and --help) must not import diffusers.
from models.pipeline_load import DEFAULT_ADAPTER, DEFAULT_ADAPTER_VARIANT, DEFAULT_BASE_MODEL
from models.pisa import DEFAULT_PISA
from models.tiling import TILE_OVERLAP, TILE_SIZE

from .renderers import CLASSICAL_GAMMA, DEFAULT_RENDERER, RENDERERS

DESCRIPTION = ("Render lens blur for images with disparity: BokehDiff (default), or the classical, Gaussian or "
               "identity renderer.")
_DEMO_FOCUS, _DEMO_K = (" ".join(f"{v:g}" for v in values) for values in (DEMO_FOCUS_PERCENTILES, DEMO_K))
EPILOG = f"""\
Inputs (one of):
  --demo                                the offline demo (Middlebury motorcycle, shipped in scikit-image);
  --image PATH --disparity PATH         one photo + its disparity (.npy/.npz/8- or 16-bit PNG/EXR;
                                        --depth if it is depth) and optionally --mask PATH;
  --test_data_dir DIR|GLOB [--data_id]  test-set folders read by data.loaders (--data_id filters).

Focus (disparity in [0, 1], 1 = near): --focus_disparity v [v ...] | --focus_xy X Y (input pixels) |
--focus_percentile p [p ...] | automatic: the subject mask's median, else the image centre (5 x 5 median).
Strength: --K (one or several; CoC radius in px per unit disparity at the working resolution). The classical
renderer's cost grows with the square of the largest CoC radius; --max_side shrinks the input.

Outputs in --output_dir: <name>_K<K>_f<focus>.png per render (focus with two decimals), a labelled contact
sheet (contact_sheet.png; <name>_contact_sheet.png for folder inputs), and run_config.json (the resolved
arguments; the outputs this and earlier runs wrote there). <name> is the input's name with runs of characters
other than letters (Unicode included), digits, ., - made _; inputs whose names clean alike (my scene,
my_scene) stay apart (the changed one gets -<6 hex digits>). No output ever replaces an input file: it is
written as <stem>-2.png instead, with a note. Files listed in an earlier run_config.json of --output_dir are
outputs, not inputs, so rendering into the input folder and running again works.
Exit code 0 if every input rendered, 1 if any failed (a missing or corrupt file fails its input only; the
others are still written), 2 for invalid arguments.

Renderers: bokehdiff, the one-step diffusion model (the SDXL base --pretrained_model_name_or_path plus
--adapter, every tensor verified; offline without cached weights it stops with one message naming the fixes);
classical, the scatter renderer (the default for --demo, which renders the focus percentiles {_DEMO_FOCUS}
x K {_DEMO_K}); gaussian and identity, the baselines for evaluation.

The published README command runs unchanged (--data_id naming the run; --organization, --local_rank and
--enable_xformers_memory_efficient_attention are accepted, with a note).
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The epilog keeps its line breaks; every option shows its default, once: an option whose help already
    states it ("default ...") or whose default is None / off gets no ``(default: ...)`` suffix."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """``inference_hf.py``'s parser (also ``app.py``'s for the rendering flags); :func:`parse_args` validates."""
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=HelpFormatter, epilog=EPILOG)
    parser.add_argument("--renderer", choices=sorted(RENDERERS), default=None,
                        help=f"default {DEFAULT_RENDERER}; classical for --demo (the offline demo needs no weights)")
    src = parser.add_argument_group("inputs (choose one)")
    src.add_argument("--demo", action="store_true", help="the offline Middlebury motorcycle demo")
    src.add_argument("--image", help="input photo (PNG/JPEG/TIFF/EXR; gray, RGB, RGBA; 8 or 16 bit)")
    src.add_argument("--disparity", help="disparity for --image: .npy, .npz, 8/16-bit PNG, EXR (1 = near)")
    src.add_argument("--depth", action="store_true", help="--disparity holds depth (larger = farther)")
    src.add_argument("--disparity_normalise", choices=("auto", "always", "never"), default=None,
                     help="min-max normalise the disparity: auto = keep a map in [0, 1], normalise one outside it "
                          "(warned); always = every map (relative disparity); never = as stored. Unset, each input "
                          "keeps its own rule: auto for --image; test sets as data/loaders.py says (EBB and folder: "
                          "always; EBB with meta.json _disparity_absolute: auto). It applies to --image and to EBB "
                          "and folder test sets; pngdepth and BLB (physical rules) and --protocol published (the "
                          "released handling) refuse it. The rule used is printed and kept in run_config.json")
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
                     help=f"focus at disparity percentile(s) (demo: {_DEMO_FOCUS})")
    foc.add_argument("--focus_protocol", choices=("default", "published"), default="default",
                     help="published: the released script's three focus planes per image (far, subject, near: "
                          "focus + 0.6 x the map's extremes around the automatic focus)")
    foc.add_argument("--K", type=strength_K, nargs="+", default=None,
                     help=f"blur strength(s), CoC px per unit disparity (default {DEFAULT_K[0]:g}; demo "
                          f"{_DEMO_K})")
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
    bd.add_argument("--pretrained_model_name_or_path", default=DEFAULT_BASE_MODEL,
                    help="SDXL base model: hub id or local diffusers folder")
    bd.add_argument("--adapter", default=DEFAULT_ADAPTER,
                    help="BokehDiff weights: hub id, local folder (pytorch_lora_weights.safetensors + vae.safetensors or vae.ckpt), "
                         "LoRA file, or 'none' (base UNet only)")
    bd.add_argument("--resume_from_checkpoint", default=None,
                    help="published spelling of a local adapter folder (overrides --adapter)")
    bd.add_argument("--variant", default=DEFAULT_ADAPTER_VARIANT,
                    help=f"adapter subfolder searched first (published: {DEFAULT_ADAPTER_VARIANT})")
    bd.add_argument("--vae_weights", default=None, help="partial VAE state dict (overrides the adapter's vae.safetensors / vae.ckpt)")
    bd.add_argument("--revision", default=None, help="hub revision of the base model")
    bd.add_argument("--train_T", type=int, default=DEFAULT_TIMESTEP, help="the one-step timestep t (as trained)")
    bd.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no", help="UNet precision")
    bd.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs")
    bd.add_argument("--tile_mode", choices=("auto", "full", "tiled"), default="auto",
                    help="full frame, overlapping latent tiles, or auto (full frame when it fits in memory)")
    bd.add_argument("--tile_size", type=int, default=TILE_SIZE, help="tile side in px (multiple of 32)")
    bd.add_argument("--tile_overlap", type=int, default=TILE_OVERLAP,
                    help="tile overlap in px (> the largest CoC radius)")
    bd.add_argument("--vae_tiling", choices=("auto", "on", "off"), default="auto", help="tiled VAE encode/decode")
    bd.add_argument("--batch_size", type=int, default=1,
                    help="renders of one input (its K x focus grid) per UNet call; the input is VAE-encoded once "
                         "whatever this is. >1 is faster on a GPU; renders then agree with --batch_size 1 to float "
                         "rounding, not bit for bit (docs/conventions.md)")
    bd.add_argument("--tile_batch_size", type=int, default=1,
                    help="tiles per UNet call in tiled mode (per render of the batch)")
    bd.add_argument("--pisa_hardness", type=float, default=None,
                    help=f"PISA CoC hardness (default {DEFAULT_PISA['hardness']:g}, as published)")
    bd.add_argument("--pisa_compat", choices=("auto", "on", "off"), default="auto",
                    help="PISA occlusion discretisation: on = the published code's (what the published adapter was "
                         "trained with), off = corrected; auto = from the adapter's metadata (default)")
    bd.add_argument("--pisa_segments", type=int, default=None,
                    help=f"PISA occlusion samples per ray (default {DEFAULT_PISA['n_segments']}, as published; 0 = no "
                         "occlusion test)")
    bd.add_argument("--pisa_supersamples", type=int, default=None,
                    help=f"PISA occlusion supersamples per token pair (default {DEFAULT_PISA['n_supersamples']}, as "
                         "published; 1 = no jitter, faster and deterministic in the geometry)")
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
    run.add_argument("--max_pixels", type=int, default=MAX_PIXELS,
                     help="largest image or map accepted (H x W px), checked from each file's header before decoding")
    run.add_argument("--overwrite", action="store_true",
                     help="render everything again; without it a rerun into --output_dir with the same settings "
                          "renders only what is missing, and one with other settings is refused")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate; invalid combinations exit with code 2 and a message naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.max_pixels > 0:
        parser.error(f"--max_pixels must be > 0, got {args.max_pixels}")
    set_max_pixels(args.max_pixels)  # every reader of this process checks against it
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
        parser.error(f"--gamma must be > 0 ({DEFAULT_GAMMA:g} = sRGB-like, 1 = no linearisation), got {args.gamma}")
    if not args.upsample > 0:
        parser.error(f"--upsample must be > 0 (1 = render at input size), got {args.upsample}")
    for flag in ("batch_size", "tile_batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.tile_size % 32 or args.tile_size < 64:
        parser.error(f"--tile_size must be a multiple of 32 and >= 64 px, got {args.tile_size}")
    # Neighbouring tiles start at least one step of the UNet's coarsest grid apart (32 px for SDXL-shaped UNets:
    # the VAE's 8 x the UNet's 4; models.tiling.tile_starts), so the overlap leaves at least 32 px of each tile.
    if not 0 <= args.tile_overlap <= args.tile_size - 32 or args.tile_overlap % 8:
        parser.error(f"--tile_overlap must be a multiple of 8 px in [0, --tile_size - 32] = [0, {args.tile_size - 32}] "
                     f"(tiles advance by at least 32 px), got {args.tile_overlap} with --tile_size {args.tile_size}")
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
    try:  # --device cuda without CUDA is refused here, before any work
        resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.renderer is None:
        args.renderer = "classical" if args.demo else DEFAULT_RENDERER
    if args.demo:  # demo defaults, still overridable
        args.K = args.K or list(DEMO_K)
        if args.focus_disparity is None and args.focus_xy is None:
            args.focus_percentile = args.focus_percentile or list(DEMO_FOCUS_PERCENTILES)
    args.K = list(dict.fromkeys(args.K or DEFAULT_K))  # keep order, drop repeats (same file names)
    return args


# Flags that only one family of renderers reads; set for another renderer they are reported as ignored.
CLASSICAL_FLAGS = ("blades", "rotation_deg", "highlight_threshold", "highlight_gain", "impl")
BOKEHDIFF_FLAGS = ("pretrained_model_name_or_path", "adapter", "resume_from_checkpoint", "variant", "vae_weights",
                   "revision", "train_T", "mixed_precision", "allow_tf32", "tile_mode", "tile_size", "tile_overlap",
                   "vae_tiling", "batch_size", "tile_batch_size", "pisa_hardness", "pisa_compat", "no_pisa",
                   "pisa_segments", "pisa_supersamples")


def compatibility_notes(args) -> None:
    """Flags that change nothing in this run are accepted and said so (never silently ignored): published
    flags without effect, and flags of another renderer."""
    defaults = build_parser().parse_args(["--demo"])
    unused = {"bokehdiff": CLASSICAL_FLAGS, "classical": BOKEHDIFF_FLAGS}.get(
        args.renderer, BOKEHDIFF_FLAGS + CLASSICAL_FLAGS)
    for flag in unused:
        if getattr(args, flag) != getattr(defaults, flag):
            print(f"note: --{flag} is ignored by --renderer {args.renderer}")
    if args.test_data_dir is not None and args.depth:
        print("note: --depth applies to --image/--disparity; test-set layouts define whether their maps are depth")
    if args.demo and args.disparity_normalise is not None:
        print("note: --disparity_normalise is ignored by --demo (its measured disparity is read as shipped)")
    if args.local_rank != -1:
        print("note: --local_rank is accepted for launcher compatibility; ranks are read from the launcher's "
              "environment (accelerate launch, torchrun)")
    if args.enable_xformers_memory_efficient_attention:
        print("note: --enable_xformers_memory_efficient_attention: PyTorch's fused scaled-dot-product attention is "
              "used (PISA layers pick their own kernel: sparse where the CoC bound skips enough pairs, else chunked); "
              "xformers is not needed")
    if args.organization is not None:
        print(f"note: --organization {args.organization}: the test-set layout is detected from the folder's contents")
