"""Draw a training run's curves (loss terms, learning rate, gradient norm, validation PSNR / SSIM / L1 vs step).

    python -m scripts.plot_run RUN_DIR [--out PNG]

RUN_DIR is the ``--output_dir`` of a ``train_lora_otf.py`` run; its ``train_log.jsonl`` and (when the run
validated) ``validation.jsonl`` are read and ``RUN_DIR/training_curves.png`` is written (or ``--out``). The
training run writes the same PNG when it ends; this redraws it, also while a run is still going.
Exit status 0, or 2 when the folder or its ``train_log.jsonl`` is missing or holds no record (one ``error:``
line naming the file).
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:  # run as a file path: the repository's packages are not importable
    sys.exit("run it as a module from the repository root: python -m scripts.plot_run [options]")

import argparse
from pathlib import Path

from training.plots import CURVES_NAME, write_training_curves


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.plot_run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a train_lora_otf.py --output_dir")
    parser.add_argument("--out", type=Path, default=None, metavar="PNG",
                        help=f"the PNG to write (default: RUN_DIR/{CURVES_NAME})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        path = write_training_curves(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"plot_run: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
