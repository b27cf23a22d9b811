"""What the app computes, without any Gradio: scenes, render options, renders, the disparity view, focus pulls.

A *scene* is one photo and its disparity at full resolution (``(3, H, W)`` sRGB in [0, 1] and ``(1, H, W)`` in
[0, 1], 1 = nearest). Renders come from a *renderer factory* ``(options, scale) -> render`` that the caller
(:mod:`webapp.renderers`) builds from ``inference.renderers``: ``render(image, disparity, K, disp_focus)``
takes ``(1, 3, H, W)`` / ``(1, 1, H, W)`` tensors at full resolution, renders at ``scale`` times that size with
``K`` scaled alike (``inference.renderers.with_upsample``), and returns ``(1, 3, H, W)`` sRGB in [0, 1] at full
size. The preview uses ``scale < 1`` (the scatter renderer's cost grows with pixels x CoC radius squared, so half size
is about 16x cheaper), downloads use ``scale = 1``.

Inputs are read with the readers of ``inference_hf.py`` (:mod:`data.io`, :mod:`data.inference_io`), with the
same depth / normalisation choices; focus comes from :mod:`data.focus` (a click is ``--focus_xy``).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from data.focus import focus_from_pixel
from data.inference_io import InputItem, choose_focus, conform_item, demo_inputs, format_value, output_name, safe_name
from data.io import (
    ASPECT_TOLERANCE, DISPARITY_EXTENSIONS, IMAGE_EXTENSIONS, InputWarning, atomic_write, read_disparity, read_image,
    resize_map, save_image,
)

RenderFn = Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]

# Slider ranges of the page, also the values :meth:`RenderOptions.validated` accepts.
K_RANGE = (0.0, 40.0)
BLADES_MAX = 12
HIGHLIGHT_GAIN_RANGE = (0.0, 10.0)
# Preview cost cap, in source pixels x (largest CoC radius in px)^2 at the preview scale: the scatter renderer's
# cost model. 3e6 is the demo photo at 0.52x with a 10-px radius (K = 20 focused mid-depth), which renders in
# about 0.3 s on two idle cores (BENCHMARKS.md, "App"); previews never go below PREVIEW_MIN_SIDE px.
PREVIEW_BUDGET = 3.0e6
PREVIEW_MIN_SIDE = 128
# Longer side (px) of the preview a click renders, at most (app.py --preview_side); never below PREVIEW_SIDE_MIN.
PREVIEW_SIDE = 384
PREVIEW_SIDE_MIN = 16


class UploadError(ValueError):
    """An uploaded file cannot be used; the message names the file, what was expected and what to do."""


@dataclass(frozen=True)
class RenderOptions:
    """Everything a render depends on besides the scene and the focus.

    Attributes:
        renderer: a key of the app's renderer factories (``classical``; ``bokehdiff`` when loaded).
        K: blur strength, CoC radius in px of the full-resolution photo per unit disparity (``--K``).
        blades: aperture polygon blades; 0 (and 1, 2, which make no polygon) = circular disc (``--blades``).
        rotation_deg: polygon rotation in degrees (``--rotation_deg``).
        highlight_gain: highlight boost of defocused sources, 0 = off (``--highlight_gain``).
        highlight_threshold: linear-light level above which the boost applies (``--highlight_threshold``).
    """

    renderer: str = "classical"
    K: float = 20.0
    blades: int = 0
    rotation_deg: float = 0.0
    highlight_gain: float = 0.0
    highlight_threshold: float = 0.8

    def validated(self, renderers: Sequence[str]) -> "RenderOptions":
        """The options with blades < 3 read as the disc (0); raises ``ValueError`` naming the control."""
        if self.renderer not in renderers:
            raise ValueError(f"renderer '{self.renderer}' is not loaded; available: {', '.join(renderers)} "
                             "(BokehDiff needs app.py --pretrained_model_name_or_path DIR --adapter DIR)")
        if not (math.isfinite(self.K) and K_RANGE[0] <= self.K <= K_RANGE[1]):
            raise ValueError(f"K must be in [{K_RANGE[0]:g}, {K_RANGE[1]:g}] px, got {self.K}")
        if int(self.blades) != self.blades or not 0 <= self.blades <= BLADES_MAX:
            raise ValueError(f"blades must be an integer in [0, {BLADES_MAX}] (0 = disc), got {self.blades}")
        if not math.isfinite(self.rotation_deg):
            raise ValueError(f"rotation must be a finite angle in degrees, got {self.rotation_deg}")
        if not HIGHLIGHT_GAIN_RANGE[0] <= self.highlight_gain <= HIGHLIGHT_GAIN_RANGE[1]:
            raise ValueError(f"highlight gain must be in [{HIGHLIGHT_GAIN_RANGE[0]:g}, {HIGHLIGHT_GAIN_RANGE[1]:g}], "
                             f"got {self.highlight_gain}")
        if not 0.0 <= self.highlight_threshold <= 1.0:
            raise ValueError(f"highlight threshold must be in [0, 1] (linear light), got {self.highlight_threshold}")
        return replace(self, K=float(self.K), blades=int(self.blades) if self.blades >= 3 else 0)

    def file_stem(self, name: str, focus: float) -> str:
        """Output file stem: ``inference_hf.py``'s ``<name>_K<K>_f<focus>``, then the renderer and the
        aperture / highlight settings that differ from the defaults (so two downloads never collide)."""
        stem = Path(output_name(name, self.K, focus)).stem + f"_{self.renderer}"
        if self.renderer == "classical":
            if self.blades:
                stem += f"_{self.blades}blades_rot{format_value(self.rotation_deg, 1)}"
            if self.highlight_gain:
                stem += f"_hl{format_value(self.highlight_gain, 1)}t{format_value(self.highlight_threshold)}"
        return stem


RendererFactory = Callable[[RenderOptions, float], RenderFn]


@dataclass
class Scene:
    """A photo and its disparity at full resolution (see :class:`data.inference_io.InputItem`).

    Attributes:
        name: file-name-safe name used for outputs.
        image: ``(3, H, W)`` float32 sRGB in [0, 1].
        disparity: ``(1, H, W)`` float32 in [0, 1], 1 = nearest.
        notes: repairs made while reading (resize, hole filling, normalisation), shown on the page.
    """

    name: str
    image: np.ndarray
    disparity: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` in pixels."""
        return tuple(self.image.shape[1:])

    def preview_scale(self, max_side: int, K: float = 0.0, focus: float | None = None, *,
                      budget: float = PREVIEW_BUDGET, min_side: int = PREVIEW_MIN_SIDE) -> float:
        """The render scale of a preview: the longer side at most ``max_side`` px and, with ``K`` and ``focus``,
        at most ``budget`` for pixels x (largest CoC radius in px)^2 at that scale, the scatter renderer's cost
        (so strong blur previews at a smaller size, where it hides the detail anyway); never below ``min_side``
        px on the longer side. 1 when the photo already fits."""
        longest = max(self.size)
        scale = min(1.0, max_side / longest)
        radius = 0.0 if focus is None else K * self.max_coc(focus)
        if radius > 0:  # cost(scale) = scale^2 H W (scale radius)^2
            limit = (budget / (self.size[0] * self.size[1] * radius**2)) ** 0.25
            scale = min(scale, max(limit, min_side / longest))
        return scale

    def max_coc(self, focus: float) -> float:
        """The largest ``|disparity - focus|``: times ``K``, the largest CoC radius in px of a render."""
        return float(max(self.disparity.max() - focus, focus - self.disparity.min()))

    def as_item(self) -> InputItem:
        return InputItem(self.name, self.image, self.disparity)


