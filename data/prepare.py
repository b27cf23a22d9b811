"""A folder of photos turned into the EBB layout that ``inference_hf.py`` reads (``prepare_data.py``'s work).

For every image ``<input_dir>/<rel>/<stem>.<ext>`` (any extension in ``data.io.IMAGE_EXTENSIONS``, any case,
any nesting; hidden files skipped) a run writes

- ``<root>/input/<rel>/<stem>.<ext>``    the image, copied unchanged (not when working in place, see below);
- ``<root>/depth/<rel>/<stem>_pred.npy`` disparity, float32 ``(H, W)`` in [0, 1], **1 = nearest**, the image's
  size (Depth Anything V2, orientation in ``models/depth.py``);
- ``<root>/mask/<rel>/<stem>.png``       subject mask, 8-bit ``(H, W)``, 255 = subject (BiRefNet), optional;
- ``<root>/prepare_data.json``           the resolved options of the last run.

Where outputs go: to ``--output_dir`` with the images copied into its ``input/``, or, when the input folder is
an EBB ``input`` folder and ``--output_dir`` is omitted or its parent, in place (``depth/`` and ``mask/`` next to
it, nothing copied). Outputs never go among the images and never replace an input; every file is written to a
temporary name and renamed, so an interrupted run leaves no truncated file. The models are duck-typed
(``disparities(images)`` and ``segmenter(images)``, see :func:`process_batch`), so nothing here loads weights.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.disk import DiskFullError
from data.interrupt import protected
from data.io import IMAGE_EXTENSIONS, atomic_write, read_image, replaced_inputs, save_image

CONFIG_NAME = "prepare_data.json"  # the resolved options of the last run, in the EBB root


class UsageError(ValueError):
    """Bad or inconsistent options; the message names the flag and the fix."""


@dataclass(frozen=True)
class Item:
    """One image: ``source`` file and its output name (:func:`flat_name`: its path under the input folder, without
    extension, folders joined by ``_``)."""

    source: Path
    name: str


@dataclass(frozen=True)
class Layout:
    """Where outputs go: the EBB root, and whether images are copied into ``<root>/input``."""

    root: Path
    copy_inputs: bool

    def input_path(self, item: Item) -> Path:
        return self.root / "input" / f"{item.name}{item.source.suffix}"

    def depth_path(self, item: Item) -> Path:
        return self.root / "depth" / f"{item.name}_pred.npy"

    def mask_path(self, item: Item) -> Path:
        return self.root / "mask" / f"{item.name}.png"

    def outputs(self, item: Item) -> list[Path]:
        """Every file this item may write."""
        return [self.depth_path(item), self.mask_path(item)] + ([self.input_path(item)] if self.copy_inputs else [])


def check_no_input_replaced(items: list[Item], layout: Layout) -> None:
    """Refuse a layout in which an output would replace one of the input images (e.g. photos in
    ``<root>/mask`` with ``--output_dir <root>``): no run may overwrite its own inputs."""
    planned = [layout.root / CONFIG_NAME] + [path for item in items for path in layout.outputs(item)]
    clashes = replaced_inputs(planned, [item.source for item in items])
    if clashes:
        shown = ", ".join(f"'{path}'" for path in clashes[:3]) + (" ..." if len(clashes) > 3 else "")
        raise UsageError(f"--output_dir '{layout.root}': its outputs would replace {len(clashes)} input image(s) "
                         f"({shown}); choose an --output_dir outside the images' folder")


# ----------------------------------------------------------------------------------------------------------
# Options -> layout, file list
# ----------------------------------------------------------------------------------------------------------
def resolve_layout(input_dir: Path, output_dir: Path | None) -> Layout:
    """Where outputs go (module docstring): in place iff ``input_dir`` is ``<root>/input`` and ``output_dir`` is
    None or that root."""
    input_dir = input_dir.resolve()
    if not input_dir.is_dir():
        raise UsageError(f"--input_dir '{input_dir}' is not a folder; pass the folder that holds the images")
    in_place_root = input_dir.parent if input_dir.name == "input" else None
    if output_dir is None:
        if in_place_root is None:
            raise UsageError(
                f"--output_dir is required: --input_dir '{input_dir}' is not an EBB 'input' folder, and outputs "
                "are never written among the images. Pass --output_dir <folder> (images are copied to <folder>/input)."
            )
        return Layout(in_place_root, copy_inputs=False)
    output_dir = output_dir.resolve()
    if output_dir == input_dir:
        raise UsageError(f"--output_dir '{output_dir}' is the images' folder; outputs go elsewhere, choose another")
    return Layout(output_dir, copy_inputs=output_dir != in_place_root)


def flat_name(relative: Path) -> str:
    """The output name of an image at ``relative`` under ``--input_dir``: its stem, with the folders above it
    joined by ``_`` (``trip/day1/a.jpg`` -> ``trip_day1_a``). The EBB layout inference reads is one level deep
    (``input/<name>.<ext>``), so nested photos are prepared flat, never into subfolders it would not read."""
    return "_".join(relative.with_suffix("").parts)


def find_images(input_dir: Path, exclude: Path | None = None) -> tuple[list[Item], list[Path], list[str]]:
    """Images under ``input_dir`` (sorted; those in subfolders named by :func:`flat_name`), non-image files, and
    name clashes (``a.jpg`` next to ``a.png``, or ``x/a.jpg`` next to ``x_a.jpg``, would write the same outputs,
    so both are refused). Hidden entries and the ``exclude`` tree (an output folder inside the input folder)
    are skipped."""
    input_dir = input_dir.resolve()
    exclude = exclude.resolve() if exclude is not None else None
    images, others = [], []
    for path in sorted(input_dir.rglob("*")):
        relative = path.relative_to(input_dir)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if exclude is not None and (path == exclude or exclude in path.parents):
            continue
        if not path.is_file():
            continue
        (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    by_name: dict[str, list[Path]] = {}
    for path in images:
        by_name.setdefault(flat_name(path.relative_to(input_dir)), []).append(path)
    items = [Item(paths[0], name) for name, paths in by_name.items() if len(paths) == 1]
    clashes = [f"{name}: {', '.join(p.relative_to(input_dir).as_posix() for p in paths)}"
               for name, paths in by_name.items() if len(paths) > 1]
    return items, others, clashes


def nested_images(items: list[Item], input_dir: Path, layout: Layout) -> tuple[list[Item], str | None]:
    """Photos found in subfolders of ``input_dir``: copied into ``layout`` flat (:func:`flat_name`), or, in place
    (an EBB input folder, where nothing is moved), left out, since inference reads only that folder's top level.
    Returns the items to prepare and a note saying which happened (None when nothing is nested)."""
    top = input_dir.resolve()
    nested = [item for item in items if item.source.parent != top]
    if not nested:
        return items, None
    example = nested[0].source.relative_to(top).as_posix()
    if layout.copy_inputs:
        return items, (f"note: {len(nested)} image(s) in subfolders of --input_dir are prepared flat, as the EBB "
                       f"layout inference reads (e.g. '{example}' -> '{nested[0].name}')")
    kept = [item for item in items if item.source.parent == top]
    return kept, (f"note: {len(nested)} image(s) in subfolders of the EBB input folder are skipped (e.g. '{example}'): "
                  f"inference reads only its top level; move them up, or pass --output_dir to prepare them flat")


# ----------------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------------
def save_disparity(path: Path, disparity: np.ndarray) -> None:
    """Write disparity ``(H, W)`` float32 as ``.npy`` via a temporary file + rename (never a truncated file)."""
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(disparity, dtype=np.float32), allow_pickle=False)


def copy_file(source: Path, target: Path) -> None:
    with atomic_write(target) as tmp:
        shutil.copyfile(source, tmp)


# ----------------------------------------------------------------------------------------------------------
# Work
# ----------------------------------------------------------------------------------------------------------
def run_by_size(model_each, images: list[np.ndarray]) -> list[np.ndarray | Exception]:
    """Apply ``model_each`` to images of possibly different sizes, batching equal sizes.

    ``model_each`` maps ``(B, 3, H, W)`` to a list of ``B`` results, each ``(1, H, W)`` or the exception that
    spoilt that image alone. Returns one entry per image: its ``(H, W)`` map or an exception; when the forward
    pass itself raises (``RuntimeError``/``ValueError``, e.g. out of memory), every image of that size group
    gets the error and the other groups go on."""
    outputs: list[np.ndarray | Exception | None] = [None] * len(images)
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(image.shape, []).append(index)
    for indices in groups.values():
        try:
            results = model_each(torch.from_numpy(np.stack([images[i] for i in indices])))
        except (RuntimeError, ValueError) as error:
            results = [RuntimeError(f"failed on its batch of {len(indices)}: {error}")] * len(indices)
        for i, value in zip(indices, results):
            outputs[i] = value if isinstance(value, Exception) else np.asarray(value, dtype=np.float32)[0]
    return outputs


def masks_each(segmenter):
    """A :class:`models.segment.Segmenter` as a ``model_each`` for :func:`run_by_size` (it checks its whole
    batch, so a bad mask fails the batch's forward)."""
    return lambda images: list(segmenter(images).float().cpu().numpy())


def process_batch(items: list[Item], layout: Layout, depth_model, segmenter, overwrite: bool) -> list[tuple[Path, str]]:
    """Read, predict and write the outputs one batch of images still needs; returns ``(file, error)`` failures.

    Failures are per image: an unreadable file, or a prediction that is unusable for that image alone, fails
    that image (none of its outputs is written) while the rest of the batch is written. A full disk
    (:class:`data.disk.DiskFullError`) is raised: it would fail every image after it."""
    failures, loaded, images = [], [], []
    for item in items:
        try:
            images.append(read_image(item.source))
            loaded.append(item)
        except (ValueError, OSError) as error:
            failures.append((item.source, str(error)))
    need_depth = [overwrite or not layout.depth_path(item).exists() for item in loaded]
    need_mask = [segmenter is not None and (overwrite or not layout.mask_path(item).exists()) for item in loaded]
    disparities = iter(run_by_size(depth_model.disparities, [im for im, need in zip(images, need_depth) if need]))
    masks = iter(run_by_size(masks_each(segmenter), [im for im, need in zip(images, need_mask) if need])
                 if any(need_mask) else [])
    for item, depth_needed, mask_needed in zip(loaded, need_depth, need_mask):
        disparity = next(disparities) if depth_needed else None
        mask = next(masks) if mask_needed else None
        errors = [f"{what} model: {result}" for what, result in (("depth", disparity), ("mask", mask))
                  if isinstance(result, Exception)]
        if errors:
            failures.append((item.source, "; ".join(errors)))
            continue
        try:
            with protected():  # a signal waits for this image's outputs: none is left half-written
                if depth_needed:
                    save_disparity(layout.depth_path(item), disparity)
                if mask_needed:
                    save_image(layout.mask_path(item), mask, bits=8)
                if layout.copy_inputs and (overwrite or not layout.input_path(item).exists()):
                    copy_file(item.source, layout.input_path(item))
        except DiskFullError:
            raise  # every later image would fail too: the caller stops the run (finished images are kept)
        except (ValueError, OSError) as error:
            failures.append((item.source, f"cannot write outputs: {error}"))
    return failures


def is_done(item: Item, layout: Layout, with_mask: bool) -> bool:
    wanted = [layout.depth_path(item)] + ([layout.mask_path(item)] if with_mask else [])
    wanted += [layout.input_path(item)] if layout.copy_inputs else []
    return all(path.exists() for path in wanted)
