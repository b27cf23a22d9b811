"""Writing one benchmark's section of BENCHMARKS.md without touching the others."""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

import torch

from data.io import write_text_atomic

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def replace_section(text: str, path: Path = BENCHMARKS_MD) -> Path:
    """Replace the ``## <title>`` section that ``text`` starts with (up to the next ``## `` heading), or
    append it; every other section belongs to another benchmark and is kept as it is."""
    heading = text.splitlines()[0]
    if not heading.startswith("## "):
        raise ValueError(f"a section must start with a '## ' heading, got {heading!r}")
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    body = text.rstrip("\n") + "\n"
    new = pattern.sub(lambda _: body + "\n", old, count=1) if pattern.search(old) else old.rstrip("\n") + "\n\n" + body
    return write_text_atomic(path, new.rstrip("\n") + "\n")


def machine_description() -> str:
    """CPU model, torch threads, GPU (or none), torch and Python versions: the context of a measurement."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"CPU {cpu}, {torch.get_num_threads()} torch thread(s); GPU {gpu}; torch {torch.__version__}; "
            f"Python {platform.python_version()}")


def load_average() -> str:
    """The machine's 1 / 5 / 15-minute load averages as text: how busy the cores were while measuring."""
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3]) + " (1 / 5 / 15 min)"
    except OSError:
        return "unknown"


def best_of(fn, repeats: int, sync=None, *, warmup: bool = True) -> float:
    """Best of ``repeats`` wall-clock seconds of ``fn()`` after one untimed warm-up call (allocator, lazy
    inits, CUDA kernel compilation; ``warmup=False`` when the caller has just made that call). ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs before and after each timed call so asynchronous GPU work is counted."""
    sync = sync or (lambda: None)
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best
