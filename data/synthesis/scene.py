"""The scene model of the paper's data synthesis (BokehDiff, Zhu et al., ICCV 2025, Sec. 3.3): layered scenes.

:func:`sample_scene` draws, in *scene* pixel coordinates (x = column, y = row, origin at the top-left pixel
centre of the unpadded scene):

* the background, an ordinary photo on a far plane ``disparity = d0 + gx*x + gy*y`` tilted in a random
  direction; it spans ``[far, far + span]`` over the padded canvas (far in [0.001, 0.05], span in [0, 0.25]);
* one or more foregrounds (RGBA cut-outs cropped to their alpha bounding box, scaled, placed near the centre
  with jitter) on nearer planes, optionally tilted, always in front of the background where they are;
  composited in order of centre disparity, and a tilt never lets a later layer come nearer than an earlier
  one over their boxes (each stays within half the gap to its neighbours' centre disparities);
* focus on a random foreground (its plane at the box centre) or on the background (its mean disparity);
* blur strength: the largest CoC radius the scene can reach, ``K * max(disp_focus, 1 - disp_focus)``, is
  ``12 * 2**U(-2, 3)`` px at 768 px (the paper's range), scaled with the scene's long side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .assets import Foreground, cover_crop, resize_foreground

#: The paper's blur range: the largest reachable CoC radius is ``12 * 2**U(-2, 3)`` px at a 768-px scene.
BASE_COC_PX = 12.0
BASE_RESOLUTION = 768

#: Directions of the background tilt (:class:`SceneConfig`).
BG_TILT_DIRECTIONS = ("angle", "square")


@dataclass
class SceneLayer:
    """One layer: ``rgb`` (3, h, w) sRGB and ``alpha`` (1, h, w) placed with its top-left pixel at scene
    coordinates (``top``, ``left``); disparity on the layer is the plane ``d0 + gx*x + gy*y`` (scene coords)."""

    rgb: np.ndarray
    alpha: np.ndarray
    top: int
    left: int
    plane: tuple[float, float, float]  # (d0, gx, gy)


@dataclass
class Scene:
    """A layered scene ``height x width`` px with layers ordered NEAR to FAR (the background last, opaque).

    The background covers ``[-margin, height + margin) x [-margin, width + margin)`` so that windows
    padded by up to ``margin`` px (the largest CoC radius) can be rendered. ``K`` (px per unit disparity)
    and ``disp_focus`` are the blur parameters sampled with the scene; ``foreground_sources`` and
    ``background_source`` name the files it was built from. ``own_margin`` is the padding this scene's own
    blur needs (``margin_for`` its largest CoC): ``margin`` itself when no fixed margin was asked for.
    """

    height: int
    width: int
    margin: int
    layers: list[SceneLayer]
    K: float
    disp_focus: float
    foreground_sources: list[str] = field(default_factory=list)
    background_source: str = ""
    own_margin: int | None = None

    def max_coc_px(self, K: float | None = None, disp_focus: float | None = None) -> float:
        """Upper bound of |coc_px| anywhere (disparity is in [0, 1])."""
        K = self.K if K is None else K
        disp_focus = self.disp_focus if disp_focus is None else disp_focus
        return abs(K) * max(disp_focus, 1.0 - disp_focus)

    def window(self, top: int, left: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The layers cut to a window with top-left (``top``, ``left``) in scene coordinates.

        Returns:
            images ``(L, 3, height, width)`` sRGB [0, 1], alphas ``(L, 1, height, width)`` [0, 1] and planes
            ``(L, 3)`` float64 ``(A, B, C)`` with ``disparity = (1 - A*x - B*y) / C`` in *window* pixel
            coordinates (the renderer's convention, docs/conventions.md).
        """
        n = len(self.layers)
        images = np.zeros((n, 3, height, width), np.float32)
        alphas = np.zeros((n, 1, height, width), np.float32)
        planes = np.zeros((n, 3), np.float64)
        for index, layer in enumerate(self.layers):
            _, h, w = layer.rgb.shape
            y0, x0 = max(top, layer.top), max(left, layer.left)
            y1, x1 = min(top + height, layer.top + h), min(left + width, layer.left + w)
            if y1 > y0 and x1 > x0:
                src = (slice(None), slice(y0 - layer.top, y1 - layer.top), slice(x0 - layer.left, x1 - layer.left))
                dst = (slice(None), slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))
                images[index][dst] = layer.rgb[src]
                alphas[index][dst] = layer.alpha[src]
            d0, gx, gy = layer.plane
            # Re-express the plane in window coordinates, then in the renderer's (A, B, C) form:
            # d = c + gx*x' + gy*y'  <=>  d = (1 - A*x' - B*y') / C with C = 1/c, A = -gx/c, B = -gy/c.
            c = d0 + gx * left + gy * top
            if c <= 0:
                raise ValueError(f"layer {index}: plane disparity {c:.4g} <= 0 at the window origin")
            planes[index] = (-gx / c, -gy / c, 1.0 / c)
        return images, alphas, planes


