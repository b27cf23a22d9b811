"""Seconds per OnTheFlyDataset sample (CPU, torch renderer) across the paper's blur range.

The blur range ``12 * 2**U(-2, 3)`` px (at 768 px) is split into one-octave bins; each bin is timed on its
own (the scene model restricted to that octave) so the cost can be read against the blur. Issue 3's target:
a 512x512 sample with blur scale up to 2x (log2 <= 1) in at most 2 s median on 2 cores.

    python -m benchmarks.bench_dataset --size 512 --n 6
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from data.io import InputWarning
from data.synthesis import OnTheFlyDataset, SceneConfig


def time_bin(data_root, size, lo, hi, n, max_samples=None):
    config = SceneConfig(blur_log2_range=(lo, hi))
    dataset = OnTheFlyDataset(data_root, size=size, config=config, length=n + 1, seed=1000 + lo, max_samples=max_samples)
    seconds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        dataset[n]  # warm-up (first-call allocations), not timed
        for index in range(n):
            start = time.perf_counter()
            dataset[index]
            seconds.append(time.perf_counter() - start)
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default=None,
                        help="fg/ + bg/ folder; default: scikit-image samples written to a temporary folder")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--n", type=int, default=6, help="samples per blur octave")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target is for 2 cores)")
    parser.add_argument("--max_samples", type=int, default=None, help="cap on aperture samples (renderer default: 64)")
    parser.add_argument("--max_log2", type=int, default=None, help="stop before this blur octave (e.g. 1 = up to 2x)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.data_root is None:
        import tempfile

        from data.synthesis import write_otf_folder

        args.data_root = write_otf_folder(Path(tempfile.mkdtemp(prefix="bench_dataset_")), size=args.size)
    rows, target = [], []
    for lo in (-2, -1, 0, 1, 2):
        if args.max_log2 is not None and lo >= args.max_log2:
            break
        seconds = time_bin(args.data_root, args.size, lo, lo + 1, args.n, args.max_samples)
        coc = [12 * 2.0**lo, 12 * 2.0 ** (lo + 1)]
        row = {"log2_blur": [lo, lo + 1], "max_coc_px_at_768": coc, "median_s": float(np.median(seconds)),
               "p10_s": float(np.percentile(seconds, 10)), "p90_s": float(np.percentile(seconds, 90)), "n": len(seconds)}
        rows.append(row)
        if lo + 1 <= 1:
            target += seconds
        print(json.dumps(row), flush=True)
    print(json.dumps({"size": args.size, "threads": args.threads, "max_samples": args.max_samples,
                      "load_average": list(__import__("os").getloadavg()),
                      "median_s_blur_up_to_2x": float(np.median(target)), "target_s": 2.0}))


if __name__ == "__main__":
    main()
