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

import logging
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch
from diffusers import DiffusionPipeline

from kernels import check_blur_radius

from .adapter import AdapterInfo, model_gamma_for, pisa_compat_for, protocol_for
from .hub import WeightsUnavailableError
from .lora import ADAPTER_DESCRIPTION
from .onestep import DEFAULT_PROMPT, DEFAULT_TIMESTEP, OneStepBokeh
from .pipeline_files import COMPONENT_NAMES, is_saved_pipeline, save_components
from .pipeline_load import (CTOR_KWARGS, DEFAULT_ADAPTER, DEFAULT_ADAPTER_VARIANT, DEFAULT_BASE_MODEL, LOAD_KWARGS,
                            PROTOCOLS, TILERS, cast_components, load_base_and_adapter, load_saved)
from .pipeline_devices import PipelineDevicesMixin, is_out_of_memory, release_cached_memory
from .pipeline_io import (OUTPUT_TYPES, BokehDiffPipelineOutput, as_batch, as_items, checked_pair, coc_from_focus,
                          disparity_to_tensor, format_images,
                          image_to_tensor, per_item, resolve_focus, seed_from_generator)
from .pisa import DEFAULT_PISA, install_pisa_processors
from .pisa.published import drop_unused_geometry
from .published_tiling import (
    PUBLISHED_TILE_LATENT, published_tile_starts, published_tile_window, published_time_ids,
)
from .sdxl import resolve_dtype
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

logger = logging.getLogger(__name__)


def default_gamma(protocol: str, lora_info: Mapping | None = None) -> float:
    """The model gamma used when none is given: 1 under the published protocol (sRGB straight to the VAE as
    ``2 x - 1``, as the released code does); under the corrected one, the model gamma the adapter records
    (:func:`model_gamma_for`: adapters our training wrote), else ``models.onestep.DEFAULT_GAMMA``."""
    return TILERS.get(protocol, Tiler).model_gamma(AdapterInfo.from_metadata(lora_info))




# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------
class BokehDiffPipeline(PipelineDevicesMixin, DiffusionPipeline):
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
                encoder); set ``False`` to accept it with a warning. An adapter trained here with ``--opt_vae 0``
                (metadata ``vae_trainable: []``) needs none: the base encoder is the one it was trained with.
            protocol: ``"published"``, ``"corrected"`` or ``"auto"`` (:func:`protocol_for` the adapter's
                metadata; logged with the reason, and in ``info["protocol_reason"]``).
            prompt, timestep, gamma, pisa, seed, tile_size, tile_overlap, full_frame_max_px: as the constructor's.
                ``pisa`` ``True`` or ``{}`` (the default) follows the adapter: one trained here with ``--no-pisa``
                (metadata ``pisa.enabled: false``) renders without PISA (``info["pisa_off_reason"]`` says so); a
                non-empty dict installs PISA anyway, with a warning.
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

    def plan(self, height: int, width: int, mode: str = "auto", vae_tiling: bool | str = "auto",
             batch: int = 1) -> RenderPlan:
        """Decide full frame vs tiled (and VAE tiling) for an ``height x width`` image, ``batch`` renders per UNet
        call (the memory estimate scales with it): the tiler's plan.

        Corrected (:meth:`models.tiling.Tiler.plan`), ``mode="auto"``: full frame when the estimated UNet
        activations fit in 80% of the free memory (and ``H * W <= full_frame_max_px`` if set); tiled otherwise.
        ``vae_tiling="auto"``: tile the VAE when its full-resolution pass would not fit. Explicit ``"full"`` /
        ``"tiled"`` / booleans override. Published: :meth:`models.published_tiling.PublishedTiler.plan`.
        """
        if mode not in ("auto", "full", "tiled"):
            raise ValueError(f"mode must be 'auto', 'full' or 'tiled', got {mode!r}.")
        return self.tiler.plan(self.model, height, width, mode, vae_tiling, pisa_segments=self._pisa_segments(),
                               batch=batch)

    # ------------------------------------------------------------------------------------------------------
    # Rendering
    # ------------------------------------------------------------------------------------------------------
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

    def render_variants(self, image, disparity, *, output_type: str = "pt", **kwargs):
        """Several renders of one image (an evaluation set's K x focus grid, refocusing): the image is VAE-encoded
        once, and the renders go through the UNet (and the VAE decoder) ``batch_size`` at a time.

        Keyword arguments are :meth:`iter_variants`'. ``output_type``: ``"pt"`` (default): ``(N, 3, H, W)``
        float32 sRGB in [0, 1] on the model's device; ``"np"``: ``(N, H, W, 3)``; ``"pil"``: a list of images.
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        chunks = [out for _, _, out in self.iter_variants(image, disparity, **kwargs)]
        out = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        return out if output_type == "pt" else format_images(list(out.split(1)), output_type, batched=True)

    @torch.inference_mode()
    def iter_variants(
        self,
        image,
        disparity,
        *,
        K: float | Sequence[float],
        disp_focus: float | Sequence[float] | None = None,
        focus_disparity: float | Sequence[float] | None = None,
        focus_xy: tuple[int, int] | None = None,
        batch_size: int = 1,
        mode: str = "auto",
        vae_tiling: bool | str | None = None,
        seed: int | None = None,
        pisa_hardness: float | None = None,
        tile_batch_size: int = 1,
    ):
        """Render one image at several (K, focus) settings, yielding each UNet batch as it is decoded.

        Args:
            image, disparity: one image and its disparity, in any form :meth:`__call__` takes for one item.
            K: blur strength per render (px of CoC radius per unit disparity): a sequence, or one value for all.
            disp_focus / focus_disparity: in-focus disparity in [0, 1] per render (a sequence, or one value), or
            focus_xy: one ``(x, y)`` pixel to focus on for all renders. ``K`` and the focus broadcast against
                each other (one of them may be a single value).
            batch_size: renders per UNet call, taken in order: ``[0, b)``, ``[b, 2b)``, ...
            mode, vae_tiling, seed, pisa_hardness, tile_batch_size: as :meth:`__call__`'s (tiled mode: each UNet
                call takes ``tile_batch_size`` tiles of every render of the batch).

        Yields:
            ``(start, stop, images)``: renders ``start..stop-1`` as ``(stop - start, 3, H, W)`` float32 sRGB in
            [0, 1] on the model's device. ``self.last_plan`` holds the plan and the timings so far.

        With ``batch_size=1`` each render equals :meth:`__call__`'s bit for bit (the shared encode is the same
        computation). With ``batch_size > 1`` they agree to float rounding only: the CPU and GPU matrix
        libraries pick other kernels for other batch sizes (already the UNet's first linear layer differs in
        the last bit between batch 1 and 6); docs/conventions.md gives the measured bound. Renders are a
        deterministic function of the inputs, ``seed`` and ``batch_size``.
        """
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        images, disparities, batched = as_items(image, disparity)
        disp = as_batch(disparity_to_tensor(disparities[0], "disparity"), 1, "disparity")
        img = as_batch(image_to_tensor(images[0], "image"), 3, "image")
        if batched or len(images) != 1 or img.shape[0] != 1 or disp.shape[0] != 1:
            raise ValueError("render_variants / iter_variants take one image and its disparity (call once per image).")
        focus = resolve_focus(disp, disp_focus, focus_disparity, focus_xy)
        if focus is None:
            raise ValueError("pass a focus: disp_focus / focus_disparity (in [0, 1]) or focus_xy (a pixel).")
        ks = torch.as_tensor(K, dtype=torch.float32).flatten()
        fs = torch.as_tensor(focus, dtype=torch.float32).flatten()
        if len(ks) != len(fs) and 1 not in (len(ks), len(fs)):
            raise ValueError(f"K ({len(ks)} values) and the focus ({len(fs)} values) must have one value per render, "
                             "or one of them a single value.")
        ks, fs = torch.broadcast_tensors(ks, fs)
        img, disp = checked_pair(img, disp, self.device)
        yield from self._iter_run(img, disp, coc_from_focus(disp, ks, fs), mode=mode, vae_tiling=vae_tiling,
                                  seed=seed, pisa_hardness=pisa_hardness, tile_batch_size=tile_batch_size,
                                  batch_size=int(batch_size))

    def _render(self, image, disparity, *, K, disp_focus, coc_px, mode, vae_tiling, seed, pisa_hardness,
                tile_batch_size) -> torch.Tensor:
        """One tensor batch: ``(B, 3, H, W)`` sRGB in [0, 1] -> ``(B, 3, H, W)`` float32 in [0, 1]."""
        image, disparity = checked_pair(image, disparity, self.device)
        if coc_px is None:
            coc_px = coc_from_focus(disparity, K, disp_focus)
        else:
            coc_px = as_batch(coc_px, 1, "coc_px").to(self.device, torch.float32)
            if coc_px.shape != disparity.shape:
                raise ValueError(f"coc_px {tuple(coc_px.shape)} must match disparity {tuple(disparity.shape)}.")
        chunks = [out for _, _, out in self._iter_run(image, disparity, coc_px, mode=mode, vae_tiling=vae_tiling,
                                                      seed=seed, pisa_hardness=pisa_hardness,
                                                      tile_batch_size=tile_batch_size)]
        return chunks[0]

    def _iter_run(self, image, disparity, coc_px, *, mode, vae_tiling, seed, pisa_hardness, tile_batch_size,
                  batch_size: int | None = None):
        """Render ``N`` CoC maps ``coc_px`` ``(N, 1, H, W)`` of ``image`` ``(N or 1, 3, H, W)`` with ``disparity``
        ``(N or 1, 1, H, W)``: the images are encoded once; the UNet and the decoder take ``batch_size`` renders
        at a time (``None``: all at once). Yields ``(start, stop, (stop - start, 3, H, W))`` float32 sRGB in
        [0, 1] per batch."""
        n, (_, _, height, width) = coc_px.shape[0], image.shape
        # The physical renderers' bound on the blur radius: a non-finite or absurd K is refused with the numbers.
        check_blur_radius(float(coc_px.abs().max()), height, width, "BokehDiffPipeline", clamp_hint=False)
        coc_px = self.tiler.prepare_coc(coc_px)  # what PISA receives (published: |CoC|)
        # A per-call seed applies to this call only; later calls without one use the pipeline's seed again.
        wanted = self.seed if seed is None else int(seed)
        if self.pisa_settings is not None and wanted != self._installed_seed:
            self._install_pisa(wanted)
        if vae_tiling is None:
            vae_tiling = "auto" if self._vae_tiling_default is None else self._vae_tiling_default
        step = n if batch_size is None else min(int(batch_size), n)
        plan = self.plan(height, width, mode, vae_tiling, batch=step)
        ph, pw = plan.padded_hw
        image_p, disp_p, coc_p = (pad_to(t, ph, pw) for t in (image, disparity, coc_px))
        sync = torch.cuda.synchronize if image.device.type == "cuda" else (lambda: None)
        timings = dict(encode_s=0.0, unet_s=0.0, decode_s=0.0)
        with self._vae_tiling(plan.vae_tiling):
            t0 = time.perf_counter()
            with self._on_device(self.model.vae):
                z = self.model.encode(image_p)
            sync()
            timings["encode_s"] += time.perf_counter() - t0
            for start in range(0, n, step):
                stop = min(start + step, n)
                one = z.shape[0] == 1 and n > 1  # one image, several renders: the latent is shared
                z_c = z.expand(stop - start, -1, -1, -1).contiguous() if one else z[start:stop]
                d_c = disp_p.expand(stop - start, -1, -1, -1) if disp_p.shape[0] == 1 and n > 1 else disp_p[start:stop]
                t1 = time.perf_counter()
                with self._on_device(self.model.unet):
                    x0, plan = self._predict(z_c, d_c, coc_p[start:stop], plan, mode, pisa_hardness, tile_batch_size)
                sync()
                t2 = time.perf_counter()
                with self._on_device(self.model.vae):
                    out = self.model.decode_each(x0)[..., :height, :width].clamp(0, 1)
                sync()
                timings["unet_s"] += t2 - t1
                timings["decode_s"] += time.perf_counter() - t2
                plan.timings = dict(timings, total_s=sum(timings.values()))
                self.last_plan = plan
                yield start, stop, out

    def _predict(self, z, disp, coc, plan: RenderPlan, mode: str, pisa_hardness, tile_batch_size):
        """x0 for one UNet batch under ``plan``; returns ``(x0, plan)``. ``mode="auto"`` survives a wrong memory
        estimate: a full-frame pass that runs out of memory is retried in tiles (one warning; later batches of
        the call keep the tiles) when the image is larger than one tile."""
        if plan.mode == "full":
            try:
                return self.model.predict_x0(z, disp, coc, pisa_hardness=pisa_hardness), plan
            except Exception as error:  # noqa: BLE001 - only out-of-memory is handled; the rest is re-raised
                if mode != "auto" or not is_out_of_memory(error):
                    raise
                height, width = plan.padded_hw
                tiled = self.plan(height, width, "tiled", plan.vae_tiling, batch=z.shape[0])
                if tiled.n_tiles <= 1:
                    raise
                release_cached_memory(z.device)
                logger.warning("full-frame render of %dx%d px ran out of memory (%s: %s); rendering it in %d tiles "
                               "instead (pass mode='tiled' / --tile_mode tiled to skip the attempt)",
                               width, height, type(error).__name__, str(error).splitlines()[0][:120], tiled.n_tiles)
                tiled.reason = f"auto: tiled after the full-frame pass ran out of memory ({plan.reason})"
                plan = tiled
        x0 = self.tiler.predict_tiled(self.model, z, disp, coc, plan, pisa_hardness, tile_batch_size)
        return x0, plan
