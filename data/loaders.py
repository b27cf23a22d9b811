"""Test-set loaders for the layouts researchers already have, with one item format for all of them.

Item (a dict; tensors are float32 on the CPU):

=============== =========== =================================================================================
key             shape       meaning
=============== =========== =================================================================================
name            str         unique within the set (the GT's stem when one input has several GTs)
input_name      str         the input's stem (several items may share it)
image           (3, H, W)   input, sRGB in [0, 1], exactly as stored (never adjusted towards the GT)
disparity       (1, H, W)   [0, 1], 1 = nearest
mask            (1, H, W)   optional subject mask in [0, 1]
gt              (3, H, W)   optional ground-truth bokeh, sRGB in [0, 1]
K               ()          optional, px of CoC radius per unit disparity of *this* disparity map (metadata)
disp_focus      ()          optional focal disparity of *this* map: from metadata, else estimated from the GT;
                            in [0, 1] except when a metadata focus lies outside the range of a normalised map
focus_source    str         "metadata" | "gt_edges" | absent
original_size   (2,) long   (H, W) as stored, before any ``multiple_of`` resize
=============== =========== =================================================================================

Layouts (``layout="auto"`` picks one from the folder's contents, see :func:`detect_layout`):

* ``EBB``: ``input/<name>.jpg|png``, ``depth/<name>_pred.npy`` (disparity), optional ``mask/<name>.png``, optional
  GT ``bokeh/<name>.jpg|png`` (the EBB! convention) or several GTs ``bokeh/<name>_K<k>_f<focus>.png`` listed
  in ``meta.json`` (``{"<name>": [{"gt": "bokeh/...png", "K": 8.0, "disp_focus": 0.62}, ...]}``) as written by
  ``scripts/make_sample_data.py``. Disparity is min-max normalised unless ``meta.json`` says it is absolute
  (``"_disparity_absolute": true``; then only a map leaving [0, 1] is normalised, with a warning). Metadata
  ``K`` and ``disp_focus`` refer to the stored map and go through the same affine map (``K`` times
  ``max - min``, focus ``(f - min) / (max - min)``), so ``coc_px = K * (disparity - disp_focus)`` is exactly
  the stored one.
* ``folder``: ``<root>/<name>.jpg|png`` with ``<root>/<name>.npy`` (disparity) and optional
  ``<root>/<name>_mask.png``; or one scene per subfolder, ``<scene>/image.jpg|png``, ``<scene>/depth.npy``
  (disparity, the public code's naming) and optional ``<scene>/mask*.png|jpg``. Disparity is always min-max
  normalised (the layout's rule: such folders hold relative maps, as monocular estimators write them), so
  ``K`` and a focus disparity refer to the normalised map.
* ``pngdepth``: ``original/<name>.jpg|png`` with ``depth/<name>.png`` (8/16-bit, **bright = far**, as the public
  code reads it: ``disparity = normalise(1 - png)``), optional ``mask/<name>.png``.
* ``BLB`` (BokehMe's Blender set, Peng et al. CVPR 2022): ``<scene>/image.exr`` (linear), ``<scene>/depth.exr``
  (65504 = infinity), ``<scene>/info.json`` with ``blur_parameters`` (K per unit of 1/depth) and
  ``focus_distances``, GTs ``<scene>/bokeh_<k>_<f>.exr`` (k indexes ``blur_parameters``, f ``focus_distances``).
  Disparity is ``1 / depth``, divided by its maximum when that exceeds 1, and K and disp_focus are scaled
  by the same factor, so ``coc_px = K * (disparity - disp_focus)`` is exactly the set's CoC.

Disparity rule: ``load_test_set(disparity_normalise=...)`` (``inference_hf.py --disparity_normalise``) replaces
the EBB and folder rules above by one mode of :func:`data.io.clean_disparity` (``auto``: keep a map already in
[0, 1], normalise one outside it, with a warning; ``always``; ``never``); metadata K and focus follow the map
as above. pngdepth and BLB define their disparity physically and refuse it. ``TestSet.disparity_rule`` says
which rule the set's items are read with.

Images may be EXR (scene-linear): they are encoded to sRGB by :func:`data.io.encode_linear_exr`, as BLB's.

Sub-folders that are not scenes (``folder``: no ``image.*``; ``BLB``: no ``info.json``) are skipped with an
:class:`~data.io.InputWarning` naming them. An input image whose disparity is missing (EBB ``depth/<name>_pred.npy``,
``folder`` ``<name>.npy`` or ``<scene>/depth.npy``) is listed, and loading it raises ``FileNotFoundError`` naming
the expected file: a batch reports it as a failed input.

Odd sizes: by default every map keeps the stored size (a disparity or mask of another size is resized to the
image, with a warning). With ``multiple_of=m`` image, disparity, mask and GT alike are resized to the next
multiple of ``m`` (``original_size`` keeps the stored size, so outputs can be mapped back).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from data.exr import read_exr_array
from data.focus import focus_from_gt
from data.io import (IMAGE_EXTENSIONS, NORMALISE_MODES, InputWarning, clean_disparity, encode_linear_exr, fit_map_to_image, read_disparity,
                     read_image, resize_map)
from kernels.colour import DEFAULT_GAMMA

LAYOUTS = ("EBB", "folder", "pngdepth", "BLB")
# Every image format data.io reads (the set prepare_data.py accepts); JPEG/PNG first, the order _find tries.
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png") + tuple(e for e in IMAGE_EXTENSIONS if e not in (".jpg", ".jpeg", ".png"))
BLB_INFINITY = 65504.0  # largest float16: BLB's depth for "no surface" (sky)


# ----------------------------------------------------------------------------------------------------------
# Layout detection and listing
# ----------------------------------------------------------------------------------------------------------
def list_images(folder: Path, *, report: bool = False) -> list[Path]:
    """The images directly in ``folder``, sorted. With ``report``, anything else there (sub-folders, files of
    other types) is named in one warning: a prepared set whose inputs are skipped must not look complete."""
    entries = sorted(folder.iterdir())
    images = [p for p in entries if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
    others = [p.name + ("/" if p.is_dir() else "") for p in entries if p not in images and not p.name.startswith(".")]
    if report and others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        warnings.warn(f"'{folder}': {len(others)} entr{'y' if len(others) == 1 else 'ies'} not read as inputs "
                      f"({shown}): inputs are the image files ({', '.join(_IMAGE_SUFFIXES)}) directly in this "
                      f"folder.", InputWarning)
    return images


def input_names(images: list[Path]) -> dict[Path, str]:
    """A unique name per input image: its stem, or, for images that share a stem (``a.jpg`` and ``a.png``),
    the stem and the extension (``a_jpg``, ``a_png``) with a warning, so that no input is dropped and no
    output overwrites another."""
    by_stem: dict[str, list[Path]] = {}
    for image in images:
        by_stem.setdefault(image.stem, []).append(image)
    names = {}
    for stem, group in by_stem.items():
        if len(group) > 1:
            warnings.warn(f"{len(group)} inputs share the name '{stem}' ({', '.join(str(p) for p in group)}); "
                          f"each is rendered under its own name ({', '.join(f'{stem}_{p.suffix[1:].lower()}' for p in group)}).",
                          InputWarning)
        for image in group:
            names[image] = stem if len(group) == 1 else f"{stem}_{image.suffix[1:].lower()}"
    return names


def find_file(folder: Path, stem: str, suffixes=_IMAGE_SUFFIXES) -> Path | None:
    """``folder/<stem><suffix>`` for the first of ``suffixes`` (lower or upper case) that exists, else None."""
    for suffix in suffixes:
        for candidate in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def detect_layout(root: str | Path, choose: str = "Pass layout=... to choose explicitly.") -> str:
    """Name the layout of ``root`` (one of :data:`LAYOUTS`) or raise an error describing all of them; ``choose``
    ends it, saying how the caller picks a layout (a command-line tool names its flag)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"test set folder '{root}' does not exist")
    if (root / "input").is_dir() and (root / "depth").is_dir():
        return "EBB"
    if (root / "original").is_dir() and (root / "depth").is_dir():
        return "pngdepth"
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if any((d / "info.json").is_file() and (d / "image.exr").is_file() for d in subdirs):
        return "BLB"
    if any((d / "depth.npy").is_file() for d in subdirs) or any(p.with_suffix(".npy").is_file() for p in list_images(root)):
        return "folder"
    raise ValueError(
        f"cannot tell the layout of '{root}'. Expected one of: EBB (input/ + depth/<name>_pred.npy), "
        "pngdepth (original/ + depth/<name>.png), BLB (<scene>/image.exr + depth.exr + info.json), folder "
        "(<name>.png + <name>.npy, or <scene>/image.png + depth.npy). " + choose
    )


