"""Render lens blur for images with disparity: BokehDiff (default), or the classical, Gaussian or identity renderer.

    python inference_hf.py --renderer classical --demo --output_dir outputs/demo   # make demo: offline, seconds
    python inference_hf.py --test_data_dir prepared/mine --output_dir outputs/mine --K 20 \\
        --pretrained_model_name_or_path SG161222/RealVisXL_V5.0 --adapter zcx65535/bokehdiff

Inputs, focus, outputs, exit codes and every option: run it with --help. The code lives in inference/
(renderers, options, batch loop); measured times are in BENCHMARKS.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from data.disk import DiskFullError
from data.inference_io import MANIFEST_NAME, pair_inputs
from data.interrupt import Interrupted, signals_raise
from data.ranks import join_ranks, rank_device
from inference.batch import (make_output_dir, output_files, print_input_notes, render_inputs, select_inputs, stopped,
                             write_manifest)
from inference.options import HelpFormatter, build_parser, compatibility_notes, parse_args
from inference.renderers import (
    CLASSICAL_GAMMA, DEFAULT_RENDERER, RENDERERS, ROW_PROGRESS_DELAY_S, RenderFn, build_bokehdiff, build_classical,
    build_gaussian, build_identity, classical_gamma, with_upsample,
)
from inference.shard import FolderBusy, FolderLock, Job, render_settings
from kernels.device import resolve_device

# Names this script defined before the code moved to inference/: importable from here as before.
__all__ = [
    "CLASSICAL_GAMMA", "DEFAULT_RENDERER", "RENDERERS", "ROW_PROGRESS_DELAY_S", "HelpFormatter", "RenderFn",
    "build_bokehdiff", "build_classical", "build_gaussian", "build_identity", "build_parser", "classical_gamma",
    "main", "pair_inputs", "parse_args", "resolve_device", "with_upsample",
]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    ranks = join_ranks(device.type)  # one plain process, or a rank of accelerate launch / torchrun
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if ranks.is_main:
        compatibility_notes(args)
    # Ctrl-C / SIGTERM end the run with one line and exit 130 / 143 (data.interrupt); a full disk stops it.
    run = SimpleNamespace(files=None, config=None, job=None, lock=None)
    with signals_raise():
        try:
            return _render(args, device, ranks, run)
        except (Interrupted, DiskFullError) as stop:
            return stopped(stop, files=run.files if ranks.is_main else None, config=run.config, job=run.job,
                           output_dir=args.output_dir, rank=f"rank {ranks.index}: " if ranks.count > 1 else "")
        finally:
            if run.lock is not None:
                run.lock.release()


def _render(args, device, ranks, run: SimpleNamespace) -> int:
    """The run; ``run`` holds what :func:`inference.batch.stopped` needs if a signal or a full disk stops it."""
    try:
        # The renderer is built first: --protocol auto is resolved from the adapter, and the test-set input
        # handling follows the resolved protocol.
        render = with_upsample(RENDERERS[args.renderer](args, rank_device(ranks, device)), args.upsample)
        inputs = select_inputs(args)  # may redirect --output_dir (published --data_id meaning)
        if ranks.is_main:
            print_input_notes(inputs)
        output_dir = make_output_dir(args.output_dir)
        files = output_files(args, inputs)
        config = {**vars(args), "device": str(device)}
        if files.claim(MANIFEST_NAME) != output_dir / MANIFEST_NAME:
            raise FileExistsError(f"--output_dir '{output_dir}' holds an input file named {MANIFEST_NAME}, which "
                                  f"this run would replace by its own; choose another --output_dir")
        if ranks.is_main:  # one job per folder: a second run would interleave its records with this one's
            run.lock = FolderLock(output_dir)
        busy = ranks.gather(run.lock is not None and not run.lock.acquire())
        if any(busy):
            if run.lock is not None:
                run.lock = None  # not ours
            raise FolderBusy(f"--output_dir '{output_dir}' is in use by another inference_hf.py run; wait for it "
                             f"to end (rerun then to resume it) or choose another --output_dir")
        job = Job(output_dir, render_settings(config), ranks)
        job.check(args.overwrite)  # every rank, before anything is written
    except (ImportError, RuntimeError, OSError, ValueError) as error:  # OSError: missing/unreachable weights
        if isinstance(error, DiskFullError):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    ranks.barrier()
    run.job = job
    if ranks.is_main:
        job.begin(args.overwrite)
        write_manifest(files, config)
    ranks.barrier()
    job.attach()
    run.files, run.config = files, config

    report = render_inputs(ranks.share(inputs), args, render, rank_device(ranks, device), files, config, job,
                           main=ranks.is_main, n_inputs=len(inputs))
    ranks.barrier()  # every rank's manifest is complete
    failures = job.failures()
    rendered, reused = job.counts()
    ranks.barrier()  # all have read the manifests before the main rank merges and removes them
    if not ranks.is_main:
        return 1 if failures or not inputs else 0
    job.finish(config, files.own_paths, args.overwrite)
    run.files = None  # run_config.json is final

    on_ranks = f" by {ranks.count} processes ({rendered} renders in all)" if ranks.count > 1 else ""
    print(f"{args.renderer}: {report.timer.summary(report.n_renders, report.megapixels)}{on_ranks}; "
          f"outputs in {output_dir}")
    if reused:
        print(f"resumed: {reused} render(s) already in --output_dir were kept (pass --overwrite to render them again)")
    for requested, given in files.renamed:
        print(f"note: '{requested}' would have replaced an input file or another output; written as '{given}'")
    if not inputs:
        print(f"error: no input found in --test_data_dir '{args.test_data_dir}'"
              + (f" matching --data_id '{args.data_id}'" if args.data_id else ""), file=sys.stderr)
        return 1
    if failures:
        print(f"{len(failures)} input(s) failed and were skipped:", file=sys.stderr)
        for name, message in failures:
            print(f"  {name}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
