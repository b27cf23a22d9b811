"""Turn a folder of photos into the EBB layout that ``inference_hf.py`` reads.

For every image ``<input_dir>/<rel>/<stem>.<ext>`` (any extension in ``data.io.IMAGE_EXTENSIONS``, any case,
any nesting; hidden files skipped) it writes

- ``<out>/input/<rel>/<stem>.<ext>``    the image, copied unchanged (not when working in place, see below);
- ``<out>/depth/<rel>/<stem>_pred.npy`` disparity, float32 ``(H, W)`` in [0, 1], **1 = nearest**, the
  image's size (Depth Anything V2, orientation in ``models/depth.py``);
- ``<out>/mask/<rel>/<stem>.png``       subject mask, 8-bit ``(H, W)``, 255 = subject (BiRefNet), unless
  ``--no_mask``;
- ``<out>/prepare_data.json``           the resolved options of the last run.

Where outputs go: to ``--output_dir``, with the images copied into its ``input/`` so the folder is
self-contained. When ``--input_dir`` already is an EBB ``input`` folder (its name is ``input``, e.g.
``EBB/input``) and ``--output_dir`` is omitted or is its parent, the work is done in place: nothing is
copied and ``depth/`` and ``mask/`` are written next to it. Outputs never go among the images: without
``--output_dir`` any other folder is refused, an ``--output_dir`` inside the images' folder is left out
when it is searched, so a rerun does not take the masks for photos, and a layout in which an output would
replace an input image (photos in ``<root>/mask`` with ``--output_dir <root>``) is refused.

Existing outputs are kept (an image whose outputs all exist is skipped) unless ``--overwrite``; outputs are
written to a temporary file and renamed, so an interrupted run never leaves a truncated file behind.
Unreadable images, and images whose prediction is unusable (the rest of their batch is written), are
reported and skipped; the run continues and exits with status 1 if any image failed
(2 for bad options or unavailable weights).

Example::

    python prepare_data.py --input_dir photos --output_dir prepared --batch_size 4 --fp16
    python prepare_data.py --input_dir photos --output_dir prepared \\
        --depth_model /models/Depth-Anything-V2-Large-hf --mask_model /models/BiRefNet
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.io import IMAGE_EXTENSIONS, atomic_write, read_image, replaced_inputs, save_image, write_text_atomic
from models.depth import DEFAULT_DEPTH_MODEL, DEPTH_ANYTHING_INPUT_SIZE, load_depth_estimator
from models.hub import HubUnreachableError, WeightsUnavailableError, download_command
from models.segment import BIREFNET_RESOLUTION, BIREFNET_REVISION, DEFAULT_MASK_MODEL, load_birefnet, mask_model_revision


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Disparity (Depth Anything V2) and subject masks (BiRefNet) for a folder of photos, "
        "written in the EBB layout (input/, depth/<name>_pred.npy, mask/<name>.png).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--input_dir", type=Path, required=True, help="folder of images (searched recursively)")
    parser.add_argument(
        "--output_dir", type=Path, default=None,
        help="EBB root to write input/, depth/, mask/ into; may be omitted when --input_dir is an EBB 'input' "
        "folder (then outputs go next to it, in place)",
    )
    parser.add_argument(
        "--depth_model", default=DEFAULT_DEPTH_MODEL,
        help="hub id (depth-anything/Depth-Anything-V2-{Small,Base,Large}-hf) or a local folder with its files",
    )
    parser.add_argument("--mask_model", default=DEFAULT_MASK_MODEL, help="BiRefNet hub id or local folder (runs its remote code)")
    parser.add_argument(
        "--mask_revision", default=None,
        help=f"hub commit (or branch) of --mask_model; its Python code runs here (trust_remote_code), so the default "
        f"{DEFAULT_MASK_MODEL} is loaded at the reviewed commit {BIREFNET_REVISION}; another hub id needs this flag "
        "(a commit you reviewed, or 'main' to run what it holds today)",
    )
    parser.add_argument("--no_mask", action="store_true", help="write no subject masks (and load no mask model)")
    parser.add_argument("--overwrite", action="store_true", help="recompute outputs that already exist")
    parser.add_argument("--batch_size", type=int, default=4, help="images per forward pass (same-size images are batched)")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--fp16", action="store_true", help="run both models in float16 (CUDA only)")
    parser.add_argument("--depth_resolution", type=int, default=DEPTH_ANYTHING_INPUT_SIZE,
                        help="shorter side (px) of the image the depth network sees (rounded to its patch size)")
    parser.add_argument("--mask_resolution", type=int, default=BIREFNET_RESOLUTION,
                        help="square side (px) of the image the mask network sees")
    return parser.parse_args(argv)


class UsageError(ValueError):
    """Bad or inconsistent options; the message names the flag and the fix."""


@dataclass(frozen=True)
class Item:
    """One image: ``source`` file and its name relative to the input folder, without extension (posix)."""

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
    planned = [layout.root / "prepare_data.json"] + [path for item in items for path in layout.outputs(item)]
    clashes = replaced_inputs(planned, [item.source for item in items])
    if clashes:
        shown = ", ".join(f"'{path}'" for path in clashes[:3]) + (" ..." if len(clashes) > 3 else "")
        raise UsageError(f"--output_dir '{layout.root}': its outputs would replace {len(clashes)} input image(s) "
                         f"({shown}); choose an --output_dir outside the images' folder")


# ----------------------------------------------------------------------------------------------------------
# Options -> layout, device, file list
# ----------------------------------------------------------------------------------------------------------
def resolve_layout(input_dir: Path, output_dir: Path | None) -> Layout:
    """See the module docstring: in place iff ``input_dir`` is ``<root>/input`` and ``output_dir`` is None or root."""
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


def resolve_device(name: str, fp16: bool) -> tuple[torch.device, torch.dtype]:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device {name!r} is not a device ({error}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for CUDA, but torch sees no CUDA device; use --device cpu")
    if fp16 and device.type != "cuda":
        raise UsageError("--fp16 needs a CUDA device (float16 convolutions are slow or missing on CPU); drop --fp16")
    return device, torch.float16 if fp16 else torch.float32


def find_images(input_dir: Path, exclude: Path | None = None) -> tuple[list[Item], list[Path], list[str]]:
    """Images under ``input_dir`` (sorted), non-image files, and name clashes (``a.jpg`` next to ``a.png``
    would write the same outputs, so both are refused). Hidden entries and the ``exclude`` tree (an output
    folder inside the input folder) are skipped."""
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
        by_name.setdefault(path.relative_to(input_dir).with_suffix("").as_posix(), []).append(path)
    items = [Item(paths[0], name) for name, paths in by_name.items() if len(paths) == 1]
    clashes = [f"{name}: {', '.join(p.name for p in paths)}" for name, paths in by_name.items() if len(paths) > 1]
    return items, others, clashes


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
    that image (none of its outputs is written) while the rest of the batch is written."""
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
            if depth_needed:
                save_disparity(layout.depth_path(item), disparity)
            if mask_needed:
                save_image(layout.mask_path(item), mask, bits=8)
            if layout.copy_inputs and (overwrite or not layout.input_path(item).exists()):
                copy_file(item.source, layout.input_path(item))
        except (ValueError, OSError) as error:
            failures.append((item.source, f"cannot write outputs: {error}"))
    return failures