class TestSet:
    """A lazily loaded test set: ``len(ts)``, ``ts[i]`` (an item dict, module docstring), iteration.

    Build with :func:`load_test_set`. ``entries`` lists what each item will read (paths and metadata).
    """

    def __init__(self, root: Path, layout: str, entries: list[dict], *, multiple_of: int = 1,
                 gamma: float = DEFAULT_GAMMA, disparity_rule: str = ""):
        self.root, self.layout, self.entries = root, layout, entries
        self.multiple_of, self.gamma = int(multiple_of), float(gamma)
        self.disparity_rule = disparity_rule  # how the items' disparity is read (one line, for notes and records)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        missing = entry.get("missing_input") or entry.get("missing_gt")
        if missing:
            raise FileNotFoundError(missing)
        if self.layout == "BLB":
            item = _load_blb(entry, self.gamma)
        else:
            item = _load_common(entry)
        return _finish(item, self.multiple_of)


def load_test_set(
    root: str | Path,
    layout: str = "auto",
    *,
    multiple_of: int = 1,
    gamma: float = DEFAULT_GAMMA,
    inputs_only: bool = False,
    disparity_normalise: str | None = None,
) -> TestSet:
    """Index a test set (nothing is decoded until an item is accessed).

    Args:
        root: the set's folder.
        layout: ``"auto"`` or one of :data:`LAYOUTS` (case-insensitive).
        multiple_of: resize every map to the next multiple of this many px (1 = keep the stored size).
        gamma: BLB only: its EXR images are linear light; they are encoded to sRGB as ``x ** (1 / gamma)``.
        inputs_only: one item per input and no GT (for inference); by default a set with GTs gives one
            item per (input, GT) pair.
        disparity_normalise: None keeps the layout's own disparity rule (module docstring); ``"auto"``,
            ``"always"`` or ``"never"`` (:data:`data.io.NORMALISE_MODES`) replaces it for EBB and folder.

    Raises:
        ValueError: an unknown layout or mode, ``disparity_normalise`` for a pngdepth or BLB set, no items.
    """
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    canonical = {name.lower(): name for name in LAYOUTS}
    if layout.lower() not in canonical:
        raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
    layout = canonical[layout.lower()]
    if not root.is_dir():
        raise FileNotFoundError(f"test set folder '{root}' does not exist")
    if disparity_normalise is not None and disparity_normalise not in NORMALISE_MODES:
        raise ValueError(f"disparity_normalise must be None (the layout's rule) or one of {sorted(NORMALISE_MODES)}, "
                         f"got {disparity_normalise!r}")
    if disparity_normalise is not None and layout in _PHYSICAL_RULES:
        raise ValueError(f"--disparity_normalise {disparity_normalise}: test set '{root}' is a {layout} folder, whose "
                         f"disparity rule is part of the layout ({_PHYSICAL_RULES[layout]}); it cannot be changed. "
                         f"Drop --disparity_normalise (it applies to --image and to EBB and folder test sets)")
    lister = {"EBB": _list_ebb, "folder": _list_folder, "pngdepth": _list_pngdepth, "BLB": _list_blb}[layout]
    entries = lister(root)
    if disparity_normalise is not None:
        entries = [entry | {"normalise": disparity_normalise} for entry in entries]
    if inputs_only:
        seen, unique = set(), []
        for entry in entries:
            if entry["input_name"] not in seen:
                seen.add(entry["input_name"])
                unique.append({k: v for k, v in entry.items() if k not in ("gt", "K", "disp_focus", "missing_gt")}
                              | {"name": entry["input_name"]})
        entries = unique
    if not entries:
        raise ValueError(f"no items found in '{root}' (layout {layout}); see data/loaders.py for the expected files")
    return TestSet(root, layout, entries, multiple_of=multiple_of, gamma=gamma,
                   disparity_rule=_disparity_rule(layout, entries, explicit=disparity_normalise is not None))