def _read_with_notes(read: Callable[[], InputItem]) -> tuple[InputItem, list[str]]:
    """Run a reader, collecting its :class:`InputWarning` repairs as text instead of printing them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        item = read()
    return item, [str(w.message) for w in caught if issubclass(w.category, InputWarning)]


def demo_scene() -> Scene:
    """The bundled offline demo: the Middlebury motorcycle (741 x 500) read as ``inference_hf.py --demo`` does."""
    (pending,) = demo_inputs()
    item, notes = _read_with_notes(pending.load)
    return Scene(item.name, item.image, item.disparity, notes)


def _check_suffix(path: Path, allowed: Sequence[str], what: str) -> None:
    if path.suffix.lower() not in allowed:
        raise UploadError(f"{what} '{path.name}': '{path.suffix or '(no extension)'}' is not a file type the app "
                          f"reads; expected one of {', '.join(sorted(set(allowed)))}")


def upload_scene(photo: str | os.PathLike | None, disparity: str | os.PathLike | None = None, *,
                 is_depth: bool = False, normalise: str = "auto",
                 depth_estimator: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Scene:
    """An uploaded photo with its disparity (or depth) map, or with the disparity a depth model estimates.

    Args:
        photo: image file (PNG/JPEG/TIFF/BMP/WebP/EXR; gray, RGB, RGBA; 8 or 16 bit), read by
            :func:`data.io.read_image`.
        disparity: ``.npy`` / ``.npz`` / 8- or 16-bit PNG / TIFF / EXR (1 = near), read by
            :func:`data.io.read_disparity` exactly as ``inference_hf.py --disparity`` reads it; ``None`` to
            estimate it with ``depth_estimator``.
        is_depth, normalise: ``inference_hf.py``'s ``--depth`` and ``--disparity_normalise`` (auto / always / never).
        depth_estimator: ``images (B, 3, H, W) sRGB -> disparity (B, 1, H, W)`` in [0, 1]
            (:class:`models.depth.DepthEstimator`, loaded as ``prepare_data.py`` loads it), or ``None``.

    Raises:
        UploadError: missing, unreadable or wrongly typed files, or a map whose aspect ratio differs from the
            photo's (a map of another photo). A map of the same aspect but another size is resized (noted).
    """
    if photo is None:
        raise UploadError("no photo uploaded: choose a photo file first")
    photo = Path(photo)
    _check_suffix(photo, IMAGE_EXTENSIONS, "photo")
    if disparity is None and depth_estimator is None:
        raise UploadError("no disparity map uploaded: add the photo's disparity or depth map (.npy, .npz, PNG, EXR), "
                          "or start the app with --depth_model to estimate it")
    if disparity is not None:
        disparity = Path(disparity)
        _check_suffix(disparity, tuple(DISPARITY_EXTENSIONS) + tuple(IMAGE_EXTENSIONS), "disparity map")

    def read() -> InputItem:
        try:
            image = read_image(photo)
        except (ValueError, OSError) as error:
            raise UploadError(f"photo '{photo.name}': {error}") from error
        if disparity is None:
            with torch.inference_mode():
                disp = depth_estimator(torch.from_numpy(image)[None])[0].cpu().numpy()
        else:
            try:
                disp = read_disparity(disparity, is_depth=is_depth, normalise=normalise)
            except (ValueError, OSError) as error:
                raise UploadError(f"disparity map '{disparity.name}': {error}") from error
            (h, w), (dh, dw) = image.shape[1:], disp.shape[1:]
            # data.io's tolerance: a map of the same aspect but another size is resized with a notice, as
            # inference_hf.py does; beyond it the map belongs to another photo.
            if abs(dw / dh - w / h) > ASPECT_TOLERANCE * (w / h):
                raise UploadError(
                    f"disparity map '{disparity.name}' is {dw}x{dh} but the photo '{photo.name}' is {w}x{h}: "
                    "their aspect ratios differ, so the map belongs to another photo. Upload the map made for "
                    "this photo")
        return conform_item(safe_name(photo.stem), image, disp)

    item, notes = _read_with_notes(read)
    return Scene(item.name, item.image, item.disparity, notes)


# ----------------------------------------------------------------------------------------------------------
# Focus
# ----------------------------------------------------------------------------------------------------------
def focus_at(scene: Scene, x: int, y: int) -> float:
    """Focus for a click at column ``x``, row ``y`` of the full-resolution photo: the code of ``--focus_xy``
    (:func:`data.focus.focus_from_pixel`, the 5 x 5 median). Raises ``ValueError`` outside the photo."""
    return focus_from_pixel(scene.disparity, x, y)


def initial_focus(scene: Scene, **choose) -> tuple[float, tuple[int, int] | None]:
    """The focus shown before any click, chosen as ``inference_hf.py`` chooses it
    (:func:`data.inference_io.choose_focus`: ``focus_disparity`` / ``focus_xy`` / ``focus_percentile`` keyword
    lists, else the image centre). Returns ``(disp_focus, (x, y) or None)``; only the first value is used."""
    value, _ = choose_focus(scene.as_item(), **choose)[0]
    xy = choose.get("focus_xy")
    if xy is None and not choose.get("focus_disparity") and not choose.get("focus_percentile"):
        height, width = scene.size
        xy = (width // 2, height // 2)
    return value, (tuple(int(v) for v in xy) if xy is not None else None)


def focus_sweep(scene: Scene, frames: int, *, near: float = 95.0, far: float = 5.0) -> list[float]:
    """``frames`` focal disparities from the ``near`` to the ``far`` percentile of the map, evenly spaced (a
    focus pull from the foreground to the background)."""
    if frames < 2:
        raise ValueError(f"a focus pull needs at least 2 frames, got {frames}")
    lo, hi = np.percentile(scene.disparity, [far, near])
    return [float(v) for v in np.linspace(hi, lo, frames)]


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------
def render(scene: Scene, options: RenderOptions, focus: float, factory: RendererFactory,
           scale: float = 1.0) -> np.ndarray:
    """One render of ``scene`` focused at disparity ``focus``: ``(3, H, W)`` float32 sRGB in [0, 1] at the
    photo's full size, computed at ``scale`` times it (``scale < 1``: preview)."""
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    image = torch.from_numpy(scene.image)[None]
    disparity = torch.from_numpy(scene.disparity)[None]
    with torch.inference_mode():
        out = factory(options, scale)(image, disparity, options.K, float(focus))
    return out[0].float().clamp(0, 1).cpu().numpy()


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``(3, H, W)`` or ``(1, H, W)`` float in [0, 1] -> ``(H, W, 3)`` uint8 for display."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape[0] == 1:
        image = np.repeat(image, 3, axis=0)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0).copy()


