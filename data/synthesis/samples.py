"""Sample data built from scikit-image's bundled photos (public domain / CC0; offline, no copyright problems).

The cut-outs are the RGBA logo and photo regions cut out with a procedural fractal, hair-like alpha
(:func:`fractal_alpha`). :func:`write_sample_data` writes an EBB-layout test set rendered with the scene model
and an on-the-fly training folder (``scripts/make_sample_data.py``, the committed ``test_data/``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from data.io import save_image
from kernels.colour import DEFAULT_GAMMA

from .assets import Foreground, crop_to_alpha, resize_foreground, resize_image
from .render import composite_window, render_window
from .scene import Scene, SceneConfig, margin_for, sample_scene

#: Backgrounds: scikit-image's bundled colour photos (public domain / CC0, see skimage/data/README.txt).
SAMPLE_BACKGROUNDS = ("coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "chelsea", "astronaut")
#: Foreground sources: the RGBA logo, and photo regions cut out with a procedural fractal, hair-like alpha.
SAMPLE_CUTOUTS = ("chelsea", "astronaut", "coffee")


def _skimage_rgb(name: str) -> np.ndarray:
    """scikit-image's bundled photo ``name`` as ``(3, H, W)`` float32 sRGB in [0, 1] (gray ones repeated)."""
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


def render_sample_scene(scene: Scene, K: float, disp_focus: float, *, gamma: float = DEFAULT_GAMMA, impl: str = "torch"):
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
    gamma: float = DEFAULT_GAMMA,
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