# The layouts whose disparity has a physical definition of its own (module docstring): no mode replaces it.
_PHYSICAL_RULES = {
    "pngdepth": "1 - the depth PNG, min-max normalised",
    "BLB": "1 / depth, divided by its maximum when that exceeds 1, K and focus scaled alike",
}


def _disparity_rule(layout: str, entries: list[dict], *, explicit: bool) -> str:
    """One line saying how ``entries``' disparity is read: the mode and where it comes from."""
    if layout in _PHYSICAL_RULES:
        return f"{layout} layout: {_PHYSICAL_RULES[layout]} (the layout's rule)"
    modes = sorted({entry["normalise"] for entry in entries})
    if explicit:
        source = "--disparity_normalise"
    elif layout == "EBB" and modes == ["auto"]:
        source = "the EBB layout's rule for meta.json's \"_disparity_absolute\": true"
    else:
        source = f"the {layout} layout's rule; --disparity_normalise changes it"
    return f"{layout} layout: {' / '.join(f'{mode} ({NORMALISE_MODES[mode]})' for mode in modes)}, {source}"


def _require(path: Path | None, what: str, root: Path) -> Path:
    message = _missing(path, what, root)
    if message is not None:
        raise FileNotFoundError(message)
    return path


def _missing(path: Path | None, what: str, root: Path) -> str | None:
    """The error message for a required file that is absent, or None when it is there."""
    if path is not None and path.is_file():
        return None
    return f"{what} missing in '{root}': expected '{path}'"


