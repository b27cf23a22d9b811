"""Training curves of a run folder as one PNG: the loss terms, learning rate and gradient norm of
``train_log.jsonl`` and the validation PSNR / SSIM / L1 of ``validation.jsonl``, each against the step.

    from training.plots import write_training_curves
    write_training_curves("runs/bokehdiff")  # -> runs/bokehdiff/training_curves.png

``train_lora_otf.py`` writes it at the end of a run; ``python -m scripts.plot_run RUN_DIR [--out PNG]`` redraws
it (also during a run). The records are :class:`training.loop.StepLog` lines written by :mod:`training.run`:
``train_log.jsonl`` one per optimisation step (``step``, the loss terms ``total``, ``mse``, ``edge``, ``lpips``,
``gan_g``, ``gan_d`` as logged, ``skipped``, ``psnr`` in dB, ``lr``, ``grad_norm``), ``validation.jsonl`` one
per validation (``step``, ``psnr`` in dB, ``ssim``, ``l1``). A non-finite value is ``null`` and leaves a gap.
Matplotlib is imported inside the functions and draws with its Agg canvas (no pyplot, no global backend).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

__all__ = ["CURVES_NAME", "TRAIN_LOG", "VALIDATION_LOG", "read_records", "write_training_curves"]

logger = logging.getLogger(__name__)

CURVES_NAME = "training_curves.png"  # inside the run folder
TRAIN_LOG = "train_log.jsonl"
VALIDATION_LOG = "validation.jsonl"
# Keys of a train_log record that are not loss terms (drawn in panels of their own, or not at all).
_NOT_LOSS_TERMS = ("step", "skipped", "psnr", "lr", "grad_norm")
_GAN_TERMS = ("gan_g", "gan_d")
_SMOOTH_ABOVE = 50  # steps; longer curves also get a moving average over about 1/50 of the run


def read_records(path: str | Path) -> list[dict]:
    """The records of a JSON-lines log, sorted by ``step``. A line that is not a JSON object with an integer
    ``step`` (a write cut short while the run is still appending) is skipped with a warning naming the line.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' does not exist")
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("no integer 'step'")
        except ValueError:
            logger.warning("'%s' line %d is not a complete record; skipped: %.80r", path, number, line)
            continue
        records.append(record)
    return sorted(records, key=lambda record: record["step"])


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of ``key`` (NaN where null or absent, so the line has a gap there)."""
    steps, values = [], []
    for record in records:
        value = record.get(key)
        steps.append(record["step"])
        values.append(float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan)
    return steps, values


def _moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over ``window`` values, ignoring NaN (NaN where the window holds none)."""
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, array, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    lo = np.maximum(np.arange(1, len(array) + 1) - window, 0)
    hi = np.arange(1, len(array) + 1)
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return list(np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan))


