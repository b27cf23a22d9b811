"""PISA attention: reference (dense) vs chunked, peak memory and time, as ratios measured in one run.

Setting (issue 4): 10 heads, d = 64, S = 7 segments, P = 5 supersamples, square token grids, random
disparity and CoC, float32 on CPU (and CUDA when present).

Memory method: every measurement runs in a fresh spawned process. On CPU the peak is the process's
high-water resident set (``resource.getrusage(...).ru_maxrss``) after the call minus the resident set just
before it (inputs already built), i.e. the extra memory the call needed. On CUDA it is
``torch.cuda.max_memory_allocated`` minus the allocation before the call.

Usage (from the repository root, so `models` is importable; measurements run in spawned processes):
    python -m benchmarks.bench_pisa                  # the default plan below; writes BENCHMARKS.md
    python -m benchmarks.bench_pisa --plan quick --no-write
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path

import torch

from benchmarks.report import machine_description, replace_section

ROOT = Path(__file__).resolve().parents[1]


# (tokens per side, implementation, backward?, occlusion?)
PLANS = {
    "default": [
        (32, "reference", True, True), (32, "chunked", True, True),  # N = 1024, forward + backward
        (64, "reference", False, True), (64, "chunked", False, True),  # N = 4096, forward
        (128, "chunked", False, True),  # N = 16384 (a 2048-px frame), forward with occlusion: fits in 24 GB?
    ],
    "quick": [(16, "reference", True, True), (16, "chunked", True, True)],
}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _measure(side: int, impl: str, backward: bool, occlusion: bool, device: str, threads: int, queue) -> None:
    from models.pisa import pisa_attention  # noqa: PLC0415 (imported in the fresh process)

    torch.set_num_threads(threads)
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    B, H, d, N = 1, 10, 64, side * side
    q, k, v = (torch.randn(B, H, N, d, generator=g).to(dev).requires_grad_(backward) for _ in range(3))
    disparity = torch.rand(B, side, side, generator=g).to(dev)
    coc = ((torch.rand(B, side, side, generator=g) - 0.5) * 80).to(dev)
    kw = dict(hardness=1e7, px_per_token=16.0, occlusion=occlusion, n_segments=7, n_supersamples=5, block_size=256)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()

    def call():
        out = pisa_attention(q, k, v, disparity, coc, impl=impl, **kw)
        if backward:
            out.square().mean().backward()

    t0 = time.perf_counter()
    if N <= 4096:
        # Warm-up (one-time allocator and kernel set-up), then the timed call. The peak memory is the
        # high-water mark of either call: both allocate the same.
        call()
        q.grad = k.grad = v.grad = None
        t0 = time.perf_counter()
    call()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    queue.put(dict(side=side, N=N, impl=impl, backward=backward, occlusion=occlusion, device=device,
                   seconds=time.perf_counter() - t0, peak_bytes=max(peak, 0)))


def run_one(side, impl, backward, occlusion, device, threads, timeout):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(side, impl, backward, occlusion, device, threads, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return dict(side=side, N=side * side, impl=impl, backward=backward, occlusion=occlusion, device=device,
                    error=f"timed out after {timeout} s")
    if proc.exitcode != 0 or queue.empty():
        return dict(side=side, N=side * side, impl=impl, backward=backward, occlusion=occlusion, device=device,
                    error=f"exit code {proc.exitcode} (out of memory?)")
    return queue.get()


def _fmt_gb(b):
    return f"{b / 2**30:.2f} GiB" if b >= 2**28 else f"{b / 2**20:.0f} MiB"


def render(results: list[dict], args) -> str:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "## PISA attention (`benchmarks/bench_pisa.py`)",
        "",
        f"Run {datetime.date.today().isoformat()}: `python -m benchmarks.bench_pisa --plan {args.plan}` on "
        f"{machine_description()}; load average {load}; 10 heads, d = 64, S = 7, P = 5, block 256, fp32.",
        "Each row runs in a fresh process. Time: N <= 4096 after one untimed warm-up call; larger N cold. Peak "
        "memory = extra resident set (CPU: `ru_maxrss` high-water mark minus RSS before the call) or extra CUDA "
        "allocation. Ratios are reference / chunked from the same run.",
        "",
        "| device | N | pass | occlusion | impl | time (s) | peak memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        pas = "fwd+bwd" if r["backward"] else "fwd"
        if "error" in r:
            lines.append(f"| {r['device']} | {r['N']} | {pas} | {r['occlusion']} | {r['impl']} | {r['error']} | |")
        else:
            lines.append(f"| {r['device']} | {r['N']} | {pas} | {r['occlusion']} | {r['impl']} | "
                         f"{r['seconds']:.2f} | {_fmt_gb(r['peak_bytes'])} |")
    lines += ["", "Ratios (reference / chunked):", ""]
    for r in results:
        if r["impl"] != "reference" or "error" in r:
            continue
        twin = [c for c in results if c["impl"] == "chunked" and c["N"] == r["N"] and c["device"] == r["device"]
                and c["backward"] == r["backward"] and "error" not in c]
        if twin:
            c = twin[0]
            lines.append(f"- {r['device']}, N = {r['N']} ({'fwd+bwd' if r['backward'] else 'fwd'}): memory "
                         f"{r['peak_bytes'] / max(c['peak_bytes'], 1):.1f}x lower, time "
                         f"{r['seconds'] / c['seconds']:.2f}x (>1: chunked faster).")
    big = [r for r in results if r["N"] >= 16384 and r["impl"] == "chunked" and r["occlusion"]]
    for r in big:
        verdict = r.get("error") or (f"{'within' if r['peak_bytes'] < 24 * 2**30 else 'NOT within'} 24 GB "
                                     f"({_fmt_gb(r['peak_bytes'])}, {r['seconds']:.0f} s)")
        lines.append(f"- {r['device']}, N = {r['N']} (a 2048-px frame, full frame, occlusion on): {verdict}.")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan", choices=sorted(PLANS), default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=None, help="also dump the raw results here")
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=None,
                        help="devices to measure (default: cpu, and cuda when available)")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="file whose PISA section is updated")
    args = parser.parse_args(argv)

    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        for side, impl, backward, occlusion in PLANS[args.plan]:
            r = run_one(side, impl, backward, occlusion, device, args.threads, args.timeout)
            print(json.dumps(r), flush=True)
            results.append(r)
    text = render(results, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.no_write:
        replace_section(text, args.output)


if __name__ == "__main__":
    main()
