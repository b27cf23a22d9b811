"""Inputs and outputs of ``inference_hf.py``: finding and validating inputs, choosing focus, naming outputs.

The script stays a table of contents (parse, build the renderer, loop, save); everything that decides *what*
is rendered and *where it goes* lives here, so it is testable without running a renderer.

Conventions (docs/conventions.md): images ``(3, H, W)`` float32 sRGB in [0, 1]; disparity ``(1, H, W)`` float32 in
[0, 1] with 1 = nearest; ``disp_focus`` is one disparity value; ``K`` is the circle-of-confusion radius in
pixels **at the working resolution** per unit disparity (``coc_px = K * (disparity - disp_focus)``), so
shrinking an input with ``--max_side`` keeps ``K`` meaning "pixels of blur in the output".

Inputs are loaded lazily, one :class:`PendingInput` at a time, so a corrupt or missing file fails only its
own item: the caller reports it, skips it and keeps going. Every repair of an input (resize, fill,
renormalise, dropped alpha) is announced with :class:`data.io.InputWarning`.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import hashlib
import json
import math
import os
import re
import time
import unicodedata
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from data.focus import focus_from_mask, focus_from_pixel, focus_from_value
from data.io import (EXR_GAMMA, NORMALISE_MODES, InputWarning, clean_disparity, contact_sheet, fit_map_to_image,
                     is_exr, path_key, read_disparity, read_image, resize_map)

# Demo focus planes as disparity percentiles of the motorcycle's map (1 = near): the 90th lies on the
# motorcycle's front (fairing and wheel), the 50th on its rear and the seat, the 10th on the back wall.
DEMO_FOCUS_PERCENTILES = (90.0, 50.0, 10.0)
# Demo blur strengths (CoC px per unit disparity at 741 x 500): mild and strong (max radius ~9 and ~18 px).
DEMO_K = (10.0, 20.0)
# Default strength for user inputs; the published BokehDiff README uses K = 20 as well.
DEFAULT_K = (20.0,)
# Layouts whose input handling --protocol published reproduces (data/published.py): all of data.loaders.LAYOUTS.
PUBLISHED_LAYOUTS = ("EBB", "folder", "pngdepth", "BLB")


@dataclass
class InputItem:
    """One image to render.

    Attributes:
        name: file-name-safe identifier used to name outputs.
        image: ``(3, H, W)`` float32, sRGB in [0, 1] (published BLB: unclipped, >= 0).
        disparity: ``(1, H, W)`` float32 in [0, 1], 1 = nearest, same H, W as ``image`` (published BLB: raw
            ``1 / depth``, may exceed 1).
        mask: optional subject mask ``(1, H, W)`` float32 in [0, 1] (focus target when no focus is given).
        focus: optional focal disparity decided by the input protocol (``--protocol published`` test sets:
            the released code's mask median / central box, :mod:`data.published`); used when no focus flag
            is given.
        output_size: optional ``(h, w)`` the renders are resized to before they are written
            (:func:`data.published.published_resize_output`; published ``folder`` / ``pngdepth``: the
            disparity's stored size, where the released script writes them). None: the image's size.
        disparity_range: optional ``(min, max)`` the published focus planes span (published ``folder`` /
            ``pngdepth``: the stored map's, before it is resized to the image). None: ``disparity``'s.
    """

    name: str
    image: np.ndarray
    disparity: np.ndarray
    mask: np.ndarray | None = None
    focus: float | None = None
    output_size: tuple[int, int] | None = None
    disparity_range: tuple[float, float] | None = None


@dataclass
class PendingInput:
    """An input that is not read yet: ``load()`` returns an :class:`InputItem` or raises for this item only.
    ``sources`` are the files it reads (no output may replace them). ``disparity_rule``: how its disparity is
    read (one line; :func:`input_notes`); ``notes``: what else its reading decides that a user must know (an
    EXR read as linear light). Inputs of one folder share them, so a run prints each once."""

    name: str
    load: Callable[[], InputItem]
    sources: tuple[Path, ...] = ()
    disparity_rule: str = ""
    notes: tuple[str, ...] = ()


#: ``--disparity_normalise`` when it is not given, for ``--image`` / ``--disparity`` (and the app's uploads).
PAIR_NORMALISE = "auto"


def exr_note(path: str | os.PathLike) -> tuple[str, ...]:
    """The note for an input photo that is an EXR (read as scene-linear, :func:`data.io.encode_linear_exr`), or ()."""
    return () if not is_exr(path) else (f"EXR input photos (e.g. '{Path(path).name}') are taken as scene-linear "
                                        f"light: clipped to [0, 1] and encoded as x ** (1 / {EXR_GAMMA:g}), as the "
                                        "BLB loader encodes its EXR images",)


def input_notes(inputs: Sequence[PendingInput]) -> tuple[list[str], list[str]]:
    """``(disparity rules, notes)`` of ``inputs``, each distinct line once, in the order first seen."""
    rules = list(dict.fromkeys(p.disparity_rule for p in inputs if p.disparity_rule))
    notes = list(dict.fromkeys(note for p in inputs for note in p.notes))
    return rules, notes


# ----------------------------------------------------------------------------------------------------------
# Argument types (argparse calls these; their messages name the flag)
# ----------------------------------------------------------------------------------------------------------
def strength_K(text: str) -> float:
    """``--K`` values: finite and >= 0 (CoC radius in px per unit disparity; 0 renders the input)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--K must be a number (blur radius in px per unit disparity), got {text!r}")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"--K must be >= 0 (blur radius in px per unit disparity; the sign of the blur comes from "
            f"disparity - focus), got {text}. Pass e.g. --K 20"
        )
    return value


def percentile(text: str) -> float:
    """``--focus_percentile`` values: a number in [0, 100]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 100.0:
        raise argparse.ArgumentTypeError(f"--focus_percentile must be in [0, 100] (90 = near), got {text!r}")
    return value


def disparity_value(text: str) -> float:
    """``--focus_disparity`` values, validated by :func:`data.focus.focus_from_value`."""
    try:
        return focus_from_value(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error))


# ----------------------------------------------------------------------------------------------------------
# Input discovery
# ----------------------------------------------------------------------------------------------------------
def safe_name(name: str) -> str:
    """A name usable in file names on every OS: runs of anything but letters, digits (Unicode ones included:
    ``场景`` stays ``场景``), ``.``, ``-``, ``_`` become one ``_``; NFC-normalised (macOS stores names decomposed).
    Several names may clean to one (``my scene``, ``my_scene``): :func:`unique_names` keeps outputs apart."""
    cleaned = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", str(name))).strip("._")
    return cleaned or "image"


def unique_names(names: Sequence[str]) -> list[str]:
    """:func:`safe_name` of every name, made unique, also ignoring case (outputs must not collide on
    case-insensitive file systems either).

    Deterministic, and independent of the order of the inputs: a name that cleaning leaves unchanged keeps it;
    a cleaned name that collides with another gets ``-<6 hex digits of the SHA-1 of the original name>``
    (``my scene`` -> ``my_scene-1c8d3e`` next to ``my_scene``). Names still equal after that (the same name
    twice, e.g. from two folders) are numbered ``-2``, ``-3`` in the order given.
    """
    cleaned = [safe_name(name) for name in names]
    counts = Counter(name.casefold() for name in cleaned)
    hashed = []
    for original, name in zip(names, cleaned):
        original = unicodedata.normalize("NFC", str(original))
        if counts[name.casefold()] > 1 and name != original:
            name = f"{name}-{hashlib.sha1(original.encode('utf-8')).hexdigest()[:6]}"
        hashed.append(name)
    seen, unique = set(), []
    for name in hashed:
        candidate, number = name, 1
        while candidate.casefold() in seen:
            number += 1
            candidate = f"{name}-{number}"
        seen.add(candidate.casefold())
        unique.append(candidate)
    return unique


def read_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """Read a subject mask as ``(1, H, W)`` float32 in [0, 1] at ``size = (H, W)`` (nearest-neighbour resize,
    with a warning, if it differs). Colour masks are averaged over channels."""
    mask = read_image(path, exr_linear=False).mean(axis=0, keepdims=True)  # coverage, not colour
    return fit_map_to_image(mask, size, source=f"mask '{path}'", interpolation=cv2.INTER_NEAREST, how="nearest")


def conform_item(name: str, image, disparity, mask=None) -> InputItem:
    """Bring arrays from any source (numpy or torch, ``(C, H, W)``) to the conventions of :class:`InputItem`.

    The disparity goes through :func:`data.io.clean_disparity` (fills NaN/inf, renormalises out-of-range
    values, warns) and is resized to the image if needed (warns). A no-op on already conforming arrays.
    """
    image = _numpy(image)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"'{name}': image must be (3, H, W) or (1, H, W), got shape {tuple(image.shape)}")
    image = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image
    disparity = clean_disparity(_numpy(disparity), source=f"disparity of '{name}'")
    size = tuple(image.shape[1:])
    disparity = fit_map_to_image(disparity, size, source=f"disparity of '{name}'")
    if mask is not None:
        mask = _numpy(mask).astype(np.float32)
        mask = mask[None] if mask.ndim == 2 else mask[:1]
        if mask.shape[1:] != size:
            warnings.warn(f"mask of '{name}' resized (nearest) to the image size {size[1]}x{size[0]}.", InputWarning)
            mask = resize_map(mask, size, interpolation=cv2.INTER_NEAREST)
    return InputItem(safe_name(name), np.clip(image, 0, 1).astype(np.float32), disparity, mask)


def _numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor, without importing torch here
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def demo_inputs() -> list[PendingInput]:
    """The offline demo: scikit-image's Middlebury motorcycle (image 741 x 500 and measured disparity)."""
    from data.demo import load_motorcycle

    def load() -> InputItem:
        image, disparity = load_motorcycle()
        return InputItem("motorcycle", image, disparity)

    return [PendingInput("motorcycle", load)]


def pair_inputs(image: str, disparity: str, *, mask: str | None = None, is_depth: bool = False,
                normalise: str | None = None) -> list[PendingInput]:
    """One user image + disparity (``.npy``, ``.npz``, 8/16-bit PNG, EXR) and optional subject mask.

    A disparity (or mask) of another size but the same aspect ratio is resized to the image with a warning,
    one of another aspect ratio (e.g. transposed) is refused; depth maps (``is_depth``) become disparity; see
    :func:`data.io.read_disparity`. ``normalise``: a mode of :data:`data.io.NORMALISE_MODES`; None is
    :data:`PAIR_NORMALISE` (``auto``). An EXR photo is scene-linear (:func:`data.io.read_image`).
    """
    name = safe_name(Path(image).stem)
    source = "--disparity_normalise" if normalise else "the default for --image; --disparity_normalise changes it"
    normalise = PAIR_NORMALISE if normalise is None else normalise
    meaning = NORMALISE_MODES[normalise]
    if is_depth and normalise == "auto":  # 1 / depth has no absolute scale (data.io.clean_disparity)
        meaning = "min-max normalised to [0, 1], depth having no absolute scale"
    rule = f"--image: {'1 / depth (--depth), then ' if is_depth else ''}{normalise} ({meaning}), {source}"

    def load() -> InputItem:
        rgb = read_image(image)
        size = tuple(rgb.shape[1:])
        disp = read_disparity(disparity, is_depth=is_depth, size=size, normalise=normalise, depth_hint="--depth")
        return InputItem(name, rgb, disp, read_mask(mask, size) if mask else None)

    sources = tuple(Path(p) for p in (image, disparity, mask) if p)
    return [PendingInput(name, load, sources, rule, exr_note(image))]


def input_roots(test_data_dir: str) -> list[Path]:
    """The existing folders ``--test_data_dir`` names (a folder, or a glob pattern matching folders)."""
    roots = sorted(glob.glob(test_data_dir)) if glob.has_magic(test_data_dir) else [test_data_dir]
    roots = [Path(root) for root in roots if Path(root).is_dir()]
    if not roots:
        raise FileNotFoundError(
            f"--test_data_dir '{test_data_dir}' is not an existing folder (nor a glob pattern matching folders)"
        )
    return roots


def folder_inputs(test_data_dir: str, data_id: str | None = None, *,
                  exclude: Iterable[str | os.PathLike] = (), protocol: str = "corrected",
                  disparity_normalise: str | None = None) -> list[PendingInput]:
    """Inputs of one or more test-set folders (a glob may match several), indexed by
    :func:`data.loaders.load_test_set` (layout detected; one item per input image, GTs ignored).

    ``data_id`` (optional) keeps only inputs whose name equals it or matches it as a glob pattern (``"scene0*"``).
    With several folders, names get the folder's name as a prefix; names are made unique
    (:func:`unique_names`), so outputs cannot collide. Images in ``exclude`` (outputs of an earlier run written
    into the input folder, :func:`previous_outputs`) are not inputs. Folder-level problems (missing folder,
    unknown layout, no items) raise at once; a bad or missing file fails only its own item.

    ``protocol="published"``: every layout is read as the released code reads it (:mod:`data.published`;
    EBB: resized to multiples of 8 instead of padded, its disparity normalisation; BLB: ``bokeh_04_*`` only,
    unclipped ``x ** (1 / 2.2)`` images, raw ``1 / depth`` disparity; folder / pngdepth: its mask and
    disparity rules, the long side enlarged to at least 1024 px, renders written at the disparity's size; the
    focus in ``item.focus``).

    ``disparity_normalise`` (``--disparity_normalise``): None reads each layout's disparity by its own rule;
    a mode replaces the EBB and folder rules (:func:`data.loaders.load_test_set`, which refuses it for pngdepth
    and BLB). ``protocol="published"`` refuses it: the released input handling is reproduced unchanged.
    Each input's ``disparity_rule`` says which rule it is read with.
    """
    from data.loaders import detect_layout, load_test_set

    if protocol == "published" and disparity_normalise is not None:
        raise ValueError(f"--disparity_normalise {disparity_normalise}: --protocol published reads test sets as the "
                         "released code does (its own disparity normalisation, data/published.py), which no flag "
                         "changes; drop --disparity_normalise, or pass --protocol corrected to choose the rule")
    roots = input_roots(test_data_dir)
    excluded = {path_key(path) for path in exclude}
    found = []
    for root in roots:
        layout = detect_layout(root)
        published = protocol == "published" and layout in PUBLISHED_LAYOUTS
        if published and layout == "pngdepth":  # the released pairing by sort order (data.published)
            from data.published import list_published_pngdepth

            test_set = SimpleNamespace(layout=layout, entries=list_published_pngdepth(root))
        else:
            # Indexes files only; load() decodes.
            test_set = load_test_set(root, layout, inputs_only=True, disparity_normalise=disparity_normalise)
        rule = (f"{layout} layout: the released code's rule (data/published.py), --protocol published" if published
                else test_set.disparity_rule)
        prefix = f"{Path(root).name}_" if len(roots) > 1 else ""
        entries = list(enumerate(test_set.entries))
        if published and test_set.layout == "BLB":
            from data.published import PUBLISHED_BLB_BLUR_INDEX as k

            # The released BLB loader lists only the bokeh_04_* ground truths, one input per focus distance.
            test_set = load_test_set(root, "BLB")
            entries = [(i, e) for i, e in enumerate(test_set.entries) if e.get("blur_index") == k]
            if not entries:
                raise ValueError(f"'{root}': no bokeh_{k:02d}_<f>.exr ground truths; the published BLB protocol "
                                 f"renders one input per bokeh_{k:02d}_* file (use --protocol corrected otherwise)")
        for index, entry in entries:
            name = str(entry["name"])
            if data_id is not None and not (name == data_id or fnmatch.fnmatchcase(name, data_id)):
                continue
            if path_key(entry["image"]) in excluded:
                continue
            sources = tuple(Path(entry[key]) for key in ("image", "disparity", "mask") if entry.get(key) is not None)
            if published and test_set.layout == "folder":
                sources += _published_folder_sources(entry)
            # The released loaders read no EXR photo (PIL); ours encode every one as linear light.
            notes = () if published else exr_note(entry["image"])
            found.append((prefix + name, test_set, index, sources, published, rule, notes))
    names = unique_names([name for name, *_ in found])
    return [PendingInput(name, _published_loader(test_set.layout, test_set.entries[index], name) if published
                         else _set_item_loader(test_set, index, name), sources, rule, notes)
            for name, (_, test_set, index, sources, published, rule, notes) in zip(names, found)]


def _published_loader(layout: str, entry: dict, name: str) -> Callable[[], InputItem]:
    def load() -> InputItem:
        from data import published as pub

        if layout == "BLB":  # a ground truth's input
            image, disparity, focus = pub.load_published_blb(entry["image"], entry["disparity"],
                                                             entry["focus_distance"])
        elif layout == "EBB":
            image, disparity, focus = pub.load_published_ebb(entry["image"], entry["disparity"], entry.get("mask"))
        else:
            for note in entry.get("notes", ()):
                warnings.warn(note, InputWarning)
            read = pub.load_published_folder if layout == "folder" else pub.load_published_pngdepth
            got = read(entry["image"], entry["disparity"], entry.get("mask"))
            return InputItem(name, got.image, got.disparity, None, got.focus, got.output_size, got.disparity_range)
        return InputItem(name, image, disparity, None, focus)

    return load


def _published_folder_sources(entry: dict) -> tuple[Path, ...]:
    """The files the released code reads for a folder input besides the layout's (``disp_refine.jpg``,
    ``mask_portrait.jpg``); none when it refuses the input (its loader then fails that item alone)."""
    from data.published import published_folder_files

    try:
        disparity, mask, _ = published_folder_files(entry["image"], entry["disparity"], entry.get("mask"))
    except (ValueError, FileNotFoundError):
        return ()
    listed = (entry["image"], entry["disparity"], entry.get("mask"))
    return tuple(path for path in (disparity, mask) if path is not None and path not in listed)


def _set_item_loader(test_set, index: int, name: str) -> Callable[[], InputItem]:
    def load() -> InputItem:
        record = test_set[index]
        return conform_item(name, record["image"], record["disparity"], record.get("mask"))

    return load


def limit_size(item: InputItem, max_side: int | None) -> InputItem:
    """Shrink an item (area interpolation) so its longer side is at most ``max_side`` pixels; never enlarges.
    The focus and disparity range the input protocol chose are kept; renders are then written at the shrunk
    size (``output_size`` dropped: ``--max_side`` asks for smaller outputs)."""
    height, width = item.image.shape[1:]
    if not max_side or max(height, width) <= max_side:
        return item
    scale = max_side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    mask = None if item.mask is None else resize_map(item.mask, size, interpolation=cv2.INTER_NEAREST)

    def shrink(x):  # area interpolation stays in the map's range: [0, 1], or above 1 (published BLB)
        return np.clip(resize_map(x, size, interpolation=cv2.INTER_AREA), 0, max(1.0, float(x.max())))

    return replace(item, image=shrink(item.image), disparity=shrink(item.disparity), mask=mask, output_size=None)


# ----------------------------------------------------------------------------------------------------------
# Focus
# ----------------------------------------------------------------------------------------------------------
def choose_focus(
    item: InputItem,
    *,
    focus_disparity: list[float] | None = None,
    focus_xy: tuple[int, int] | None = None,
    focus_percentile: list[float] | None = None,
    focus_protocol: str = "default",
) -> list[tuple[float, str]]:
    """The focal disparities to render for ``item``, each with a short label for the contact sheet.

    Precedence: ``--focus_disparity`` values; else the window median at ``--focus_xy`` (pixels of the input
    as read, before ``--max_side``); else ``--focus_percentile`` values (disparity percentiles, 90 = near);
    else the subject mask's median disparity; else the **image centre** (a 5 x 5 median, like a camera's
    centre autofocus point). ``item.focus`` (set by the published input protocol) comes before the mask.
    Values are in [0, 1] on the disparity scale (1 = nearest).

    ``focus_protocol="published"``: the focus found without flags becomes the released script's three planes
    (:func:`data.published.published_focus_planes`), labelled ``far``, ``subject``, ``near``.
    """
    if focus_protocol not in ("default", "published"):
        raise ValueError(f"--focus_protocol must be 'default' or 'published', got {focus_protocol!r}")
    if focus_protocol == "published" and (focus_disparity or focus_xy is not None or focus_percentile):
        raise ValueError("--focus_protocol published derives three planes from the automatic focus; drop "
                         "--focus_disparity / --focus_xy / --focus_percentile, or use --focus_protocol default")
    if focus_protocol == "published":
        from data.published import published_focus_planes

        (value, _), = choose_focus(item)
        planes = published_focus_planes(item.disparity if item.disparity_range is None
                                        else np.asarray(item.disparity_range, np.float32), value)
        return list(zip(planes, ("far", "subject", "near")))
    if focus_disparity:
        return [(focus_from_value(v), "given") for v in focus_disparity]
    if focus_xy is not None:
        x, y = focus_xy
        return [(focus_from_pixel(item.disparity, x, y), f"at ({x}, {y})")]
    if focus_percentile:
        return [(float(np.percentile(item.disparity, p)), f"p{p:g}") for p in focus_percentile]
    if item.focus is not None:
        return [(float(item.focus), "published")]
    if item.mask is not None:
        return [(focus_from_mask(item.disparity, item.mask), "mask")]
    height, width = item.disparity.shape[1:]
    return [(focus_from_pixel(item.disparity, width // 2, height // 2), "centre")]


# ----------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------
def format_value(value: float, digits: int = 2) -> str:
    """Compact decimal for file names: 20 -> ``20``, 7.5 -> ``7.5``, 0.625 -> ``0.62`` (``digits`` decimals)."""
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return text or "0"


def output_name(name: str, K: float, disp_focus: float) -> str:
    """``<name>_K<K>_f<focus>.png``, e.g. ``motorcycle_K20_f0.88.png`` (focus with two decimals, fixed)."""
    return f"{name}_K{format_value(K)}_f{disp_focus:.2f}.png"


# <name>_K<K>_f<focus>, optionally -<n> (a render written beside an input of the same name, OutputFiles.claim).
_OUTPUT_STEM = re.compile(r"^(?P<name>.+)_K(?P<K>\d+(?:\.\d+)?)_f(?P<focus>-?\d+\.\d\d)(?:-\d+)?$")


def parse_output_name(stem: str) -> tuple[str, float, float] | None:
    """``(name, K, disp_focus)`` of a render's file stem as :func:`output_name` writes it (``a_K20_f0.50`` ->
    ``("a", 20.0, 0.5)``; K and focus as rounded in the name), or None for any other stem."""
    match = _OUTPUT_STEM.match(stem)
    return None if match is None else (match["name"], float(match["K"]), float(match["focus"]))


def unique_focus(focus: list[tuple[float, str]], name: str) -> list[tuple[float, str]]:
    """Drop focus values that would produce the same output file name (equal to two decimals), with a warning."""
    kept, seen = [], set()
    for value, label in focus:
        key = f"{value:.2f}"
        if key in seen:
            warnings.warn(f"'{name}': focus {value:.4f} ({label}) duplicates another to 2 decimals; skipped.", InputWarning)
            continue
        seen.add(key)
        kept.append((value, label))
    return kept


MANIFEST_NAME = "run_config.json"


def previous_outputs(output_dir: str | os.PathLike) -> list[Path]:
    """Files an earlier run wrote into ``output_dir``: its :data:`MANIFEST_NAME` and the files listed under
    ``"outputs"`` there (empty when there is no such manifest or it cannot be read)."""
    path = Path(output_dir) / MANIFEST_NAME
    try:
        outputs = json.loads(path.read_text(encoding="utf-8"))["outputs"]
    except (OSError, ValueError, TypeError, KeyError):
        return []
    return [path] + [Path(output_dir) / name for name in outputs if isinstance(name, str)]


class OutputFiles:
    """Hands out the output paths of one run in ``folder``: never one of the run's input files, never one
    path twice.

    A requested name that is taken becomes ``<stem>-2<suffix>``, ``-3``, ... (recorded in ``renamed`` as
    ``(requested, given)``, for the caller to announce). Protected: the files in ``protected`` and every
    existing file under a folder of ``protected_dirs`` (the input folders) except ``own`` (this tool's
    outputs of an earlier run there, :func:`previous_outputs`). Existing files elsewhere, e.g. the renders of
    an earlier run, are replaced as usual.
    """

    def __init__(self, folder: str | os.PathLike, protected: Iterable[str | os.PathLike] = (),
                 protected_dirs: Iterable[str | os.PathLike] = (), own: Iterable[str | os.PathLike] = ()):
        self.folder = Path(folder)
        self.protected = {path_key(path) for path in protected}
        self.protected_dirs = [path_key(path) for path in protected_dirs]
        self.own_paths = [Path(path) for path in own]
        self.own = {path_key(path) for path in self.own_paths}
        self.taken: set[str] = set()
        self.claimed: list[Path] = []
        self.renamed: list[tuple[str, str]] = []

    def _is_input(self, path: Path, key: str) -> bool:
        if key in self.protected:
            return True
        inside = any(key.startswith(root.rstrip(os.sep) + os.sep) for root in self.protected_dirs)
        return inside and key not in self.own and path.exists()

    def claim(self, filename: str) -> Path:
        """The path to write ``filename`` to (in ``folder``); see the class docstring."""
        requested = self.folder / filename
        path, number = requested, 1
        while (key := path_key(path)) in self.taken or self._is_input(path, key):
            number += 1
            path = requested.with_name(f"{requested.stem}-{number}{requested.suffix}")
        self.taken.add(key)
        self.claimed.append(path)
        if path != requested:
            self.renamed.append((filename, path.name))
        return path


def sheet_name(name: str, single_input: bool) -> str:
    """``contact_sheet.png`` for single-input runs (demo, ``--image``), ``<name>_contact_sheet.png`` otherwise."""
    return "contact_sheet.png" if single_input else f"{name}_contact_sheet.png"


def item_contact_sheet(item: InputItem, renders: dict[tuple[float, float], np.ndarray],
                       Ks: list[float], focus: list[tuple[float, str]], *, width: int = 320) -> np.ndarray:
    """Labelled sheet ``(3, H', W')`` in [0, 1]: one row per ``K``, one column per focus plane, with the input
    and the disparity (grey, white = near) in the first column. Missing renders are left black."""
    blank = np.zeros_like(item.image)
    first_column = [(item.image, "input"), (np.repeat(item.disparity, 3, axis=0), "disparity (white = near)")]
    tiles, labels = [], []
    for row in range(max(len(Ks), len(first_column))):
        tile, label = first_column[row] if row < len(first_column) else (blank, "")
        tiles.append(tile)
        labels.append(label)
        for value, focus_label in focus:
            if row < len(Ks) and (Ks[row], value) in renders:
                tiles.append(renders[(Ks[row], value)])
                labels.append(f"K={format_value(Ks[row])}  focus={value:.2f} ({focus_label})")
            else:
                tiles.append(blank)
                labels.append("")
    return contact_sheet(tiles, labels, columns=len(focus) + 1, width=width)


class StageTimer:
    """Wall-clock seconds per named stage (load, render, save), summed over the run."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.start = time.perf_counter()

    def stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] += time.perf_counter() - self.t0

        return _Stage()

    def summary(self, n_renders: int, megapixels: float) -> str:
        """One line: total time, per-stage time, seconds per render and per megapixel rendered."""
        total = time.perf_counter() - self.start
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
        render = self.seconds.get("render", 0.0)
        per = f"; {render / n_renders:.3f} s/render, {render / megapixels:.3f} s/MP" if n_renders and megapixels else ""
        return f"{n_renders} renders in {total:.2f} s ({stages}{per})"
