"""The ground truths of the paper's benchmarks as render cases: BLB, EBB (AIM 2020 pairs) and our layered set.

Every protocol choice (colour encoding, disparity, K units, focus, clipping) is stated in PROTOCOLS.md; the
loaders (:mod:`data.loaders`) implement the decoding, this module only lists and labels the cases.

A :class:`Case` is one ground truth: its scene, a ``level`` (the blur-strength index shown in the tables),
and ``load()``, which returns ``{"image": (3, H, W) sRGB [0, 1], "disparity": (1, H, W) [0, 1] 1 = near,
"gt": (3, H, W) sRGB [0, 1], "K": float px of CoC radius per unit of this disparity, "disp_focus": float,
"focus_source": str}`` as float32 CPU tensors / Python floats. Listing never decodes an image; a scene that
cannot be listed (missing or malformed ``info.json``) is returned in ``failures`` (scene -> message).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from data.focus import focus_from_gt, focus_from_mask
from data.io import InputWarning, read_image, resize_map
from data.loaders import TestSet, list_blb_scene, load_test_set
from kernels.colour import DEFAULT_GAMMA

BENCHMARKS = ("blb", "ebb", "layered")
BLB_GAMMA = DEFAULT_GAMMA  # BLB's README: EXR images are linear; "** (1/2.2)" encodes them
EBB_DEFAULT_K = (20.0,)  # the released inference's --K (README "Protocols"); EBB! records no blur strength


@dataclass
class Case:
    """One ground truth of a benchmark (module docstring). ``source`` names the files it reads (recorded in
    the render manifests, so a changed input invalidates a render). ``load_published`` (BLB) returns the input
    as the released code feeds it (:func:`data.published.load_published_blb`: ``image``, ``disparity``, ``K`` =
    the blur parameter as its ``--K``, ``disp_focus``); a renderer under ``--protocol published`` renders that,
    and is scored against ``load()``'s GT like every other method."""

    benchmark: str
    scene: str
    name: str
    level: int
    load: Callable[[], dict] = field(repr=False)
    source: dict = field(default_factory=dict)
    load_published: Callable[[], dict] | None = field(default=None, repr=False)


def blb_level(blur_index: int) -> int:
    """BLB's level: ``bokeh_<k>_<f>.exr`` has level ``k + 1`` (``bokeh_00_*`` is level 1, the weakest of the
    release's 5 blur amounts, so ``--levels 1 2 3 4 5`` selects all of them)."""
    return int(blur_index) + 1


def _item(test_set: TestSet, index: int) -> dict:
    item = test_set[index]
    return {"image": item["image"], "disparity": item["disparity"], "gt": item["gt"], "K": float(item["K"]),
            "disp_focus": float(item["disp_focus"]), "focus_source": item.get("focus_source", "metadata")}


