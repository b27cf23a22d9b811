"""Build small layered sample scenes from scikit-image's bundled photos (offline, no copyright problems).

Writes ``<out>/ebb/`` (EBB test layout with exact disparity, masks and GTs at several K and focus values,
plus ``meta.json``) and ``<out>/otf/fg|bg`` (a folder for ``OnTheFlyDataset``). The scene model and the
layout are documented in ``data.synthesis.write_sample_data``. The committed ``test_data/`` was made with

    python -m scripts.make_sample_data --out test_data --n_scenes 3 --height 160 --width 223 \
        --max_coc_px 8 --otf_size 160 --disparity_dtype float16

It also writes ``<out>/ebb_published/``: the same inputs in the exact format the released BokehDiff code
reads (float32 depth, masks, no ``bokeh/``; ``data.published.export_published_ebb``), so both codebases can
run on one sample set.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:  # run as a file path: the repository's packages are not importable
    sys.exit("run it as a module from the repository root: python -m scripts.make_sample_data [options]")

import argparse
import json

from pathlib import Path

from data.published import export_published_ebb
from data.synthesis import write_sample_data
from kernels.colour import DEFAULT_GAMMA


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description keeps its line breaks; every option shows its default."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (ebb/ and otf/ are created inside)")
    parser.add_argument("--n_scenes", type=int, default=3, help="number of EBB scenes")
    parser.add_argument("--height", type=int, default=192, help="scene height in px (odd allowed)")
    parser.add_argument("--width", type=int, default=256, help="scene width in px (odd allowed)")
    parser.add_argument("--max_coc_px", type=float, nargs="+", default=[4.0, 12.0],
                        help="largest CoC radius of each GT (px); K = max_coc / max(f, 1 - f)")
    parser.add_argument("--otf_size", type=int, default=256, help="size of the fg/ and bg/ images (px)")
    parser.add_argument("--gamma", type=float, default=DEFAULT_GAMMA, help="linear = srgb ** gamma for rendering")
    parser.add_argument("--disparity_dtype", choices=["float32", "float16"], default="float32",
                        help="dtype of depth/<name>_pred.npy (float16 halves the files)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same files)")
    args = parser.parse_args(argv)
    if args.n_scenes < 1 or args.height < 16 or args.width < 16:
        parser.error("--n_scenes must be >= 1 and --height/--width >= 16 px")
    if any(c <= 0 for c in args.max_coc_px):
        parser.error("--max_coc_px values must be > 0 px")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    meta = write_sample_data(args.out, n_scenes=args.n_scenes, size=(args.height, args.width),
                             max_coc_px=args.max_coc_px, seed=args.seed, gamma=args.gamma, otf_size=args.otf_size,
                             disparity_dtype=args.disparity_dtype)
    export_published_ebb(Path(args.out) / "ebb", Path(args.out) / "ebb_published")
    n_gt = sum(len(v) for k, v in meta.items() if not k.startswith("_"))
    print(json.dumps({"out": args.out, "scenes": args.n_scenes, "ground_truths": n_gt}))


if __name__ == "__main__":
    main()
