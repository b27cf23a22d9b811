"""Render the evaluation benchmark with every method, score it against ground truth, write the table.

    python -m scripts.run_benchmark --data benchmark_data --out outputs/benchmark
    python -m scripts.run_benchmark --data benchmark_data --out outputs/benchmark --write_benchmarks

Methods: ``identity`` (the all-in-focus input), ``gaussian`` (depth-dependent Gaussian blur), ``classical``
(the scatter renderer) and ``bokehdiff`` (the one-step diffusion model; pass its weights with
``--bokehdiff_args "--pretrained_model_name_or_path DIR --adapter DIR"``). A method whose weights cannot be
loaded is reported as unavailable and the others still run. Each ground truth of ``<data>/ebb/meta.json`` is
rendered from the same input, disparity, K and focus (the K label is the one used to ray-trace it).

Writes ``<out>/<method>/<gt name>.png``, ``<out>/<method>/eval/`` (see ``evaluate.py``), ``<out>/summary.md``,
``<out>/motorcycle_sheet.png`` (the real photo, no ground truth: qualitative) and, with
``--write_benchmarks``, the "Evaluation" section of BENCHMARKS.md. The benchmark is generated first
(``scripts.make_benchmark`` defaults) when ``--data`` does not exist yet.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:  # run as a file path: the repository's packages are not importable
    sys.exit("run it as a module from the repository root: python -m scripts.run_benchmark [options]")

import argparse
import math
import shlex
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.report import BENCHMARKS_MD, replace_section
from data.io import contact_sheet, read_disparity, read_image, save_image, write_text_atomic
from inference.options import parse_args as inference_args
from inference.renderers import RENDERERS
from kernels.device import resolve_device
from metrics.bands import BAND_WIDTH_PX
from metrics.image import LEARNED_METRICS, load_learned_metrics
from models.lora import WeightLoadingError
from metrics.report import Pair, dataset_records, evaluate_pairs, write_reports
from scripts import make_benchmark

METHODS = ("identity", "gaussian", "classical", "bokehdiff")
SUMMARY_METRICS = ("psnr", "ssim", "lpips_vgg", "dists")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description keeps its line breaks; every option shows its default."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("benchmark_data"),
                        help="benchmark folder (scripts.make_benchmark; built with its defaults when missing)")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmark"),
                        help="folder for the renders, per-method reports and summary.md")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="renderers to score")
    parser.add_argument("--bokehdiff_args", default="", help="extra inference_hf.py flags for bokehdiff (quoted)")
    parser.add_argument("--learned", nargs="*", default=sorted(LEARNED_METRICS), choices=sorted(LEARNED_METRICS),
                        help="learned metrics to compute (a bare --learned: only PSNR/SSIM)")
    parser.add_argument("--band_width", type=int, default=BAND_WIDTH_PX, help="discontinuity band half-width (px)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--write_benchmarks", nargs="?", type=Path, const=BENCHMARKS_MD, default=None, metavar="PATH",
                        help="also update the Evaluation section of BENCHMARKS.md (or of PATH); without it only "
                        "--out is written, so the tracked BENCHMARKS.md changes only when asked")
    return parser.parse_args(argv)


def build_renderer(method: str, args: argparse.Namespace, data: Path):
    """A renderer configured exactly as ``inference_hf.py --renderer <method>`` would configure it."""
    extra = shlex.split(args.bokehdiff_args) if method == "bokehdiff" else []
    cli = inference_args(["--renderer", method, "--test_data_dir", str(data), "--device", args.device,
                          "--output_dir", str(args.out), *extra])
    device = resolve_device(cli.device)
    return RENDERERS[method](cli, device), device


def render_method(render, device, records: list[dict], out_dir: Path, desc: str) -> float:
    """Render every record to ``out_dir/<name>.png``; returns the seconds spent rendering. A record that
    fails (unreadable input, out of memory) is reported and skipped; scoring then lists it as failed."""
    seconds = 0.0
    for record in tqdm(records, desc=desc, unit="image"):
        try:
            image = torch.from_numpy(read_image(record["input"]))[None].to(device)
            # The benchmark's disparity is absolute (meta.json: _disparity_absolute): never renormalise it.
            disparity = torch.from_numpy(read_disparity(record["disparity"], normalise="never"))[None].to(device)
            start = time.perf_counter()
            with torch.no_grad():
                out = render(image, disparity, record["K"], record["disp_focus"])
            seconds += time.perf_counter() - start
            save_image(out_dir / f"{record['name']}.png", out[0].float().cpu())
        except (OSError, ValueError, RuntimeError) as error:
            tqdm.write(f"error: {desc}: {record['name']}: {type(error).__name__}: {error}", file=sys.stderr)
    return seconds


def summary_table(results: dict, unavailable_methods: dict, unavailable_metrics: dict, n_images: int,
                  band_width: int = BAND_WIDTH_PX) -> str:
    def cell(value, name):
        if value is None or math.isnan(value):
            return "n/a"
        return f"{value:.2f}" if name.startswith("psnr") else f"{value:.4f}"

    columns = [m for m in SUMMARY_METRICS if m not in unavailable_metrics]
    header = " | ".join(f"{m} | {m} (band)" for m in columns)
    lines = [
        "## Evaluation",
        "",
        f"Seeded layered benchmark (`python -m scripts.make_benchmark`): {n_images} ground truths ray-traced with "
        f"`kernels.render_layers`; band = pixels within {band_width} px of a depth discontinuity. Produced by "
        "`python -m scripts.run_benchmark --write_benchmarks`.",
        "",
        f"| method | {header} | s / image |",
        "|---|" + "---|" * (2 * len(columns) + 1),
    ]
    for method, (means, seconds) in results.items():
        cells = " | ".join(f"{cell(means.get(m), m)} | {cell(means.get(m + '_band'), m)}" for m in columns)
        lines.append(f"| {method} | {cells} | {seconds / max(n_images, 1):.2f} |")
    for method, reason in unavailable_methods.items():
        lines.append(f"| {method} | unavailable: {reason} |")
    if unavailable_metrics:
        lines += ["", "Not computed (pretrained weights unavailable here; never computed with random weights): "
                  + ", ".join(f"`{name}`" for name in unavailable_metrics) + "."]
    return "\n".join(lines) + "\n"


def motorcycle_sheet(renderers: dict, folder: Path, out_path: Path) -> Path | None:
    """Qualitative sheet on the real photo: each method at a near and a far focus plane (disparity
    percentiles 90 and 10), K = 16."""
    image_path, disparity_path = folder / "input" / "motorcycle.png", folder / "depth" / "motorcycle_pred.npy"
    if not image_path.is_file():
        return None
    image, disparity = read_image(image_path), read_disparity(disparity_path, normalise="never")
    focus = [float(np.percentile(disparity, 90)), float(np.percentile(disparity, 10))]
    # One row per method, one column per focus plane; the first row shows the input and its disparity.
    tiles, labels = [image, np.repeat(disparity, 3, axis=0)], ["input (all in focus)", "disparity (white = near)"]
    for method, (render, device) in renderers.items():
        if method == "identity":
            continue  # the input itself, already in the first row
        x = torch.from_numpy(image)[None].to(device)
        d = torch.from_numpy(disparity)[None].to(device)
        for f in focus:
            with torch.no_grad():
                tiles.append(render(x, d, 16.0, f)[0].float().cpu().numpy())
            labels.append(f"{method} K16 f{f:.2f}")
    return save_image(out_path, contact_sheet(tiles, labels, columns=len(focus), width=360))


def main(argv=None) -> int:
    args = parse_args(argv)
    if not (args.data / "ebb" / "meta.json").is_file():
        print(f"building the benchmark in {args.data} (scripts.make_benchmark defaults)")
        make_benchmark.main(["--out", str(args.data)])
    records = dataset_records(args.data / "ebb")

    renderers, unavailable_methods = {}, {}
    for method in args.methods:
        try:
            renderers[method] = build_renderer(method, args, args.data / "ebb")
        except (OSError, WeightLoadingError) as error:  # weights unavailable or unusable: report, run the others
            unavailable_methods[method] = str(error).split(". ")[0][:160]  # first sentence; full text below
            print(f"warning: {method} unavailable: {error}", file=sys.stderr)

    device = next(iter(renderers.values()))[1] if renderers else torch.device("cpu")
    learned, unavailable_metrics = load_learned_metrics(args.learned, device)
    results, failed = {}, False
    for method, (render, method_device) in renderers.items():
        seconds = render_method(render, method_device, records, args.out / method, desc=method)
        method_pairs = [Pair(r["name"], args.out / method / f"{r['name']}.png", r["gt"], r["disparity"]) for r in records]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the benchmark's disparity maps are exact; nothing to repair
            evaluation = evaluate_pairs(method_pairs, learned=learned, unavailable=unavailable_metrics,
                                        band_width_px=args.band_width, device=device)
        write_reports(evaluation, method_pairs, args.out / method / "eval", title=method)
        failed |= bool(evaluation.failures)
        results[method] = (evaluation.means(), seconds)

    table = summary_table(results, unavailable_methods, unavailable_metrics, len(records), args.band_width)
    sheet = motorcycle_sheet(renderers, args.data / "motorcycle", args.out / "motorcycle_sheet.png")
    table_path = write_text_atomic(args.out / "summary.md", table)
    print(table)
    if args.write_benchmarks is not None:
        print(f"updated {replace_section(table, args.write_benchmarks)}")
    print(f"wrote {table_path}" + (f" and {sheet}" if sheet else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
