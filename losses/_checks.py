"""Shape checks shared by the loss functions (public boundaries report expected vs found)."""

from __future__ import annotations

import torch


def check_images(caller: str, **images: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every tensor is ``(B, 3, H, W)`` and all share one shape.

    Value ranges are documented, not checked: a range check needs a device sync every step.
    """
    reference_name, reference_shape = None, None
    for name, image in images.items():
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3:
            found = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"{caller}: `{name}` must be an image batch of shape (B, 3, H, W) in [0, 1]; found {found}."
            )
        if reference_shape is None:
            reference_name, reference_shape = name, image.shape
        elif image.shape != reference_shape:
            raise ValueError(
                f"{caller}: `{name}` has shape {tuple(image.shape)} but `{reference_name}` has "
                f"{tuple(reference_shape)}; pass images of one size (resize or crop them together)."
            )
