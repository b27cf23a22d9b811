"""Benchmark the app's click-to-preview latency on the demo photo (classical renderer, CPU). Writes the "App"
section of BENCHMARKS.md.

A "click" is what the server does for one click on the photo: ``webapp.ui.Callbacks.click`` (focus from the
clicked pixel, the preview render at ``--preview_side``, the disparity view) plus the PNG encoding of the two
images Gradio sends back. Clicks go to several pixels (near and far focus planes cost differently; the median
is reported). The full-resolution render of the same settings, timed in the same process, is the baseline.
The browser's own work (upload of the PNGs over the loopback, decoding, drawing) is not included.

    python -m benchmarks.bench_app [--K 10 20] [--preview_side 384] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import io
import statistics
import time
from types import SimpleNamespace

import cv2
import torch
from PIL import Image

from benchmarks.report import load_average, machine_description, replace_section
from data.io import resize_map
from webapp.core import PREVIEW_SIDE, RenderOptions, Scene, demo_scene, focus_at, render
from webapp.options import parse_args as app_args
from webapp.renderers import renderer_factories
from webapp.ui import Callbacks

SECTION = "## App"
# Clicked pixels (x, y) of the 741 x 500 demo: back wall, seat, front wheel, floor, shelf.
CLICKS = ((60, 60), (330, 220), (560, 380), (360, 470), (650, 90))


def _png(array) -> int:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.tell()


def click_seconds(callbacks: Callbacks, session, controls, x: int, y: int) -> tuple[float, float]:
    """(wall-clock, CPU) seconds of one click: the callback, then PNG encoding of the render and the disparity
    view. CPU time (all threads of this process) depends less on other jobs sharing the cores; on two idle
    cores the wall time lies between CPU / 2 (both threads busy throughout) and CPU."""
    start, cpu = time.perf_counter(), time.process_time()
    out = callbacks.click(session, *controls, evt=SimpleNamespace(index=[x, y]))
    if out[-1]:
        raise RuntimeError(f"click at ({x}, {y}) failed: {out[-1]}")
    _png(out[1]), _png(out[2])
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--K", type=float, nargs="+", default=[10.0, 20.0], help="blur strengths (demo: 10 20)")
    parser.add_argument("--preview_side", type=int, default=PREVIEW_SIDE)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the clicked pixels")
    parser.add_argument("--large", type=int, default=3, help="second photo: the demo enlarged this many times")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    _, render_args, names = app_args([])  # what `make app` starts with
    factories = renderer_factories(render_args, names, torch.device("cpu"))
    demo = demo_scene()
    large = Scene(f"demo x{args.large}", *(
        resize_map(a, (demo.size[0] * args.large, demo.size[1] * args.large), interpolation=cv2.INTER_CUBIC).clip(0, 1)
        for a in (demo.image, demo.disparity)))
    rows = []
    for scene, factor in ((demo, 1), (large, args.large)):
        callbacks = Callbacks(factories, "outputs/bench_app", initial_scene=scene, preview_side=args.preview_side)
        clicks = [(x * factor, y * factor) for x, y in CLICKS]
        for K in args.K:
            controls = ("classical", K, 0, 0.0, 0.0, 0.8)
            session = callbacks.start(*controls)[0]
            click_seconds(callbacks, session, controls, *clicks[0])  # warm-up (allocator, lazy inits)
            both = [click_seconds(callbacks, session, controls, x, y) for _ in range(args.repeats) for x, y in clicks]
            times, cpu = [wall for wall, _ in both], [c for _, c in both]

            def full_render(scene=scene, K=K, focus=session.focus):
                return render(scene, RenderOptions(K=K), focus, factories["classical"], 1.0)

            full_render()  # warm-up: the first render at a new size pays one-off costs
            start, cpu_start = time.perf_counter(), time.process_time()
            full_render()
            full, full_cpu = time.perf_counter() - start, time.process_time() - cpu_start
            scales = [scene.preview_scale(args.preview_side, K, focus_at(scene, x, y)) for x, y in clicks]
            size = f"{scene.size[1]}x{scene.size[0]}"
            rows.append((size, K, min(scales), max(scales), statistics.median(times), max(times),
                         statistics.median(cpu), max(cpu), full, full_cpu))
            print(f"{size} K={K:g}: click median {statistics.median(times):.3f} s "
                  f"(CPU {statistics.median(cpu):.3f} s), "
                  f"max {max(times):.3f} s; full resolution {full:.2f} s (CPU {full_cpu:.2f} s)")
    load = load_average()
    lines = [
        SECTION, "",
        f"Measured {datetime.date.today()} by `benchmarks/bench_app.py` on {machine_description()}; load average "
        f"{load} (shared machine).", "",
        f"Click-to-preview latency of `make app` on the demo photo ({demo.size[1]}x{demo.size[0]}) and on the demo "
        f"enlarged {args.large}x (bicubic; the size of a camera photo), classical renderer, disc aperture: the "
        f"server's work for one click on the photo (`webapp.ui.Callbacks.click`: "
        f"focus at the pixel, preview render at `--preview_side {args.preview_side}`, smaller where "
        f"pixels x largest CoC radius^2 would exceed the budget (`webapp.core.Scene.preview_scale`), disparity "
        f"view, both images reduced to at most `DISPLAY_SIDE` px; then PNG encoding of both), "
        f"{args.repeats} x {len(CLICKS)} clicks at pixels on every depth "
        f"plane after a warm-up. Baseline: the full-resolution render (what \"Render full resolution\" does), same "
        "process, timed after one untimed warm-up render. Browser-side time (transfer over loopback, decoding, "
        "drawing) is not included.", "",
        "Wall-clock times on a shared machine grow with its load; the CPU seconds (all threads of the process) "
        "grow less (waiting threads may still spin), and on two idle cores a click's wall time lies between "
        "CPU / 2 and CPU.", "",
        "| photo | K (px) | preview scale | click wall median / max (s) | click CPU median / max (s) | "
        "full resolution wall "
        "/ CPU (s) | full / click (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {size} | {K:g} | {lo:.2f}-{hi:.2f} | {med:.3f} / {worst:.3f} | {cmed:.3f} / {cworst:.3f} | "
              f"{full:.2f} / "
              f"{full_cpu:.2f} | {full_cpu / cmed:.1f} |"
              for size, K, lo, hi, med, worst, cmed, cworst, full, full_cpu in rows]
    lines += ["", "Reading: the full render's cost grows with the photo's pixels x the largest CoC radius^2; a click's "
              "does not, because the preview scale holds that product under a cap and the images sent to the page "
              "are at most `DISPLAY_SIDE` px, so the preview matters for camera-sized photos and strong blur. What "
              "remains of a click is work at full size (the preview resized back, the focus lookup) and the PNG "
              "encoding. The app starts at the demo's K = 10; full renders are timed at the starting focus (the "
              "demo's 90th percentile)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        print(f"wrote the '{SECTION[3:]}' section of {replace_section(text)}")


if __name__ == "__main__":
    main()
