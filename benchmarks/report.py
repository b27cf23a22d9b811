"""Writing one benchmark's section of BENCHMARKS.md without touching the others."""

from __future__ import annotations

import re
from pathlib import Path

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
    path.write_text(new.rstrip("\n") + "\n")
    return path