def is_done(item: Item, layout: Layout, with_mask: bool) -> bool:
    wanted = [layout.depth_path(item)] + ([layout.mask_path(item)] if with_mask else [])
    wanted += [layout.input_path(item)] if layout.copy_inputs else []
    return all(path.exists() for path in wanted)


def _weights_error(error: WeightsUnavailableError, flag: str, repo: str, extra: str = "") -> UsageError:
    """The loader's message plus the flag that takes a local copy (hub-unreachable messages already carry the
    download command)."""
    if isinstance(error, HubUnreachableError):
        return UsageError(f"{str(error).rstrip('.')}: {flag} DIR{extra}.")
    return UsageError(f"{error}. Download it where the hub is reachable (`{download_command(repo)}`) and pass "
                      f"{flag} DIR{extra}.")


def build_models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """Load the depth estimator and (unless ``--no_mask``) the segmenter; errors name the flag to fix."""
    try:
        depth_model = load_depth_estimator(args.depth_model, device=device, dtype=dtype, input_size=args.depth_resolution)
    except WeightsUnavailableError as error:
        raise _weights_error(error, "--depth_model", args.depth_model) from None
    if args.no_mask:
        return depth_model, None
    try:
        segmenter = load_birefnet(args.mask_model, revision=args.mask_revision, device=device, dtype=dtype,
                                  resolution=args.mask_resolution)
    except WeightsUnavailableError as error:
        raise _weights_error(error, "--mask_model", args.mask_model, ", or --no_mask to skip masks") from None
    return depth_model, segmenter


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.batch_size < 1:
            raise UsageError(f"--batch_size must be >= 1, got {args.batch_size}")
        layout = resolve_layout(args.input_dir, args.output_dir)
        device, dtype = resolve_device(args.device, args.fp16)
        if not args.no_mask:
            try:  # before any model loads: an unpinned hub id with remote code is refused (models/segment.py)
                args.mask_revision = mask_model_revision(args.mask_model, args.mask_revision)  # recorded in the JSON
            except ValueError as error:
                raise UsageError(str(error)) from None
        # An output folder inside the input folder must not be read back as input on the next run.
        inside = args.input_dir.resolve() in layout.root.parents
        items, others, clashes = find_images(args.input_dir, exclude=layout.root if inside else None)
        if not items and not clashes:
            raise UsageError(f"--input_dir '{args.input_dir}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        check_no_input_replaced(items, layout)
        if others:
            shown = ", ".join(str(p) for p in others[:5]) + (" ..." if len(others) > 5 else "")
            print(f"note: {len(others)} file(s) without an image extension ({', '.join(IMAGE_EXTENSIONS)}) "
                  f"are not images and were left alone: {shown}", file=sys.stderr)
        todo = [item for item in items if args.overwrite or not is_done(item, layout, not args.no_mask)]
        depth_model, segmenter = build_models(args, device, dtype) if todo else (None, None)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    layout.root.mkdir(parents=True, exist_ok=True)
    resolved = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    resolved.update(device=str(device), output_root=str(layout.root), copy_inputs=layout.copy_inputs)
    write_text_atomic(layout.root / "prepare_data.json", json.dumps(resolved, indent=2) + "\n")

    failures = [(Path(clash), "two images share this name (outputs would collide); rename one") for clash in clashes]
    with tqdm(total=len(todo), unit="img", desc="prepare_data") as progress:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            for path, message in process_batch(batch, layout, depth_model, segmenter, args.overwrite):
                tqdm.write(f"skipped '{path}': {message}", file=sys.stderr)
                failures.append((path, message))
            progress.update(len(batch))

    n_failed_items = len(failures) - len(clashes)
    print(f"prepared {len(todo) - n_failed_items} image(s), kept {len(items) - len(todo)} with "
          f"existing outputs (--overwrite redoes them), {len(failures)} failed; outputs in '{layout.root}'",
          file=sys.stderr)
    for path, message in failures:
        print(f"  failed: {path}: {message}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
