"""Devices, precision and memory of :class:`models.pipeline.BokehDiffPipeline`: ``to``, CPU offload, VAE tiling,
and recognising an out-of-memory error (the full-frame render's fallback to tiles).

A mixin: it expects ``self.model`` (a :class:`models.onestep.OneStepBokeh`) and sets ``self._offload_device``
and ``self._vae_tiling_default`` (both ``None`` at construction).
"""

from __future__ import annotations

import contextlib
import logging

import torch

from .pipeline_load import cast_components
from .sdxl import DTYPES, resolve_dtype

__all__ = ["PipelineDevicesMixin", "is_out_of_memory", "release_cached_memory"]

logger = logging.getLogger("models.pipeline")


class PipelineDevicesMixin:
    """Device placement, precision and VAE tiling of the pipeline (see the module docstring)."""

    def to(self, *args, **kwargs):
        """Move the render modules (UNet, VAE, prompt embeddings) to a device and/or set their precision.

        Accepts diffusers' forms: ``to("cuda")``, ``to(torch.bfloat16)``, ``to("cuda", torch.bfloat16)``,
        ``to(device=..., dtype=...)``; ``dtype`` may also be a name (``"bf16"``, ``"fp16"``, ``"fp32"``, ``"no"``).
        The dtype rule is :func:`cast_components` (the VAE stays float32 where its config says
        ``force_upcast``). The text encoders stay where they are: they only computed the cached prompt
        embeddings. Moving to a device ends :meth:`enable_model_cpu_offload`."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        kwargs.pop("silence_dtype_warnings", None)  # diffusers' flag; we never warn about the VAE's upcast
        if kwargs:
            raise TypeError(f"BokehDiffPipeline.to got unknown keyword argument(s) {sorted(kwargs)}.")
        for arg in args:
            if isinstance(arg, torch.dtype) or (isinstance(arg, str) and arg in DTYPES):
                dtype = arg
            elif isinstance(arg, (str, torch.device, int)):
                device = arg
            else:
                raise TypeError(f"BokehDiffPipeline.to: expected a device or a dtype, got {arg!r}.")
        if device is not None:
            self._offload_device = None
            self.model.to(device)
        if dtype is not None:
            self.cast_precision(dtype)
        return self

    def cast_precision(self, dtype: str | torch.dtype) -> None:
        """Set the UNet's precision and the VAE's (see :func:`cast_components`)."""
        cast_components(self.model.unet, self.model.vae, resolve_dtype(dtype))

    @property
    def device(self) -> torch.device:
        """Where inputs go and rendering runs (the execution device under :meth:`enable_model_cpu_offload`)."""
        return self.model.prompt_embeds.device

    @property
    def _execution_device(self) -> torch.device:
        return self.device

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device | None = None) -> None:
        """Keep the UNet and VAE on the CPU and move each to the execution device only while it runs (VAE
        encode, UNet, VAE decode), so at most one large module is on the accelerator at a time.

        The execution device is ``device``, else the current accelerator (``torch.accelerator``; ``gpu_id``
        picks its index), else the CPU: without an accelerator the modules simply stay on the CPU (logged
        once), and rendering is unchanged. :meth:`to` with a device ends it."""
        if device is None:
            accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
            device = torch.device("cpu") if accelerator is None else torch.device(accelerator.type, gpu_id or 0)
        device = torch.device(device)
        if device.type == "cpu":
            logger.info("enable_model_cpu_offload: no accelerator, so the UNet and the VAE stay on the CPU.")
        self.model.to("cpu")
        self.model.prompt_embeds = self.model.prompt_embeds.to(device)  # small: they stay on the device
        self.model.pooled_prompt_embeds = self.model.pooled_prompt_embeds.to(device)
        self._offload_device = device

    @contextlib.contextmanager
    def _on_device(self, module: torch.nn.Module):
        """Under CPU offload: ``module`` on the execution device for the block, back on the CPU after it."""
        if self._offload_device is None:
            yield
            return
        module.to(self._offload_device)
        try:
            yield
        finally:
            module.to("cpu")

    def enable_vae_tiling(self) -> None:
        """Tile the VAE in every later call that does not pass ``vae_tiling`` (default: decided by memory)."""
        self._vae_tiling_default = True

    def disable_vae_tiling(self) -> None:
        """Never tile the VAE in later calls that do not pass ``vae_tiling``."""
        self._vae_tiling_default = False

    @contextlib.contextmanager
    def _vae_tiling(self, enabled: bool):
        vae = self.model.vae
        before = bool(getattr(vae, "use_tiling", False))
        (vae.enable_tiling if enabled else vae.disable_tiling)()
        try:
            yield
        finally:
            (vae.enable_tiling if before else vae.disable_tiling)()


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure: CUDA's / the accelerator's ``OutOfMemoryError``, or the CPU
    allocator's ``RuntimeError`` ("can't allocate memory", "not enough memory")."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        phrase in text for phrase in ("out of memory", "can't allocate memory", "not enough memory"))


def release_cached_memory(device: torch.device) -> None:
    """Return the caching allocator's free blocks to the device (so the retry has them)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