def _list_ebb(root: Path) -> list[dict]:
    meta_path = root / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    absolute = bool(meta.get("_disparity_absolute", False))
    entries = []
    images = list_images(root / "input", report=True)
    names = input_names(images)
    for image in images:
        name = image.stem
        base = {
            "input_name": names[image],
            "image": image,
            "disparity": root / "depth" / f"{name}_pred.npy",
            "mask": find_file(root / "mask", name) if (root / "mask").is_dir() else None,
            "normalise": "auto" if absolute else "always",
        }
        # A missing file fails its own items when they are loaded, not the listing of the whole set.
        base["missing_input"] = _missing(base["disparity"], f"disparity for input '{image.name}'", root)
        gts = meta.get(name, [])
        if gts:
            for record in gts:
                gt_path = root / record["gt"]
                entries.append(base | {"name": gt_path.stem, "gt": gt_path, "K": float(record["K"]),
                                       "disp_focus": float(record["disp_focus"]),
                                       "missing_gt": _missing(gt_path, f"GT listed in '{meta_path}'", root)})
        else:
            gt_path = find_file(root / "bokeh", name) if (root / "bokeh").is_dir() else None
            entries.append(base | {"name": names[image], "gt": gt_path})
    return entries


def _list_folder(root: Path) -> list[dict]:
    entries = []
    for scene in sorted(p for p in root.iterdir() if p.is_dir()):
        image = find_file(scene, "image")
        if image is None:
            warnings.warn(f"folder '{scene}' has no image.jpg|png; not a scene folder, skipped.", InputWarning)
            continue
        masks = sorted(p for p in scene.iterdir() if p.stem.startswith("mask") and p.suffix.lower() in _IMAGE_SUFFIXES)
        # An image without its disparity is an input that fails when loaded (reported, exit 1), not a silent skip.
        entries.append({"name": scene.name, "input_name": scene.name, "image": image, "disparity": scene / "depth.npy",
                        "mask": masks[0] if masks else None, "normalise": "always",
                        "missing_input": _missing(scene / "depth.npy", f"disparity for scene '{scene.name}'", root)})
    images = [image for image in list_images(root) if not image.stem.endswith("_mask")]
    names = input_names(images)
    for image in images:
        # Images without a <name>.npy are listed too, failing when loaded: a caller drops its own earlier outputs
        # (data.inference_io.folder_inputs' exclude) before any is loaded, and every other one is a missing input.
        disparity = image.with_suffix(".npy")
        entries.append({"name": names[image], "input_name": names[image], "image": image, "disparity": disparity,
                        "mask": find_file(root, f"{image.stem}_mask"), "normalise": "always",
                        "missing_input": _missing(disparity, f"disparity for input '{image.name}'", root)})
    return entries


