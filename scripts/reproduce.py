"""The paper's benchmarks in one command: render every ground truth with every method, score, tabulate.

    python -m scripts.reproduce --benchmark blb --data DIR --out outputs/reproduce
    python -m scripts.reproduce --benchmark layered --data benchmark_data --methods identity gaussian classical --out outputs/reproduce
    python -m scripts.reproduce --benchmark all --data blb=DIR ebb=DIR layered=benchmark_data --out outputs/reproduce

Benchmarks (PROTOCOLS.md states every choice): ``blb`` (BokehMe's Blender set: each ``bokeh_<k>_<f>.exr`` at
info.json's K and focus; level = k + 1), ``ebb`` (AIM 2020 all-in-focus / bokeh pairs prepared by
prepare_data.py; ``--ebb_K`` values are the levels) and ``layered`` (our seeded set of scripts.make_benchmark,
built with its defaults when missing; level = rank of the GT's largest CoC). ``--data`` is one folder for one
benchmark, or ``NAME=DIR`` per benchmark.

Methods: identity, gaussian, classical, bokehdiff (``--bokehdiff_args "--pretrained_model_name_or_path DIR
--adapter DIR [--protocol published|corrected]"``, the flags of inference_hf.py), and external peers,
``--method NAME='CMD {image} {disparity} {K} {focus} {out}'`` (run once per ground truth, no shell; see
inference/reproduce.py for what each placeholder is). Rerunning reuses every render whose file exists and
whose settings the method's manifest.json records.

Sharded: ``torchrun --nproc_per_node N -m scripts.reproduce ...`` (or accelerate's launcher with its module flag): each process renders its
block of the ground truths, then the main process scores them all (reusing every render) and writes the reports.

Writes ``<out>/<benchmark>/{tables.md, per_image.csv, per_scene.csv, chart.png, worst_cases.png,
results.json}``, the renders under ``<out>/<benchmark>/<method>/`` and ``<out>/summary.md`` (every table).
Exit code: 0 every ground truth scored by every available method, 1 some failed (listed in tables.md),
2 invalid arguments or no data.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:  # run as a file path: the repository's packages are not importable
    sys.exit("run it as a module from the repository root: python -m scripts.reproduce [options]")

import argparse
import shlex
import warnings
from pathlib import Path

from data.io import InputWarning, write_text_atomic
from data.ranks import join_ranks, rank_device
from inference import benchmark_cases
from inference.options import parse_args as inference_args
from inference.reproduce import PEER_TIMEOUT_S, Method, run_sharded, write_benchmark_reports
from kernels.device import resolve_device
from metrics.bands import BAND_WIDTH_PX
from metrics.image import LEARNED_METRICS, load_learned_metrics
from scripts import make_benchmark
from scripts.run_benchmark import METHODS, build_renderer

DEFAULT_LAYERED = Path("benchmark_data")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description keeps its line breaks; every option shows its default."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--benchmark", nargs="+", default=["all"], choices=[*benchmark_cases.BENCHMARKS, "all"],
                        help="benchmarks to run (all = blb ebb layered)")
    parser.add_argument("--data", nargs="+", default=[], metavar="[NAME=]DIR",
                        help="data folder: one DIR for one benchmark, or NAME=DIR each (layered defaults to "
                        f"{DEFAULT_LAYERED}, built when missing)")
    parser.add_argument("--out", type=Path, required=True, help="folder for renders, tables, CSVs and charts")
    parser.add_argument("--levels", type=int, nargs="+", default=None, help="only these levels (BLB: k + 1 of bokeh_<k>_<f>; EBB: position in --ebb_K; layered: rank of the largest CoC); all when omitted")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS, help="our renderers to score")
    parser.add_argument("--method", action="append", default=[], metavar="NAME='CMD ...'",
                        help="an external peer: NAME=command template with {image} {disparity} {K} {focus} {out}")
    parser.add_argument("--bokehdiff_args", default="", help="extra inference_hf.py flags for bokehdiff (quoted)")
    parser.add_argument("--ebb_K", type=float, nargs="+", default=list(benchmark_cases.EBB_DEFAULT_K),
                        help="EBB: K values to render (px of CoC radius per unit disparity); each is a level")
    parser.add_argument("--ebb_gt", type=Path, default=None, help="EBB: ground-truth bokeh folder; DIR/bokeh when omitted")
    parser.add_argument("--learned", nargs="*", default=sorted(LEARNED_METRICS), choices=sorted(LEARNED_METRICS),
                        help="learned metrics to compute (a bare --learned: only PSNR/SSIM)")
    parser.add_argument("--band_width", type=int, default=BAND_WIDTH_PX, help="discontinuity band half-width (px)")
    parser.add_argument("--peer_timeout", type=float, default=PEER_TIMEOUT_S, help="seconds per peer command")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    args = parser.parse_args(argv)
    args.benchmark = list(benchmark_cases.BENCHMARKS) if "all" in args.benchmark else list(dict.fromkeys(args.benchmark))
    args.data_dirs = _data_dirs(parser, args.data, args.benchmark)
    args.peers = _peers(parser, args.method)
    if not args.methods and not args.peers:
        parser.error("nothing to score: give --methods and/or --method NAME='CMD ...'")
    if args.band_width < 0 or min(args.ebb_K) < 0 or args.peer_timeout <= 0:
        parser.error("--band_width and --ebb_K must be >= 0 and --peer_timeout > 0")
    if "bokehdiff" in args.methods:  # a bad flag is one usage error now, not a failure per image later
        inference_args(["--renderer", "bokehdiff", "--test_data_dir", ".", "--output_dir", str(args.out),
                        *shlex.split(args.bokehdiff_args)])
    return args


def _data_dirs(parser, items: list[str], benchmarks: list[str]) -> dict[str, Path]:
    dirs = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep:
            if len(benchmarks) != 1 or len(items) != 1:
                parser.error(f"--data {item}: with several benchmarks give NAME=DIR for each ({', '.join(benchmarks)})")
            name, folder = benchmarks[0], item
        if name not in benchmark_cases.BENCHMARKS:
            parser.error(f"--data {item}: unknown benchmark '{name}'; expected one of {benchmark_cases.BENCHMARKS}")
        dirs[name] = Path(folder)
    dirs.setdefault("layered", DEFAULT_LAYERED)
    missing = [b for b in benchmarks if b not in dirs]
    if missing:
        parser.error(f"no data folder for {', '.join(missing)}: pass --data {missing[0]}=DIR")
    return dirs


def _peers(parser, items: list[str]) -> dict[str, str]:
    peers = {}
    for item in items:
        name, sep, command = item.partition("=")
        if not sep or not name or not command.strip():
            parser.error(f"--method {item!r}: expected NAME='CMD {{image}} {{disparity}} {{K}} {{focus}} {{out}}'")
        if name in METHODS or name in peers or not name.replace("_", "").replace("-", "").isalnum():
            parser.error(f"--method {name}: the name must be new (not {', '.join(METHODS)}) and plain (letters, "
                         "digits, _ or -)")
        if "{out}" not in command:
            parser.error(f"--method {name}: the command has no {{out}}, the PNG it must write")
        try:
            shlex.split(command)
        except ValueError as error:
            parser.error(f"--method {name}: cannot split the command ({error})")
        peers[name] = command
    return peers


def _cases(benchmark: str, data: Path, args, ranks):
    if benchmark == "blb":
        return benchmark_cases.blb_cases(data, args.levels)
    if benchmark == "ebb":
        return benchmark_cases.ebb_cases(data, args.ebb_K, gt_dir=args.ebb_gt, levels=args.levels)
    try:
        if ranks.is_main and not (data / "ebb" / "meta.json").is_file():
            print(f"building the layered benchmark in {data} (scripts.make_benchmark defaults)")
            make_benchmark.main(["--out", str(data)])
    finally:
        ranks.barrier()  # the other processes list it once it is built (or fail to, as the main one did)
    return benchmark_cases.layered_cases(data, args.levels)


def _methods(args, data: Path) -> list[Method]:
    methods = [Method(name, spec=args.bokehdiff_args if name == "bokehdiff" else name,
                      build=lambda n=name: build_renderer(n, args, data)) for name in args.methods]
    return methods + [Method(name, spec=command, command=command) for name, command in args.peers.items()]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    ranks = join_ranks(device.type)  # one process, or a rank of accelerate launch / torchrun
    device = rank_device(ranks, device)
    args.device = str(device)  # our renderers are built on this rank's device
    learned, unavailable_metrics = load_learned_metrics(args.learned, device)
    for name, reason in unavailable_metrics.items():
        print(f"warning: {name} unavailable ({reason})", file=sys.stderr)
    sections, failed, listed = [], False, 0
    for benchmark in args.benchmark:
        data = args.data_dirs[benchmark]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InputWarning)
                cases, scene_failures = _cases(benchmark, data, args, ranks)
        except (OSError, ValueError) as error:
            if ranks.is_main:
                print(f"error: {benchmark}: {error}", file=sys.stderr)
            sections.append(f"## {benchmark}\n\nnot run: {error}\n")
            failed = True
            continue
        listed += 1
        for scene, reason in scene_failures.items() if ranks.is_main else ():
            print(f"error: {benchmark}: {scene}: {reason}", file=sys.stderr)
        methods = _methods(args, data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InputWarning)  # repairs of the inputs are the protocol's, stated once
            result = run_sharded(cases, methods, args.out / benchmark, ranks, learned=learned,
                                 band_width_px=args.band_width, device=device, peer_timeout_s=args.peer_timeout,
                                 log=lambda line: print(line, file=sys.stderr if line.startswith("error") else sys.stdout))
        if result is None:  # not the main process: it rendered its share; the main process scores and reports
            continue
        notes = [f"{len(cases)} ground truths from `{data}`; {len(result.rows)} (method, image) pairs scored."]
        if unavailable_metrics:
            notes.append("Not computed (weights unavailable here): " + ", ".join(unavailable_metrics) + ".")
        paths = write_benchmark_reports(benchmark, cases, result, [m.name for m in methods], args.out / benchmark,
                                        scene_failures=scene_failures, notes=notes)
        sections.append(paths["tables"].read_text())
        failed |= bool(result.failures or scene_failures)
        print(f"{benchmark}: wrote {', '.join(str(p) for p in paths.values())}")
    if not ranks.is_main:
        return 0
    summary = write_text_atomic(args.out / "summary.md", "# Reproduced benchmarks\n\n" + "\n".join(sections))
    print(summary.read_text())
    print(f"wrote {summary}")
    if listed == 0:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
