"""The released code's data synthesis, beside ours (``configs/train_published.yaml``): its aperture sample count
and the CoC it conditions the model on. :class:`~data.synthesis.dataset.OnTheFlyDataset` picks these with
``aperture_samples="published"`` and ``coc_condition="published"``; its docstring states the rules.
"""

from __future__ import annotations

import numpy as np
import torch

from .scene import BASE_COC_PX, BASE_RESOLUTION, Scene


def published_aperture_count(times: float) -> int:
    """Aperture samples of the released data synthesis at blur multiplier ``times`` (largest CoC radius
    ``12 * times`` px at 768 px): the points of a ``int(21 * times)``-per-side grid over [-1, 1]^2 that lie in
    the unit disc (at least 1). The points themselves are not reproduced: the count is used with our
    stratified spiral (``kernels.aperture``), which is at least as uniform as the grid."""
    side = int(21.0 * times)
    if side < 2:
        return 1
    # Grid point i sits at -1 + 2 i / (side - 1); in integers the disc test is exact, boundary points included.
    offsets = (2 * np.arange(side, dtype=np.int64) - (side - 1)) ** 2
    return max(1, int((offsets[:, None] + offsets[None, :] <= (side - 1) ** 2).sum()))


def published_scene_aperture_count(scene: Scene) -> int:
    """:func:`published_aperture_count` at the scene's own blur multiplier ``times`` (its largest CoC radius
    over ``12`` px at 768 px, scaled with the scene's long side)."""
    times = scene.max_coc_px() / (BASE_COC_PX * max(scene.height, scene.width) / BASE_RESOLUTION)
    return published_aperture_count(times)


def published_condition_K(K: torch.Tensor, condition_ratio: float, disp_focus: float) -> torch.Tensor:
    """The K the release conditions on: it renders with ``K = 12 t / max(f, 1 - f)`` but conditions on
    ``12 t * U(2/3, 1)``, i.e. ``K * condition_ratio * max(f, 1 - f)`` with ``condition_ratio ~ U(2/3, 1)``."""
    return K * condition_ratio * max(disp_focus, 1.0 - disp_focus)