def _list_pngdepth(root: Path) -> list[dict]:
    entries = []
    images = list_images(root / "original", report=True)
    names = input_names(images)
    for image in images:
        depth = _require(find_file(root / "depth", image.stem, (".png",)) or root / "depth" / f"{image.stem}.png",
                         f"depth PNG for '{image.name}'", root)
        mask = find_file(root / "mask", image.stem) if (root / "mask").is_dir() else None
        entries.append({"name": names[image], "input_name": names[image], "image": image, "disparity": depth,
                        "mask": mask, "depth_png": True})
    return entries


_BLB_GT = re.compile(r"^bokeh_(\d+)_(\d+)\.exr$", re.IGNORECASE)


def _list_blb(root: Path) -> list[dict]:
    entries = []
    for scene in sorted(p for p in root.iterdir() if p.is_dir()):
        if not (scene / "info.json").is_file():
            warnings.warn(f"folder '{scene}' has no info.json (BLB's per-scene blur parameters); skipped.", InputWarning)
            continue
        entries += list_blb_scene(scene)
    return entries


def list_blb_scene(scene: str | Path) -> list[dict]:
    """The entries of one BLB scene folder (module docstring): one per ground truth ``bokeh_<k>_<f>.exr``
    (``blur_index`` k, ``focus_index`` f, ``K`` = ``blur_parameters[k]``, ``focus_distance`` =
    ``focus_distances[f]``, both as stored), or one without a GT when the scene has none.

    Raises:
        FileNotFoundError: ``info.json``, ``image.exr`` or ``depth.exr`` is missing (the message names it).
        ValueError: ``info.json`` is not JSON, lacks a list, or a GT names an index it does not list.
    """
    scene = Path(scene)
    info_path = scene / "info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"BLB scene '{scene}' has no info.json (its blur_parameters and focus_distances); "
                                f"expected '{info_path}': copy it from the BLB release")
    try:
        info = json.loads(info_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"'{info_path}' is not valid JSON ({error}); re-download it from the BLB release") from error
    for key in ("blur_parameters", "focus_distances"):
        if not isinstance(info, dict) or not isinstance(info.get(key), list):
            raise ValueError(f"'{info_path}' has no '{key}' list; BLB's info.json needs blur_parameters and "
                             "focus_distances (lists of numbers)")
    base = {"input_name": scene.name, "image": _require(scene / "image.exr", "BLB image", scene),
            "disparity": _require(scene / "depth.exr", "BLB depth", scene)}
    gts = sorted((p for p in scene.iterdir() if _BLB_GT.match(p.name)),
                 key=lambda p: tuple(int(g) for g in _BLB_GT.match(p.name).groups()))
    if not gts:
        return [base | {"name": scene.name}]
    entries = []
    for gt in gts:
        k_index, f_index = (int(g) for g in _BLB_GT.match(gt.name).groups())
        try:
            K, distance = float(info["blur_parameters"][k_index]), float(info["focus_distances"][f_index])
        except IndexError as error:
            raise ValueError(f"'{gt}' refers to blur parameter {k_index} / focus distance {f_index}, which "
                             f"'{info_path}' does not list") from error
        except (TypeError, ValueError) as error:
            raise ValueError(f"'{info_path}': blur_parameters[{k_index}] / focus_distances[{f_index}] is not a "
                             f"number ({error})") from error
        if not (np.isfinite(K) and np.isfinite(distance) and K >= 0 and distance > 0):
            raise ValueError(f"'{info_path}': blur_parameters[{k_index}] = {K} must be >= 0 and "
                             f"focus_distances[{f_index}] = {distance} must be > 0")
        entries.append(base | {"name": f"{scene.name}_{gt.stem}", "gt": gt, "K": K, "focus_distance": distance,
                               "blur_index": k_index, "focus_index": f_index})
    return entries


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------
def _load_common(entry: dict) -> dict:
    image = read_image(entry["image"])
    size = tuple(image.shape[1:])
    if entry.get("depth_png"):
        with warnings.catch_warnings():
            # 8/16-bit depth PNGs are relative depth; normalising them is the layout's definition, not a repair.
            warnings.filterwarnings("ignore", message=".*min-max normalised.*", category=InputWarning)
            depth = read_disparity(entry["disparity"], size=size, normalise="never")
        disparity = clean_disparity(1.0 - depth, source=f"depth '{entry['disparity']}'", normalise="always")
    else:
        disparity, (offset, scale) = _read_disparity_affine(entry["disparity"], size, entry.get("normalise", "auto"))
    item = {"name": entry["name"], "input_name": entry["input_name"], "image": image, "disparity": disparity}
    if entry.get("mask") is not None:
        item["mask"] = _read_mask(entry["mask"], size)
    if entry.get("gt") is not None:
        item["gt"] = _read_gt(read_image(entry["gt"]), entry["gt"], size)
    # Metadata K and focus refer to the disparity *as stored*; the loaded map is (stored - offset) / scale,
    # so K * scale and (focus - offset) / scale keep coc_px = K * (disparity - disp_focus) exactly the same.
    if "K" in entry:
        item["K"] = entry["K"] * scale
    if "disp_focus" in entry:
        item["disp_focus"], item["focus_source"] = (entry["disp_focus"] - offset) / scale, "metadata"
    return item


