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

Sparse PISA (issue 13): ``--plan sparse`` times ``impl="sparse"`` / ``"auto"`` against today's ``"chunked"``
path *in one process*, interleaved, so the ratios hold on a loaded machine (the load average is recorded per
row); it writes the "Sparse PISA" section. The dense N = 16384 baseline takes minutes on CPU: it runs only
with ``--dense-16k``; otherwise its time is extrapolated from the measured N = 4096 time by the measured
growth of the chunked path (``--dense-growth``, default 17.2 = 329 s / 19.2 s from the section above).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing as mp
import os
import resource
import time
from pathlib import Path

import torch

from benchmarks.report import best_of, load_average, machine_description, replace_section

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


# Sparse plan rows: (name, tokens per side, batch, hardness, backward?, impls compared; first = baseline)
SPARSE_ROWS = [
    ("inference fwd, 1024 px", 64, 1, 1e7, False, ("chunked", "sparse")),
    ("inference fwd, 2048 px", 128, 1, 1e7, False, ("chunked", "sparse")),
    ("fwd+bwd at hardness 1e7, 512 px", 32, 1, 1e7, True, ("chunked", "sparse")),
    ("training step start (hardness 3), 512 px, batch 2", 32, 2, 3.0, True, ("chunked", "auto")),
    ("training mid-schedule (hardness 1e4), 512 px, batch 2", 32, 2, 1e4, True, ("chunked", "auto")),
]
SPARSE_MAX_COC_PX = 32.0


def run_sparse(device: str, threads: int, dense_16k: bool, dense_growth: float) -> list[dict]:
    """Interleaved, in-process timings of the sparse rows (see the module docstring)."""
    from models.pisa import pisa_attention  # noqa: PLC0415
    from models.pisa.sparse import plan_for_call  # noqa: PLC0415
    from models.pisa.spec import make_spec  # noqa: PLC0415

    torch.set_num_threads(threads)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows, dense_4096 = [], None
    for name, side, B, hardness, backward, impls in SPARSE_ROWS:
        g = torch.Generator().manual_seed(0)
        H, d, N = 10, 64, side * side
        q, k, v = (torch.randn(B, H, N, d, generator=g).to(dev).requires_grad_(backward) for _ in range(3))
        disparity = torch.rand(B, side, side, generator=g).to(dev)
        coc = ((torch.rand(B, side, side, generator=g) * 2 - 1) * SPARSE_MAX_COC_PX).to(dev)
        kw = dict(hardness=hardness, px_per_token=16.0, occlusion=True, n_segments=7, n_supersamples=5)
        plan = plan_for_call(make_spec(q, disparity, coc, **kw), q, k, 1.0 / math.sqrt(d))  # as pisa_attention
        outputs, times = {}, {}

        def call(impl):
            out = pisa_attention(q, k, v, disparity, coc, impl=impl, **kw)
            if backward:
                out.square().mean().backward()
                q.grad = k.grad = v.grad = None
            return out.detach()

        expensive = N >= 4096 and dev.type == "cpu"
        if dev.type == "cuda" and not backward:
            impls = impls + ("flex_sparse",)  # the fused path (forward only), measured where it compiles
        for impl in impls:
            if impl == "chunked" and N >= 16384 and dev.type == "cpu" and not dense_16k:
                continue
            if expensive and impl == "chunked":  # tens of seconds: one cold call (set-up is negligible)
                sync()
                start = time.perf_counter()
                outputs[impl] = call(impl)
                sync()
                times[impl] = time.perf_counter() - start
                continue
            outputs[impl] = call(impl)  # warm-up, and the output for the comparison
            times[impl] = best_of(lambda: call(impl), 3, sync, warmup=False)
        row = dict(name=name, device=device, N=N, batch=B, hardness=hardness, backward=backward, impls=impls,
                   times=times, tile=plan.tile, fraction=plan.fraction, load=load_average())
        base = impls[0]
        if base in outputs:
            row["max_abs_diff"] = {f: float((outputs[f].float() - outputs[base].float()).abs().max())
                                   for f in impls[1:]}
        if N == 4096 and "chunked" in times:
            dense_4096 = times["chunked"]
        if base not in times and dense_4096 is not None:
            row["extrapolated"] = dense_4096 * dense_growth
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def render_sparse(rows: list[dict], args) -> str:
    lines = [
        "## Sparse PISA (`benchmarks/bench_pisa.py --plan sparse`)",
        "",
        f"Run {datetime.date.today().isoformat()}: `python -m benchmarks.bench_pisa --plan sparse` on "
        f"{machine_description()}; 10 heads, d = 64, S = 7, P = 5, occlusion on, fp32, random q, k, v, "
        f"disparity, CoC radii uniform in [0, {SPARSE_MAX_COC_PX:.0f}] px at 16 px per token. Each row times its "
        "implementations in one process, interleaved (best of 3 after a warm-up; the CPU chunked baseline at "
        "N >= 4096 once, cold), so the ratio is the number to read on this shared machine; the load "
        "average is the one when the row finished. `fraction` = pairs the sparse plan evaluates / N^2 (padding "
        "of partial tiles included); `max diff` = max |fast - baseline| of the outputs.",
        "",
        "| case | device | N | pass | baseline | s | fast path | s | speed-up | tile | fraction | max diff | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = r["impls"][0]
        for fast in r["impls"][1:]:
            t_fast = r["times"][fast]
            if base in r["times"]:
                t_base, note = r["times"][base], ""
            else:
                t_base, note = r.get("extrapolated"), " (extrapolated)"
            speed = "-" if t_base is None else f"{t_base / t_fast:.1f}x{note}"
            base_s = "-" if t_base is None else f"{t_base:.2f}{note}"
            diff = f"{r['max_abs_diff'][fast]:.1e}" if "max_abs_diff" in r else "-"
            lines.append(
                f"| {r['name']} | {r['device']} | {r['N']} | {'fwd+bwd' if r['backward'] else 'fwd'} | {base} | "
                f"{base_s} | {fast} | {t_fast:.3f} | {speed} | {r['tile'][0]}x{r['tile'][1]} | "
                f"{r['fraction']:.3f} | {diff} | {r['load']} |"
            )
    if not args.dense_16k:
        lines += ["", f"The chunked N = 16384 baseline was not run here: extrapolated as the measured N = 4096 "
                  f"chunked time x {args.dense_growth} (the chunked path's measured growth from 4096 to 16384 tokens, "
                  "329 s / 19.2 s in the PISA section above; quadratic in N). Run with `--dense-16k` to measure it."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan", choices=sorted(PLANS) + ["sparse"], default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=None, help="also dump the raw results here")
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=None,
                        help="devices to measure (default: cpu, and cuda when available)")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="file whose PISA section is updated")
    parser.add_argument("--dense-16k", action="store_true",
                        help="--plan sparse: also run the chunked baseline at N = 16384 (minutes on CPU)")
    parser.add_argument("--dense-growth", type=float, default=17.2,
                        help="--plan sparse: chunked time ratio N=16384 / N=4096 used to extrapolate")
    args = parser.parse_args(argv)

    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.plan == "sparse":
        results = [r for device in devices for r in run_sparse(device, args.threads, args.dense_16k, args.dense_growth)]
        text = render_sparse(results, args)
    else:
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
