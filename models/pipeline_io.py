"""Inputs and outputs of :class:`models.pipeline.BokehDiffPipeline`: PIL / numpy / tensor / list conversion, the
focus and seed of each item, and the output dataclass.

Conventions (docs/conventions.md): images become ``(1, 3, H, W)`` float32 sRGB in [0, 1], disparities
``(1, 1, H, W)`` float32 in [0, 1] (1 = near). Integer inputs are scaled by their type's maximum (uint8: 255,
uint16: 65535); float inputs are taken as already in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from diffusers.utils import BaseOutput

from data.focus import focus_from_pixel
from .tiling import RenderPlan

__all__ = [
    "OUTPUT_TYPES",
    "BokehDiffPipelineOutput",
    "as_batch",
    "as_items",
    "checked_pair",
    "coc_from_focus",
    "image_to_tensor",
    "disparity_to_tensor",
    "per_item",
    "resolve_focus",
    "seed_from_generator",
    "format_images",
]

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class BokehDiffPipelineOutput(BaseOutput):
    """What :meth:`BokehDiffPipeline.__call__` returns with ``return_dict=True``.

    Attributes:
        images: ``output_type="pil"``: a list of ``PIL.Image`` (RGB); ``"np"``: ``(B, H, W, 3)`` float32 in
            [0, 1] (a list of ``(H, W, 3)`` arrays when the items differ in size); ``"pt"``: ``(B, 3, H, W)``
            float32 in [0, 1] (a list of ``(1, 3, H, W)`` tensors when the sizes differ).
        plans: one :class:`models.tiling.RenderPlan` per rendered item group (full frame vs tiles, padding and
            ``timings`` in seconds: ``encode_s``, ``unet_s``, ``decode_s``, ``total_s``).
        focus_disparity: the in-focus disparity used for each image, in [0, 1] (from ``focus_xy`` when given).
    """

    images: Any
    plans: list[RenderPlan]
    focus_disparity: list[float]


def as_batch(x: torch.Tensor, channels: int, name: str) -> torch.Tensor:
    """A float tensor ``(B, C, H, W)``, ``(C, H, W)`` (or ``(H, W)`` for one channel) -> ``(B, C, H, W)``, checked
    to be finite; the pipeline's check at its boundary."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim == 2 and channels == 1:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must be (B, {channels}, H, W) or ({channels}, H, W); got {tuple(x.shape)}.")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a float tensor in [0, 1], got {x.dtype}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} has NaN or inf values; fill them before rendering (data.io readers do).")
    return x


def _is_pil(x) -> bool:
    try:
        from PIL import Image
    except ImportError:  # PIL is a diffusers dependency; without it no input can be a PIL image
        return False
    return isinstance(x, Image.Image)


def as_items(image, disparity) -> tuple[list, list, bool]:
    """Split the inputs into per-item lists: ``(images, disparities, batched)``.

    A list (or tuple) of images is a batch whose items may differ in size; its disparity must be a list of the
    same length. Anything else is one input (a tensor may itself hold a batch ``(B, C, H, W)``).
    ``batched`` says whether the caller passed lists (the outputs are then lists when sizes differ)."""
    if isinstance(image, (list, tuple)):
        if not isinstance(disparity, (list, tuple)) or len(disparity) != len(image):
            got = f"a list of {len(disparity)}" if isinstance(disparity, (list, tuple)) else type(disparity).__name__
            raise ValueError(f"image is a list of {len(image)} items, so disparity must be a list of the same "
                             f"length (one map per image, each the size of its image); got {got}.")
        if not image:
            raise ValueError("image is an empty list: pass at least one image.")
        return list(image), list(disparity), True
    return [image], [disparity], False


