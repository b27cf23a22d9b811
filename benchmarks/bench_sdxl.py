"""The real SDXL architecture, measured: one-step inference and one training step at full shape, with the
memory planner's estimate next to each measured peak.

    python -m benchmarks.bench_sdxl                       # CPU (or CUDA when present): every case, BENCHMARKS.md
    python -m benchmarks.bench_sdxl --sizes 512 --no-train --output none
    python -m benchmarks.bench_sdxl --smoke --output none # the tiny stack at 128 px: checks the script runs

The UNet and VAE are built from SDXL base 1.0's configs (:data:`models.sdxl.SDXL_UNET_CONFIG`,
``SDXL_VAE_CONFIG``) with seeded *random* weights (``models.tiny.build_random_stack``): time and memory do not
depend on the values, and nothing is downloaded. The text encoders are one-layer CLIPs of SDXL's widths (768 +
1280, pooled projection 1280): they only embed the fixed prompt once. Nothing here is a trained model.

Inference rows: ``BokehDiffPipeline`` with a rank-8 LoRA on the paper's targets (as the released adapter), PISA
at the inference defaults, at each size x protocol x mode (``--tile_size`` for the corrected protocol's tiles;
the published protocol's tiles are its fixed 512 px). Training rows: ``training.loop.build_components`` and
``train_step`` with ``configs/train_published.yaml`` (its LoRA targets, PISA at training hardness, LPIPS on a
randomly initialised VGG, no GAN as at the recipe's start), batch 1, with and without gradient checkpointing.

Each group runs in its own child process whose resident set is capped (``--mem_cap_gib``, watched by the
parent), so a case that does not fit fails alone (recorded as such) instead of exhausting the machine. Measured per row:

- time: wall seconds and process CPU seconds (user + system, all threads; less sensitive than wall time to
  other processes sharing the cores), one run after no warm-up on CPU (a warm-up on CUDA);
- peak memory: CPU, the resident-set high-water mark (``VmHWM``, reset before each case through
  ``/proc/self/clear_refs``) minus the resident set before the case (the weights are already resident, so
  this is the case's working memory); CUDA, ``max_memory_allocated`` minus the allocation before the case;
- the planner's estimate (``models.tiling.estimate_bytes``: the larger of the UNet and VAE working sets of the
  pass the plan runs, full frame or one tile) and ``measured / estimate``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ROW = "ROW "  # child stdout prefix of a measured row (JSON)
GIB = 2**30


# ----------------------------------------------------------------------------------------------------------
# Memory probes
# ----------------------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class MemoryProbe:
    """Working memory of one case: CUDA allocations, or the CPU resident set's high-water mark since
    :meth:`start` minus the resident set at :meth:`start` (Linux ``clear_refs`` 5 resets ``VmHWM``)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.base = 0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self.base = _status_kib("VmRSS") * 1024

    def peak_bytes(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return _status_kib("VmHWM") * 1024 - self.base

    def resident_bytes(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else _status_kib("VmRSS") * 1024


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _emit(row: dict) -> None:
    print(ROW + json.dumps(row), flush=True)


# ----------------------------------------------------------------------------------------------------------
# Children
# ----------------------------------------------------------------------------------------------------------
def _stack(smoke: bool):
    from models.sdxl import SDXL_TEXT_WIDTHS, SDXL_UNET_CONFIG, SDXL_VAE_CONFIG
    from models.tiny import build_random_stack, build_tiny_sdxl

    if smoke:
        return build_tiny_sdxl(seed=0)
    return build_random_stack(SDXL_UNET_CONFIG, SDXL_VAE_CONFIG, text_widths=SDXL_TEXT_WIDTHS,
                              pooled_width=SDXL_TEXT_WIDTHS[1], text_layers=1, text_heads=8,
                              text_intermediate=1024, seed=0)


def _inputs(size: tuple[int, int], device):
    """A seeded random image and a smooth disparity (a ramp with a near disc), ``(1, C, H, W)``."""
    h, w = size
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, h, w, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    disc = ((yy - 0.5) ** 2 + (xx - 0.4) ** 2 < 0.04).float()
    disparity = (0.2 + 0.4 * xx + 0.35 * disc)[None, None]
    return image.to(device), disparity.to(device)


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` or ``"S"`` -> ``(H, W)`` px."""
    w, _, h = text.partition("x")
    return int(h or w), int(w)


def child_infer(opts) -> None:
    from models import tiling
    from models.lora import add_lora
    from models.pipeline import BokehDiffPipeline

    device = torch.device(opts.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    probe = MemoryProbe(device)
    t0 = time.perf_counter()
    parts = _stack(opts.smoke)
    add_lora(parts["unet"], rank=8)  # the released adapter's rank on the paper's targets
    tile = 64 if opts.smoke else opts.tile_size
    weights = sum(t.numel() * t.element_size() for t in parts["unet"].parameters()) + sum(
        t.numel() * t.element_size() for t in parts["vae"].parameters())
    _emit(dict(kind="build", seconds=time.perf_counter() - t0, weights_gib=weights / GIB,
               resident_gib=probe.resident_bytes() / GIB))
    sizes = [(128, 128)] if opts.smoke else [parse_size(s) for s in opts.sizes]
    for protocol in opts.protocols:
        # One pipeline at a time: each installs its protocol's attention processors on the shared UNet.
        pipe = BokehDiffPipeline(**parts, protocol=protocol, tile_size=tile, tile_overlap=tile // 4)
        if device.type == "cuda":
            pipe.to(device, dtype)
        for h, w in sizes:
            image, disparity = _inputs((h, w), device)
            for mode in opts.modes:
                row = dict(kind="infer", size=f"{w}x{h}", protocol=protocol, mode=mode, dtype=str(dtype)[6:])
                processors = [p for p in pipe.model.unet.attn_processors.values() if hasattr(p, "impl_counts")]
                for p in processors:
                    p.impl_counts.clear()
                try:
                    if device.type == "cuda":  # warm-up: kernels, allocator
                        pipe(image, disparity, K=20.0, disp_focus=0.5, mode=mode, output_type="pt")
                    probe.start()
                    wall, cpu = time.perf_counter(), _cpu_seconds()
                    out = pipe(image, disparity, K=20.0, disp_focus=0.5, mode=mode, output_type="pt")
                    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
                    peak = probe.peak_bytes()
                    plan = out.plans[0]
                    ph, pw = plan.padded_hw
                    side = plan.tile_latent * pipe.model.vae_scale_factor
                    unet_hw = (min(side, ph), min(side, pw)) if plan.mode == "tiled" else (ph, pw)
                    vae_side = pipe.model.vae.config.sample_size
                    vae_hw = (min(vae_side, ph), min(vae_side, pw)) if plan.vae_tiling else (ph, pw)
                    unet_est = pipe.estimate_bytes(*unet_hw)[0]
                    vae_est = pipe.estimate_bytes(*vae_hw)[1]
                    estimate = max(unet_est, vae_est)
                    impls = sorted({k for p in processors for k in p.impl_counts})
                    row.update(status="ok", seconds=wall, cpu_seconds=cpu, tiles=plan.n_tiles,
                               vae_bytes_per_px=tiling.VAE_BYTES_PER_PX_PER_ELEM,
                               vae_tiling=plan.vae_tiling, peak_gib=peak / GIB, unet_estimate_gib=unet_est / GIB,
                               vae_estimate_gib=vae_est / GIB, estimate_gib=estimate / GIB,
                               measured_over_estimate=peak / estimate, pisa="/".join(impls) or "none",
                               **{k: round(v, 3) for k, v in plan.timings.items()})
                except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
                    if isinstance(error, RuntimeError) and "memory" not in str(error).lower():
                        raise
                    row.update(status="out of memory: "
                                      f"{str(error).splitlines()[0][:120]}")
                _emit(row)


def child_train(opts) -> None:
    from accelerate import Accelerator

    import models.hub
    import models.sdxl
    from benchmarks.gpu_train import random_batch
    from training.config import parse_args
    from training.loop import build_components, train_step

    device = torch.device(opts.device)
    cuda = device.type == "cuda"
    size = 64 if opts.smoke else 512
    argv = ["--config", str(ROOT / "configs" / "train_published.yaml"), "--train_data_dir", "unused",
            "--output_dir", tempfile.mkdtemp(), "--pretrained_model_name_or_path", "random-sdxl",
            "--resolution", str(size), "--train_batch_size", "1", "--no-lpips_pretrained",
            "--mixed_precision", "bf16" if cuda else "no", "--lambda_gan", "0"]
    if opts.checkpointing:
        argv.append("--gradient_checkpointing")
    args = parse_args(argv)
    # The training code's own build path, with the random-weight stack in place of a downloaded one.
    models.hub.local_source = lambda source, *a, **k: source
    models.sdxl.load_sdxl_components = lambda *a, **k: {**_stack(opts.smoke), "scheduler": _ddpm()}
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=not cuda)
    probe = MemoryProbe(accelerator.device)
    row = dict(kind="train", resolution=size, batch=1, gradient_checkpointing=bool(opts.checkpointing))
    try:
        t0 = time.perf_counter()
        c = build_components(args, accelerator)
        lora_params = sum(p.numel() for p in c.lora_params)
        row.update(build_seconds=time.perf_counter() - t0, lora_layers=len(c.lora_modules), lora_params=lora_params,
                   pisa_layers=len(c.pisa_layers), weights_gib=probe.resident_bytes() / GIB)
        _emit({**row, "kind": "train_build"})  # the parent completes it if the step outgrows the memory cap
        data = random_batch(1, size, accelerator.device)
        probe.start()
        times = []
        for step in range(opts.train_steps):
            wall, cpu = time.perf_counter(), _cpu_seconds()
            train_step(c, data, step=step, args=args, accelerator=accelerator)
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - wall, _cpu_seconds() - cpu))
        wall, cpu = min(times[1:] or times)
        row.update(status="ok", seconds=wall, cpu_seconds=cpu, first_step_seconds=times[0][0],
                   peak_gib=probe.peak_bytes() / GIB)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and "memory" not in str(error).lower():
            raise
        row.update(status=f"does not fit: {str(error).splitlines()[0][:120]}")
    _emit(row)


def _ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


# ----------------------------------------------------------------------------------------------------------
# Parent
# ----------------------------------------------------------------------------------------------------------
def _resident_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _run_child(opts, extra: list[str]) -> list[dict]:
    """Run one group in a child whose resident set is capped (``--mem_cap_gib``: the parent polls it every
    0.1 s and kills the child above the cap, so a case that does not fit cannot exhaust the machine; an
    address-space limit would refuse far too early, torch reserving much more address space than it touches).
    Returns its rows; a child that dies keeps the rows it printed, plus one row saying how it ended."""
    cap = int(opts.mem_cap_gib * GIB)
    cmd = [sys.executable, "-m", "benchmarks.bench_sdxl", "--device", opts.device, "--mem_cap_gib",
           str(opts.mem_cap_gib), "--tile_size", str(opts.tile_size), "--train_steps", str(opts.train_steps),
           "--sizes", *opts.sizes, "--protocols", *opts.protocols, "--modes", *opts.modes, *extra]
    if opts.smoke:
        cmd.append("--smoke")
    print("$", " ".join(cmd[2:]), flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = {"at": 0}

    def watch():
        while proc.poll() is None:
            resident = _resident_bytes(proc.pid)
            if opts.device == "cpu" and resident > cap:
                killed["at"] = resident
                proc.kill()
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    rows, tail = [], []
    for line in proc.stdout:
        if line.startswith(ROW):
            rows.append(json.loads(line[len(ROW):]))
            print("  " + line[len(ROW):].rstrip(), flush=True)
        else:
            tail = (tail + [line.rstrip()])[-5:]
    code = proc.wait()
    watcher.join()
    if killed["at"]:
        status = (f"does not fit: the resident set passed the {opts.mem_cap_gib:g} GiB cap "
                  f"({killed['at'] / GIB:.1f} GiB when stopped)")
        built = next((r for r in reversed(rows) if r["kind"] == "train_build"), None)
        if built is not None:  # the training case that was running
            rows.append({**built, "kind": "train", "status": status})
        else:
            rows.append(dict(kind="error", group=" ".join(extra), status=status))
        print("  child stopped:", status, flush=True)
    elif code != 0:
        rows.append(dict(kind="error", group=" ".join(extra), status=f"child exit {code}: "
                         + " | ".join(tail)[-300:]))
        print("  child failed:", rows[-1]["status"], flush=True)
    return rows


def recalibrated(row: dict, vae_bytes_per_px: float) -> dict:
    """An inference row with the planner's estimate restated for another VAE constant
    (``models.tiling.VAE_BYTES_PER_PX_PER_ELEM``; rows measured before it was calibrated ran with 750). The
    VAE estimate is proportional to that constant, so this is what the planner would now say for the same plan."""
    vae = row["vae_estimate_gib"] * vae_bytes_per_px / row.get("vae_bytes_per_px", 750)
    estimate = max(row["unet_estimate_gib"], vae)
    return {**row, "vae_estimate_gib": vae, "estimate_gib": estimate, "measured_over_estimate": row["peak_gib"] / estimate}


def _gib(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def section(rows: list[dict], opts) -> str:
    from benchmarks.report import load_average, machine_description

    build = next((r for r in rows if r["kind"] == "build"), {})
    lines = ["## Full SDXL architecture", "",
             f"`python -m benchmarks.bench_sdxl` ({time.strftime('%Y-%m-%d')}; {machine_description()}; load "
             f"{load_average()} at the end). SDXL base 1.0's UNet and VAE with seeded random weights (UNet + VAE "
             f"{_gib(build.get('weights_gib'))} GiB), rank-8 LoRA; peak = the case's working memory over the "
             f"resident weights (CPU: resident-set high-water mark), estimate = the planner's "
             f"(`models.tiling.estimate_bytes`, the larger of the UNet and VAE working sets of the pass it plans). "
             f"CPU seconds count every thread; each child's resident set was capped at {opts.mem_cap_gib:g} GiB."
             + (" Rows measured when the planner's VAE constant was 750 B / px / element byte are restated with "
                "today's (the VAE estimate is proportional to it)."
                if any(r["kind"] == "infer" and "vae_bytes_per_px" not in r for r in rows) else "")
             + (f" Rows merged from an earlier run: `--merge_json {Path(opts.merge_json).name}`." if opts.merge_json
                else ""), "",
             "| image (px) | protocol | mode | tiles | VAE tiling | PISA | wall s | CPU s | encode / UNet / decode s | "
             "peak GiB | estimate GiB (UNet / VAE) | peak / estimate |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    from models.tiling import VAE_BYTES_PER_PX_PER_ELEM

    for r in rows:
        if r["kind"] != "infer":
            continue
        if r["status"] == "ok":  # the VAE estimate is linear in its constant: restated with today's (exact)
            r = recalibrated(r, VAE_BYTES_PER_PX_PER_ELEM)
        if r["status"] != "ok":
            lines.append(f"| {r['size']} | {r['protocol']} | {r['mode']} | | | | {r['status']} | | | | | |")
            continue
        stages = " / ".join(f"{r.get(k, float('nan')):.1f}" for k in ("encode_s", "unet_s", "decode_s"))
        lines.append(f"| {r['size']} | {r['protocol']} | {r['mode']} | {r['tiles']} | {r['vae_tiling']} | {r['pisa']} | "
                     f"{r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {stages} | {r['peak_gib']:.2f} | "
                     f"{r['estimate_gib']:.2f} ({r['unet_estimate_gib']:.2f} / {r['vae_estimate_gib']:.2f}) | "
                     f"{r['measured_over_estimate']:.2f} |")
    train = [r for r in rows if r["kind"] == "train"]
    if train:
        lines += ["", "Training step (`configs/train_published.yaml`: its LoRA targets, PISA at training hardness, "
                      "LPIPS on a random VGG, no GAN), batch 1:", "",
                  "| px | grad. ckpt | LoRA layers | LoRA params | PISA layers | s / step (wall) | CPU s | "
                  "peak GiB over weights | weights GiB | status |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in train:
            ok = r.get("status") == "ok"
            lines.append(f"| {r['resolution']} | {r['gradient_checkpointing']} | {r.get('lora_layers', '-')} | "
                         f"{r.get('lora_params', '-')} | {r.get('pisa_layers', '-')} | "
                         f"{r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['peak_gib']:.2f} | "
                         if ok else f"| {r['resolution']} | {r['gradient_checkpointing']} | {r.get('lora_layers', '-')} "
                         f"| {r.get('lora_params', '-')} | {r.get('pisa_layers', '-')} | - | - | - | ")
            lines[-1] += f"{_gib(r.get('weights_gib'))} | {r['status']} |"
    errors = [r for r in rows if r["kind"] == "error"]
    lines += [""] + [f"- {r['group'] or 'inference'}: {r['status']}" for r in errors]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", nargs="+", default=["512", "1024x768"], help="WxH or S (square)")
    parser.add_argument("--protocols", nargs="+", default=["corrected", "published"])
    parser.add_argument("--modes", nargs="+", default=["full", "tiled"], choices=["full", "tiled"])
    parser.add_argument("--tile_size", type=int, default=512, help="corrected protocol's tile (px); overlap 1/4")
    parser.add_argument("--infer", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--train", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--merge_json", default=None,
                        help="rows of an earlier run (its --json) to report with this run's (pass --no-infer / --no-train "
                             "for what they hold)")
    parser.add_argument("--train_steps", type=int, default=2, help="steps per training case (the first is warm-up)")
    parser.add_argument("--mem_cap_gib", type=float, default=20.0, help="resident-set cap of each child (CPU)")
    parser.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"), help="BENCHMARKS.md to update, or none")
    parser.add_argument("--json", default=None)
    parser.add_argument("--smoke", action="store_true", help="tiny stack at 128 px (inference) / 64 px (training)")
    parser.add_argument("--child", choices=["infer", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", type=int, default=0, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child == "infer":
        child_infer(opts)
        return 0
    if opts.child == "train":
        child_train(opts)
        return 0

    # An earlier run's rows (its --json), e.g. its inference rows with a --no-infer run's training rows, or the
    # report alone again (--no-infer --no-train).
    rows = json.loads(Path(opts.merge_json).read_text()) if opts.merge_json else []
    if opts.infer:
        rows += _run_child(opts, ["--child", "infer"])
    if opts.train:
        for ckpt in (0, 1):
            rows += _run_child(opts, ["--child", "train", "--checkpointing", str(ckpt)])
    text = section(rows, opts)
    print("\n" + text)
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=1))
    if opts.output != "none":
        from benchmarks.report import replace_section

        replace_section(text, Path(opts.output))
    return 1 if any(r["kind"] == "error" for r in rows) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
