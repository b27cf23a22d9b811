"""Reports of a multi-level benchmark run (``python -m scripts.reproduce``): per-level tables, CSVs, a chart and
a worst-case sheet, from the score rows of :func:`inference.reproduce.run_cases`.

A row is a dict with ``benchmark``, ``method``, ``scene``, ``name``, ``level``, ``K``, ``disp_focus`` and the
metric columns of :func:`metrics.report.score` (``<metric>``, ``<metric>_band``, ``<metric>_outside``). Means
are over the images of a level (NaN values, e.g. an empty band, are left out). PSNR in dB (peak 1), SSIM in
[-1, 1]; LPIPS and DISTS are distances (lower is better).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from data.io import contact_sheet, read_image, save_image, write_text_atomic
from metrics.image import PSNR_MAX_DB

TABLE_METRICS = ("psnr", "ssim", "lpips_vgg", "lpips_alex", "dists")
LOWER_IS_BETTER = ("lpips_vgg", "lpips_alex", "dists")
ID_COLUMNS = ("benchmark", "method", "scene", "name", "level", "K", "disp_focus", "focus_source")
WORST_K = 6


def metric_columns(rows: Sequence[dict]) -> list[str]:
    """The metrics present in ``rows``, in :data:`TABLE_METRICS` order (unknown metrics after them)."""
    present = {key for row in rows for key in row if key not in ID_COLUMNS and key != "prediction"
               and not key.endswith(("_band", "_outside"))}
    return [m for m in TABLE_METRICS if m in present] + sorted(present - set(TABLE_METRICS))


def _mean(values) -> float:
    values = [v for v in values if isinstance(v, float) and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def level_means(rows: Sequence[dict]) -> dict[tuple[str, int], dict[str, float]]:
    """``{(method, level): {column: mean over that level's images}}`` plus ``"n"``, the image count."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], int(row["level"])), []).append(row)
    out = {}
    for key, group in groups.items():
        columns = [c for c in group[0] if c not in ID_COLUMNS and c != "prediction"]
        out[key] = {c: _mean([r.get(c) for r in group]) for c in columns} | {"n": len(group)}
    return out


def _fmt(value: float, metric: str) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.2f}" if metric.startswith("psnr") else f"{value:.4f}"


def level_tables(benchmark: str, rows: Sequence[dict], methods: Sequence[str], *, failures: Sequence[dict] = (),
                 unavailable: dict[str, str] | None = None, notes: Sequence[str] = ()) -> str:
    """Markdown: one table per level (rows: methods; columns: each metric over the whole image, then inside
    the depth-discontinuity band), then the unavailable methods and the failures."""
    metrics = metric_columns(rows)
    means = level_means(rows)
    arrows = {m: "↓" if m in LOWER_IS_BETTER else "↑" for m in metrics}
    lines = [f"## {benchmark}", ""]
    lines += [f"{note}" for note in notes] + ([""] if notes else [])
    levels = sorted({int(r["level"]) for r in rows})
    if not levels:
        lines += ["No ground truth was scored.", ""]
    for level in levels:
        header = [f"{m} {arrows[m]}" for m in metrics] + [f"{m} band {arrows[m]}" for m in metrics
                                                         if not m.startswith(("dists",))]
        lines += [f"### {benchmark}, level {level}", "", "| method | " + " | ".join(header) + " | images |",
                  "|---|" + "---|" * (len(header) + 1)]
        for method in methods:
            values = means.get((method, level))
            if values is None:  # unavailable, or every image failed (listed below): a visible row, not a gap
                values = {"n": 0}
            cells = [_fmt(values.get(m, math.nan), m) for m in metrics]
            cells += [_fmt(values.get(f"{m}_band", math.nan), m) for m in metrics if not m.startswith("dists")]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {values['n']} |")
        lines.append("")
    lines.append(f"PSNR in dB (peak 1, capped at {PSNR_MAX_DB:g}), on sRGB images clipped to [0, 1]; band = "
                 "pixels near a depth discontinuity (metrics/bands.py). Protocol: PROTOCOLS.md.")
    for method, reason in (unavailable or {}).items():
        lines += ["", f"- `{method}`: unavailable ({reason})"]
    if failures:
        lines += ["", f"Failed ({len(failures)}):"]
        lines += [f"- `{f['name']}`" + (f" ({f['method']})" if f.get("method") else "") + f": {f['reason']}"
                  for f in failures]
    return "\n".join(lines) + "\n"


def scene_rows(rows: Sequence[dict]) -> list[dict]:
    """Mean per (method, scene, level): ``benchmark, method, scene, level, images`` and every metric column."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["benchmark"], row["method"], row["scene"], int(row["level"])), []).append(row)
    out = []
    for (benchmark, method, scene, level), group in sorted(groups.items()):
        columns = [c for c in group[0] if c not in ID_COLUMNS and c != "prediction"]
        out.append({"benchmark": benchmark, "method": method, "scene": scene, "level": level, "images": len(group)}
                   | {c: _mean([r.get(c) for r in group]) for c in columns})
    return out


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Rows as CSV (columns of the first row; ``name`` alone when empty); NaN is written as empty."""
    buffer = io.StringIO()
    columns = list(rows[0]) if rows else ["name"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return write_text_atomic(path, buffer.getvalue())


def plot_levels(benchmark: str, rows: Sequence[dict], methods: Sequence[str], path: str | Path) -> Path:
    """PNG chart: one panel per metric (mean over the level's images against the level), one line per method."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display is needed or wanted
    import matplotlib.pyplot as plt

    metrics = metric_columns(rows) or ["psnr"]
    means = level_means(rows)
    levels = sorted({int(r["level"]) for r in rows})
    figure, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for method in methods:
            points = [(level, means[(method, level)].get(metric, math.nan)) for level in levels
                      if (method, level) in means]
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        axis.set_title(f"{metric} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)", fontsize=9)
        axis.set_xlabel("level (blur strength)")
        axis.set_xticks(levels)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(benchmark)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def worst_cases(rows: Sequence[dict], load_gt: Callable[[str], np.ndarray], path: str | Path, *,
                k: int = WORST_K, exclude: Sequence[str] = ("identity",)) -> Path | None:
    """The ``k`` lowest-PSNR (prediction, GT) pairs, one row each: GT, prediction, 4x absolute error.
    ``load_gt(name)`` returns the GT ``(3, H, W)`` sRGB; methods in ``exclude`` (the input itself) are left out."""
    ranked = sorted((r for r in rows if r["method"] not in exclude and not math.isnan(r["psnr"])),
                    key=lambda r: r["psnr"])[:k]
    if not ranked:
        return None
    tiles, labels = [], []
    for row in ranked:
        gt, prediction = np.asarray(load_gt(row["name"]), dtype=np.float32), read_image(row["prediction"])
        tiles += [gt, prediction, np.clip(np.abs(prediction - gt) * 4, 0, 1)]
        labels += [f"GT {row['name']}", f"{row['method']} {row['psnr']:.2f} dB", "|error| x4"]
    return save_image(path, contact_sheet(tiles, labels, columns=3, width=256))