@dataclass
class SceneConfig:
    """Parameters of the scene model (defaults follow the paper / public code's ranges).

    blur_log2_range: the largest CoC radius is ``12 * 2**U(lo, hi)`` px at 768 px (scaled by long side / 768).
    fg_scale_range: sqrt(foreground box area / scene area), before shrinking to fit.
    n_foregrounds: inclusive range of foreground layers per scene.
    focus_foreground_p: probability of focusing on a foreground (else the background).
    bg_far_range, bg_span_range: background disparity at its farthest point, and its span (tilt).
    fg_tilt_p, fg_span_max: probability that a foreground is tilted, and the largest change of its disparity from
        the box centre to a corner (further limited so that overlapping foregrounds never swap depth order).
    bg_tilt_direction: direction of the background's disparity gradient: ``"angle"`` (uniform angle) or
        ``"square"`` (``(gx, gy)`` direction uniform in [-1, 1]^2, as the released data synthesis draws it).

    The released training's distributions (``configs/train_published.yaml``): one foreground, fronto-parallel
    (``fg_tilt_p = 0``), background from disparity 0.001 (``bg_far_range = (0.001, 0.001)``) spanning
    ``U(0, 0.249)``, foreground disparity ``U(background's nearest, 1)`` (``fg_gap = 0``), ``"square"`` tilt.
    """

    blur_log2_range: tuple[float, float] = (-2.0, 3.0)
    fg_scale_range: tuple[float, float] = (0.35, 0.8)
    n_foregrounds: tuple[int, int] = (1, 2)
    focus_foreground_p: float = 0.5
    bg_far_range: tuple[float, float] = (0.001, 0.05)
    bg_span_range: tuple[float, float] = (0.0, 0.25)
    fg_gap: float = 0.05
    fg_tilt_p: float = 0.5
    fg_span_max: float = 0.1
    position_jitter: float = 0.25
    bg_tilt_direction: str = "angle"

    def __post_init__(self) -> None:
        if self.bg_tilt_direction not in BG_TILT_DIRECTIONS:
            raise ValueError(f"SceneConfig.bg_tilt_direction must be one of {list(BG_TILT_DIRECTIONS)}, "
                             f"got {self.bg_tilt_direction!r}")
        lo, hi = self.n_foregrounds
        if not 1 <= lo <= hi:
            raise ValueError(f"SceneConfig.n_foregrounds must satisfy 1 <= min <= max, got {self.n_foregrounds}")
        for name in ("blur_log2_range", "fg_scale_range", "bg_far_range", "bg_span_range"):
            lo_, hi_ = getattr(self, name)
            if lo_ > hi_:
                raise ValueError(f"SceneConfig.{name} must be (low, high) with low <= high, got {(lo_, hi_)}")

    def max_coc_px(self, long_side: int) -> float:
        """The largest CoC radius any sample can have at a scene with this long side (px)."""
        return BASE_COC_PX * 2.0 ** self.blur_log2_range[1] * long_side / BASE_RESOLUTION


