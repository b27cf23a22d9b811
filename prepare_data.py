"""Disparity (Depth Anything V2) and subject masks (BiRefNet) for a folder of photos, in the EBB layout.

    python prepare_data.py --input_dir photos --output_dir prepared --batch_size 4 --fp16
    python prepare_data.py --input_dir photos --output_dir prepared \\
        --depth_model /models/Depth-Anything-V2-Large-hf --mask_model /models/BiRefNet

What is written where, in-place runs and exit codes: run it with --help. The work lives in ``data/prepare.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import kernels.device
from data.disk import DiskFullError
from data.interrupt import Interrupted, signals_raise
from data.io import IMAGE_EXTENSIONS, MAX_PIXELS, set_max_pixels, write_text_atomic
from data.ranks import join_ranks, rank_device
from data.prepare import (
    CONFIG_NAME, Item, Layout, UsageError, check_no_input_replaced, copy_file, find_images, is_done, masks_each,
    nested_images, process_batch, resolve_layout, run_by_size, save_disparity,
)
from models.depth import DEFAULT_DEPTH_MODEL, DEPTH_ANYTHING_INPUT_SIZE, load_depth_estimator
from models.hub import HubUnreachableError, LocalPathMissingError, WeightsUnavailableError, download_command
from models.segment import BIREFNET_RESOLUTION, BIREFNET_REVISION, DEFAULT_MASK_MODEL, load_birefnet, mask_model_revision

# Names this script defined before the code moved to data/prepare.py: importable from here as before.
__all__ = [
    "Item", "Layout", "UsageError", "build_models", "check_no_input_replaced", "copy_file", "find_images", "is_done",
    "main", "masks_each", "parse_args", "process_batch", "resolve_device", "resolve_layout", "run_by_size",
    "save_disparity",
]

BATCH_SIZE = 4  # images per forward pass by default

DESCRIPTION = ("Disparity (Depth Anything V2) and subject masks (BiRefNet) for a folder of photos, written in the "
               "EBB layout (input/, depth/<name>_pred.npy, mask/<name>.png) that inference_hf.py reads.")
EPILOG = f"""\
For every image <input_dir>/<rel>/<stem>.<ext> (any nesting, hidden files skipped; extensions in any case:
{' '.join(IMAGE_EXTENSIONS)}) it writes
  <out>/input/<rel>/<stem>.<ext>     the image, copied unchanged (not when working in place, see below);
  <out>/depth/<rel>/<stem>_pred.npy  disparity, float32 (H, W) in [0, 1], 1 = nearest, the image's size;
  <out>/mask/<rel>/<stem>.png        subject mask, 8-bit (H, W), 255 = subject, unless --no_mask;
  {'<out>/' + CONFIG_NAME:<35}the resolved options of the last run.

Where outputs go: to --output_dir, with the images copied into its input/ so the folder is self-contained.
When --input_dir already is an EBB input folder (its name is input, e.g. EBB/input) and --output_dir is omitted
or is its parent, the work is done in place: nothing is copied and depth/ and mask/ are written next to it.
Outputs never go among the images: without --output_dir any other folder is refused, an --output_dir inside
the images' folder is left out when it is searched (a rerun does not take the masks for photos), and a layout
in which an output would replace an input image (photos in <root>/mask with --output_dir <root>) is refused.

