"""On-the-fly paired training data: layered scenes (RGBA foregrounds over a tilted background) and their
physically rendered bokeh, after BokehDiff (Zhu et al., "BokehDiff: Neural Lens Blur with One-Step
Diffusion", ICCV 2025, Sec. 3.3 "data synthesis") and the layered ray tracer of BokehMe (Peng et al., CVPR 2022).

Scene model (``sample_scene``), in *scene* pixel coordinates (x = column, y = row, origin at the top-left
pixel centre of the unpadded scene):

* the background is an ordinary photo on a far plane, ``disparity = d0 + gx*x + gy*y``, tilted in a random
  direction; it spans ``[far, far + span]`` over the padded canvas (far in [0.001, 0.05], span in [0, 0.25]);
* one or more foregrounds (RGBA cut-outs cropped to their alpha bounding box, scaled, placed near the centre
  with jitter) sit on nearer planes, optionally tilted, always in front of the background where they are;
  they are composited in order of centre disparity, and a tilt never lets a later layer come nearer than an
  earlier one over their boxes (each stays within half the gap to its neighbours' centre disparities);
* focus is on a random foreground (its plane at the box centre) or on the background (its mean disparity);
* blur strength: the largest CoC radius the scene can reach, ``K * max(disp_focus, 1 - disp_focus)``, is
  ``12 * 2**U(-2, 3)`` px at 768 px (the paper's range), scaled with the scene's long side.

Rendering (``render_window``) goes through ``kernels.render_layers`` in linear light (``srgb ** gamma``); the
canvas is padded by the largest CoC radius so every cropped pixel sees all the light that reaches it, and
the padding is cropped away. The all-in-focus image is the same front-to-back composite (in linear light),
so at ``K = 0`` the target equals the input exactly.

Public pieces: :class:`OnTheFlyDataset` (a ``torch.utils.data.Dataset``), :func:`synthesize_batch` (the
batch-level rendering step for ``synthesize_on_device=True``), :func:`load_foreground`,
:func:`load_background`, :func:`sample_scene`, :class:`Scene`, :func:`composite_window`, :func:`render_window`.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from data.io import IMAGE_EXTENSIONS, InputWarning, linear_to_srgb, read_image, srgb_to_linear

#: The paper's blur range: the largest reachable CoC radius is ``12 * 2**U(-2, 3)`` px at a 768-px scene.
BASE_COC_PX = 12.0
BASE_RESOLUTION = 768
ALPHA_EPS = 1.0 / 255.0  # alpha below one 8-bit step counts as empty


#: Directions of the background tilt (:class:`SceneConfig`).
BG_TILT_DIRECTIONS = ("angle", "square")
#: How the all-in-focus input is composited: in linear light (ours) or on sRGB values (the release).
AIF_COMPOSITES = ("linear", "srgb")
#: The CoC the model is conditioned on: the rendered one, or the release's (see :class:`OnTheFlyDataset`).
COC_CONDITIONS = ("rendered", "published")
#: Aperture sample count of the ground truth: the renderer's automatic one, or the release's grid count.
APERTURE_SAMPLE_RULES = ("auto", "published")

#: Why a sample was skipped (:attr:`BadSampleError.reason`), as counted by :meth:`OnTheFlyDataset.skip_report`.
SKIP_REASONS = ("unreadable", "empty_alpha", "no_alpha", "fg_larger_than_bg", "bg_smaller_than_crop")
#: DataLoader workers whose skips are counted separately (more share the last row).
SKIP_REPORT_WORKERS = 64


class BadSampleError(ValueError):
    """A foreground/background (pair) that cannot make a training sample; ``reason`` is a short key."""

    def __init__(self, message: str, *, reason: str, key: str):
        super().__init__(message)
        self.reason = reason
        self.key = key


# ----------------------------------------------------------------------------------------------------------
# Loading and resizing
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Foreground:
    """An RGBA cut-out cropped to its alpha bounding box: ``rgb`` (3, h, w) sRGB [0, 1], ``alpha`` (1, h, w)."""

    rgb: np.ndarray
    alpha: np.ndarray
    source: str = ""


def load_foreground(path: str | Path) -> Foreground:
    """Read an RGBA image and crop it to its alpha bounding box (alpha > 1/255).

    Raises :class:`BadSampleError` (reason ``"empty_alpha"``) when no pixel has alpha, ``"no_alpha"`` when the
    file has no alpha channel at all (RGB, JPEG: it would be pasted as an opaque rectangle), ``"unreadable"``
    when the file cannot be decoded. (Cut-outs made from files whose alpha must be derived, like
    scikit-image's ``logo.png``, go through :func:`crop_to_alpha` directly, see :func:`logo_cutout`.)
    """
    try:
        rgb, alpha = read_image(path, with_alpha=True)
    except (ValueError, OSError) as error:
        raise BadSampleError(f"unreadable foreground '{path}': {error}", reason="unreadable", key=str(path)) from error
    # read_image gives an all-ones alpha for files without one; only then look at the stored channels (a file
    # with a real, fully opaque alpha channel is used as stored).
    if float(alpha.min()) >= 1.0 and not _has_alpha_channel(path):
        kind = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "RGB or gray"
        raise BadSampleError(
            f"foreground '{path}' has no alpha channel ({kind} file); it would be pasted as an opaque "
            "rectangle. Save cut-outs as PNG with alpha (RGBA)",
            reason="no_alpha",
            key=str(path),
        )
    return crop_to_alpha(rgb, alpha, source=str(path))


def _has_alpha_channel(path: str | Path) -> bool:
    """Whether the stored image has an alpha channel (gray + alpha or RGBA), as :func:`data.io.read_image` sees it."""
    from data.io import _imread_any

    array = _imread_any(Path(path))
    return array.ndim == 3 and array.shape[2] in (2, 4)


def crop_to_alpha(rgb: np.ndarray, alpha: np.ndarray, *, source: str = "") -> Foreground:
    """Crop ``rgb`` (3, H, W) and ``alpha`` (1, H, W) to the bounding box of ``alpha > 1/255``."""
    rows = np.flatnonzero((alpha[0] > ALPHA_EPS).any(axis=1))
    cols = np.flatnonzero((alpha[0] > ALPHA_EPS).any(axis=0))
    if rows.size == 0:
        raise BadSampleError(
            f"foreground '{source}' has an empty alpha channel (no pixel above 1/255); it cannot be composited",
            reason="empty_alpha",
            key=source,
        )
    box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return Foreground(np.ascontiguousarray(rgb[box]), np.ascontiguousarray(alpha[box]), source)


def load_background(path: str | Path) -> np.ndarray:
    """Read a background photo as (3, H, W) sRGB [0, 1]; an alpha channel, if any, is dropped quietly
    (backgrounds are opaque by definition). Raises :class:`BadSampleError` (``"unreadable"``)."""
    try:
        rgb, _ = read_image(path, with_alpha=True)
    except (ValueError, OSError) as error:
        raise BadSampleError(f"unreadable background '{path}': {error}", reason="unreadable", key=str(path)) from error
    return rgb


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (C, h, w) -> (C, height, width): area averaging to shrink (no aliasing), bicubic to enlarge
    (clipped back to [0, 1] because bicubic overshoots)."""
    if image.shape[1:] == (height, width):
        return image
    shrink = height * width < image.shape[1] * image.shape[2]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    planes = [cv2.resize(c, (width, height), interpolation=interpolation) for c in image]
    return np.clip(np.stack(planes), 0.0, 1.0).astype(np.float32)


def resize_foreground(fg: Foreground, height: int, width: int) -> Foreground:
    """Resize an RGBA cut-out in premultiplied form, so the colour of transparent pixels (often black or
    garbage) does not bleed into the visible edge, then un-premultiply."""
    premultiplied = resize_image(np.concatenate([fg.rgb * fg.alpha, fg.alpha]), height, width)
    alpha = premultiplied[3:]
    rgb = np.where(alpha > 1e-6, premultiplied[:3] / np.maximum(alpha, 1e-6), 0.0)
    return Foreground(np.clip(rgb, 0, 1).astype(np.float32), alpha, fg.source)


def cover_crop(image: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Scale (aspect kept) so the image covers ``height x width``, then take a random crop of that size."""
    _, h, w = image.shape
    scale = max(height / h, width / w)
    new_h, new_w = max(height, math.ceil(h * scale - 1e-9)), max(width, math.ceil(w * scale - 1e-9))
    image = resize_image(image, new_h, new_w)
    top = int(rng.integers(0, new_h - height + 1))
    left = int(rng.integers(0, new_w - width + 1))
    return np.ascontiguousarray(image[:, top : top + height, left : left + width])


# ----------------------------------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------------------------------
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

    # Background plane over the largest canvas it may ever be rendered on, so disparity stays in range.
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
    bg_near = far + span

    # Foregrounds: scale, place, give each a plane in front of the background.
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

    # Focus on a foreground (its disparity at the box centre) or on the background (mean over the scene).
    if rng.random() < config.focus_foreground_p:
        disp_focus = centres[int(rng.integers(0, n_fg))]
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


# ----------------------------------------------------------------------------------------------------------
# Compositing and rendering (torch, batched; device and dtype follow the inputs)
# ----------------------------------------------------------------------------------------------------------
def plane_disparity(planes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-layer disparity maps ``(B, L, 1, H, W)`` from planes ``(B, L, 3)`` = (A, B, C), pixel coords."""
    y = torch.arange(height, device=planes.device, dtype=planes.dtype).view(1, 1, height, 1)
    x = torch.arange(width, device=planes.device, dtype=planes.dtype).view(1, 1, 1, width)
    a, b, c = (planes[..., i, None, None] for i in range(3))
    return ((1.0 - a * x - b * y) / c).unsqueeze(2)


def composite_window(images_srgb, alphas, planes, *, gamma: float = 2.2):
    """All-in-focus composite, disparity and foreground coverage of a layered window (front to back).

    Args:
        images_srgb: ``(B, L, 3, H, W)`` straight (not premultiplied) sRGB colour in [0, 1], NEAR to FAR.
        alphas: ``(B, L, 1, H, W)`` in [0, 1]; the last layer is the opaque background.
        planes: ``(B, L, 3)`` (A, B, C), disparity = (1 - A*x - B*y) / C in window pixel coordinates.

    Returns:
        ``aif`` (B, 3, H, W) sRGB [0, 1] composited in linear light (what the renderer returns at K = 0),
        ``disparity`` (B, 1, H, W) in [0, 1] (layer disparities blended with the same visibility weights, so
        soft edges get intermediate values) and ``coverage`` (B, 1, H, W), the visible foreground fraction.
    """
    transmittance = torch.cumprod(1.0 - alphas, dim=1)
    # Visibility of layer l = alpha_l * prod_{m<l} (1 - alpha_m): over-compositing front to back.
    weights = alphas * torch.cat([torch.ones_like(transmittance[:, :1]), transmittance[:, :-1]], dim=1)
    aif_linear = (weights * srgb_to_linear(images_srgb, gamma)).sum(dim=1)
    disparity = (weights * plane_disparity(planes, *images_srgb.shape[-2:]).to(weights.dtype)).sum(dim=1)
    coverage = weights[:, :-1].sum(dim=1)
    return linear_to_srgb(aif_linear, gamma), disparity.clamp(0.0, 1.0), coverage.clamp(0.0, 1.0)


def _render_layers():
    """``kernels.render_layers``, imported late so that the data package imports without the renderers."""
    try:
        from kernels import render_layers
    except ImportError:  # the package may not re-export it yet; the module is the same function
        from kernels.layers import render_layers
    return render_layers


def render_window(
    images_srgb: torch.Tensor,
    alphas: torch.Tensor,
    planes: torch.Tensor,
    K: torch.Tensor,
    disp_focus: torch.Tensor,
    *,
    pad: int,
    gamma: float = 2.2,
    n_samples: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    impl: str = "auto",
) -> torch.Tensor:
    """Ground-truth bokeh of a padded layered window with ``kernels.render_layers``, padding cropped.

    Args:
        images_srgb, alphas, planes: as :func:`composite_window`, window of ``(H + 2*pad) x (W + 2*pad)``.
        K: ``(B,)`` px of CoC radius per unit disparity; disp_focus: ``(B,)`` in [0, 1].
        pad: padding to crop (px), at least the largest CoC radius so border pixels get all their light.
        n_samples: aperture samples (renderer default when None); max_samples: cap of the renderer's
            automatic count (its default when None; the mip prefilter covers sparser sampling, at the price of
            a slightly softer bokeh); seed: the renderer's sampling seed.

    Returns:
        ``(B, 3, H, W)`` sRGB bokeh in [0, 1]: ``(sum / weight) ** (1 / gamma)`` of the renderer's output.
    """
    render_layers = _render_layers()

    kwargs = {} if n_samples is None else {"n_samples": int(n_samples)}
    if max_samples is not None:
        kwargs["max_samples"] = int(max_samples)
    dtype = images_srgb.dtype
    colour_sum, weight = render_layers(
        srgb_to_linear(images_srgb, gamma), alphas.to(dtype), planes.to(dtype), K.to(dtype), disp_focus.to(dtype),
        seed=int(seed), impl=impl, **kwargs,
    )
    bokeh_linear = colour_sum / weight.clamp_min(1e-6)
    if pad:
        bokeh_linear = bokeh_linear[..., pad:-pad, pad:-pad]
    return linear_to_srgb(bokeh_linear.clamp(0.0, 1.0), gamma)


def apply_augmentation(sample: dict, flip: torch.Tensor, brightness: torch.Tensor) -> dict:
    """Apply flips and brightness identically to every map of a (batched or single) sample, in place.

    flip: ``(..., 2)`` bool (horizontal, vertical); brightness: ``(...)`` factor > 0 on sRGB values.
    Scaling sRGB by ``s`` scales linear light by ``s ** gamma``, and rendering is linear in light, so the
    scaled target is exactly the bokeh of the scaled scene; ``s <= 1`` keeps that true (no clipping). A
    factor above 1 (the released training brightens up to 1.1x) saturates: ``aif`` and ``bokeh`` are clipped
    to [0, 1], as the release does, and the pair is then only approximately consistent at clipped pixels.
    Flips commute with rendering for the symmetric (disc) aperture used in training.
    """
    batched = sample["aif"].dim() == 4
    maps = ("aif", "bokeh", "disparity", "coc_px")
    flip = flip.reshape(-1, 2)
    brightness = brightness.reshape(-1)
    for key in maps:
        if key not in sample:
            continue
        values = sample[key] if batched else sample[key].unsqueeze(0)
        out = []
        for i in range(values.shape[0]):
            v = values[i]
            if bool(flip[i, 0]):
                v = v.flip(-1)
            if bool(flip[i, 1]):
                v = v.flip(-2)
            if key in ("aif", "bokeh"):
                v = v * brightness[i].to(v.dtype)
                if bool(brightness[i] > 1):
                    v = v.clamp(0.0, 1.0)
            out.append(v)
        stacked = torch.stack(out)
        sample[key] = stacked if batched else stacked[0]
    return sample


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


# ----------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------
def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def largest_crop_size(data_root: str | Path) -> int:
    """The largest square crop (px) that at least one background of ``<data_root>/bg/`` can supply: the
    longest short side among them (read from the file headers; unreadable files count as 0). ``0`` when there
    is no usable background. Samples need a background at least as large as the crop (``bg_smaller_than_crop``)."""
    from PIL import Image, UnidentifiedImageError

    sides = [0]
    folder = Path(data_root) / "bg"
    for path in _list_images(folder) if folder.is_dir() else []:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, UnidentifiedImageError):  # reported as "unreadable" when a sample draws it
            continue
    return max(sides)


class OnTheFlyDataset(Dataset):
    """Paired all-in-focus / bokeh samples synthesised on the fly from ``<data_root>/fg/*`` (RGBA cut-outs)
    and ``<data_root>/bg/*`` (any photos), BokehDiff's training data (paper Sec. 3.3).

    Each item (``synthesize_on_device=False``, the default; all float32 on the CPU):

    ============== ============ ===================================================================
    key            shape        meaning
    ============== ============ ===================================================================
    aif            (3, S, S)    all-in-focus input, sRGB in [0, 1]
    bokeh          (3, S, S)    ground-truth bokeh (the target), sRGB in [0, 1]
    disparity      (1, S, S)    disparity in [0, 1], 1 = nearest
    coc_px         (1, S, S)    signed CoC radius in px, ``K * (disparity - disp_focus)``
    K              ()           px of CoC radius per unit disparity, exactly the K used to render
    disp_focus     ()           focal disparity in [0, 1]
    original_size  (2,) long    (H, W) of the rendered scene (SDXL micro-conditioning)
    crop_top_left  (2,) long    (top, left) of the crop in that scene (SDXL micro-conditioning)
    flip           (2,) bool    (horizontal, vertical) flips applied to every map
    brightness     ()           factor applied to ``aif`` and ``bokeh`` (sRGB), in (0, 1]
    ============== ============ ===================================================================

    ``S = size``. The scene is ``round(size * scene_scale)`` px square (768 for 512 crops, as the paper);
    blur scales with the scene's long side (module docstring).

    With ``synthesize_on_device=True`` the item holds everything but ``bokeh`` plus the padded layers
    (``layers`` (L, 3, S+2P, S+2P) sRGB, ``alphas`` (L, 1, S+2P, S+2P), ``planes`` (L, 3) float64, ``pad`` (),
    ``render_pad`` () the padding CPU mode renders this item with (<= P), ``render_seed`` ()), with
    ``L = max foregrounds + 1`` (unused layers have zero alpha) and one fixed ``P`` for every item so batches
    stack; the training loop calls :func:`synthesize_batch` on the accelerator, which renders each item as
    CPU mode would (same window, seed and sample count), whatever else is in the batch. No CUDA call ever
    happens inside a DataLoader worker.

    Options for the released training's synthesis (``configs/train_published.yaml``; defaults keep ours):

    * ``brightness_range`` / ``brightness_cap``: the factor is ``min(U(lo, hi), cap)``; a factor above 1 needs
      ``brightness_clip=True`` and clips ``aif`` and ``bokeh`` to [0, 1] (the release: ``p = 0.75``,
      ``min(U(0.7, 1.7), 1.1)``).
    * ``aif_composite="srgb"``: the all-in-focus input composited on sRGB values (the release); the target
      is always rendered in linear light, so at soft alpha edges input and ``K = 0`` target then differ.
    * ``coc_condition="published"``: ``coc_px`` (what the model is conditioned on) uses
      ``K * U(2/3, 1) * max(disp_focus, 1 - disp_focus)`` instead of the rendered ``K``: the release renders with
      ``K = 12 t / max(f, 1 - f)`` but conditions on ``12 t * U(2/3, 1)``. ``K`` stays the rendered value.
    * ``aperture_samples="published"``: the target rendered with :func:`published_aperture_count` samples.

    Randomness: item ``index`` is drawn from ``SeedSequence((seed, epoch, rank, worker, index))`` with
    ``rank`` from the constructor (the process index in distributed training), ``worker`` from
    ``get_worker_info()`` (0 in the main process) and ``epoch`` from :meth:`set_epoch`. The same settings give
    the same samples.

    Bad data never stops training: an unreadable file, a foreground without an alpha channel or with an empty
    alpha, a foreground larger than the background, a background smaller than the crop are skipped (another
    pair is drawn) and reported with one :class:`~data.io.InputWarning` per file (or pair) and process; the
    message names the process (``main process`` or ``DataLoader worker <id>``). :attr:`skipped` counts this
    process's skips; :meth:`skip_report` sums the main process's and every DataLoader worker's (the counts
    live in shared memory, so the main process sees the workers' skips). If no usable pair exists, a
    ``RuntimeError`` names the folder.
    """

    def __init__(
        self,
        data_root: str | Path,
        size: int = 512,
        *,
        scene_scale: float = 1.5,
        gamma: float = 2.2,
        seed: int = 0,
        rank: int = 0,
        length: int | None = None,
        config: SceneConfig | None = None,
        flip_p: float = 0.5,
        brightness_p: float = 0.75,
        brightness_range: tuple[float, float] = (0.6, 1.0),
        brightness_cap: float | None = None,
        brightness_clip: bool = False,
        aif_composite: str = "linear",
        coc_condition: str = "rendered",
        aperture_samples: str = "auto",
        n_samples: int | None = None,
        max_samples: int | None = None,
        impl: str = "torch",
        synthesize_on_device: bool = False,
        max_attempts: int = 64,
    ):
        self.data_root = Path(data_root)
        fg_dir, bg_dir = self.data_root / "fg", self.data_root / "bg"
        for folder in (fg_dir, bg_dir):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"OnTheFlyDataset: folder '{folder}' not found; --train_data_dir must contain fg/ (RGBA "
                    "foreground cut-outs, PNG with alpha) and bg/ (background photos). Build a sample with "
                    "`python -m scripts.make_sample_data --out DIR` and pass DIR/otf."
                )
        self.fg_paths, self.bg_paths = _list_images(fg_dir), _list_images(bg_dir)
        for paths, folder in ((self.fg_paths, fg_dir), (self.bg_paths, bg_dir)):
            if not paths:
                raise RuntimeError(
                    f"OnTheFlyDataset: no image in '{folder}' (extensions {', '.join(IMAGE_EXTENSIONS)})."
                )
        lo, hi = brightness_range
        top = hi if brightness_cap is None else min(hi, brightness_cap)
        if not 0 < lo <= hi or (brightness_cap is not None and brightness_cap <= 0):
            raise ValueError(f"brightness_range must satisfy 0 < lo <= hi and brightness_cap > 0, got "
                             f"{brightness_range} and cap {brightness_cap}")
        if top > 1.0 and not brightness_clip:
            raise ValueError(f"brightness factors up to {top} > 1 would push sRGB values above 1; pass "
                             "brightness_clip=True to clip them (the released recipe), or keep "
                             "min(brightness_range[1], brightness_cap) <= 1")
        for name, value, allowed in (("aif_composite", aif_composite, AIF_COMPOSITES),
                                     ("coc_condition", coc_condition, COC_CONDITIONS),
                                     ("aperture_samples", aperture_samples, APERTURE_SAMPLE_RULES)):
            if value not in allowed:
                raise ValueError(f"OnTheFlyDataset: {name} must be one of {list(allowed)}, got {value!r}")
        if aperture_samples == "published" and n_samples is not None:
            raise ValueError("OnTheFlyDataset: pass either n_samples or aperture_samples='published', not both")
        if seed < 0 or rank < 0:
            raise ValueError(f"seed and rank must be non-negative integers, got seed={seed}, rank={rank}")
        if size < 8:
            raise ValueError(f"size must be at least 8 px, got {size}")
        self.size = int(size)
        self.scene_size = max(self.size, int(round(size * scene_scale)))
        self.gamma, self.seed, self.rank, self.epoch = float(gamma), int(seed), int(rank), 0
        self.config = config or SceneConfig()
        self.flip_p, self.brightness_p, self.brightness_range = flip_p, brightness_p, brightness_range
        self.brightness_cap, self.brightness_clip = brightness_cap, bool(brightness_clip)
        self.aif_composite, self.coc_condition, self.aperture_samples = aif_composite, coc_condition, aperture_samples
        self.n_samples, self.max_samples, self.impl = n_samples, max_samples, impl
        self.synthesize_on_device = synthesize_on_device
        self.fixed_margin = margin_for(self.config.max_coc_px(self.scene_size)) if synthesize_on_device else None
        self.max_attempts = max_attempts
        self.length = int(length) if length is not None else len(self.fg_paths) * len(self.bg_paths)
        self.skipped: dict[str, int] = {}  # reason -> count (this process)
        self._bad: dict[str, str] = {}  # file or pair key -> reason (warned once per process)
        # Row 0: main process; row 1 + w: DataLoader worker w. Shared memory: workers (forked or spawned, via
        # torch.multiprocessing) write their own row, the main process reads them all (skip_report).
        self._skip_counts = torch.zeros(SKIP_REPORT_WORKERS + 1, len(SKIP_REASONS), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Make the next epoch draw new scenes (call before iterating; workers are re-created per epoch
        unless ``persistent_workers``)."""
        self.epoch = int(epoch)

    # -- randomness ------------------------------------------------------------------------------------
    def _rng(self, index: int) -> np.random.Generator:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, self.rank, worker, index]))

    # -- bad data ------------------------------------------------------------------------------------------
    def _skip(self, error: BadSampleError) -> None:
        self.skipped[error.reason] = self.skipped.get(error.reason, 0) + 1
        info = get_worker_info()
        # Workers beyond the table share its last row (their counts may then race; no real job has that many).
        row = 0 if info is None else 1 + min(info.id, SKIP_REPORT_WORKERS - 1)
        self._skip_counts[row, SKIP_REASONS.index(error.reason)] += 1
        if error.key not in self._bad:
            self._bad[error.key] = error.reason
            where = "main process" if info is None else f"DataLoader worker {info.id}"
            warnings.warn(f"OnTheFlyDataset ({where}): skipping: {error}", InputWarning, stacklevel=3)

    def skip_report(self, *, by_worker: bool = False) -> dict:
        """Bad-data skips since construction, over the main process and all DataLoader workers (also after
        the workers have exited). Returns ``{reason: count}`` (reasons in :data:`SKIP_REASONS` with a
        non-zero count), or with ``by_worker`` ``{"main process" | "DataLoader worker <id>": {reason: count}}``."""
        counts = self._skip_counts.clone()

        def as_dict(row: torch.Tensor) -> dict[str, int]:
            return {reason: int(n) for reason, n in zip(SKIP_REASONS, row.tolist()) if n}

        if not by_worker:
            return as_dict(counts.sum(dim=0))
        names = ["main process"] + [f"DataLoader worker {w}" for w in range(SKIP_REPORT_WORKERS)]
        return {name: as_dict(row) for name, row in zip(names, counts) if int(row.sum())}

    def _usable_left(self) -> bool:
        fg_ok = any(str(p) not in self._bad for p in self.fg_paths)
        bg_ok = any(str(p) not in self._bad for p in self.bg_paths)
        return fg_ok and bg_ok

    def _load_pair(self, fg_index: int, bg_index: int, extra_fg: list[int]):
        bg_path = self.bg_paths[bg_index]
        if str(bg_path) in self._bad:
            raise BadSampleError("known bad", reason=self._bad[str(bg_path)], key=str(bg_path))
        background = load_background(bg_path)
        if min(background.shape[1:]) < self.size:
            raise BadSampleError(
                f"background '{bg_path}' is {background.shape[2]}x{background.shape[1]}, smaller than the "
                f"{self.size}x{self.size} crop",
                reason="bg_smaller_than_crop",
                key=str(bg_path),
            )
        foregrounds = []
        for index in [fg_index] + extra_fg:
            fg_path = self.fg_paths[index]
            if str(fg_path) in self._bad:
                raise BadSampleError("known bad", reason=self._bad[str(fg_path)], key=str(fg_path))
            fg = load_foreground(fg_path)
            # "Larger" = exceeds the background in both dimensions: such a cut-out usually comes from a much
            # higher-resolution source and would be shrunk so far that its fine alpha is lost.
            if fg.rgb.shape[1] > background.shape[1] and fg.rgb.shape[2] > background.shape[2]:
                raise BadSampleError(
                    f"foreground '{fg_path}' ({fg.rgb.shape[2]}x{fg.rgb.shape[1]} after cropping to alpha) is "
                    f"larger than background '{bg_path}' ({background.shape[2]}x{background.shape[1]})",
                    reason="fg_larger_than_bg",
                    key=f"{fg_path} | {bg_path}",
                )
            foregrounds.append(fg)
        return foregrounds, background, str(bg_path)

    # -- items -----------------------------------------------------------------------------------------
    def sample_scene(self, index: int) -> tuple[Scene, np.random.Generator]:
        """The scene for ``index`` and the generator (positioned after the scene draws) for augmentation.

        Tries the index's own pair first, then random pairs, skipping bad data (class docstring)."""
        rng = self._rng(index)
        scene_rng, aug_rng = (np.random.default_rng(s) for s in rng.bit_generator.seed_seq.spawn(2))
        n_fg_lo, n_fg_hi = self.config.n_foregrounds
        fg_index, bg_index = index % len(self.fg_paths), (index // len(self.fg_paths)) % len(self.bg_paths)
        for _ in range(self.max_attempts):
            n_fg = int(scene_rng.integers(n_fg_lo, n_fg_hi + 1))
            extra = [int(i) for i in scene_rng.integers(0, len(self.fg_paths), size=n_fg - 1)]
            try:
                foregrounds, background, bg_source = self._load_pair(fg_index, bg_index, extra)
            except BadSampleError as error:
                self._skip(error)
                if not self._usable_left():
                    break
                fg_index = int(scene_rng.integers(0, len(self.fg_paths)))
                bg_index = int(scene_rng.integers(0, len(self.bg_paths)))
                continue
            scene = sample_scene(
                foregrounds, background, scene_rng, self.scene_size, self.scene_size, self.config,
                margin=self.fixed_margin, background_source=bg_source,
            )
            return scene, aug_rng
        raise RuntimeError(
            f"OnTheFlyDataset: no usable foreground/background pair in '{self.data_root}' "
            f"(skipped so far: {self.skipped}; see the warnings for each file). Foregrounds in fg/ need a "
            f"non-empty alpha and must fit inside the backgrounds; backgrounds in bg/ must be at least "
            f"{self.size}x{self.size} px."
        )

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        scene, rng = self.sample_scene(index)
        size, pad = self.size, scene.margin
        top = int(rng.integers(0, scene.height - size + 1))
        left = int(rng.integers(0, scene.width - size + 1))
        # Every draw happens whatever the probabilities, so switching an augmentation off leaves the other
        # draws (crop, renderer seed) unchanged: the same scene and crop with and without augmentation.
        flip = torch.from_numpy(rng.random(2) < self.flip_p)
        use_brightness, factor = rng.random() < self.brightness_p, float(rng.uniform(*self.brightness_range))
        if self.brightness_cap is not None:
            factor = min(factor, self.brightness_cap)
        brightness = factor if use_brightness else 1.0
        render_seed = int(rng.integers(0, 2**31 - 1))
        # Drawn last (and always), so the draws above are the same whatever the conditioning rule.
        condition_ratio = float(rng.uniform(2.0 / 3.0, 1.0))

        images, alphas, planes = scene.window(top - pad, left - pad, size + 2 * pad, size + 2 * pad)
        if self.synthesize_on_device:
            # Fixed layer count so items stack: empty (alpha 0) foreground layers behind the real ones.
            n_max = self.config.n_foregrounds[1] + 1
            missing = n_max - images.shape[0]
            if missing:
                images = np.concatenate([images[:-1], np.zeros((missing, *images.shape[1:]), np.float32), images[-1:]])
                alphas = np.concatenate([alphas[:-1], np.zeros((missing, *alphas.shape[1:]), np.float32), alphas[-1:]])
                planes = np.concatenate([planes[:-1], np.repeat(planes[-1:], missing, axis=0), planes[-1:]])
        images_t, alphas_t = torch.from_numpy(images)[None], torch.from_numpy(alphas)[None]
        planes_t = torch.from_numpy(planes)[None]
        inner = (..., slice(pad, pad + size), slice(pad, pad + size))
        composite_gamma = 1.0 if self.aif_composite == "srgb" else self.gamma
        aif, disparity, _ = composite_window(images_t, alphas_t, planes_t, gamma=composite_gamma)
        aif, disparity = aif[inner], disparity[inner]
        sample = {
            "aif": aif[0].float(),
            "disparity": disparity[0].float(),
            "K": torch.tensor(scene.K, dtype=torch.float32),
            "disp_focus": torch.tensor(scene.disp_focus, dtype=torch.float32),
            "original_size": torch.tensor([scene.height, scene.width], dtype=torch.long),
            "crop_top_left": torch.tensor([top, left], dtype=torch.long),
            "flip": flip,
            "brightness": torch.tensor(brightness, dtype=torch.float32),
        }
        K_condition = sample["K"]
        if self.coc_condition == "published":
            K_condition = K_condition * condition_ratio * max(scene.disp_focus, 1.0 - scene.disp_focus)
        sample["coc_px"] = K_condition * (sample["disparity"] - sample["disp_focus"])
        n_samples = self.n_samples
        if self.aperture_samples == "published":
            times = scene.max_coc_px() / (BASE_COC_PX * max(scene.height, scene.width) / BASE_RESOLUTION)
            n_samples = published_aperture_count(times)
        if self.synthesize_on_device:
            sample.update(layers=images_t[0], alphas=alphas_t[0], planes=planes_t[0], pad=torch.tensor(pad),
                          render_pad=torch.tensor(scene.own_margin), render_seed=torch.tensor(render_seed))
            if self.aperture_samples == "published":
                sample["render_samples"] = torch.tensor(n_samples)
            return sample  # augmentation is applied after rendering, by synthesize_batch
        bokeh = render_window(
            images_t, alphas_t, planes_t, sample["K"].view(1), sample["disp_focus"].view(1),
            pad=pad, gamma=self.gamma, n_samples=n_samples, max_samples=self.max_samples, seed=render_seed,
            impl=self.impl,
        )
        sample["bokeh"] = bokeh[0].float()
        return apply_augmentation(sample, flip, sample["brightness"])


def synthesize_batch(
    batch: dict,
    device: torch.device | str | None = None,
    *,
    gamma: float = 2.2,
    n_samples: int | None = None,
    max_samples: int | None = None,
    impl: str = "auto",
) -> dict:
    """Render the targets of a collated ``synthesize_on_device=True`` batch on ``device`` (the accelerator),
    in the main process, then apply each item's flips and brightness.

    Each item is rendered on its own, exactly as CPU mode renders it: its window cropped to its
    ``render_pad``, its ``render_seed``, and the renderer's sample count for its own largest CoC. So an item's
    target never depends on the other items of its batch, and equals the CPU-mode target up to float
    rounding (same ``impl``).

    Args:
        batch: a default-collated batch of :class:`OnTheFlyDataset` items (``layers`` (B, L, 3, S+2P, S+2P),
            ``alphas``, ``planes`` (B, L, 3), ``pad`` (B,), ``render_pad`` (B,), ``render_seed`` (B,), ...).
        device: where to render (e.g. ``accelerator.device``); default: where ``batch["layers"]`` is.
        gamma, n_samples, max_samples: must match the dataset's ``gamma``, ``n_samples``, ``max_samples``.

    Returns:
        A new dict with the dataset's CPU-mode keys (``aif``, ``bokeh``, ``disparity``, ``coc_px``, ``K``,
        ``disp_focus``, ``original_size``, ``crop_top_left``, ``flip``, ``brightness``) on ``device``; the
        layer tensors are dropped.
    """
    device = batch["layers"].device if device is None else torch.device(device)
    pads = batch["pad"].unique()
    if pads.numel() != 1:
        raise ValueError(f"synthesize_batch: items have different padding {pads.tolist()}; use one dataset per batch")
    pad = int(pads[0])
    render_pads = batch.get("render_pad", batch["pad"])
    layer_keys = ("layers", "alphas", "planes", "pad", "render_pad", "render_seed", "render_samples")
    out = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items() if k not in layer_keys}
    height, width = batch["layers"].shape[-2:]
    bokeh = []
    for i in range(batch["layers"].shape[0]):
        item_pad = int(render_pads[i])
        if not 0 <= item_pad <= pad:
            raise ValueError(f"synthesize_batch: item {i} has render_pad {item_pad}, outside [0, pad = {pad}]")
        o = pad - item_pad  # crop the fixed-size window to the item's own (CPU-mode) window
        crop = (slice(i, i + 1), Ellipsis, slice(o, height - o), slice(o, width - o))
        bokeh.append(render_window(
            batch["layers"][crop].to(device), batch["alphas"][crop].to(device),
            shift_planes(batch["planes"][i : i + 1], o).to(device), out["K"][i : i + 1], out["disp_focus"][i : i + 1],
            pad=item_pad, gamma=gamma, max_samples=max_samples, seed=int(batch["render_seed"][i]), impl=impl,
            n_samples=int(batch["render_samples"][i]) if "render_samples" in batch else n_samples,
        ))
    out["bokeh"] = torch.cat(bokeh).float()
    return apply_augmentation(out, out["flip"], out["brightness"])


def shift_planes(planes: torch.Tensor, offset: int) -> torch.Tensor:
    """Planes ``(..., 3)`` = (A, B, C) re-expressed for a window whose origin lies ``offset`` px right of and
    below the old one: ``d(x' + o, y' + o) = (s - A x' - B y') / C`` with ``s = 1 - (A + B) o = C d(o, o) > 0``,
    i.e. ``(A, B, C) / s``."""
    if offset == 0:
        return planes
    return planes / (1.0 - (planes[..., 0:1] + planes[..., 1:2]) * offset)


# ----------------------------------------------------------------------------------------------------------
# Sample data from scikit-image's bundled photos (no third-party copyright problems; offline)
# ----------------------------------------------------------------------------------------------------------
#: Backgrounds: scikit-image's bundled colour photos (public domain / CC0, see skimage/data/README.txt).
SAMPLE_BACKGROUNDS = ("coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "chelsea", "astronaut")
#: Foreground sources: the RGBA logo, and photo regions cut out with a procedural fractal, hair-like alpha.
SAMPLE_CUTOUTS = ("chelsea", "astronaut", "coffee")


def _skimage_rgb(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return (image[:, :, :3].astype(np.float32) / 255.0).transpose(2, 0, 1).copy()


def logo_cutout() -> Foreground:
    """scikit-image's ``logo.png`` as a cut-out. Its alpha channel is fully opaque (a logo on white), so the
    alpha is derived: non-white pixels, holes filled, edge anti-aliased by a 1-px blur."""
    import skimage.data
    from scipy.ndimage import binary_fill_holes

    logo = skimage.data.logo().astype(np.float32) / 255.0
    rgb = logo[:, :, :3]
    # The logo's white S-stroke touches the white surround, so fill_holes alone leaves it transparent; a
    # morphological closing wider than the stroke seals the disc first.
    ink = ((1.0 - rgb.min(axis=2)) > 0.08).astype(np.uint8)
    ink = cv2.morphologyEx(ink, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (21, 21)))
    solid = binary_fill_holes(ink > 0)
    alpha = cv2.GaussianBlur(solid.astype(np.float32), (0, 0), 1.0)[None]
    return crop_to_alpha(rgb.transpose(2, 0, 1).copy(), np.clip(alpha, 0, 1), source="skimage:logo")


def fractal_alpha(height: int, width: int, rng: np.random.Generator, *, strands: int = 160) -> np.ndarray:
    """A procedural cut-out matte ``(1, height, width)`` in [0, 1] with fine structure, for training data
    whose mattes are as hard as hair: a blob whose radius is fractal noise over the angle (octaves with
    amplitude ~ 1/frequency, i.e. a rough 1/f boundary), plus thin semi-transparent curly strands grown
    outward from the boundary (random walks drawn anti-aliased at 4x and area-downsampled)."""
    scale = 4
    H, W = height * scale, width * scale
    theta = np.linspace(0.0, 2.0 * math.pi, 720, endpoint=False)
    radius = np.ones_like(theta)
    for octave in range(1, 7):
        freq = 2**octave
        radius += (0.25 / freq) * np.sin(freq * theta + rng.uniform(0, 2 * math.pi)) * rng.uniform(0.5, 1.0)
    cy, cx, ry, rx = H / 2, W / 2, 0.36 * H, 0.36 * W
    polygon = np.stack([cx + rx * radius * np.cos(theta), cy + ry * radius * np.sin(theta)], axis=1)
    canvas = np.zeros((H, W), np.uint8)
    cv2.fillPoly(canvas, [np.round(polygon).astype(np.int32)], 255, lineType=cv2.LINE_AA)
    strand_layer = np.zeros((H, W), np.uint8)
    for _ in range(strands):
        k = int(rng.integers(0, len(theta)))
        point = polygon[k].copy()
        direction = math.atan2(point[1] - cy, point[0] - cx) + rng.normal(0, 0.4)
        steps = int(rng.integers(10, 40))
        path = [point.copy()]
        for _ in range(steps):
            direction += rng.normal(0, 0.25)  # curl
            point += 3.0 * np.array([math.cos(direction), math.sin(direction)])
            path.append(point.copy())
        shade = int(rng.integers(90, 256))
        cv2.polylines(strand_layer, [np.round(np.array(path)).astype(np.int32)], False, shade, 1, cv2.LINE_AA)
    alpha = np.maximum(canvas, strand_layer).astype(np.float32) / 255.0
    alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_AREA)
    return np.clip(alpha, 0, 1)[None]


def photo_cutout(name: str, rng: np.random.Generator) -> Foreground:
    """A central region of a scikit-image photo cut out with :func:`fractal_alpha`."""
    rgb = _skimage_rgb(name)
    _, h, w = rgb.shape
    ch, cw = int(h * rng.uniform(0.55, 0.8)), int(w * rng.uniform(0.45, 0.7))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = rgb[:, top : top + ch, left : left + cw].copy()
    return crop_to_alpha(crop, fractal_alpha(ch, cw, rng), source=f"skimage:{name}")


def sample_foregrounds(rng: np.random.Generator) -> list[Foreground]:
    """The sample foregrounds: the logo and one fractal cut-out per :data:`SAMPLE_CUTOUTS` photo."""
    return [logo_cutout()] + [photo_cutout(name, rng) for name in SAMPLE_CUTOUTS]


def sample_backgrounds() -> list[tuple[str, np.ndarray]]:
    """``(name, (3, H, W) sRGB)`` for each :data:`SAMPLE_BACKGROUNDS` photo."""
    return [(name, _skimage_rgb(name)) for name in SAMPLE_BACKGROUNDS]


def render_sample_scene(scene: Scene, K: float, disp_focus: float, *, gamma: float = 2.2, impl: str = "torch"):
    """The whole scene at the given blur: ``(aif, disparity, mask, bokeh)`` numpy, sRGB / [0, 1], (C, H, W)."""
    pad = margin_for(scene.max_coc_px(K, disp_focus))
    if pad > scene.margin:
        raise ValueError(f"K = {K} needs {pad} px of margin but the scene has {scene.margin}; sample it with a larger margin")
    images, alphas, planes = (torch.from_numpy(a)[None] for a in scene.window(-pad, -pad, scene.height + 2 * pad, scene.width + 2 * pad))
    aif, disparity, coverage = composite_window(images, alphas, planes, gamma=gamma)
    inner = (0, slice(None), slice(pad, pad + scene.height), slice(pad, pad + scene.width))
    bokeh = render_window(images, alphas, planes, torch.tensor([K], dtype=torch.float32),
                          torch.tensor([disp_focus], dtype=torch.float32), pad=pad, gamma=gamma, impl=impl)
    return (aif[inner].numpy(), disparity[inner].numpy(), coverage[inner].numpy(), bokeh[0].numpy())


def write_sample_data(
    out_dir: str | Path,
    *,
    n_scenes: int = 3,
    size: tuple[int, int] = (192, 256),
    max_coc_px: Sequence[float] = (4.0, 12.0),
    seed: int = 0,
    gamma: float = 2.2,
    otf_size: int = 256,
    impl: str = "torch",
    disparity_dtype: str = "float32",
) -> dict:
    """Write sample data built from scikit-image photos into ``out_dir``:

    * ``out_dir/ebb/``: EBB layout: ``input/<name>.png`` (all-in-focus, sRGB), ``depth/<name>_pred.npy``
      (exact disparity, float32 (H, W) in [0, 1], 1 = near), ``mask/<name>.png`` (visible foreground),
      ``bokeh/<name>_K<K>_f<focus>.png`` (GT; one per blur strength and focus: on the foreground, on the
      background), ``meta.json`` (per input: list of ``{"gt", "K", "disp_focus", "max_coc_px"}``, plus
      ``"_disparity_absolute": true`` so loaders keep the disparity scale K refers to);
    * ``out_dir/otf/fg/*.png`` (RGBA cut-outs, long side ``otf_size``) and ``out_dir/otf/bg/*.png`` (photos,
      short side ``otf_size``): an :class:`OnTheFlyDataset` folder.

    ``max_coc_px``: the GTs' largest CoC radius (px), i.e. ``K = max_coc / max(f, 1 - f)``. Sizes may be odd.
    ``disparity_dtype="float16"`` halves the ``.npy`` files (error <= 5e-4, i.e. < 0.01 px of CoC at K = 20).
    Returns the metadata written to ``meta.json``.
    """
    from data.io import save_image

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    foregrounds = sample_foregrounds(rng)
    backgrounds = sample_backgrounds()
    height, width = size
    config = SceneConfig(n_foregrounds=(1, 1), fg_scale_range=(0.45, 0.7), fg_tilt_p=0.5)
    margin = margin_for(max(max_coc_px))
    ebb = out_dir / "ebb"
    meta: dict = {"_disparity_absolute": True}
    for index in range(n_scenes):
        name = f"scene{index:02d}"
        fg = foregrounds[index % len(foregrounds)]
        bg_name, bg = backgrounds[index % len(backgrounds)]
        scene = sample_scene([fg], bg, rng, height, width, config, margin=margin, background_source=f"skimage:{bg_name}")
        fg_focus = scene.layers[0].plane[0] + scene.layers[0].plane[1] * (scene.layers[0].left + scene.layers[0].rgb.shape[2] / 2) \
            + scene.layers[0].plane[2] * (scene.layers[0].top + scene.layers[0].rgb.shape[1] / 2)
        bg_plane = scene.layers[-1].plane
        bg_focus = bg_plane[0] + bg_plane[1] * (width - 1) / 2 + bg_plane[2] * (height - 1) / 2
        records = []
        aif = disparity = coverage = None
        for focus in (fg_focus, bg_focus):
            for coc in max_coc_px:
                K = coc / max(focus, 1.0 - focus)
                aif, disparity, coverage, bokeh = render_sample_scene(scene, K, focus, gamma=gamma, impl=impl)
                gt_rel = f"bokeh/{name}_K{K:.2f}_f{focus:.3f}.png"
                save_image(ebb / gt_rel, bokeh)
                records.append({"gt": gt_rel, "K": round(K, 4), "disp_focus": round(float(focus), 6), "max_coc_px": coc})
        # Stored rounded so that the GT's K label and the disparity file describe exactly the same CoC.
        for record in records:
            record["K"] = float(record["K"])
        save_image(ebb / "input" / f"{name}.png", aif)
        save_image(ebb / "mask" / f"{name}.png", coverage)
        (ebb / "depth").mkdir(parents=True, exist_ok=True)
        np.save(ebb / "depth" / f"{name}_pred.npy", disparity[0].astype(disparity_dtype))
        meta[name] = records
    (ebb / "meta.json").write_text(json.dumps(meta, indent=1))

    write_otf_folder(out_dir / "otf", foregrounds, backgrounds, otf_size)
    return meta


def write_otf_folder(out_dir: str | Path, foregrounds=None, backgrounds=None, size: int = 512, seed: int = 0) -> Path:
    """Write an :class:`OnTheFlyDataset` folder: ``fg/<name>.png`` RGBA cut-outs (long side ``size``) and
    ``bg/<name>.png`` photos (short side ``size``, so crops up to ``size`` px work). Defaults: the
    scikit-image samples (:func:`sample_foregrounds`, :func:`sample_backgrounds`)."""
    from data.io import save_image

    out_dir = Path(out_dir)
    foregrounds = sample_foregrounds(np.random.default_rng(seed)) if foregrounds is None else foregrounds
    backgrounds = sample_backgrounds() if backgrounds is None else backgrounds
    (out_dir / "fg").mkdir(parents=True, exist_ok=True)
    for fg in foregrounds:
        scale = size / max(fg.rgb.shape[1:])
        small = resize_foreground(fg, max(1, round(fg.rgb.shape[1] * scale)), max(1, round(fg.rgb.shape[2] * scale)))
        rgba = np.concatenate([small.rgb, small.alpha]).transpose(1, 2, 0)
        encoded = np.round(np.clip(rgba, 0, 1) * 255).astype(np.uint8)[:, :, [2, 1, 0, 3]]  # RGBA -> BGRA
        cv2.imwrite(str(out_dir / "fg" / f"{fg.source.split(':')[-1]}.png"), encoded)
    for bg_name, bg in backgrounds:
        scale = size / min(bg.shape[1:])
        save_image(out_dir / "bg" / f"{bg_name}.png", resize_image(bg, round(bg.shape[1] * scale), round(bg.shape[2] * scale)))
    return out_dir