def margin_for(max_coc_px: float) -> int:
    """Padding (px) that holds every ray landing in the window: the CoC radius plus 2 px for the renderer's
    soft edges."""
    return int(math.ceil(max_coc_px)) + 2


def sample_scene(
    foregrounds: Sequence[Foreground],
    background: np.ndarray,
    rng: np.random.Generator,
    height: int,
    width: int,
    config: SceneConfig = SceneConfig(),
    *,
    margin: int | None = None,
    background_source: str = "",
) -> Scene:
    """Sample a layered scene of ``height x width`` px (the paper's scene model, see the module docstring).

    Args:
        foregrounds: cut-outs (already cropped to alpha) to place, nearest first after sorting by disparity.
        background: (3, H, W) sRGB photo; scaled to cover the padded canvas (aspect kept) and randomly cropped.
        rng: the sample's generator (all randomness comes from it).
        margin: canvas padding in px; default: enough for this scene's largest CoC. Pass a fixed value to get
            windows of equal size across samples (batch rendering on the accelerator).

    Returns:
        A :class:`Scene` with ``K`` and ``disp_focus`` drawn from the blur model.
    """
    if not foregrounds:
        raise ValueError("sample_scene needs at least one foreground")
    long_side = max(height, width)
    # Blur first (it only depends on the focus, drawn below, and the range), so the canvas can be sized.
    log2_times = rng.uniform(*config.blur_log2_range)
    max_coc = BASE_COC_PX * 2.0**log2_times * long_side / BASE_RESOLUTION
    bound = config.max_coc_px(long_side)
    plane_margin = margin_for(bound) if margin is None else max(margin, margin_for(bound))
    bg_plane, bg_near = _background_plane(rng, config, height, width, plane_margin)
    fg_layers, centres = _foreground_layers(foregrounds, rng, config, height, width, plane_margin, bg_near)

    # Focus on a foreground (its disparity at the box centre) or on the background (mean over the scene).
    if rng.random() < config.focus_foreground_p:
        disp_focus = centres[int(rng.integers(0, len(foregrounds)))]
    else:
        d0, gx_, gy_ = bg_plane
        disp_focus = d0 + gx_ * (width - 1) / 2 + gy_ * (height - 1) / 2
    # K such that the largest CoC the scene can reach (disparity 0 or 1) is max_coc (paper, Sec. 3.3).
    K = max_coc / max(disp_focus, 1.0 - disp_focus)
    scene_margin = margin_for(max_coc) if margin is None else margin

    # The background is framed for the largest margin and then trimmed, so the scene's content does not
    # depend on how much padding this sample needs (CPU and on-device modes build identical scenes).
    canvas = cover_crop(background, height + 2 * plane_margin, width + 2 * plane_margin, rng)
    trim = plane_margin - scene_margin
    canvas = np.ascontiguousarray(canvas[:, trim : canvas.shape[1] - trim, trim : canvas.shape[2] - trim])
    bg_layer = SceneLayer(canvas, np.ones_like(canvas[:1]), -scene_margin, -scene_margin, bg_plane)
    return Scene(
        height=height,
        width=width,
        margin=scene_margin,
        layers=fg_layers + [bg_layer],
        K=float(K),
        disp_focus=float(disp_focus),
        foreground_sources=[fg.source for fg in foregrounds],
        background_source=background_source,
        own_margin=margin_for(max_coc),
    )