Existing outputs are kept (an image whose outputs all exist is skipped) unless --overwrite; outputs are written
to a temporary file and renamed, so an interrupted run never leaves a truncated file behind. Unreadable images,
and images whose prediction is unusable (the rest of their batch is written), are reported and skipped; the run
continues. Exit code 0 if every image was prepared, 1 if any failed, 2 for bad options or unavailable weights."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The epilog keeps its line breaks; every option shows its default."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION, epilog=EPILOG, formatter_class=_HelpFormatter)
    parser.add_argument("--input_dir", type=Path, required=True, help="folder of images (searched recursively)")
    parser.add_argument(
        "--output_dir", type=Path, default=None,
        help="EBB root to write input/, depth/, mask/ into; may be omitted when --input_dir is an EBB 'input' "
        "folder (then outputs go next to it, in place)",
    )
    parser.add_argument(
        "--depth_model", default=DEFAULT_DEPTH_MODEL,
        help="hub id (depth-anything/Depth-Anything-V2-{Small,Base,Large}-hf) or a local folder with its files",
    )
    parser.add_argument("--mask_model", default=DEFAULT_MASK_MODEL, help="BiRefNet hub id or local folder (runs its remote code)")
    parser.add_argument(
        "--mask_revision", default=None,
        help=f"hub commit (or branch) of --mask_model; its Python code runs here (trust_remote_code), so the default "
        f"{DEFAULT_MASK_MODEL} is loaded at the reviewed commit {BIREFNET_REVISION}; another hub id needs this flag "
        "(a commit you reviewed, or 'main' to run what it holds today)",
    )
    parser.add_argument("--no_mask", action="store_true", help="write no subject masks (and load no mask model)")
    parser.add_argument("--overwrite", action="store_true", help="recompute outputs that already exist")
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE,
                        help="images per forward pass (same-size images are batched)")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--fp16", action="store_true", help="run both models in float16 (CUDA only)")
    parser.add_argument("--max_pixels", type=int, default=MAX_PIXELS,
                        help="largest photo accepted (H x W px), checked from each file's header before decoding")
    parser.add_argument("--depth_resolution", type=int, default=DEPTH_ANYTHING_INPUT_SIZE,
                        help="shorter side (px) of the image the depth network sees (rounded to its patch size)")
    parser.add_argument("--mask_resolution", type=int, default=BIREFNET_RESOLUTION,
                        help="square side (px) of the image the mask network sees")
    args = parser.parse_args(argv)
    if not args.max_pixels > 0:
        parser.error(f"--max_pixels must be > 0, got {args.max_pixels}")
    set_max_pixels(args.max_pixels)
    return args


def resolve_device(name: str, fp16: bool) -> tuple[torch.device, torch.dtype]:
    """``--device`` and ``--fp16`` as the device and dtype both models run in."""
    try:
        device = kernels.device.resolve_device(name)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if fp16 and device.type != "cuda":
        raise UsageError("--fp16 needs a CUDA device (float16 convolutions are slow or missing on CPU); drop --fp16")
    return device, torch.float16 if fp16 else torch.float32


def _weights_error(error: WeightsUnavailableError, flag: str, repo: str, extra: str = "") -> UsageError:
    """The loader's message plus the flag that takes a local copy (hub-unreachable messages already carry the
    download command)."""
    if isinstance(error, HubUnreachableError):
        return UsageError(f"{str(error).rstrip('.')}: {flag} DIR{extra}.")
    if isinstance(error, LocalPathMissingError):  # a mistyped folder: no download to suggest
        return UsageError(f"{flag}: {error}{extra}.")
    return UsageError(f"{error}. Download it where the hub is reachable (`{download_command(repo)}`) and pass "
                      f"{flag} DIR{extra}.")


def build_models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """Load the depth estimator and (unless ``--no_mask``) the segmenter; errors name the flag to fix."""
    try:
        depth_model = load_depth_estimator(args.depth_model, device=device, dtype=dtype, input_size=args.depth_resolution)
    except WeightsUnavailableError as error:
        raise _weights_error(error, "--depth_model", args.depth_model) from None
    if args.no_mask:
        return depth_model, None
    try:
        segmenter = load_birefnet(args.mask_model, revision=args.mask_revision, device=device, dtype=dtype,
                                  resolution=args.mask_resolution)
    except WeightsUnavailableError as error:
        raise _weights_error(error, "--mask_model", args.mask_model, ", or --no_mask to skip masks") from None
    return depth_model, segmenter


