"""Test helpers: tiny benchmark folders in the exact public formats, ground truth made by our renderers.

- :func:`make_blb`: BLB (BokehMe): ``<scene>/image.exr`` (linear), ``depth.exr`` (65504 = sky), ``info.json``,
  ``bokeh_<k>_<f>.exr`` (linear), each GT rendered by ``kernels.render_classical`` from exactly what the loader
  reads (so the classical method reproduces it), plus a scene without info.json and one with a broken one.
- :func:`make_ebb`: AIM 2020 / EBB! pairs as prepare_data.py leaves them: ``input/<name>.jpg``,
  ``depth/<name>_pred.npy``, ``mask/<name>.png`` and the GT ``bokeh/<name>.jpg`` (classical renderer, JPEG).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

import kernels
from data.exr import write_exr
from data.io import save_image
from data.loaders import TestSet, list_blb_scene
from kernels.colour import srgb_to_linear

BLB_INFO = {"blur_parameters": [3.0, 6.0], "focus_distances": [0.8, 3.0]}
BLB_GTS = ((0, 0), (1, 0), (1, 1))  # (blur index, focus index): levels 1, 2, 2
NEAR_DEPTH, FAR_DEPTH = 0.8, 3.0  # near plane closer than 1: the loader rescales disparity by 1 / 0.8


def _image(rng, height, width) -> np.ndarray:
    """A smooth sRGB test image (3, H, W) with edges, in [0.05, 0.9] (room for a known offset)."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([0.5 + 0.4 * np.sin(7 * x + c) * np.cos(5 * y - c) for c in (0.0, 1.0, 2.0)])
    noise = rng.random((3, height, width)) * 0.1
    return np.clip(base * 0.85 + noise, 0.05, 0.9).astype(np.float32)


def _depth(height, width) -> np.ndarray:
    depth = np.full((height, width), FAR_DEPTH, np.float32)
    depth[:, width // 3: 2 * width // 3] = NEAR_DEPTH  # a near bar: two depth discontinuities
    depth[: height // 5] = 65504.0  # sky
    return depth


def _exr_rgb(path: Path, chw: np.ndarray) -> None:
    write_exr(path, {c: chw[i] for i, c in enumerate("RGB")})


def make_blb(root: Path, size=(24, 32), seed: int = 0) -> Path:
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    for name in ("s1", "s2"):
        scene = root / name
        _exr_rgb(scene / "image.exr", srgb_to_linear(_image(rng, height, width)))
        write_exr(scene / "depth.exr", {"Y": _depth(height, width)})
        (scene / "info.json").write_text(json.dumps(BLB_INFO))
        for k, f in BLB_GTS:  # a placeholder so the scene lists its GTs, then the real render
            _exr_rgb(scene / f"bokeh_{k:02d}_{f:02d}.exr", np.zeros((3, height, width), np.float32))
        entries = list_blb_scene(scene)
        items = TestSet(root, "BLB", entries)
        for index, entry in enumerate(entries):
            item = items[index]
            with torch.no_grad():
                bokeh = kernels.render_classical(item["image"][None], item["disparity"][None], float(item["K"]),
                                                 float(item["disp_focus"]), impl="torch")[0].numpy()
            _exr_rgb(entry["gt"], srgb_to_linear(bokeh))
    broken = root / "s3_no_info"
    _exr_rgb(broken / "image.exr", srgb_to_linear(_image(rng, height, width)))
    write_exr(broken / "depth.exr", {"Y": _depth(height, width)})
    _exr_rgb(broken / "bokeh_00_00.exr", np.zeros((3, height, width), np.float32))
    malformed = root / "s4_bad_info"
    _exr_rgb(malformed / "image.exr", srgb_to_linear(_image(rng, height, width)))
    write_exr(malformed / "depth.exr", {"Y": _depth(height, width)})
    _exr_rgb(malformed / "bokeh_00_00.exr", np.zeros((3, height, width), np.float32))
    (malformed / "info.json").write_text('{"blur_parameters": [3.0], "focus_distances": ')
    return root


def make_ebb(root: Path, size=(24, 32), K: float = 6.0, seed: int = 1) -> Path:
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    for name in ("p1", "p2"):
        image = _image(rng, height, width)
        disparity = np.where(_depth(height, width) >= 65504, 0.0, 1.0 / _depth(height, width))
        disparity = ((disparity - disparity.min()) / (disparity.max() - disparity.min())).astype(np.float32)
        mask = (disparity > 0.9).astype(np.float32)
        save_image(root / "input" / f"{name}.jpg", image)
        (root / "depth").mkdir(parents=True, exist_ok=True)
        np.save(root / "depth" / f"{name}_pred.npy", disparity)
        save_image(root / "mask" / f"{name}.png", mask)
        with torch.no_grad():
            bokeh = kernels.render_classical(torch.from_numpy(image)[None], torch.from_numpy(disparity)[None, None],
                                             K, 1.0, impl="torch")[0]
        save_image(root / "bokeh" / f"{name}.jpg", bokeh)
    return root
