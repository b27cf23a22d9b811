"""Validation grids where people look: PNGs in the run folder and images in the trackers (TensorBoard, wandb).

``RUN/validation/step-<step>.png`` (6 digits) holds the grid of :func:`training.loop.validate` (rows AIF |
prediction | target | disparity); the model card shows the newest one (:mod:`training.model_card`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

__all__ = ["VALIDATION_DIR", "log_validation_grid", "validation_grid_path", "validation_grids", "write_validation_grid"]

VALIDATION_DIR = "validation"  # inside output_dir
_GRID_RE = re.compile(r"^step-(\d+)\.png$")
_GRID_TAG = "val/aif|pred|target|disparity"  # the TensorBoard tag the grid has always had


def validation_grid_path(run_dir: str | Path, step: int) -> Path:
    """``run_dir/validation/step-000123.png`` for optimisation step ``step``."""
    return Path(run_dir) / VALIDATION_DIR / f"step-{int(step):06d}.png"


def write_validation_grid(grid: torch.Tensor, run_dir: str | Path, step: int) -> Path:
    """Write the ``(3, H, W)`` grid in [0, 1] as an 8-bit PNG (atomically); returns its path."""
    from data.io import save_image

    return save_image(validation_grid_path(run_dir, step), grid.float().clamp(0, 1))


def validation_grids(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The run's validation PNGs as ``(step, path)``, oldest first."""
    folder = Path(run_dir) / VALIDATION_DIR
    found = [(int(m.group(1)), p) for p in folder.glob("step-*.png") if (m := _GRID_RE.match(p.name))]
    return sorted(found)


def log_validation_grid(trackers, grid: torch.Tensor, step: int) -> None:
    """Send the grid to every tracker that takes images: TensorBoard (``add_image``) and wandb (``wandb.Image``)."""
    for tracker in trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(_GRID_TAG, grid, step)
        elif tracker.name == "wandb":
            import wandb

            image = (grid.float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
            tracker.log({"val/grid": [wandb.Image(image, caption="AIF | prediction | target | disparity")]},
                        step=step)