def main(argv=None) -> int:
    args = parse_args(argv)
    # Ctrl-C / SIGTERM: one line and exit 130 / 143; a full disk stops the run. Each image's outputs are written
    # whole before either stops it (data.prepare.process_batch), and a rerun prepares only what is missing.
    with signals_raise():
        try:
            return _prepare(args)
        except Interrupted as stop:
            print(f"interrupted by {stop.name}: the images prepared so far are written; rerun the same command to "
                  f"prepare the rest", file=sys.stderr)
            return stop.exit_code
        except DiskFullError as error:
            print(f"error: {error.strerror}. The images prepared so far are written; free space there, then rerun "
                  f"the same command to prepare the rest", file=sys.stderr)
            return 1


def _prepare(args) -> int:
    try:
        if args.batch_size < 1:
            raise UsageError(f"--batch_size must be >= 1, got {args.batch_size}")
        layout = resolve_layout(args.input_dir, args.output_dir)
        device, dtype = resolve_device(args.device, args.fp16)
        ranks = join_ranks(device.type)  # one plain process, or a rank of accelerate launch / torchrun
        if not args.no_mask:
            try:  # before any model loads: an unpinned hub id with remote code is refused (models/segment.py)
                args.mask_revision = mask_model_revision(args.mask_model, args.mask_revision)  # recorded in the JSON
            except ValueError as error:
                raise UsageError(str(error)) from None
        # An output folder inside the input folder must not be read back as input on the next run.
        inside = args.input_dir.resolve() in layout.root.parents
        items, others, clashes = find_images(args.input_dir, exclude=layout.root if inside else None)
        if not items and not clashes:
            raise UsageError(f"--input_dir '{args.input_dir}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        check_no_input_replaced(items, layout)
        items, note = nested_images(items, args.input_dir, layout)
        if note and ranks.is_main:
            print(note, file=sys.stderr)
        if others and ranks.is_main:
            shown = ", ".join(str(p) for p in others[:5]) + (" ..." if len(others) > 5 else "")
            print(f"note: {len(others)} file(s) without an image extension ({', '.join(IMAGE_EXTENSIONS)}) "
                  f"are not images and were left alone: {shown}", file=sys.stderr)
        # Every rank lists the same images and takes its block of them; each skips what is done already.
        mine = [item for _, item in ranks.share(items)]
        todo = [item for item in mine if args.overwrite or not is_done(item, layout, not args.no_mask)]
        depth_model, segmenter = build_models(args, rank_device(ranks, device), dtype) if todo else (None, None)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    layout.root.mkdir(parents=True, exist_ok=True)
    resolved = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    resolved.update(device=str(device), output_root=str(layout.root), copy_inputs=layout.copy_inputs)
    if ranks.is_main:
        write_text_atomic(layout.root / CONFIG_NAME, json.dumps(resolved, indent=2) + "\n")

    failures = []
    with tqdm(total=len(todo), unit="img", desc="prepare_data", disable=not ranks.is_main) as progress:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            for path, message in process_batch(batch, layout, depth_model, segmenter, args.overwrite):
                tqdm.write(f"skipped '{path}': {message}", file=sys.stderr)
                failures.append((path, message))
            progress.update(len(batch))

    # Every rank's counts and failures, reported once by the main rank; every rank exits with the same code.
    shares = ranks.gather((len(todo), failures))
    n_todo = sum(n for n, _ in shares)
    n_failed_items = sum(len(f) for _, f in shares)
    failures = [(Path(clash), "two images share this name (outputs would collide); rename one") for clash in clashes]
    failures += [failure for _, share in shares for failure in share]
    if not ranks.is_main:
        return 1 if failures else 0
    print(f"prepared {n_todo - n_failed_items} image(s), kept {len(items) - n_todo} with "
          f"existing outputs (--overwrite redoes them), {len(failures)} failed; outputs in '{layout.root}'",
          file=sys.stderr)
    for path, message in failures:
        print(f"  failed: {path}: {message}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
