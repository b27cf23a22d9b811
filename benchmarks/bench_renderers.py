"""Benchmark the bokeh renderers: ms per megapixel at max CoC radius 4, 16, 32 px (CPU, and CUDA when
present); the ray tracer also per aperture sample. Writes the "Renderers" section of BENCHMARKS.md.
``--strips`` instead times the CPU gather's strip size (``_scatter_torch(strip_elems=...)``) on the demo photo
and writes the "Scatter strips" section.

    python -m benchmarks.bench_renderers [--size 512] [--repeats 2] [--no-write]
    python -m benchmarks.bench_renderers --strips [--threads 1 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.report import BENCHMARKS_MD, best_of, load_average, machine_description, replace_section
from kernels import aperture, cuda_available, render_layers, render_scatter
from kernels import scatter as scatter_mod
from kernels.colour import DEFAULT_GAMMA

RADII = (4, 16, 32)
SECTION = "## Renderers"
STRIPS_SECTION = "## Scatter strips"
STRIP_EXPONENTS = (15, 16, 17, 18, 19)  # strip_elems = 2 ** e


def _fast_vs_reference(img, coc, repeats: int, sync) -> tuple[float, float]:
    """Median seconds of the reference and the fast torch gather (``kernels/scatter.py``) on the same
    inputs, runs interleaved so that load on the shared machine hits both alike."""
    radius = coc.abs()
    offsets = scatter_mod._offsets(float(radius.max()), 0, 0.0)
    apothem = aperture.apothem_ratio(0)
    fns = (scatter_mod._scatter_torch_reference, scatter_mod._scatter_torch)
    times = ([], [])
    for _ in range(max(repeats, 3)):
        for fn, acc in zip(fns, times):
            start = time.perf_counter()
            fn(img, coc, offsets, apothem)
            sync()
            acc.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def _motorcycle(device):
    """The demo photo (linear light) with CoC = 20 * (disparity - 0.6) px: |CoC| up to 12, median ~6."""
    from data.demo import load_motorcycle

    image, disparity = load_motorcycle()
    img = torch.from_numpy(image).float()[None].clamp(0.0, 1.0) ** DEFAULT_GAMMA
    coc = 20.0 * (torch.from_numpy(disparity).float()[None] - 0.6)
    return img.to(device), coc.to(device)


def _scenes(size: int, radius: float, device):
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(1, 3, size, size, generator=gen).to(device)
    # Ground-plane-like CoC ramp from -R (top, far) to +R (bottom, near): every radius up to R occurs.
    ramp = torch.linspace(-radius, radius, size).view(1, 1, size, 1).expand(1, 1, size, size).contiguous()
    n_layers = 3
    imgs = torch.rand(1, n_layers, 3, size, size, generator=gen).to(device)
    alphas = (torch.rand(1, n_layers, 1, size, size, generator=gen) > 0.3).float().to(device)
    alphas[:, -1] = 1.0
    # Near layer at disparity 0.9, middle tilted, far at 0.1; focus 0.5, K so that max |CoC| = R.
    planes = torch.tensor([[[0.0, 0.0, 1 / 0.9], [0.0, 0.4 / size / 0.5, 1 / 0.5], [0.0, 0.0, 1 / 0.1]]]).to(device)
    k = radius / 0.4
    return img, ramp.to(device), imgs, alphas, planes, k


def run(size: int, repeats: int) -> list[dict]:
    rows = []
    devices = [("cpu", "torch")]
    if torch.cuda.is_available():
        devices.append(("cuda", "torch"))
        if cuda_available():
            devices.append(("cuda", "cuda"))
    mpix = size * size / 1e6
    for device, impl in devices:
        dev = torch.device(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        for radius in RADII:
            img, coc, imgs, alphas, planes, k = _scenes(size, radius, dev)
            # Baseline in the same process (CONTRIBUTING): a plain conv2d with a disc kernel of radius R,
            # i.e. a uniform blur with no per-pixel radius or occlusion, so load on the machine cancels out.
            yy, xx = torch.meshgrid(torch.arange(-radius, radius + 1.0), torch.arange(-radius, radius + 1.0),
                                    indexing="ij")
            disc = ((xx**2 + yy**2) <= radius**2).float()
            disc = (disc / disc.sum()).expand(3, 1, -1, -1).to(dev)
            t_base = best_of(lambda: torch.nn.functional.conv2d(img, disc, padding=radius, groups=3), repeats, sync)
            t = best_of(lambda: render_scatter(img, coc, impl=impl), repeats, sync)
            t_ref, t_fast = _fast_vs_reference(img, coc, repeats, sync) if impl == "torch" else (None, None)
            rows.append(dict(renderer="scatter", device=device, impl=impl, radius=radius, samples="-",
                             ms_per_mp=1e3 * t / mpix, ms_per_mp_sample="-", ratio=t / t_base,
                             ref_ms_per_mp=t_ref and 1e3 * t_ref / mpix, speedup=t_ref and t_ref / t_fast))
            n_samples = 16
            t = best_of(lambda: render_layers(imgs, alphas, planes, k, 0.5, n_samples=n_samples, impl=impl),
                      repeats, sync)
            rows.append(dict(renderer="layers (3 layers)", device=device, impl=impl, radius=radius,
                             samples=n_samples, ms_per_mp=1e3 * t / mpix,
                             ms_per_mp_sample=1e3 * t / mpix / n_samples, ratio=t / t_base))
            print(rows[-2], rows[-1], flush=True)
        if impl == "torch":
            img, coc = _motorcycle(dev)
            mp = img.shape[-1] * img.shape[-2] / 1e6
            t = best_of(lambda: render_scatter(img, coc, impl=impl), repeats, sync)
            t_ref, t_fast = _fast_vs_reference(img, coc, repeats, sync)
            rows.append(dict(renderer="scatter, motorcycle 741x500", device=device, impl=impl,
                             radius=f"{float(coc.abs().max()):.0f}", samples="-", ms_per_mp=1e3 * t / mp,
                             ms_per_mp_sample="-", ratio=float("nan"), ref_ms_per_mp=1e3 * t_ref / mp,
                             speedup=t_ref / t_fast))
            print(rows[-1], flush=True)
    return rows


def render_section(rows: list[dict], size: int) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {datetime.date.today().isoformat()} by `benchmarks/bench_renderers.py` on {machine_description()}.",
        f"Image {size}x{size}, best of N runs after a warm-up. Scatter: CoC ramp from -R to +R over the rows "
        "(every radius up to R present; the fast gather skips offsets that no source in the rows it reads "
        "can reach, so maps with small local radii cost less). "
        "Layers: 3 RGBA layers (near, tilted middle, far), focus on the middle, K such that max |CoC| = R, "
        "16 aperture samples; cost grows linearly with samples and layers. Scatter on CPU: the last two "
        "columns time the torch gather alone, `_scatter_torch_reference` (one full-image pass per offset) "
        "against the fast strip-wise `_scatter_torch` that `render_scatter` uses, interleaved in the same "
        "process (medians); the motorcycle row is the demo photo with CoC = 20 (disparity - 0.6) px.",
        "",
        f"Load average when measured: {load_average()} (the machine is shared; the last column, the ratio to a "
        "conv2d disc blur of radius R timed in the same process, is the load-independent number).",
        "",
        "| renderer | device | impl | max CoC R (px) | aperture samples | ms / MP | ms / MP / sample "
        "| x conv2d disc | reference ms / MP | reference / fast |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_sample = r["ms_per_mp_sample"]
        per_sample = f"{per_sample:.1f}" if isinstance(per_sample, float) else per_sample
        ref = r.get("ref_ms_per_mp")
        ref = f"{ref:.0f}" if ref else "-"
        speedup = f"{r['speedup']:.2f}" if r.get("speedup") else "-"
        ratio = "-" if r["ratio"] != r["ratio"] else f"{r['ratio']:.1f}"
        lines.append(f"| {r['renderer']} | {r['device']} | {r['impl']} | {r['radius']} | {r['samples']} | "
                     f"{r['ms_per_mp']:.0f} | {per_sample} | {ratio} | {ref} | {speedup} |")
    return "\n".join(lines) + "\n"


_BUSY = "import torch\ntorch.set_num_threads(1)\nx = torch.randn(1500, 1500)\nwhile True:\n    x @ x\n"


def run_strips(threads: list[int], repeats: int, busy: bool = True) -> list[dict]:
    """Median seconds of ``_scatter_torch`` on the demo photo (demo K = 20, focus at the median disparity:
    |CoC| up to ~20 px) per strip size, the sizes interleaved within each repeat so that load on the shared
    machine hits all alike; each time is also given relative to the default strip size, in the same runs.
    With ``busy``, one thread also runs again while another process multiplies matrices on one core (as under
    ``make test``: one worker per core)."""
    from data.demo import load_motorcycle

    image, disparity = load_motorcycle()
    img = torch.from_numpy(image).float()[None].clamp(0.0, 1.0) ** DEFAULT_GAMMA
    disp = torch.from_numpy(disparity).float()[None]
    coc = 20.0 * (disp - disp.median())
    offsets = scatter_mod._offsets(float(coc.abs().max()), 0, 0.0)
    apothem = aperture.apothem_ratio(0)
    rows = []
    before = torch.get_num_threads()
    settings = [(n, False) for n in threads] + ([(1, True)] if busy else [])
    try:
        for n, loaded in settings:
            other = subprocess.Popen([sys.executable, "-c", _BUSY]) if loaded else None
            torch.set_num_threads(n)
            default = scatter_mod._default_strip_elems()
            scatter_mod._scatter_torch(img, coc, offsets, apothem)  # warm-up
            times = {e: [] for e in STRIP_EXPONENTS}
            try:
                for _ in range(repeats):
                    for e in STRIP_EXPONENTS:
                        start = time.perf_counter()
                        scatter_mod._scatter_torch(img, coc, offsets, apothem, strip_elems=2 ** e)
                        times[e].append(time.perf_counter() - start)
            finally:
                if other is not None:
                    other.kill()
                    other.wait()
            base = statistics.median(times[default.bit_length() - 1])
            for e in STRIP_EXPONENTS:
                t = statistics.median(times[e])
                rows.append(dict(threads=n, busy=loaded, exponent=e, default=2 ** e == default, s=t, ratio=t / base,
                                 spread=(min(times[e]), max(times[e]))))
                print(rows[-1], flush=True)
    finally:
        torch.set_num_threads(before)
    return rows


def render_strips(rows: list[dict], repeats: int) -> str:
    lines = [
        STRIPS_SECTION,
        "",
        f"Measured {datetime.date.today().isoformat()} by `python -m benchmarks.bench_renderers --strips` on "
        f"{machine_description()}; load average {load_average()}.",
        "The CPU gather (`kernels/scatter.py` `_scatter_torch`) on the demo photo (741x500, CoC = 20 (disparity "
        "- median) px, |CoC| up to about 20 px), per strip size `strip_elems` (elements of one (offsets, strip) "
        f"temporary); median of {repeats} runs with the sizes interleaved, min-max in brackets; `x default` is "
        "relative to the default strip size in the same runs. \"Other core busy\": another process multiplies "
        "matrices on one thread meanwhile, as the other worker of `make test` does.",
        "",
        "| threads | other core | strip_elems | s per render | x default |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " (default)" if r["default"] else ""
        lines.append(f"| {r['threads']} | {'busy' if r['busy'] else 'idle'} | 2^{r['exponent']}{mark} | {r['s']:.2f} ({r['spread'][0]:.2f}-"
                     f"{r['spread'][1]:.2f}) | {r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="square image side in px (default 512)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting, best is kept")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    parser.add_argument("--output", type=Path, default=BENCHMARKS_MD)
    parser.add_argument("--strips", action="store_true", help="time the CPU gather's strip sizes instead")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads for --strips")
    parser.add_argument("--no-busy", action="store_true", help="--strips without the run beside a busy core")
    args = parser.parse_args(argv)
    if args.strips:
        text = render_strips(run_strips(args.threads, args.repeats, busy=not args.no_busy), args.repeats)
    else:
        text = render_section(run(args.size, args.repeats), args.size)
    print(text)
    if not args.no_write:
        replace_section(text, args.output)


if __name__ == "__main__":
    main()
