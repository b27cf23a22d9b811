"""Benchmark ``inference_hf.py`` over 1 and 2 processes (torchrun, gloo on CPU): renders per second of the whole
command (start-up included, as a user waits for it) and the ratio. Writes the "Sharded inference" section of
BENCHMARKS.md.

    python -m benchmarks.bench_sharding [--inputs 8] [--size 256] [--repeats 2] [--no-write]

Three runs: one process with one thread, one process with ``<processes>`` threads (the same cores as the
sharded run), ``<processes>`` processes with one thread each. Their outputs are compared byte for byte (they
must be equal).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import load_average, machine_description, replace_section
from data.io import save_image

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Sharded inference"
RENDER_ARGS = ("--renderer", "classical", "--K", "10", "20", "--focus_percentile", "90", "50", "10",
               "--device", "cpu", "--no_contact_sheet")  # 3 focus planes x 2 K = 6 renders per input


def write_inputs(root: Path, n_inputs: int, size: int) -> Path:
    """``n_inputs`` random photos ``size`` x ``size`` with a smooth disparity each, in the EBB layout."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for index in range(n_inputs):
        save_image(root / "input" / f"scene{index:03d}.png", rng.random((3, size, size)))
        disparity = np.clip(ramp[:, None] * 0.8 + 0.2 * rng.random((size, size)), 0, 1).astype(np.float32)
        (root / "depth").mkdir(parents=True, exist_ok=True)
        np.save(root / "depth" / f"scene{index:03d}_pred.npy", disparity)
    return root


def run_job(n_processes: int, threads: int, data: Path, out: Path) -> float:
    """Seconds of one ``inference_hf.py`` run (``n_processes`` > 1: under torchrun) into a fresh ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    args = [str(REPO / "inference_hf.py"), "--test_data_dir", str(data), "--output_dir", str(out), *RENDER_ARGS]
    if n_processes > 1:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n_processes),
               "--master_port", port, *args]
    else:
        cmd = [sys.executable, *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=8, help="number of input photos")
    parser.add_argument("--size", type=int, default=256, help="side of each photo (px)")
    parser.add_argument("--processes", type=int, default=2, help="processes of the sharded run")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs each")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    n_renders = args.inputs * 6
    with tempfile.TemporaryDirectory() as tmp:
        data = write_inputs(Path(tmp) / "data", args.inputs, args.size)
        runs = ((1, 1), (1, args.processes), (args.processes, 1))  # (processes, threads each)
        best = {}
        outputs = {}
        for _ in range(args.repeats):  # interleaved, so load on a shared machine hits all alike
            for run in runs:
                out = Path(tmp) / "out"  # one folder for all: run_config.json names it
                best[run] = min(best.get(run, float("inf")), run_job(*run, data, out))
                outputs[run] = snapshot(out)
    if any(outputs[run] != outputs[runs[0]] for run in runs):
        raise RuntimeError("the outputs of the runs differ")
    rows = [f"| {n} | {threads} | {best[(n, threads)]:.2f} | {n_renders / best[(n, threads)]:.2f} | "
            f"{best[runs[0]] / best[(n, threads)]:.2f} |" for n, threads in runs]
    text = "\n".join([
        SECTION,
        "",
        f"Measured {datetime.date.today()} by `benchmarks/bench_sharding.py` on {machine_description()}.",
        f"{args.inputs} inputs of {args.size}x{args.size} px, classical renderer, 3 focus planes x 2 K = "
        f"{n_renders} renders, no contact sheets; wall-clock seconds of the whole command (process start-up, "
        f"imports and the process group included), best of {args.repeats}, runs interleaved; outputs compared byte "
        "for byte: equal. On this shared 2-core machine more threads in one process mostly add contention, "
        "so the sharded run is compared with both one-process runs.",
        "",
        f"Load average when measured: {load_average()} (the machine is shared; the ratio is the number to read).",
        "",
        "| processes | threads each | seconds | renders / s | speed-up vs 1 process, 1 thread |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Batched vs unbatched renders of one input (one VAE encode for all its (K, focus) renders) are not measured:",
        "batching is not implemented yet (it needs a batched call in the pipeline's public API).",
    ])
    print(text)
    if not args.no_write:
        replace_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