# The focal plane's colour in the disparity view (RGB, 0-255): green, distinct from the grey map.
FOCUS_COLOUR = (40, 220, 60)
MARKER_COLOUR = (255, 40, 40)


def in_focus_mask(disparity: np.ndarray, focus: float, K: float, *, sharp_px: float = 1.0) -> np.ndarray:
    """``(H, W)`` bool: pixels whose CoC radius ``|K (d - focus)|`` is at most ``sharp_px`` px, i.e. the depth of
    field around the focal plane at this ``K`` (all pixels when ``K = 0``)."""
    return np.abs(K * (np.asarray(disparity)[0] - focus)) <= sharp_px


def shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image resized (area) so its longer side is at most ``max_side`` px (display size:
    the browser scales images to the page anyway, so large photos need not travel at full size)."""
    if not max_side or max(image.shape[:2]) <= max_side:
        return image
    scale = max_side / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def disparity_view(scene: Scene, focus: float, K: float, xy: tuple[int, int] | None = None, *,
                   max_side: int | None = None) -> np.ndarray:
    """The disparity map as ``(H, W, 3)`` uint8 (grey, white = near) with the focal plane marked: pixels within
    1 px of CoC (:func:`in_focus_mask`, ``K`` in full-resolution px) tinted green, and the clicked pixel
    ``(x, y)`` (full-resolution pixels) marked with a red cross; at most ``max_side`` px on the longer side."""
    disparity, scale = scene.disparity, 1.0
    if max_side and max(scene.size) > max_side:
        scale = max_side / max(scene.size)
        size = (max(1, round(scene.size[0] * scale)), max(1, round(scene.size[1] * scale)))
        disparity = resize_map(disparity, size, interpolation=cv2.INTER_AREA)
    view = to_uint8(disparity).astype(np.float32)
    sharp = in_focus_mask(disparity, focus, K)
    view[sharp] = 0.45 * view[sharp] + 0.55 * np.array(FOCUS_COLOUR, np.float32)
    view = np.round(view).astype(np.uint8)
    if xy is not None:
        size = max(9, max(view.shape[:2]) // 30)
        centre = (int(round((xy[0] + 0.5) * scale - 0.5)), int(round((xy[1] + 0.5) * scale - 0.5)))
        cv2.drawMarker(view, centre, MARKER_COLOUR, cv2.MARKER_CROSS, size, 2)
    return view


def save_render(image: np.ndarray, folder: str | os.PathLike, scene: Scene, options: RenderOptions,
                focus: float) -> Path:
    """Write a full-resolution render as an 8-bit PNG named by :meth:`RenderOptions.file_stem` (atomically)."""
    return save_image(Path(folder) / f"{options.file_stem(scene.name, focus)}.png", image)


def write_animation(frames: Sequence[np.ndarray], path: str | os.PathLike, *, frame_ms: int = 120,
                    max_side: int | None = None) -> Path:
    """Write ``(3, H, W)`` [0, 1] frames as a looping animated GIF (forward then back, so the loop is smooth),
    each shrunk (area, :func:`shrink`) so its longer side is at most ``max_side`` px. Written atomically
    (:func:`data.io.atomic_write`)."""
    from PIL import Image

    if len(frames) < 2:
        raise ValueError(f"an animation needs at least 2 frames, got {len(frames)}")
    pictures = [Image.fromarray(shrink(to_uint8(frame), max_side)) for frame in list(frames) + list(frames[-2:0:-1])]
    path = Path(path)
    with atomic_write(path) as tmp:
        pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0)
    return path
