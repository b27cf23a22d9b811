#!/usr/bin/env python
"""Score bokeh renders against ground truth: PSNR, SSIM, LPIPS (VGG, Alex), DISTS, per image and mean, over the
whole image and inside / outside the depth-discontinuity band.

    python evaluate.py --pred_dir outputs/mine --gt_dir prepared/gt --disparity_dir prepared/mine/depth --output_dir outputs/eval
    python evaluate.py --pred_dir outputs/benchmark/classical --dataset benchmark_data/ebb --output_dir outputs/eval

Pairing, reports and exit codes: run it with --help. The scoring lives in ``metrics/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from data.io import MAX_PIXELS, set_max_pixels
from kernels.device import resolve_device
from metrics.bands import BAND_THRESHOLD, BAND_WIDTH_PX
from metrics.image import LEARNED_METRICS, PSNR_MAX_DB, load_learned_metrics
from metrics.report import WORST_K, evaluate_pairs, find_dataset_pairs, find_pairs, write_reports

DESCRIPTION = ("Score bokeh renders against ground truth: PSNR, SSIM, LPIPS (VGG, Alex), DISTS, per image and mean, "
               "over the whole image and inside / outside the depth-discontinuity band.")
EPILOG = f"""\
Pairing: with --gt_dir, predictions and ground truth are matched by relative path without extension, or, for a
ground truth <name> without such a prediction, with the render inference_hf.py wrote of it,
<name>_K<K>_f<focus>.png, when there is exactly one; several renders of one ground truth (several K or focus
values) are refused, listing them: keep one per ground truth with --pred_glob (e.g. '*_K20_f0.50.png'). The
disparity of <name> is --disparity_dir/<name>.npy (or <name>_pred.npy). With --dataset (an EBB folder with
meta.json, as scripts/make_benchmark.py writes), each ground truth is paired with the prediction named like it
or named as inference_hf.py names a render of that scene, K and focus, and with its scene's disparity.

Writes metrics.csv, metrics.json, metrics.md and worst_cases.png to --output_dir. Learned metrics whose
pretrained weights cannot be obtained (offline) are listed as unavailable, never computed with random weights.
PSNR is capped at {PSNR_MAX_DB:g} dB (identical images score {PSNR_MAX_DB:g}, not infinity;
metrics.image.PSNR_MAX_DB) and metrics.json is strict JSON (undefined values are null).

Exit code: 0 if every ground truth was scored, 1 if a prediction is missing or a pair failed (both are listed
in the reports and counted), 2 for bad arguments (or an --output_dir whose reports would replace an evaluated
image)."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The epilog keeps its line breaks; every option shows its default."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=DESCRIPTION, epilog=EPILOG, formatter_class=_HelpFormatter)
    parser.add_argument("--pred_dir", type=Path, required=True, help="rendered images")
    truth = parser.add_mutually_exclusive_group(required=True)
    truth.add_argument("--gt_dir", type=Path, help="ground-truth bokeh images (same names as the predictions)")
    truth.add_argument("--dataset", type=Path, help="EBB folder with meta.json (ground truth, disparity, K, focus)")
    parser.add_argument("--pred_glob", default=None,
                        help="with --gt_dir: only predictions whose path relative to --pred_dir matches this pattern "
                             "(fnmatch, e.g. '*_K20_f0.50.png': one render per ground truth)")
    parser.add_argument(
        "--disparity_dir", type=Path, default=None,
        help="disparity maps <name>.npy or <name>_pred.npy (EBB layout); needed for the band metrics",
    )
    parser.add_argument("--output_dir", type=Path, required=True,
                        help="folder for metrics.csv, metrics.json, metrics.md and worst_cases.png (created)")
    parser.add_argument("--band_width", type=int, default=BAND_WIDTH_PX, help="discontinuity band half-width in pixels")
    parser.add_argument(
        "--band_threshold", type=float, default=BAND_THRESHOLD, help="disparity jump between neighbours that counts as an edge"
    )
    parser.add_argument(
        "--learned", nargs="*", default=sorted(LEARNED_METRICS), choices=[*sorted(LEARNED_METRICS), "none"],
        help="learned metrics to compute; --learned none (or a bare --learned) computes only PSNR/SSIM",
    )
    parser.add_argument("--worst_k", type=int, default=WORST_K, help="images in the worst-case contact sheet")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda if available")
    parser.add_argument("--max_pixels", type=int, default=MAX_PIXELS,
                        help="largest image or map accepted (H x W px), checked from each file's header before decoding")
    args = parser.parse_args(argv)
    if not args.max_pixels > 0:
        parser.error(f"--max_pixels must be > 0, got {args.max_pixels}")
    set_max_pixels(args.max_pixels)
    if "none" in args.learned:
        if len(args.learned) > 1:
            parser.error(f"--learned none excludes the other metrics, got {' '.join(args.learned)}")
        args.learned = []
    if args.pred_glob is not None and args.dataset is not None:
        parser.error("--pred_glob selects predictions for --gt_dir; with --dataset each ground truth's prediction is "
                     "named by its K and focus (meta.json): drop --pred_glob")
    if args.band_width < 0:
        parser.error(f"--band_width must be >= 0, got {args.band_width}")
    if args.band_threshold <= 0:
        parser.error(f"--band_threshold must be > 0, got {args.band_threshold}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as error:  # --device cuda without CUDA
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        if args.dataset is not None:
            pairs, problems = find_dataset_pairs(args.dataset, args.pred_dir)
        else:
            pairs, problems = find_pairs(args.pred_dir, args.gt_dir, args.disparity_dir, pred_glob=args.pred_glob)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    learned, unavailable = load_learned_metrics(args.learned, device)
    for name, reason in unavailable.items():
        print(f"warning: {name} unavailable ({reason}); reported as unavailable", file=sys.stderr)
    evaluation = evaluate_pairs(
        pairs, learned=learned, unavailable=unavailable, band_width_px=args.band_width,
        band_threshold=args.band_threshold, device=device, progress=lambda it: tqdm(it, desc="scoring"),
    )
    try:
        paths = write_reports(evaluation, pairs, args.output_dir, worst_k=args.worst_k)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(paths["markdown"].read_text())
    for name, reason in {**evaluation.missing, **evaluation.failures}.items():
        print(f"error: {name}: {reason}", file=sys.stderr)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0 if evaluation.complete else 1


if __name__ == "__main__":
    sys.exit(main())