def _read_disparity_affine(path: Path, size, normalise: str) -> tuple[np.ndarray, tuple[float, float]]:
    """``read_disparity(path, size=size, normalise=normalise)`` plus the affine map it applied:
    ``loaded = (stored - offset) / scale`` (``(0, 1)`` when the stored values were kept)."""
    stored = read_disparity(path, normalise="never")  # cleaned (holes filled), not rescaled, stored size
    lo, hi = float(stored.min()), float(stored.max())
    # The same decision clean_disparity takes (and reports) for this mode.
    normalised = normalise == "always" or (normalise == "auto" and (lo < 0 or hi > 1))
    disparity = clean_disparity(stored, source=f"disparity '{path}'", normalise=normalise)
    disparity = fit_map_to_image(disparity, tuple(size), source=f"disparity '{path}'")
    if not normalised:
        return disparity, (0.0, 1.0)
    # A constant map becomes all zeros: any scale describes that; 1 keeps K as it is.
    return disparity, (lo, hi - lo if hi > lo else 1.0)


def _read_mask(path: Path, size) -> np.ndarray:
    mask = read_image(path, exr_linear=False)[:1]  # coverage, not colour
    if mask.shape[1:] != size:
        warnings.warn(f"mask '{path}' resized (nearest) to the image size {size[1]}x{size[0]}.", InputWarning)
        mask = resize_map(mask, size, interpolation=cv2.INTER_NEAREST)
    return mask


