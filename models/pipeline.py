"""The BokehDiff inference pipeline: weights, PISA, and full-frame or tiled one-step rendering.

Wraps :class:`models.onestep.OneStepBokeh` (the one-step forward shared with training; its equation is in
docs/conventions.md, "The one-step model") with the weights (:mod:`models.weights`: an SDXL base and an
adapter, hub ids or local folders, every tensor verified by :mod:`models.lora`), PISA processors on
``down_blocks.1.attentions.0``'s self-attention with a fixed occlusion-jitter seed (a fixed ``seed`` gives
bit-identical renders on one device), and a tiler chosen once from the protocol (README "Protocols"):
``"corrected"`` :class:`models.tiling.Tiler` (padding to 32 px, full frame or raised-cosine tiles by memory),
``"published"`` :class:`models.published_tiling.PublishedTiler` (the released code's inference path).
``from_pretrained(protocol="auto")`` picks one from the adapter's description (:class:`models.adapter.AdapterInfo`).

Shapes and units (docs/conventions.md): images ``(B, 3, H, W)`` sRGB in [0, 1]; disparity ``(B, 1, H, W)`` in [0, 1],
1 = near; ``K`` in pixels of blur radius per unit disparity; ``coc_px = K * (disparity - disp_focus)``.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path
from typing import Mapping

import torch

from .adapter import AdapterInfo, model_gamma_for, pisa_compat_for, protocol_for
from .hub import WeightsUnavailableError
from .lora import VAE_WEIGHT_NAME, load_lora, load_vae_partial
from .onestep import DEFAULT_PROMPT, DEFAULT_TIMESTEP, OneStepBokeh
from .pisa import install_pisa_processors
from .pisa.published import drop_unused_geometry
from .published_tiling import (
    PUBLISHED_TILE_LATENT, PublishedTiler, published_tile_starts, published_tile_window, published_time_ids,
)
from .sdxl import cast_unet, resolve_dtype
from .tiling import (TILE_OVERLAP, TILE_SIZE, RenderPlan, Tiler, blend_window, estimate_bytes, pad_multiple, pad_to,
                     tile_starts)
from .weights import adapter_files, is_local, load_base

__all__ = [
    "BokehDiffPipeline",
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

DEFAULT_BASE_MODEL = "SG161222/RealVisXL_V5.0"
DEFAULT_ADAPTER = "zcx65535/bokehdiff"
DEFAULT_ADAPTER_VARIANT = "small"
# Inference hardness of the published model (a near-hard CoC step).
DEFAULT_PISA = dict(hardness=1e7, n_segments=7, n_supersamples=5, occlusion=True)

# The tiler of each protocol; "auto" is resolved from the adapter by from_pretrained.
TILERS: dict[str, type[Tiler]] = {"published": PublishedTiler, "corrected": Tiler}
PROTOCOLS = ("published", "corrected", "auto")


def default_gamma(protocol: str, lora_info: Mapping | None = None) -> float:
    """The model gamma used when none is given: 1 under the published protocol (sRGB straight to the VAE as
    ``2 x - 1``, as the released code does); under the corrected one, the model gamma the adapter records
    (:func:`model_gamma_for`: adapters our training wrote), else ``models.onestep.DEFAULT_GAMMA``."""
    return TILERS.get(protocol, Tiler).model_gamma(AdapterInfo.from_metadata(lora_info))


# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------
class BokehDiffPipeline:
    """One-step neural lens blur.

    Build with :meth:`from_pretrained` (base model + adapter) or :meth:`from_components` (already built SDXL
    components, e.g. ``models.tiny.build_tiny_sdxl()``). Call with an image and its disparity::

        pipe = BokehDiffPipeline.from_pretrained("path/to/RealVisXL_V5.0", adapter="path/to/bokehdiff")
        pipe.to("cuda", dtype="bf16")
        bokeh = pipe(image, disparity, K=20, disp_focus=0.6)   # (B, 3, H, W) sRGB in [0, 1]

    Args:
        model: the one-step model (UNet with LoRA, VAE, cached prompt embeddings).
        pisa: ``True`` installs PISA with :data:`DEFAULT_PISA`; a dict overrides those settings (keys of
            ``models.pisa.PISAAttnProcessor``, plus ``patterns``); ``False`` leaves the UNet's processors as
            they are (physics off unless processors were installed by the caller).
        seed: occlusion-jitter seed of PISA (fixed: renders are bit-reproducible on one device).
        tile_size: tile side in image pixels for tiled mode (multiple of 32; SDXL's native 1024 by default).
        tile_overlap: overlap between tiles in image pixels (should exceed the largest CoC radius).
        full_frame_max_px: optional cap on H * W for full-frame rendering in ``mode="auto"`` (else memory).
        protocol: ``"corrected"`` (default: this repository's rendering) or ``"published"`` (the released
            code's inference path, README "Protocols"); chooses :attr:`tiler` once (:data:`TILERS`). The
            constructors also set the protocol's gamma and x0 clamp on ``model``.
    """

    def __init__(
        self,
        model: OneStepBokeh,
        *,
        pisa: bool | Mapping = True,
        seed: int = 0,
        tile_size: int = TILE_SIZE,
        tile_overlap: int = TILE_OVERLAP,
        full_frame_max_px: int | None = None,
        protocol: str = "corrected",
    ):
        if protocol not in TILERS:
            raise ValueError(
                f"protocol must be 'published' or 'corrected' here, got {protocol!r} ('auto' is resolved from the "
                "adapter's metadata by from_pretrained)."
            )
        self.tiler: Tiler = TILERS[protocol](tile_size, tile_overlap, full_frame_max_px)
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.pisa_settings: dict | None = None
        self._installed_seed: int | None = None
        self.seed = int(seed)
        if pisa is not False:  # True or a (possibly empty) mapping of overrides
            overrides = dict(pisa) if isinstance(pisa, Mapping) else {}
            self.pisa_settings = drop_unused_geometry({**DEFAULT_PISA, **self.tiler.pisa_defaults, **overrides})
            self._install_pisa(self.seed)
        self.info: dict = {}
        self.last_plan: RenderPlan | None = None

    @property
    def protocol(self) -> str:
        """``"corrected"`` or ``"published"``: the protocol of :attr:`tiler`."""
        return self.tiler.protocol

    # The tile geometry lives in the tiler (the published one ignores it); these read and set it there.
    @property
    def tile_size(self) -> int:
        """Tile side in image px for tiled mode."""
        return self.tiler.tile_size

    @tile_size.setter
    def tile_size(self, value: int) -> None:
        self.tiler.tile_size = int(value)

    @property
    def tile_overlap(self) -> int:
        """Overlap between tiles in image px."""
        return self.tiler.tile_overlap

    @tile_overlap.setter
    def tile_overlap(self, value: int) -> None:
        self.tiler.tile_overlap = int(value)

    @property
    def full_frame_max_px(self) -> int | None:
        """Optional cap on ``H * W`` for full-frame rendering in ``mode="auto"``."""
        return self.tiler.full_frame_max_px

    @full_frame_max_px.setter
    def full_frame_max_px(self, value: int | None) -> None:
        self.tiler.full_frame_max_px = value

    # ------------------------------------------------------------------------------------------------------
    # Construction
    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_components(
        cls,
        unet,
        vae,
        scheduler,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        *,
        prompt: str = DEFAULT_PROMPT,
        timestep: int = DEFAULT_TIMESTEP,
        gamma: float | None = None,
        protocol: str = "corrected",
        **kwargs,
    ) -> "BokehDiffPipeline":
        """From SDXL components; the text encoders are used once for the prompt embeddings and not kept.

        ``gamma=None`` takes the protocol's default (:func:`default_gamma`); the x0 clamp is the protocol's
        (published: from ``scheduler``'s config, :func:`models.onestep.ddpm_x0_clip`)."""
        if protocol not in TILERS:
            raise ValueError(f"protocol must be 'published' or 'corrected' for from_components, got {protocol!r}.")
        tiler = TILERS[protocol]
        model = OneStepBokeh.from_components(
            unet, vae, scheduler, text_encoder, text_encoder_2, tokenizer, tokenizer_2,
            prompt=prompt, timestep=timestep, gamma=tiler.model_gamma(AdapterInfo()) if gamma is None else gamma,
            x0_clip=tiler.x0_clip(scheduler),
        )
        return cls(model, protocol=protocol, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        base: str | os.PathLike = DEFAULT_BASE_MODEL,
        adapter: str | os.PathLike | None = DEFAULT_ADAPTER,
        *,
        adapter_variant: str | None = DEFAULT_ADAPTER_VARIANT,
        vae_weights: str | os.PathLike | None = None,
        dtype: str | torch.dtype | None = None,
        revision: str | None = None,
        base_variant: str | None = None,
        require_vae_weights: bool = True,
        protocol: str = "auto",
        **kwargs,
    ) -> "BokehDiffPipeline":
        """Load the base SDXL model and the BokehDiff adapter, verify every tensor, build the pipeline.

        Args:
            base: hub id or local diffusers SDXL folder.
            adapter: hub id (published: ``zcx65535/bokehdiff``), a local folder (``pytorch_lora_weights.safetensors``
                and ``vae.ckpt``, optionally under ``adapter_variant/``), a LoRA file, or ``None`` (base UNet
                only: for tests and ablations; a warning says so).
            vae_weights: explicit partial VAE file (overrides the one found next to the adapter).
            dtype: UNet precision (``"fp32"``, ``"bf16"``, ``"fp16"``); the VAE stays float32 (the SDXL VAE
                overflows in fp16). Use :meth:`to` to move to a device.
            require_vae_weights: an adapter without ``vae.ckpt`` is an error (the paper fine-tunes the VAE
                encoder); set ``False`` to accept it with a warning.
            protocol: ``"published"``, ``"corrected"`` or ``"auto"`` (:func:`protocol_for` the adapter's
                metadata); recorded in ``info["protocol"]``. ``gamma`` (in ``kwargs``) defaults per protocol.
            **kwargs: ``prompt``, ``timestep``, ``gamma`` (see :class:`OneStepBokeh`) and the constructor's.
                ``gamma`` None or absent: :func:`default_gamma` (published: 1; corrected: the adapter's recorded
                model gamma, else 2.2). ``info["gamma"]`` is the gamma in use.

        Raises:
            WeightsUnavailableError: a hub id that is neither cached nor reachable (one message, with remedies).
            WeightLoadingError: the adapter does not fit the base model (lists missing/unexpected tensors).
        """
        t0 = time.perf_counter()
        unet_dtype = resolve_dtype(dtype)
        lora_file = vae_file = None
        if adapter is not None:  # resolve the adapter first: a missing adapter fails before the big download
            lora_file, vae_file = adapter_files(adapter, adapter_variant, revision if is_local(adapter) else None)
        if vae_weights is not None:
            vae_file = Path(vae_weights)
        components = load_base(base, revision, base_variant)
        info: dict = {"base": str(base), "adapter": None if adapter is None else str(adapter)}
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
        if lora_file is not None:
            info["lora"] = load_lora(components["unet"], lora_file)
        described = AdapterInfo.from_metadata(info.get("lora"))  # the adapter's description, parsed once
        if protocol == "auto":
            protocol = described.protocol
        tiler = TILERS[protocol]
        info["protocol"] = protocol
        if kwargs.get("gamma") is None:
            kwargs["gamma"] = tiler.model_gamma(described)
        if lora_file is not None:
            pisa = kwargs.get("pisa", True)
            if pisa is not False:
                settings = dict(pisa) if isinstance(pisa, Mapping) else {}
                settings.setdefault("compat", tiler.pisa_compat(described))
                kwargs["pisa"] = settings
                info["pisa_compat"] = settings["compat"]
            if vae_file is not None:
                info["vae"] = load_vae_partial(components["vae"], vae_file)
            elif require_vae_weights:
                raise FileNotFoundError(
                    f"adapter '{adapter}' has no {VAE_WEIGHT_NAME} (the fine-tuned VAE encoder). Pass vae_weights=... "
                    f"(--vae_weights), or require_vae_weights=False to keep the base VAE encoder."
                )
            else:
                warnings.warn(f"adapter '{adapter}' has no {VAE_WEIGHT_NAME}: the VAE encoder keeps its base weights.")
        else:
            warnings.warn("no adapter given: rendering with the base UNet (no BokehDiff LoRA); outputs are not bokeh.")
        cast_unet(components["unet"], unet_dtype)
        ctor = {k: kwargs.pop(k) for k in ("prompt", "timestep", "gamma") if k in kwargs}
        pipe = cls.from_components(**components, **ctor, protocol=protocol, **kwargs)
        info["gamma"] = pipe.model.gamma
        info["load_s"] = time.perf_counter() - t0
        pipe.info = info
        return pipe

    def _install_pisa(self, seed: int) -> None:
        settings = dict(self.pisa_settings)
        patterns = settings.pop("patterns", ("down_blocks.1.attentions.0.*.attn1",))
        install_pisa_processors(self.model.unet, patterns=tuple(patterns), seed=int(seed), **settings)
        self._installed_seed = int(seed)

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> "BokehDiffPipeline":
        """Move to ``device``; ``dtype`` sets the UNet's precision (the VAE stays float32)."""
        if device is not None:
            self.model.to(device)
        if dtype is not None:
            cast_unet(self.model.unet, resolve_dtype(dtype))
        return self

    @property
    def device(self) -> torch.device:
        return self.model.prompt_embeds.device

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
    @staticmethod
    def _as_batch(x: torch.Tensor, channels: int, name: str) -> torch.Tensor:
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
        image: torch.Tensor,
        disparity: torch.Tensor,
        *,
        K: float | torch.Tensor | None = None,
        disp_focus: float | torch.Tensor | None = None,
        coc_px: torch.Tensor | None = None,
        mode: str = "auto",
        vae_tiling: bool | str = "auto",
        seed: int | None = None,
        pisa_hardness: float | None = None,
        tile_batch_size: int = 1,
    ) -> torch.Tensor:
        """Render lens blur.

        Args:
            image: ``(B, 3, H, W)`` or ``(3, H, W)`` sRGB in [0, 1] (any device/dtype; moved to the model's).
            disparity: ``(B, 1, H, W)``, ``(1, H, W)`` or ``(H, W)`` in [0, 1], 1 = near.
            K: blur strength, px of CoC radius per unit disparity (scalar or ``(B,)``); with ``disp_focus``
                gives ``coc_px = K * (disparity - disp_focus)``.
            disp_focus: in-focus disparity in [0, 1] (scalar or ``(B,)``).
            coc_px: alternatively the signed CoC map ``(B, 1, H, W)`` in pixels directly.
            mode: ``"auto"`` | ``"full"`` | ``"tiled"`` (see :meth:`plan`); ``vae_tiling``: ``"auto"`` | bool.
            seed: PISA occlusion-jitter seed for this call (default: the pipeline's).
            pisa_hardness: overrides PISA's hardness for this call.
            tile_batch_size: tiles per UNet call in tiled mode (more is faster on a large GPU).

        Returns:
            ``(B, 3, H, W)`` float32 sRGB in [0, 1] on the model's device. ``self.last_plan`` records the
            plan and stage timings (seconds).
        """
        image = self._as_batch(image, 3, "image")
        disparity = self._as_batch(disparity, 1, "disparity")
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
                raise ValueError("pass either coc_px, or both K (blur strength, px) and disp_focus (in [0, 1]).")
            k = torch.as_tensor(K, dtype=torch.float32, device=device).reshape(-1, 1, 1, 1)
            focus = torch.as_tensor(disp_focus, dtype=torch.float32, device=device).reshape(-1, 1, 1, 1)
            if ((focus < 0) | (focus > 1)).any():
                raise ValueError(f"disp_focus must be in [0, 1] (disparity units), got {focus.flatten().tolist()}.")
            coc_px = k * (disparity - focus)
        else:
            coc_px = self._as_batch(coc_px, 1, "coc_px").to(device, torch.float32)
            if coc_px.shape != disparity.shape:
                raise ValueError(f"coc_px {tuple(coc_px.shape)} must match disparity {tuple(disparity.shape)}.")
        coc_px = self.tiler.prepare_coc(coc_px)  # what PISA receives (published: |CoC|)

        # A per-call seed applies to this call only; later calls without one use the pipeline's seed again.
        wanted = self.seed if seed is None else int(seed)
        if self.pisa_settings is not None and wanted != self._installed_seed:
            self._install_pisa(wanted)
        plan = self.plan(height, width, mode, vae_tiling)
        ph, pw = plan.padded_hw
        image_p, disp_p, coc_p = (pad_to(t, ph, pw) for t in (image, disparity, coc_px))
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        t0 = time.perf_counter()
        with self._vae_tiling(plan.vae_tiling):
            z = self.model.encode(image_p)
            sync()
            t1 = time.perf_counter()
            if plan.mode == "full":
                x0 = self.model.predict_x0(z, disp_p, coc_p, pisa_hardness=pisa_hardness)
            else:
                x0 = self.tiler.predict_tiled(self.model, z, disp_p, coc_p, plan, pisa_hardness, tile_batch_size)
            sync()
            t2 = time.perf_counter()
            out = self.model.decode(x0)
            sync()
            t3 = time.perf_counter()
        plan.timings = dict(encode_s=t1 - t0, unet_s=t2 - t1, decode_s=t3 - t2, total_s=t3 - t0)
        self.last_plan = plan
        return out[..., :height, :width].clamp(0, 1)