def blb_cases(root: str | Path, levels: Sequence[int] | None = None) -> tuple[list[Case], dict[str, str]]:
    """BLB (BokehMe, Peng et al. CVPR 2022): ``<root>/<scene>/{image.exr, depth.exr, info.json,
    bokeh_<k>_<f>.exr}``. K and focus come from ``info.json`` through :func:`data.loaders.list_blb_scene`:
    ``coc_px = K_blb * (1 / depth - 1 / focus_distance)``, stored as our ``K = K_blb * s`` and
    ``disp_focus = (1 / focus_distance) / s`` on the disparity ``(1 / depth) / s``, ``s = max(1, max 1 / depth)``
    (``depth >= 65504`` is infinity: disparity 0). ``levels`` keeps only those :func:`blb_level` values."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BLB folder '{root}' does not exist; download BLB (BokehMe's release) and pass "
                                "--data blb=DIR")
    cases, failures = [], {}
    scenes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for scene in scenes:
        try:
            entries = [e for e in list_blb_scene(scene) if "gt" in e]
        except (OSError, ValueError) as error:
            failures[scene.name] = str(error)
            continue
        if not entries:
            failures[scene.name] = f"BLB scene '{scene}' has no ground truth bokeh_<k>_<f>.exr"
            continue
        test_set = TestSet(root, "BLB", entries, gamma=BLB_GAMMA)
        for index, entry in enumerate(entries):
            level = blb_level(entry["blur_index"])
            if levels and level not in levels:
                continue
            cases.append(Case("blb", scene.name, entry["name"], level,
                              load=lambda t=test_set, i=index: _item(t, i),
                              source={"gt": str(entry["gt"]), "blur_parameter": entry["K"],
                                      "focus_distance": entry["focus_distance"]},
                              load_published=lambda e=entry: _published_blb_item(e)))
    if not scenes:
        raise ValueError(f"BLB folder '{root}' has no scene folders (<scene>/image.exr, depth.exr, info.json)")
    return cases, failures


def _published_blb_item(entry: dict) -> dict:
    """The released code's BLB input (unclipped sRGB, raw ``1 / depth``, ``1 / focus_distance``) with the
    scene's blur parameter as its ``--K`` (the released loader reads ``blur_parameters``; its script takes K
    from the command line, so ``--K blur_parameters[k]`` reproduces this)."""
    from data.published import load_published_blb

    image, disparity, focus = load_published_blb(entry["image"], entry["disparity"], entry["focus_distance"])
    return {"image": torch.from_numpy(image), "disparity": torch.from_numpy(disparity), "K": float(entry["K"]),
            "disp_focus": focus}


def _ebb_item(test_set: TestSet, index: int, gt_path: Path, K: float) -> dict:
    item = test_set[index]
    gt = read_image(gt_path)
    size = tuple(item["image"].shape[1:])
    if gt.shape[1:] != size:  # AIM's pairs are aligned; a resized copy is mapped back to the input's size
        warnings.warn(f"EBB GT '{gt_path}' is {gt.shape[2]}x{gt.shape[1]}, the input {size[1]}x{size[0]}; GT "
                      "resized.", InputWarning)
        gt = np.clip(resize_map(gt, size), 0, 1)
    disparity = item["disparity"]
    if "mask" in item and bool((item["mask"] > 0.5).any()):
        focus, source = focus_from_mask(disparity, item["mask"]), "mask_median"
    else:
        focus, source = focus_from_gt(item["image"].numpy(), gt, disparity.numpy()), "gt_edges"
    return {"image": item["image"], "disparity": disparity, "gt": torch.from_numpy(gt), "K": float(K),
            "disp_focus": float(focus), "focus_source": source}


def ebb_cases(root: str | Path, K_values: Sequence[float] = EBB_DEFAULT_K, *, gt_dir: str | Path | None = None,
              levels: Sequence[int] | None = None) -> tuple[list[Case], dict[str, str]]:
    """EBB! / AIM 2020 pairs prepared by ``prepare_data.py``: ``<root>/input/<name>.jpg``,
    ``<root>/depth/<name>_pred.npy`` (min-max normalised, 1 = near), optional ``<root>/mask/<name>.png``, and the
    GT ``<gt_dir>/<name>.jpg|png`` (default ``<root>/bokeh``: AIM's ``bokeh/`` folder). One case per pair and
    K of ``K_values`` (level = position in ``K_values``, from 1). Focus: the subject mask's median disparity
    (the released inference's rule), else the disparity whose pixels stay sharp in the GT (``focus_from_gt``)."""
    root = Path(root)
    gt_dir = Path(gt_dir) if gt_dir is not None else root / "bokeh"
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"EBB ground-truth folder '{gt_dir}' does not exist; put AIM 2020's bokeh/ JPEGs "
                                "there (or pass --ebb_gt DIR)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)  # bokeh/ next to input/ is expected here
        test_set = load_test_set(root, "EBB", inputs_only=True)
    cases, failures = [], {}
    for index, entry in enumerate(test_set.entries):
        name = entry["input_name"]
        gt = next((gt_dir / f"{Path(entry['image']).stem}{s}" for s in (".jpg", ".jpeg", ".png", ".JPG", ".PNG")
                   if (gt_dir / f"{Path(entry['image']).stem}{s}").is_file()), None)
        if gt is None:
            failures[name] = f"no ground truth for '{entry['image']}' in '{gt_dir}' (looked for <name>.jpg|png)"
            continue
        for level, K in enumerate(K_values, start=1):
            if levels and level not in levels:
                continue
            cases.append(Case("ebb", name, f"{name}_K{K:g}", level,
                              load=lambda i=index, g=gt, k=K: _ebb_item(test_set, i, g, k),
                              source={"image": str(entry["image"]), "gt": str(gt), "K": float(K)}))
    return cases, failures


def layered_cases(root: str | Path, levels: Sequence[int] | None = None) -> tuple[list[Case], dict[str, str]]:
    """Our seeded layered benchmark (``scripts.make_benchmark``): ``<root>/ebb`` with ``meta.json`` (absolute
    disparity, K and focus per GT). Level = rank of the GT's ``max_coc_px`` among the set's values, from 1."""
    ebb = Path(root) / "ebb"
    meta_path = ebb / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"'{meta_path}' is missing: build the layered benchmark with "
                                f"`python -m scripts.make_benchmark --out {root}`")
    meta = json.loads(meta_path.read_text())
    max_coc = {Path(r["gt"]).stem: float(r.get("max_coc_px", r["K"]))
               for scene, records in meta.items() if not scene.startswith("_") for r in records}
    rank = {value: position for position, value in enumerate(sorted(set(max_coc.values())), start=1)}
    test_set = load_test_set(ebb, "EBB")
    cases = []
    for index, entry in enumerate(test_set.entries):
        level = rank[max_coc[entry["name"]]]
        if levels and level not in levels:
            continue
        cases.append(Case("layered", entry["input_name"], entry["name"], level,
                          load=lambda i=index: _item(test_set, i),
                          source={"gt": str(entry["gt"]), "K": entry["K"], "disp_focus": entry["disp_focus"]}))
    return cases, {}