def _read_gt(gt: np.ndarray, path: Path, size) -> np.ndarray:
    if gt.shape[1:] != size:
        warnings.warn(f"GT '{path}' is {gt.shape[2]}x{gt.shape[1]}, the input {size[1]}x{size[0]}; GT resized.", InputWarning)
        gt = np.clip(resize_map(gt, size, interpolation=cv2.INTER_AREA), 0, 1)
    return gt


def _load_blb(entry: dict, gamma: float) -> dict:
    def srgb(path):
        linear = read_exr_array(path)[:, :, :3]
        if linear.shape[2] == 1:
            linear = np.repeat(linear, 3, axis=2)
        # BLB stores linear HDR: clipped to the displayable range, then encoded (no tone mapping), as every EXR photo.
        return encode_linear_exr(linear, gamma).transpose(2, 0, 1).astype(np.float32).copy()

    image = srgb(entry["image"])
    depth = read_exr_array(entry["disparity"])[:, :, 0].astype(np.float64)
    infinite = depth >= BLB_INFINITY * 0.999
    disparity_abs = np.where(infinite, 0.0, 1.0 / np.where(depth > 0, depth, np.nan))
    disparity_abs = clean_disparity(disparity_abs, source=f"BLB depth '{entry['disparity']}'", normalise="never")[0]
    scale = max(1.0, float(disparity_abs.max()))  # keep coc_px exact: disparity / s with K * s
    item = {"name": entry["name"], "input_name": entry["input_name"], "image": image,
            "disparity": (disparity_abs / scale)[None].astype(np.float32)}
    if entry.get("gt") is not None:
        item["gt"] = _read_gt(srgb(entry["gt"]), entry["gt"], tuple(image.shape[1:]))
    if "K" in entry:
        item["K"] = entry["K"] * scale
        item["disp_focus"] = float(np.clip(1.0 / entry["focus_distance"] / scale, 0.0, 1.0))
        item["focus_source"] = "metadata"
    if item["disparity"].shape[1:] != image.shape[1:]:
        warnings.warn(f"BLB depth '{entry['disparity']}' resized to the image size.", InputWarning)
        item["disparity"] = resize_map(item["disparity"], tuple(image.shape[1:]))
    return item


def _finish(item: dict, multiple_of: int) -> dict:
    """Focus from the GT when no metadata gives it; consistent resize; numpy -> torch."""
    height, width = item["image"].shape[1:]
    if "gt" in item and "disp_focus" not in item:
        try:
            item["disp_focus"] = focus_from_gt(item["image"], item["gt"], item["disparity"])
            item["focus_source"] = "gt_edges"
        except ValueError as error:
            warnings.warn(f"'{item['name']}': no focus from the GT ({error}); choose it another way.", InputWarning)
    if multiple_of > 1:
        size = (-(-height // multiple_of) * multiple_of, -(-width // multiple_of) * multiple_of)
        if size != (height, width):
            # One rule for every map: the same target size, smooth maps bicubic/linear, masks nearest.
            item["image"] = np.clip(resize_map(item["image"], size, interpolation=cv2.INTER_CUBIC), 0, 1)
            item["disparity"] = np.clip(resize_map(item["disparity"], size), 0, 1)
            if "mask" in item:
                item["mask"] = resize_map(item["mask"], size, interpolation=cv2.INTER_NEAREST)
            if "gt" in item:
                item["gt"] = np.clip(resize_map(item["gt"], size, interpolation=cv2.INTER_CUBIC), 0, 1)
    for key in ("image", "disparity", "mask", "gt"):
        if key in item:
            item[key] = torch.from_numpy(np.ascontiguousarray(item[key], dtype=np.float32))
    for key in ("K", "disp_focus"):
        if key in item:
            item[key] = torch.tensor(float(item[key]), dtype=torch.float32)
    item["original_size"] = torch.tensor([height, width], dtype=torch.long)
    return item