def _background_plane(rng, config: SceneConfig, height: int, width: int, plane_margin: int):
    """The background's plane ``(d0, gx, gy)`` and its nearest disparity, over the largest canvas it may ever be
    rendered on (``plane_margin`` px of padding), so disparity stays in range."""
    far = rng.uniform(*config.bg_far_range)
    span = rng.uniform(*config.bg_span_range)
    if config.bg_tilt_direction == "square":
        ux, uy = (float(v) for v in rng.uniform(-1.0, 1.0, size=2))
    else:
        theta = rng.uniform(0.0, 2.0 * math.pi)
        ux, uy = math.cos(theta), math.sin(theta)
    corners = [(x, y) for x in (-plane_margin, width - 1 + plane_margin) for y in (-plane_margin, height - 1 + plane_margin)]
    proj = [ux * x + uy * y for x, y in corners]
    lo, extent = min(proj), max(proj) - min(proj)
    if extent <= 0:  # a zero direction (probability 0): a fronto-parallel background
        ux = uy = lo = 0.0
        extent = 1.0
    gx, gy = span * ux / extent, span * uy / extent
    bg_plane = (far - span * lo / extent, gx, gy)  # = far at the farthest corner, far + span at the nearest
    return bg_plane, far + span


def _foreground_layers(foregrounds, rng, config: SceneConfig, height: int, width: int, plane_margin: int,
                       bg_near: float) -> tuple[list[SceneLayer], list[float]]:
    """Scale and place each foreground and give it a plane in front of the background (whose nearest
    disparity is ``bg_near``); returns the layers near to far and their centre disparities."""
    n_fg = len(foregrounds)
    centre_disps = np.sort(rng.uniform(min(bg_near + config.fg_gap, 0.95), 1.0, size=n_fg))[::-1]
    # Layers are composited in this (near-to-far) order, so a tilted layer must not reach past the midpoint
    # to its neighbours' centre disparities: then over any overlap every layer stays in front of the later
    # ones (each layer's values lie in [c - dev, c + dev] with dev <= half the gap to either neighbour).
    gaps = [math.inf] + [float(a - b) for a, b in zip(centre_disps[:-1], centre_disps[1:])] + [math.inf]
    max_dev = [0.5 * min(gaps[i], gaps[i + 1]) for i in range(n_fg)]  # gaps to the previous and next layer
    fg_layers, centres = [], []
    for fg, d_centre, dev in zip(foregrounds, centre_disps, max_dev):
        _, h0, w0 = fg.rgb.shape
        scale = rng.uniform(*config.fg_scale_range) * math.sqrt(height * width / (h0 * w0))
        scale = min(scale, 0.95 * height / h0, 0.95 * width / w0)
        h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
        placed = resize_foreground(fg, h, w)
        cy = height / 2 + rng.uniform(-1, 1) * config.position_jitter * height
        cx = width / 2 + rng.uniform(-1, 1) * config.position_jitter * width
        top = int(np.clip(round(cy - h / 2), 0, height - h))
        left = int(np.clip(round(cx - w / 2), 0, width - w))
        bx, by = left + (w - 1) / 2, top + (h - 1) / 2
        fgx = fgy = 0.0
        if rng.random() < config.fg_tilt_p:
            # Tilt: a span over the box's half-diagonal, limited so the plane stays in front of the background
            # on the box, <= 1, and positive across the whole padded canvas (the renderer's C = 1/disparity).
            phi = rng.uniform(0.0, 2.0 * math.pi)
            half_diag = 0.5 * math.hypot(h, w)
            canvas_reach = math.hypot(height + 2 * plane_margin, width + 2 * plane_margin)
            slope = rng.uniform(0.0, config.fg_span_max) / max(half_diag, 1.0)
            slope = min(slope, (1.0 - d_centre) / half_diag, (d_centre - bg_near) / half_diag,
                        (d_centre - 0.02) / canvas_reach, dev / half_diag)
            slope = max(slope, 0.0)
            fgx, fgy = slope * math.cos(phi), slope * math.sin(phi)
        fg_layers.append(SceneLayer(placed.rgb, placed.alpha, top, left, (d_centre - fgx * bx - fgy * by, fgx, fgy)))
        centres.append(float(d_centre))
    return fg_layers, centres
