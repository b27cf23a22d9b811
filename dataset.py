"""Training and test data for BokehDiff: re-exports and a small CLI.

The logic lives in ``data/``: the on-the-fly paired synthesis (``data.synthesis``: ``OnTheFlyDataset``,
``synthesize_batch``), the test-set loaders (``data.loaders.load_test_set``) and focus selection
(``data.focus``). This module keeps the public code's import path (``from dataset import OnTheFlyDataset``).

CLI:

    python dataset.py preview --data_root test_data/otf --out outputs/preview --n 6 --size 128
        # writes a contact sheet (AIF | bokeh | disparity per sample) and prints each sample's K and focus;
        # --size defaults to 256 px, or less when the backgrounds are smaller (test_data/otf's are 160 px)
    python dataset.py inspect --data_root test_data/ebb
        # lists a test set's items (layout auto-detected) with their sizes and metadata
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from data.focus import focus_from_gt, focus_from_mask, focus_from_pixel, focus_from_value
from data.loaders import LAYOUTS, detect_layout, load_test_set
from data.synthesis import OnTheFlyDataset, SceneConfig, largest_crop_size, synthesize_batch
from kernels.colour import DEFAULT_GAMMA

DEFAULT_PREVIEW_SIZE = 256  # px

__all__ = [
    "OnTheFlyDataset", "SceneConfig", "synthesize_batch", "load_test_set", "detect_layout", "LAYOUTS",
    "focus_from_value", "focus_from_pixel", "focus_from_mask", "focus_from_gt",
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    preview = commands.add_parser("preview", help="render a few OnTheFlyDataset samples into a contact sheet",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    preview.add_argument("--data_root", required=True, help="folder with fg/ (RGBA cut-outs) and bg/ (photos)")
    preview.add_argument("--out", required=True, help="output folder (created)")
    preview.add_argument("--n", type=int, default=6, help="number of samples")
    preview.add_argument("--size", type=int, default=None,
                         help=f"crop size in px (default {DEFAULT_PREVIEW_SIZE}, or the largest crop the backgrounds "
                              "allow when they are smaller)")
    preview.add_argument("--seed", type=int, default=0, help="random seed of the synthesised scenes")
    preview.add_argument("--gamma", type=float, default=DEFAULT_GAMMA,
                         help="linear light = srgb ** gamma while rendering")
    inspect = commands.add_parser("inspect", help="list the items of a test set",
                                  formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    inspect.add_argument("--data_root", required=True, help="test-set folder")
    inspect.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS], help="test-set layout (auto: detected)")
    args = parser.parse_args(argv)
    if args.command == "preview":
        largest = largest_crop_size(args.data_root)
        if args.size is None:
            args.size = min(DEFAULT_PREVIEW_SIZE, largest) if largest >= 8 else DEFAULT_PREVIEW_SIZE
        if args.n < 1 or args.size < 8:
            parser.error("--n must be >= 1 and --size >= 8 px")
        if not args.gamma > 0:  # linear = srgb ** gamma, and the render divides by gamma to encode sRGB again
            parser.error(f"--gamma must be > 0 (1 renders on sRGB values, {DEFAULT_GAMMA} is the default), "
                         f"found {args.gamma}")
        if 8 <= largest < args.size:
            parser.error(f"--size {args.size}: every background in '{Path(args.data_root) / 'bg'}' is smaller than "
                         f"the crop (the largest allows {largest} px); pass --size {largest} or less, or add "
                         f"backgrounds of at least {args.size} px")
    return args


def preview(args) -> None:
    from data.io import contact_sheet, save_image

    dataset = OnTheFlyDataset(args.data_root, size=args.size, seed=args.seed, gamma=args.gamma, length=args.n,
                              flag="--data_root")
    tiles, labels = [], []
    for index in range(args.n):
        start = time.perf_counter()
        sample = dataset[index]
        seconds = time.perf_counter() - start
        K, focus = float(sample["K"]), float(sample["disp_focus"])
        print(json.dumps({"index": index, "K": round(K, 3), "disp_focus": round(focus, 4),
                          "max_abs_coc_px": round(float(sample["coc_px"].abs().max()), 2), "seconds": round(seconds, 3)}))
        tiles += [sample["aif"].numpy(), sample["bokeh"].numpy(), sample["disparity"].expand(3, -1, -1).numpy()]
        labels += [f"#{index} aif", f"bokeh K={K:.1f} f={focus:.2f}", "disparity"]
    out = Path(args.out)
    path = save_image(out / "preview.png", contact_sheet(tiles, labels, columns=3, width=min(args.size, 320)))
    if dataset.skip_report():
        print(f"skipped (bad data): {dataset.skip_report()}", file=sys.stderr)
    print(f"wrote {path}")



def inspect(args) -> None:
    layout = args.layout
    if layout == "auto":  # detected here so that the message names this tool's flag
        layout = detect_layout(args.data_root, f"Pass --layout NAME (one of {', '.join(LAYOUTS)}) to choose explicitly.")
    test_set = load_test_set(args.data_root, layout)
    print(f"{args.data_root}: layout {test_set.layout}, {len(test_set)} items")
    for item in test_set:
        info = {"name": item["name"], "size": item["image"].shape[1:], "mask": "mask" in item, "gt": "gt" in item}
        for key in ("K", "disp_focus"):
            if key in item:
                info[key] = round(float(item[key]), 4)
        if "focus_source" in item:
            info["focus_source"] = item["focus_source"]
        print(json.dumps({k: (list(v) if not isinstance(v, (str, bool, float)) else v) for k, v in info.items()}))


def main(argv=None) -> int:
    """Exit status: 0 done, 2 unusable data or arguments (one ``error:`` line naming the folder and the fix)."""
    args = parse_args(argv)
    try:
        {"preview": preview, "inspect": inspect}[args.command](args)
    except (ValueError, RuntimeError, OSError) as error:  # the data's own message names the folder and the fix
        print(f"dataset.py {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
