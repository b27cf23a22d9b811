"""The BokehDiff inference pipeline: weights, PISA, and full-frame or tiled one-step rendering.

Wraps :class:`models.onestep.OneStepBokeh` (the one-step forward shared with training; its equation is in
docs/conventions.md, "The one-step model") with the weights (:mod:`models.weights`: an SDXL base and an
adapter, hub ids or local folders, every tensor verified by :mod:`models.lora`), PISA processors on
``down_blocks.1.attentions.0``'s self-attention with a fixed occlusion-jitter seed (a fixed ``seed`` gives
bit-identical renders on one device), and a tiler chosen once from the protocol (README "Protocols"):
``"corrected"`` :class:`models.tiling.Tiler` (padding to 32 px, full frame or raised-cosine tiles by memory),
``"published"`` :class:`models.published_tiling.PublishedTiler` (the released code's inference path).
``from_pretrained(protocol="auto")`` picks one from the adapter's description (:class:`models.adapter.AdapterInfo`)
and logs which and why. It is a ``diffusers.DiffusionPipeline``: ``save_pretrained`` / ``from_pretrained`` of a
saved folder (:mod:`models.pipeline_files`), PIL / numpy / list inputs and ``BokehDiffPipelineOutput``
(:mod:`models.pipeline_io`).

Shapes and units (docs/conventions.md): images ``(B, 3, H, W)`` sRGB in [0, 1]; disparity ``(B, 1, H, W)`` in [0, 1],
1 = near; ``K`` in pixels of blur radius per unit disparity; ``coc_px = K * (disparity - disp_focus)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch
from diffusers import DiffusionPipeline

from .adapter import AdapterInfo, model_gamma_for, pisa_compat_for, protocol_for
from .hub import WeightsUnavailableError
from .lora import ADAPTER_DESCRIPTION
from .onestep import DEFAULT_PROMPT, DEFAULT_TIMESTEP, OneStepBokeh
from .pipeline_files import COMPONENT_NAMES, is_saved_pipeline, save_components
from .pipeline_load import (CTOR_KWARGS, DEFAULT_ADAPTER, DEFAULT_ADAPTER_VARIANT, DEFAULT_BASE_MODEL, LOAD_KWARGS,
                            PROTOCOLS, TILERS, cast_components, load_base_and_adapter, load_saved)
from .pipeline_io import (OUTPUT_TYPES, BokehDiffPipelineOutput, as_batch, as_items, disparity_to_tensor, format_images,
                          image_to_tensor, per_item, resolve_focus, seed_from_generator)
from .pisa import install_pisa_processors
from .pisa.published import drop_unused_geometry
from .published_tiling import (
    PUBLISHED_TILE_LATENT, published_tile_starts, published_tile_window, published_time_ids,
)
from .sdxl import DTYPES, resolve_dtype
from .tiling import (TILE_OVERLAP, TILE_SIZE, RenderPlan, Tiler, blend_window, estimate_bytes, pad_multiple, pad_to,
                     tile_starts)

__all__ = [
    "BokehDiffPipeline",
    "BokehDiffPipelineOutput",
    "cast_components",
    "RenderPlan",
    "WeightsUnavailableError",
    "DEFAULT_BASE_MODEL",
    "DEFAULT_ADAPTER",
    "tile_starts",
    "blend_window",
    "resolve_dtype",
    "pisa_compat_for",
    "model_gamma_for",
    "PROTOCOLS",
    "protocol_for",
    "default_gamma",
    "published_tile_starts",
    "published_tile_window",
    "published_time_ids",
    "PUBLISHED_TILE_LATENT",
]

# Inference hardness of the published model (a near-hard CoC step).
DEFAULT_PISA = dict(hardness=1e7, n_segments=7, n_supersamples=5, occlusion=True)

logger = logging.getLogger(__name__)


def default_gamma(protocol: str, lora_info: Mapping | None = None) -> float:
    """The model gamma used when none is given: 1 under the published protocol (sRGB straight to the VAE as
    ``2 x - 1``, as the released code does); under the corrected one, the model gamma the adapter records
    (:func:`model_gamma_for`: adapters our training wrote), else ``models.onestep.DEFAULT_GAMMA``."""
    return TILERS.get(protocol, Tiler).model_gamma(AdapterInfo.from_metadata(lora_info))




# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------
class BokehDiffPipeline(DiffusionPipeline):
    """One-step neural lens blur, as a diffusers pipeline.

    Build with :meth:`from_pretrained` (an SDXL base + an adapter, or a folder this class's
    :meth:`save_pretrained` wrote) or :meth:`from_components` (already built SDXL components, e.g.
    ``models.tiny.build_tiny_sdxl()``). Call with an image and its disparity::

        pipe = BokehDiffPipeline.from_pretrained("path/to/RealVisXL_V5.0", adapter="path/to/bokehdiff")
        pipe.to("cuda", torch.bfloat16)                       # the VAE stays float32 (force_upcast)
        out = pipe(pil_image, disparity_array, K=20, focus_xy=(412, 300))
        out.images[0].save("bokeh.png")
        bokeh = pipe(image, disparity, K=20, disp_focus=0.6)   # tensors in: (B, 3, H, W) sRGB in [0, 1] out

    Components (registered, saved by :meth:`save_pretrained`): ``unet`` (with the LoRA; PISA processors are
    reinstalled from the configuration on load), ``vae``, ``text_encoder``, ``text_encoder_2``, ``tokenizer``,
    ``tokenizer_2``, ``scheduler``. The text encoders are used once, for the fixed prompt's embeddings.

    Args:
        unet..scheduler: the SDXL components. For older code, ``unet`` may instead be a built
            :class:`models.onestep.OneStepBokeh` (the other components then come from it or stay ``None``;
            such a pipeline renders but cannot :meth:`save_pretrained` without text encoders).
        prompt, timestep: the one-step model's (:class:`OneStepBokeh`).
        gamma: model gamma; ``None`` takes the protocol's default (:func:`default_gamma`).
        protocol: ``"corrected"`` (default: this repository's rendering) or ``"published"`` (the released
            code's inference path, README "Protocols"); chooses :attr:`tiler` once (:data:`TILERS`) and the
            x0 clamp (published: from ``scheduler``'s config, :func:`models.onestep.ddpm_x0_clip`).
        pisa: ``True`` installs PISA with :data:`DEFAULT_PISA`; a dict overrides those settings (keys of
            ``models.pisa.PISAAttnProcessor``, plus ``patterns``); ``False`` leaves the UNet's processors as
            they are (physics off unless processors were installed by the caller).
        seed: occlusion-jitter seed of PISA (fixed: renders are bit-reproducible on one device).
        tile_size: tile side in image pixels for tiled mode (multiple of 32; SDXL's native 1024 by default).
        tile_overlap: overlap between tiles in image pixels (should exceed the largest CoC radius).
        full_frame_max_px: optional cap on H * W for full-frame rendering in ``mode="auto"`` (else memory).
    """

    _optional_components = ["vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"]

    def __init__(
        self,
        unet,
        vae=None,
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
        scheduler=None,
        *,
        prompt: str = DEFAULT_PROMPT,
        timestep: int = DEFAULT_TIMESTEP,
        gamma: float | None = None,
        protocol: str = "corrected",
        pisa: bool | Mapping = True,
        seed: int = 0,
        tile_size: int = TILE_SIZE,
        tile_overlap: int = TILE_OVERLAP,
        full_frame_max_px: int | None = None,
    ):
        super().__init__()
        if protocol not in TILERS:
            raise ValueError(
                f"protocol must be 'published' or 'corrected' here, got {protocol!r} ('auto' is resolved from the "
                "adapter's metadata by from_pretrained)."
            )
        tiler_cls = TILERS[protocol]
        if isinstance(unet, OneStepBokeh):  # a built model (older call form): its gamma and clamp are kept
            if vae is not None:
                raise TypeError("pass either a built OneStepBokeh alone or the SDXL components, not both.")
            model = unet
        else:
            if any(c is None for c in (vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler)):
                raise ValueError("BokehDiffPipeline needs unet, vae, text_encoder, text_encoder_2, tokenizer, "
                                 "tokenizer_2 and scheduler (an SDXL base, e.g. models.tiny.build_tiny_sdxl()).")
            model = OneStepBokeh.from_components(
                unet, vae, scheduler, text_encoder, text_encoder_2, tokenizer, tokenizer_2, prompt=prompt,
                timestep=timestep, gamma=tiler_cls.model_gamma(AdapterInfo()) if gamma is None else gamma,
                x0_clip=tiler_cls.x0_clip(scheduler),
            )
        self.register_modules(unet=model.unet, vae=model.vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                              tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=scheduler)
        self.tiler: Tiler = tiler_cls(tile_size, tile_overlap, full_frame_max_px)
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.pisa_settings: dict | None = None
        self._installed_seed: int | None = None
        self._offload_device: torch.device | None = None
        self._vae_tiling_default: bool | None = None
        if pisa is not False:  # True or a (possibly empty) mapping of overrides
            overrides = dict(pisa) if isinstance(pisa, Mapping) else {}
            self.pisa_settings = drop_unused_geometry({**DEFAULT_PISA, **self.tiler.pisa_defaults, **overrides})
            self._install_pisa(int(seed))
        self.register_to_config(prompt=prompt, timestep=model.timestep, gamma=model.gamma, protocol=protocol,
                                pisa=False if self.pisa_settings is None else dict(self.pisa_settings))
        self.register_to_config(seed=int(seed), tile_size=int(tile_size), tile_overlap=int(tile_overlap),
                                full_frame_max_px=full_frame_max_px)
        self.info: dict = {}
        self.last_plan: RenderPlan | None = None

    @property
    def protocol(self) -> str:
        """``"corrected"`` or ``"published"``: the protocol of :attr:`tiler`."""
        return self.tiler.protocol

    # The render settings live in the config (saved in model_index.json); the tiler reads its geometry there.
    @property
    def seed(self) -> int:
        """PISA's occlusion-jitter seed for calls without ``seed=`` / ``generator=``."""
        return int(self.config.seed)

    @seed.setter
    def seed(self, value: int) -> None:
        self.register_to_config(seed=int(value))

    @property
    def tile_size(self) -> int:
        """Tile side in image px for tiled mode."""
        return self.tiler.tile_size

    @tile_size.setter
    def tile_size(self, value: int) -> None:
        self.tiler.tile_size = int(value)
        self.register_to_config(tile_size=int(value))

    @property
    def tile_overlap(self) -> int:
        """Overlap between tiles in image px."""
        return self.tiler.tile_overlap

    @tile_overlap.setter
    def tile_overlap(self, value: int) -> None:
        self.tiler.tile_overlap = int(value)
        self.register_to_config(tile_overlap=int(value))

    @property
    def full_frame_max_px(self) -> int | None:
        """Optional cap on ``H * W`` for full-frame rendering in ``mode="auto"``."""
        return self.tiler.full_frame_max_px

    @full_frame_max_px.setter
    def full_frame_max_px(self, value: int | None) -> None:
        self.tiler.full_frame_max_px = value
        self.register_to_config(full_frame_max_px=value)

    # ------------------------------------------------------------------------------------------------------
    # Construction
    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_components(cls, unet, vae, scheduler, text_encoder, text_encoder_2, tokenizer, tokenizer_2,
                        **kwargs) -> "BokehDiffPipeline":
        """From SDXL components (keyword arguments as :class:`BokehDiffPipeline`'s). ``gamma=None`` takes the
        protocol's default (:func:`default_gamma`); the x0 clamp is the protocol's."""
        if kwargs.get("protocol", "corrected") not in TILERS:
            raise ValueError(f"protocol must be 'published' or 'corrected' for from_components, got "
                             f"{kwargs['protocol']!r}.")
        return cls(unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        base: str | os.PathLike = DEFAULT_BASE_MODEL,
        adapter: str | os.PathLike | None = DEFAULT_ADAPTER,
        **kwargs,
    ) -> "BokehDiffPipeline":
        """Load a pipeline: an SDXL base + the BokehDiff adapter (every tensor verified), or a folder written by
        :meth:`save_pretrained` (``adapter`` is then ignored unless given explicitly, which is an error).

        Args:
            base: hub id or local diffusers SDXL folder, or a saved BokehDiffPipeline folder.
            adapter: hub id (published: ``zcx65535/bokehdiff``), a local folder (``pytorch_lora_weights.safetensors``
                and ``vae.ckpt``, optionally under ``adapter_variant/``), a LoRA file, or ``None`` (base UNet
                only: for tests and ablations; a warning says so).
            adapter_variant: sub-folder of the adapter searched first (``"small"``: the published repo).
            vae_weights: explicit partial VAE file (overrides the one found next to the adapter).
            dtype / torch_dtype: UNet precision (``"fp32"``, ``"bf16"``, ``"fp16"`` or a ``torch.dtype``); the VAE
                follows except where its config says ``force_upcast`` (SDXL's: it overflows in fp16), where it
                stays float32. Use :meth:`to` to move to a device.
            revision, base_variant: hub revision and weight variant of the base.
            require_vae_weights: an adapter without ``vae.ckpt`` is an error (the paper fine-tunes the VAE
                encoder); set ``False`` to accept it with a warning.
            protocol: ``"published"``, ``"corrected"`` or ``"auto"`` (:func:`protocol_for` the adapter's
                metadata; logged with the reason, and in ``info["protocol_reason"]``).
            prompt, timestep, gamma, pisa, seed, tile_size, tile_overlap, full_frame_max_px: as the constructor's.
                ``gamma`` None or absent: :func:`default_gamma` (published: 1; corrected: the adapter's
                recorded model gamma, else 2.2). ``info["gamma"]`` is the gamma in use.

        Raises:
            TypeError: an unknown keyword (before any file is read).
            WeightsUnavailableError: a hub id that is neither cached nor reachable (one message, with remedies).
            WeightLoadingError: the adapter does not fit the base model (lists missing/unexpected tensors).
        """
        t0 = time.perf_counter()
        unknown = sorted(set(kwargs) - LOAD_KWARGS - CTOR_KWARGS)
        if unknown:
            raise TypeError(f"BokehDiffPipeline.from_pretrained got unknown keyword argument(s) {unknown}; it takes "
                            f"{sorted(LOAD_KWARGS | CTOR_KWARGS)}.")
        dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
        if dtype is not None and torch_dtype is not None and resolve_dtype(dtype) != resolve_dtype(torch_dtype):
            raise ValueError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass one of them.")
        dtype = resolve_dtype(torch_dtype if torch_dtype is not None else dtype)
        if is_saved_pipeline(base, cls.__name__):
            if adapter not in (DEFAULT_ADAPTER, None):
                raise ValueError(f"'{base}' is a saved {cls.__name__} (its LoRA is inside); do not pass adapter=.")
            components, ctor, info = load_saved(Path(base), kwargs)
        else:
            components, ctor, info = load_base_and_adapter(base, adapter, dtype=dtype, **kwargs)
            if "protocol_reason" in info:
                logger.info("%s", info["protocol_reason"])
        pipe = cls.from_components(**components, **ctor)
        pipe.cast_precision(dtype)
        info.update(protocol=pipe.protocol, gamma=pipe.model.gamma, load_s=time.perf_counter() - t0)
        pipe.info = info
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write the pipeline as a diffusers folder (:mod:`models.pipeline_files`: ``model_index.json`` with the
        render configuration, the components as safetensors, the LoRA beside the base UNet) that
        :meth:`from_pretrained` reloads offline into bit-identical renders. diffusers' keyword arguments
        (``safe_serialization``, ``push_to_hub``, ...) are not supported: a keyword is refused by name."""
        if kwargs:
            raise TypeError(f"BokehDiffPipeline.save_pretrained takes only save_directory; got {sorted(kwargs)}.")
        if self.text_encoder is None or self.scheduler is None:
            raise ValueError("this pipeline was built from a OneStepBokeh without its text encoders and scheduler, "
                             "so it cannot be saved; build it with from_components(...) or from_pretrained(...).")
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_config(folder)
        loaded = self.info.get("lora") or {}  # the adapter's own description travels with it (models.lora.load_lora)
        described = {k: loaded[k] for k in ADAPTER_DESCRIPTION if k in loaded}
        save_components(folder, {name: getattr(self, name) for name in COMPONENT_NAMES}, described)

    def _install_pisa(self, seed: int) -> None:
        settings = dict(self.pisa_settings)
        patterns = settings.pop("patterns", ("down_blocks.1.attentions.0.*.attn1",))
        install_pisa_processors(self.model.unet, patterns=tuple(patterns), seed=int(seed), **settings)
        self._installed_seed = int(seed)

    # ------------------------------------------------------------------------------------------------------
    # Devices and precision
    # ------------------------------------------------------------------------------------------------------
    def to(self, *args, **kwargs) -> "BokehDiffPipeline":
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

    # ------------------------------------------------------------------------------------------------------
    # Planning
    # ------------------------------------------------------------------------------------------------------
    @property
    def pad_multiple(self) -> int:
        """The corrected protocol pads image sizes to this: the VAE factor times the UNet's total downsampling."""
        return pad_multiple(self.model)

    def estimate_bytes(self, height: int, width: int) -> tuple[int, int]:
        """Rough peak activation bytes of a full-frame ``(unet, vae)`` pass at ``height x width`` image px, PISA's
        sparse working set included when PISA is installed (:func:`models.tiling.estimate_bytes`)."""
        return estimate_bytes(self.model, height, width, self._pisa_segments())

    def _pisa_segments(self) -> int | None:
        return None if self.pisa_settings is None else int(self.pisa_settings.get("n_segments", 7))

    def plan(self, height: int, width: int, mode: str = "auto", vae_tiling: bool | str = "auto") -> RenderPlan:
        """Decide full frame vs tiled (and VAE tiling) for an ``height x width`` image: the tiler's plan.

        Corrected (:meth:`models.tiling.Tiler.plan`), ``mode="auto"``: full frame when the estimated UNet
        activations fit in 80% of the free memory (and ``H * W <= full_frame_max_px`` if set); tiled otherwise.
        ``vae_tiling="auto"``: tile the VAE when its full-resolution pass would not fit. Explicit ``"full"`` /
        ``"tiled"`` / booleans override. Published: :meth:`models.published_tiling.PublishedTiler.plan`.
        """
        if mode not in ("auto", "full", "tiled"):
            raise ValueError(f"mode must be 'auto', 'full' or 'tiled', got {mode!r}.")
        return self.tiler.plan(self.model, height, width, mode, vae_tiling, pisa_segments=self._pisa_segments())

    # ------------------------------------------------------------------------------------------------------
    # Rendering
    # ------------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _vae_tiling(self, enabled: bool):
        vae = self.model.vae
        before = bool(getattr(vae, "use_tiling", False))
        (vae.enable_tiling if enabled else vae.disable_tiling)()
        try:
            yield
        finally:
            (vae.enable_tiling if before else vae.disable_tiling)()

    @torch.inference_mode()
    def __call__(
        self,
        image,
        disparity,
        *,
        K: float | torch.Tensor | Sequence | None = None,
        disp_focus: float | torch.Tensor | Sequence | None = None,
        focus_disparity: float | Sequence | None = None,
        focus_xy: tuple[int, int] | Sequence | None = None,
        coc_px: torch.Tensor | Sequence | None = None,
        mode: str = "auto",
        vae_tiling: bool | str | None = None,
        seed: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        pisa_hardness: float | None = None,
        tile_batch_size: int = 1,
        output_type: str | None = None,
        return_dict: bool | None = None,
    ):
        """Render lens blur.

        Args:
            image: a ``PIL.Image``, a numpy ``(H, W, 3)`` array (uint8, uint16 or float in [0, 1]), a tensor
                ``(B, 3, H, W)`` / ``(3, H, W)`` sRGB in [0, 1] (any device/dtype), or a list of these (each item
                its own size, rendered on its own).
            disparity: the same kinds, ``(H, W)`` / ``(1, H, W)`` / ``(B, 1, H, W)`` in [0, 1], 1 = near (PIL:
                mode ``L`` / ``I;16`` / ``F``); a list when ``image`` is one.
            K: blur strength, px of CoC radius per unit disparity (scalar, ``(B,)``, or one per list item);
                ``coc_px = K * (disparity - focus)``.
            disp_focus / focus_disparity: in-focus disparity in [0, 1] (two names for one thing), or
            focus_xy: ``(x, y)`` pixel (column, row) to focus on: the median disparity in a 5 x 5 box there.
                Each may be one value per list item.
            coc_px: alternatively the signed CoC map ``(B, 1, H, W)`` in pixels directly (tensors).
            mode: ``"auto"`` | ``"full"`` | ``"tiled"`` (see :meth:`plan`); ``vae_tiling``: ``"auto"`` | bool
                (``None``: as :meth:`enable_vae_tiling` / :meth:`disable_vae_tiling` set it, else ``"auto"``).
            seed: PISA occlusion-jitter seed for this call (default: the pipeline's), or
            generator: a ``torch.Generator`` (or one per list item) the seed is drawn from (it advances; the
                global RNG is untouched).
            pisa_hardness: overrides PISA's hardness for this call.
            tile_batch_size: tiles per UNet call in tiled mode (more is faster on a large GPU).
            output_type: ``"pil"``, ``"np"`` or ``"pt"`` (see :class:`BokehDiffPipelineOutput`).
            return_dict: ``True``: a :class:`BokehDiffPipelineOutput`; ``False``: the tuple
                ``(images, plans, focus_disparity)``.

        Returns:
            With neither ``output_type`` nor ``return_dict`` given and tensor inputs (the original call form),
            the ``(B, 3, H, W)`` float32 sRGB tensor in [0, 1] on the model's device, as before. Otherwise
            ``output_type`` defaults to ``"pil"`` and ``return_dict`` to ``True``. ``self.last_plan`` records
            the last plan and its stage timings (seconds).
        """
        images, disparities, batched = as_items(image, disparity)
        legacy = output_type is None and return_dict is None and not batched and isinstance(image, torch.Tensor)
        output_type = "pil" if output_type is None else output_type
        if output_type not in OUTPUT_TYPES:  # checked before any rendering
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if seed is not None and generator is not None:
            raise ValueError("pass seed= or generator=, not both (the generator draws the PISA seed).")
        n = len(images)
        shared_xy = focus_xy is not None and len(focus_xy) == 2 and all(isinstance(v, (int, float)) for v in focus_xy)
        focus_xys = [focus_xy] * n if shared_xy or focus_xy is None else per_item(focus_xy, n, "focus_xy")
        Ks, focuses, focus_values, cocs = (per_item(v, n, name) for v, name in (
            (K, "K"), (disp_focus, "disp_focus"), (focus_disparity, "focus_disparity"), (coc_px, "coc_px")))
        generators = per_item(generator, n, "generator") if isinstance(generator, (list, tuple)) else [generator] * n
        rendered, plans, used_focus = [], [], []
        items = range(n)
        for i in (self.progress_bar(items) if n > 1 else items):
            disp_i = disparity_to_tensor(disparities[i], "disparity")
            focus = resolve_focus(disp_i, focuses[i], focus_values[i], focus_xys[i])
            seed_i = seed_from_generator(generators[i]) if generators[i] is not None else seed
            rendered.append(self._render(image_to_tensor(images[i], "image"), disp_i, K=Ks[i], disp_focus=focus,
                                         coc_px=cocs[i], mode=mode, vae_tiling=vae_tiling, seed=seed_i,
                                         pisa_hardness=pisa_hardness, tile_batch_size=tile_batch_size))
            plans.append(self.last_plan)
            used_focus.append(None if focus is None or isinstance(focus, torch.Tensor) else float(focus))
        if legacy:
            return rendered[0]
        images_out = format_images(rendered, output_type, batched)
        if return_dict is False:
            return images_out, plans, used_focus
        return BokehDiffPipelineOutput(images=images_out, plans=plans, focus_disparity=used_focus)

    def _render(self, image, disparity, *, K, disp_focus, coc_px, mode, vae_tiling, seed, pisa_hardness,
                tile_batch_size) -> torch.Tensor:
        """One tensor batch: ``(B, 3, H, W)`` sRGB in [0, 1] -> ``(B, 3, H, W)`` float32 in [0, 1]."""
        image = as_batch(image, 3, "image")
        disparity = as_batch(disparity, 1, "disparity")
        if disparity.shape[0] == 1 and image.shape[0] > 1:
            disparity = disparity.expand(image.shape[0], -1, -1, -1)
        if disparity.shape[0] != image.shape[0] or disparity.shape[-2:] != image.shape[-2:]:
            raise ValueError(
                f"disparity {tuple(disparity.shape)} must match the image {tuple(image.shape)} in batch and size "
                f"(resize it to the image first, e.g. data.io.read_disparity(..., size=...))."
            )
        device = self.device
        image, disparity = image.to(device, torch.float32), disparity.to(device, torch.float32)
        batch, _, height, width = image.shape
        if coc_px is None:
            if K is None or disp_focus is None:
                raise ValueError("pass either coc_px, or K (blur strength, px) and a focus: disp_focus / "
                                 "focus_disparity (in [0, 1]) or focus_xy (a pixel).")
            k = torch.as_tensor(K, dtype=torch.float32, device=device).reshape(-1, 1, 1, 1)
            focus = torch.as_tensor(disp_focus, dtype=torch.float32, device=device).reshape(-1, 1, 1, 1)
            if ((focus < 0) | (focus > 1)).any():
                raise ValueError(f"disp_focus must be in [0, 1] (disparity units), got {focus.flatten().tolist()}.")
            coc_px = k * (disparity - focus)
        else:
            coc_px = as_batch(coc_px, 1, "coc_px").to(device, torch.float32)
            if coc_px.shape != disparity.shape:
                raise ValueError(f"coc_px {tuple(coc_px.shape)} must match disparity {tuple(disparity.shape)}.")
        coc_px = self.tiler.prepare_coc(coc_px)  # what PISA receives (published: |CoC|)

        # A per-call seed applies to this call only; later calls without one use the pipeline's seed again.
        wanted = self.seed if seed is None else int(seed)
        if self.pisa_settings is not None and wanted != self._installed_seed:
            self._install_pisa(wanted)
        if vae_tiling is None:
            vae_tiling = "auto" if self._vae_tiling_default is None else self._vae_tiling_default
        plan = self.plan(height, width, mode, vae_tiling)
        ph, pw = plan.padded_hw
        image_p, disp_p, coc_p = (pad_to(t, ph, pw) for t in (image, disparity, coc_px))
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        t0 = time.perf_counter()
        with self._vae_tiling(plan.vae_tiling):
            with self._on_device(self.model.vae):
                z = self.model.encode(image_p)
            sync()
            t1 = time.perf_counter()
            with self._on_device(self.model.unet):
                if plan.mode == "full":
                    x0 = self.model.predict_x0(z, disp_p, coc_p, pisa_hardness=pisa_hardness)
                else:
                    x0 = self.tiler.predict_tiled(self.model, z, disp_p, coc_p, plan, pisa_hardness, tile_batch_size)
            sync()
            t2 = time.perf_counter()
            with self._on_device(self.model.vae):
                out = self.model.decode(x0)
            sync()
            t3 = time.perf_counter()
        plan.timings = dict(encode_s=t1 - t0, unet_s=t2 - t1, decode_s=t3 - t2, total_s=t3 - t0)
        self.last_plan = plan
        return out[..., :height, :width].clamp(0, 1)
