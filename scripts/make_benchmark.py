"""Build the seeded evaluation benchmark (offline, from scikit-image's photos; no copyright problems).

    python -m scripts.make_benchmark --out benchmark_data

Writes
- ``<out>/ebb/``: layered scenes (photo backgrounds on tilted planes, RGBA foregrounds with fine fractal
  alpha) in the EBB layout with exact disparity, masks, and ground truth ray-traced with
  ``kernels.render_layers`` at several blur strengths and two focus planes per scene (foreground,
  background); ``meta.json`` lists K and focus per ground truth (see ``data.synthesis.write_sample_data``);
- ``<out>/motorcycle/``: the real Middlebury motorcycle (``input/``, ``depth/<name>_pred.npy``) with measured
  disparity; it has no ground truth and serves the qualitative contact sheet.

The same seed gives the same benchmark, bit for bit.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:  # run as a file path: the repository's packages are not importable
    sys.exit("run it as a module from the repository root: python -m scripts.make_benchmark [options]")

import argparse
import json
from pathlib import Path

import numpy as np

from data.demo import load_motorcycle
from data.io import save_image
from data.synthesis import write_sample_data

DEFAULT_MAX_COC_PX = (6.0, 16.0, 32.0)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description keeps its line breaks; every option shows its default."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--n_scenes", type=int, default=8, help="number of layered scenes")
    parser.add_argument("--height", type=int, default=256, help="scene height in px")
    parser.add_argument("--width", type=int, default=352, help="scene width in px")
    parser.add_argument("--max_coc_px", type=float, nargs="+", default=list(DEFAULT_MAX_COC_PX),
                        help="largest CoC radius of each ground truth (px)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same benchmark)")
    args = parser.parse_args(argv)
    if args.n_scenes < 1 or min(args.height, args.width) < 32:
        parser.error("--n_scenes must be >= 1 and --height/--width >= 32 px")
    if min(args.max_coc_px) <= 0:
        parser.error("--max_coc_px values must be > 0 px")
    return args


def write_motorcycle(out_dir: Path) -> Path:
    """The real photo with measured disparity, in the EBB layout (no ground truth exists for it)."""
    image, disparity = load_motorcycle()
    save_image(out_dir / "input" / "motorcycle.png", image)
    (out_dir / "depth").mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "depth" / "motorcycle_pred.npy", disparity[0])
    return out_dir


def main(argv=None) -> int:
    args = parse_args(argv)
    meta = write_sample_data(args.out, n_scenes=args.n_scenes, size=(args.height, args.width),
                             max_coc_px=args.max_coc_px, seed=args.seed, otf_size=256)
    write_motorcycle(args.out / "motorcycle")
    n_gt = sum(len(v) for k, v in meta.items() if not k.startswith("_"))
    (args.out / "benchmark.json").write_text(json.dumps({**vars(args), "out": str(args.out), "ground_truths": n_gt}))
    print(f"benchmark: {args.n_scenes} scenes, {n_gt} ground truths in {args.out / 'ebb'}; "
          f"motorcycle in {args.out / 'motorcycle'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