def _scale_integer(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    raise TypeError(f"{name}: unsupported numpy dtype {array.dtype}; use uint8, uint16 or float in [0, 1].")


def image_to_tensor(image, name: str = "image"):
    """A PIL image (any mode, converted to RGB) or a numpy ``(H, W, 3)`` / ``(H, W, 4)`` array (uint8, uint16
    or float in [0, 1]; alpha dropped) -> ``(1, 3, H, W)`` float32 tensor. Tensors are returned unchanged (the
    pipeline validates them as it always has: ``(B, 3, H, W)`` or ``(3, H, W)`` float)."""
    if isinstance(image, torch.Tensor):
        return image
    if _is_pil(image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise ValueError(f"{name}: a numpy image must be (H, W, 3) (or (H, W, 4), alpha dropped), got "
                             f"{image.shape}.")
        array = _scale_integer(np.ascontiguousarray(image[..., :3]), name)
        return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()
    raise TypeError(f"{name} must be a PIL.Image, a numpy array or a torch.Tensor, got {type(image).__name__}.")


def disparity_to_tensor(disparity, name: str = "disparity"):
    """A PIL image (mode ``L``: /255, ``I;16``/``I``: /65535, ``F``: as is) or a numpy ``(H, W)`` / ``(H, W, 1)``
    array in [0, 1] (1 = near; integers scaled by their maximum) -> ``(1, 1, H, W)`` float32. Tensors unchanged."""
    if isinstance(disparity, torch.Tensor):
        return disparity
    if _is_pil(disparity):
        mode = disparity.mode
        array = np.asarray(disparity)
        if mode in ("I;16", "I;16B", "I;16L") or (mode == "I" and array.max(initial=0) > 255):
            disparity = array.astype(np.float32) / 65535.0
        elif mode == "F":
            disparity = array.astype(np.float32)
        else:
            disparity = np.asarray(disparity.convert("L"))
    if isinstance(disparity, np.ndarray):
        if disparity.ndim == 3 and disparity.shape[-1] == 1:
            disparity = disparity[..., 0]
        if disparity.ndim != 2:
            raise ValueError(f"{name}: a numpy disparity must be (H, W) or (H, W, 1), got {disparity.shape}.")
        return torch.from_numpy(_scale_integer(np.ascontiguousarray(disparity), name))[None, None]
    raise TypeError(f"{name} must be a PIL.Image, a numpy array or a torch.Tensor, got {type(disparity).__name__}.")


def per_item(value, n: int, name: str) -> list:
    """``value`` for each of ``n`` items: a list/tuple of length ``n`` is taken item by item (a 2-tuple for a
    single item is one value, e.g. ``focus_xy=(x, y)``); anything else is shared."""
    if isinstance(value, (list, tuple)) and n > 1:
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} images: pass one value, or one per image.")
        return list(value)
    if isinstance(value, list) and n == 1 and len(value) == 1:
        return list(value)
    return [value] * n


def resolve_focus(disparity: torch.Tensor, disp_focus, focus_disparity, focus_xy):
    """The in-focus disparity of one item: ``disp_focus`` (today's name) or ``focus_disparity`` (in [0, 1]), or
    the median disparity in a 5 x 5 box at pixel ``focus_xy = (x, y)`` (column, row; :func:`data.focus.focus_from_pixel`,
    the CLI's ``--focus_xy``). ``None`` when none is given (the pipeline then needs ``coc_px``)."""
    given = [n for n, v in (("disp_focus", disp_focus), ("focus_disparity", focus_disparity), ("focus_xy", focus_xy))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"pass one of disp_focus, focus_disparity and focus_xy, got {', '.join(given)}.")
    if focus_xy is not None:
        if isinstance(disparity, torch.Tensor) and disparity.ndim == 4 and disparity.shape[0] != 1:
            raise ValueError("focus_xy picks one pixel: pass one image per item (a list), not a (B > 1) batch.")
        x, y = focus_xy
        return focus_from_pixel(disparity.reshape(disparity.shape[-2:]), x, y)
    return disp_focus if disp_focus is not None else focus_disparity


def seed_from_generator(generator: torch.Generator) -> int:
    """A PISA occlusion seed drawn from ``generator`` (advances it, as diffusers pipelines consume theirs; the
    global RNG is untouched), so a generator seeded the same way gives the same render."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (or a list of them), got {type(generator).__name__}.")
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())


def format_images(images: Sequence[torch.Tensor], output_type: str, batched: bool):
    """Rendered ``(B_i, 3, H_i, W_i)`` tensors in [0, 1] -> the requested output (see :class:`BokehDiffPipelineOutput`)."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
    same_size = len({tuple(t.shape[-2:]) for t in images}) == 1
    if output_type == "pt":
        if same_size:
            return torch.cat(list(images)) if len(images) > 1 or not batched else images[0]
        return list(images)
    arrays = [a for t in images for a in t.permute(0, 2, 3, 1).float().cpu().numpy()]
    if output_type == "np":
        return np.stack(arrays) if same_size else arrays
    from PIL import Image

    return [Image.fromarray(np.round(a * 255).clip(0, 255).astype(np.uint8)) for a in arrays]


def checked_pair(image: torch.Tensor, disparity: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` ``(B, 3, H, W)`` and ``disparity`` ``(B or 1, 1, H, W)`` checked (:func:`as_batch`), the
    disparity broadcast over the batch, both moved to ``device`` as float32."""
    image = as_batch(image, 3, "image")
    disparity = as_batch(disparity, 1, "disparity")
    if disparity.shape[0] == 1 and image.shape[0] > 1:
        disparity = disparity.expand(image.shape[0], -1, -1, -1)
    if disparity.shape[0] != image.shape[0] or disparity.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"disparity {tuple(disparity.shape)} must match the image {tuple(image.shape)} in batch and size "
            f"(resize it to the image first, e.g. data.io.read_disparity(..., size=...))."
        )
    return image.to(device, torch.float32), disparity.to(device, torch.float32)


def coc_from_focus(disparity: torch.Tensor, K, disp_focus) -> torch.Tensor:
    """Signed CoC ``K * (disparity - focus)`` in px, ``(N, 1, H, W)``, from ``disparity`` ``(N or 1, 1, H, W)`` in
    [0, 1] and ``K`` (px per unit disparity) / ``disp_focus`` (in [0, 1]) scalars or ``(N,)``.

    A map that exceeds 1 (the published BLB protocol feeds raw ``1 / depth``) admits a focus up to its maximum."""
    if K is None or disp_focus is None:
        raise ValueError("pass either coc_px, or K (blur strength, px) and a focus: disp_focus / "
                         "focus_disparity (in [0, 1]) or focus_xy (a pixel).")
    device = disparity.device
    k = torch.as_tensor(K, dtype=torch.float32, device=device).reshape(-1, 1, 1, 1)
    focus = torch.as_tensor(disp_focus, dtype=torch.float32, device=device).reshape(-1, 1, 1, 1)
    top = max(1.0, float(disparity.max()))
    if not bool(torch.isfinite(focus).all()) or ((focus < 0) | (focus > top)).any():
        raise ValueError(f"disp_focus must be in [0, 1] (disparity units), got {focus.flatten().tolist()}.")
    return k * (disparity - focus)