def _draw(ax, records: list[dict], keys: list[str], *, title: str, ylabel: str, log: bool = False,
          marker: str | None = None, empty: str = "") -> None:
    """One panel: a line per key (a moving average on top of long, noisy curves); ``empty`` when nothing is finite."""
    drawn = []
    for key in keys:
        steps, values = _series(records, key)
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            continue
        smooth = marker is None and len(values) > _SMOOTH_ABOVE
        (line,) = ax.plot(steps, values, marker=marker, linewidth=0.8 if smooth else 1.5,
                          alpha=0.35 if smooth else 1.0, label="_raw" if smooth else key)
        if smooth:  # the legend names the average; the raw curve stays faint behind it
            ax.plot(steps, _moving_average(values, max(2, len(values) // _SMOOTH_ABOVE)), color=line.get_color(),
                    linewidth=1.5, label=key)
        drawn.append(finite)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, empty or "nothing logged", ha="center", va="center", transform=ax.transAxes, fontsize=9,
                color="0.4", wrap=True)
        return
    low, high = min(min(values) for values in drawn), max(max(values) for values in drawn)
    if log and low > 0:
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
    if high - low <= 1e-9 * max(abs(high), 1e-30):  # flat (a constant learning rate): show it as a level line
        ax.set_ylim(*((0.5 * low, 1.5 * high) if low > 0 else (low - 1, high + 1)))
    if len(drawn) > 1:
        ax.legend(fontsize=8)


def _summary(train: list[dict], validation: list[dict], run_dir: Path, validation_note: str) -> str:
    last = train[-1]
    skipped = sum(1 for record in train if record.get("skipped"))
    lines = [f"run: {run_dir.name}", f"steps logged: {len(train)} (last {last['step']})",
             f"skipped (non-finite) steps: {skipped}"]
    if validation:
        best = max(validation, key=lambda r: r.get("psnr") if isinstance(r.get("psnr"), (int, float)) else -math.inf)
        final = validation[-1]
        lines += [f"validations: {len(validation)}",
                  f"last (step {final['step']}): PSNR {_fmt(final.get('psnr'), '.2f')} dB, "
                  f"SSIM {_fmt(final.get('ssim'), '.4f')}",
                  f"best PSNR: {_fmt(best.get('psnr'), '.2f')} dB at step {best['step']}"]
    else:
        lines.append(validation_note)
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "n/a"


def write_training_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run's training curves and write them as a PNG (atomically); returns its path.

    Args:
        run_dir: a training run folder (``--output_dir`` of ``train_lora_otf.py``) with ``train_log.jsonl``
            and, when the run validated (``--validation_steps`` > 0), ``validation.jsonl``.
        out: the PNG to write; default ``run_dir/training_curves.png``.

    Panels: loss terms (log scale when all positive), GAN terms, learning rate, gradient norm; PSNR in dB
    (training batches and validation), validation SSIM, validation L1, and a text summary. Without validation
    records the validation panels say so (a run with ``--validation_steps 0`` has none).

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder, or it has no ``train_log.jsonl``.
        ValueError: ``train_log.jsonl`` holds no record.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from data.io import atomic_write

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder '{run_dir}' does not exist or is not a folder; pass the --output_dir "
                                f"of a train_lora_otf.py run")
    train_path, validation_path = run_dir / TRAIN_LOG, run_dir / VALIDATION_LOG
    if not train_path.is_file():
        raise FileNotFoundError(f"'{train_path}' does not exist: '{run_dir}' is not a training run folder, or "
                                f"its run has not finished a step yet (train_lora_otf.py appends to {TRAIN_LOG} "
                                f"after each step)")
    train = read_records(train_path)
    if not train:
        raise ValueError(f"'{train_path}' holds no record (it is empty, or no line is a complete JSON record): "
                         f"nothing to plot until the run has finished a step")
    if validation_path.is_file():
        validation = read_records(validation_path)
        validation_note = f"no validation record in '{VALIDATION_LOG}' (empty)"
    else:
        validation = []
        validation_note = f"no '{VALIDATION_LOG}' (the run did not validate: --validation_steps 0)"
    out = run_dir / CURVES_NAME if out is None else Path(out)

    loss_terms = [k for k in dict.fromkeys(k for r in train for k in r) if k not in _NOT_LOSS_TERMS + _GAN_TERMS]
    figure = Figure(figsize=(16, 7.5), dpi=100)
    figure.subplots_adjust(left=0.06, right=0.99, bottom=0.08, top=0.9, wspace=0.3, hspace=0.35)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 4)
    _draw(axes[0, 0], train, loss_terms, title="loss terms (training batches)", ylabel="loss", log=True)
    _draw(axes[0, 1], train, list(_GAN_TERMS), title="GAN terms", ylabel="loss",
          empty="no GAN term logged\n(--lambda_gan 0, or before --gan_step)")
    _draw(axes[0, 2], train, ["lr"], title="learning rate (LoRA)", ylabel="lr")
    _draw(axes[0, 3], train, ["grad_norm"], title="gradient norm (LoRA, before clipping)", ylabel="norm", log=True)
    psnr = axes[1, 0]
    _draw(psnr, train, ["psnr"], title="PSNR", ylabel="dB")
    for line in psnr.lines:
        if line.get_label() == "psnr":
            line.set_label("psnr (training batch)")
    steps, values = _series(validation, "psnr")
    if any(math.isfinite(v) for v in values):
        psnr.plot(steps, values, marker="o", color="black", label="psnr (validation)")
    if psnr.lines:
        psnr.legend(fontsize=8)  # labels starting with "_" (the raw curve under an average) are left out
    _draw(axes[1, 1], validation, ["ssim"], title="validation SSIM", ylabel="SSIM", marker="o",
          empty=validation_note)
    _draw(axes[1, 2], validation, ["l1"], title="validation L1 (sRGB, [0, 1])", ylabel="L1", marker="o",
          empty=validation_note)
    axes[1, 3].axis("off")
    axes[1, 3].text(0.0, 1.0, _summary(train, validation, run_dir, validation_note), va="top", ha="left",
                    fontsize=9, family="monospace", transform=axes[1, 3].transAxes, wrap=True)
    figure.suptitle(f"training curves: {run_dir}", fontsize=11)
    with atomic_write(out) as tmp:
        figure.savefig(tmp, format="png")
    return out
