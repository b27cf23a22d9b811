"""The BokehDiff inference pipeline: weights, padding, full-frame or tiled one-step rendering.

Wraps :class:`models.onestep.OneStepBokeh` (the one-step forward shared with training) with:

- **Weights** (:meth:`BokehDiffPipeline.from_pretrained`): an SDXL base model from a hub id or a local
  diffusers folder, plus an adapter (our training export or the published ``zcx65535/bokehdiff``): a LoRA
  safetensors file with or without the ``unet.`` prefix and a partial VAE state dict ``vae.ckpt``, both
  verified tensor by tensor (:mod:`models.lora`). Unreachable weights raise one
  :class:`WeightsUnavailableError` that names the remedies (a local folder, or ``--renderer classical``).
- **PISA** processors installed on ``down_blocks.1.attentions.0``'s self-attention (:mod:`models.pisa`),
  with a fixed occlusion-jitter seed: a fixed ``seed`` gives bit-identical renders on one device.
- **Full frame by default**; **tiled** for images whose UNet pass would not fit in memory: overlapping latent
  tiles blended with raised-cosine weights (a partition of unity over each overlap), each tile with its own
  ``disp_coc`` crop and SDXL micro-conditioning (original size = the full image, crop top-left = the tile's
  offset, target size = the tile), exactly as a training crop is conditioned. The VAE is tiled separately
  (diffusers' VAE tiling) when the full-resolution encode/decode would not fit.
- **Padding**: images are reflect-padded to a multiple of 32 px (8 for the VAE x 4 for the UNet's two
  downsamplers) and cropped back, so any size works.

**Protocols** (``protocol=``, README "Protocols"): ``"corrected"`` is what the points above describe;
``"published"`` reproduces the released code's inference path instead: gamma 1, PISA with the published
discretisation and geometry (``models.pisa``'s ``compat`` + ``published_geometry``), ``|CoC|`` resized as
published, padding to the VAE factor only, 512-px tiles above ``2 * 512^2`` px (:func:`published_tile_starts`,
:func:`published_tile_window`, :func:`published_time_ids`; the noise prediction is blended), VAE tiling always
enabled, and the DDPM x0 clamp from the scheduler config (:func:`models.onestep.ddpm_x0_clip`).
``from_pretrained(protocol="auto")`` picks it for adapters without our training metadata (:func:`protocol_for`).

Shapes and units (docs/conventions.md): images ``(B, 3, H, W)`` sRGB in [0, 1]; disparity ``(B, 1, H, W)`` in [0, 1],
1 = near; ``K`` in pixels of blur radius per unit disparity; ``coc_px = K * (disparity - disp_focus)``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F

from .hub import WeightsUnavailableError, cache_only, download_command, local_source, offline_error
from .lora import LORA_WEIGHT_NAME, VAE_WEIGHT_NAME, load_lora, load_vae_partial
from .onestep import DEFAULT_GAMMA, DEFAULT_PROMPT, DEFAULT_TIMESTEP, OneStepBokeh, ddpm_x0_clip

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

# Memory model for the automatic full-frame / tiled choice. Peak activation bytes of one UNet pass per latent
# pixel per byte of element size, for SDXL's widths (320, 640, 1280); scaled linearly by the UNet's widths.
# Estimated from SDXL's activation sizes at 1024 px (about 2 GB of live activations in bf16 with SDPA);
# benchmarks/gpu_pipeline.py measures it -- refine it there.
_UNET_BYTES_PER_LATENT_PX_PER_ELEM = 60_000
_SDXL_WIDTH_SUM = 320 + 640 + 1280
# VAE decoder: about six live 128..512-channel maps at full resolution (fp32: ~3 kB per image pixel).
_VAE_BYTES_PER_PX_PER_ELEM = 750
_MEMORY_HEADROOM = 0.8  # use at most 80% of what is free: allocator fragmentation, PISA blocks, outputs


def pisa_compat_for(lora_info: Mapping) -> bool:
    """Which PISA discretisation an adapter was trained with (``models.pisa``'s ``compat``).

    Adapters written by this repository's training (metadata ``format: bokehdiff-train``) record their PISA
    settings and default to the corrected discretisation; any other adapter (the published
    ``zcx65535/bokehdiff`` file has no such metadata) was trained with the public code, so it gets the
    published discretisation, under which it behaves as trained.
    """
    if lora_info.get("format") == "bokehdiff-train":
        return bool(lora_info.get("pisa", {}).get("compat", False))
    return True


def model_gamma_for(lora_info: Mapping) -> float | None:
    """The model gamma an adapter was trained with (``models.onestep``: the VAE sees ``srgb ** gamma``).

    Adapters written by this repository's training record it: ``model_gamma``, or in files written before the
    model and synthesis gammas were separate, the one ``gamma`` used for both. Any other adapter (the
    published ``zcx65535/bokehdiff``) records none: ``None``, and the caller's protocol decides.
    """
    if lora_info.get("format") != "bokehdiff-train":
        return None
    for key in ("model_gamma", "gamma"):
        if lora_info.get(key) is not None:
            return float(lora_info[key])
    return None


def _cast_unet(unet: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the UNet only when some parameter has another dtype: diffusers' ``to(dtype)`` warns about "modules
    that should be kept in float32" on every call, even when that list is empty, so a no-op cast (the float32
    default) would print it at each load."""
    if any(p.dtype != dtype for p in unet.parameters()):
        unet.to(dtype)


# ----------------------------------------------------------------------------------------------------------
# Protocols
# ----------------------------------------------------------------------------------------------------------
PROTOCOLS = ("published", "corrected", "auto")
# Published tiling: 64-latent (512 px) tiles, used when the latent has more than 2 * 64^2 pixels.
PUBLISHED_TILE_LATENT = 64


def protocol_for(lora_info: Mapping | None) -> str:
    """``protocol="auto"`` resolved for an adapter: ``"corrected"`` for adapters our training wrote (metadata
    ``format: bokehdiff-train``: they record how they were trained), ``"published"`` for any other adapter
    (the released ``zcx65535/bokehdiff`` has no such metadata). Without an adapter: ``"corrected"``."""
    if lora_info is None:
        return "corrected"
    return "corrected" if lora_info.get("format") == "bokehdiff-train" else "published"


def default_gamma(protocol: str, lora_info: Mapping | None = None) -> float:
    """The model gamma used when none is given: 1 under the published protocol (sRGB straight to the VAE as
    ``2 x - 1``, as the released code does); under the corrected one, the model gamma the adapter records
    (:func:`model_gamma_for`: adapters our training wrote), else :data:`DEFAULT_GAMMA`.
    """
    if protocol == "published":
        return 1.0
    recorded = model_gamma_for(lora_info) if lora_info is not None else None
    return DEFAULT_GAMMA if recorded is None else recorded


def published_tile_starts(length: int, tile: int = PUBLISHED_TILE_LATENT) -> list[int]:
    """Tile offsets (latent px) of the published tiled denoiser along one axis of ``length`` latent px:
    ``n = 1 + (length - tile // 4) // (3 * tile // 4)`` offsets evenly spaced from 0 to ``length - tile`` and
    truncated to integers (``floor`` of ``linspace(0, length - tile, n)``); for ``tile <= length < 7 tile / 4``
    that is ``[0, length - tile]``, i.e. ``[0, 0]`` at ``length = tile`` (a tile visited twice, as released:
    the normalised blend is unchanged). For ``length < tile`` the only offset is 0 and the tile is the whole
    axis."""
    n = int(1 + (length - tile // 4) // (tile * 3 // 4))
    if length < tile or n <= 1:
        return [0]
    import numpy as np

    return [int(v) for v in np.floor(np.linspace(0, length - tile, n))]


def published_tile_window(tile: int = PUBLISHED_TILE_LATENT, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Published blend weight of a tile, ``(tile, tile)``: ``exp(-(u_y^2 + u_x^2))`` with ``u = linspace(-2, 2,
    tile)``: a Gaussian, never exactly zero, normalised later by the summed weights of all tiles."""
    u = torch.linspace(-2, 2, tile, dtype=dtype, device=device)
    return torch.exp(-(u[:, None] ** 2 + u[None] ** 2))


def published_time_ids(height: int, width: int, tile_y: int, tile_x: int) -> tuple[tuple, tuple, tuple]:
    """SDXL micro-conditioning of one published tile: ``(original_size, crop_top_left, target_size)`` =
    ``((H, W), (tile_y, tile_x), (H, W))``: full-image sizes in image px, the crop offset in **latent** px
    (as the released code passes it). Our corrected tiling uses image px and the tile's size instead."""
    return (height, width), (tile_y, tile_x), (height, width)



def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``"fp32"|"no"|"float32"`` -> float32, ``"bf16"|"bfloat16"`` -> bfloat16, ``"fp16"|"float16"`` -> float16."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    table = {
        "no": torch.float32, "fp32": torch.float32, "float32": torch.float32,
        "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
        "fp16": torch.float16, "float16": torch.float16,
    }
    if dtype not in table:
        raise ValueError(f"unknown precision {dtype!r}; use one of {sorted(table)}.")
    return table[dtype]


# ----------------------------------------------------------------------------------------------------------
# Tiling geometry
# ----------------------------------------------------------------------------------------------------------
def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``, neighbours overlapping by >= ``overlap``.

    Starts are multiples of ``align`` (so every tile sits on the same downsampling grid as the full frame:
    strided convolutions are only shift-equivariant for shifts that are multiples of their total stride) and
    as evenly spaced as that allows; the first is 0 and the last is ``length - tile``. ``length`` and ``tile``
    must be multiples of ``align``.
    """
    if tile >= length:
        return [0]
    if length % align or tile % align:
        raise ValueError(f"length ({length}) and tile ({tile}) must be multiples of align ({align}).")
    stride_units = (tile - overlap) // align  # the largest aligned stride that keeps the overlap
    if overlap < 0 or stride_units < 1:
        raise ValueError(
            f"tile overlap must be in [0, tile - {align}] for tile={tile} (aligned to {align}), got {overlap}."
        )
    units = (length - tile) // align
    intervals = -(-units // stride_units)
    q, r = divmod(units, intervals)  # r intervals of q + 1 units, the rest q: all <= stride_units
    starts, pos = [0], 0
    for k in range(intervals):
        pos += (q + 1 if k < r else q) * align
        starts.append(pos)
    return starts


def blend_window(starts: list[int], tile: int, index: int) -> torch.Tensor:
    """1-D blending weights ``(tile,)`` for tile ``index`` of ``starts``.

    Over the overlap with each neighbour the weight rises (or falls) as ``sin^2`` of the position, so the two
    neighbours' weights sum to exactly 1 there; image borders are not tapered. Weights are > 0 everywhere
    (samples at pixel centres), so normalising by the weight sum is always defined.
    """
    w = torch.ones(tile, dtype=torch.float64)
    s = starts[index]
    if index > 0:
        ramp = starts[index - 1] + tile - s  # overlap with the previous tile
        if ramp > 0:
            x = (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp
            w[:ramp] = torch.minimum(w[:ramp], torch.sin(0.5 * math.pi * x) ** 2)
    if index < len(starts) - 1:
        ramp = s + tile - starts[index + 1]
        if ramp > 0:
            x = (torch.arange(ramp, dtype=torch.float64) + 0.5) / ramp
            w[tile - ramp:] = torch.minimum(w[tile - ramp:], torch.cos(0.5 * math.pi * x) ** 2)
    return w


@dataclass
class RenderPlan:
    """How an image is rendered: ``mode`` ``"full"`` or ``"tiled"``, VAE tiling, tile geometry (latent px),
    and why (for logs)."""

    mode: str
    vae_tiling: bool
    padded_hw: tuple[int, int]
    tile_latent: int = 0
    overlap_latent: int = 0
    n_tiles: int = 1
    reason: str = ""
    timings: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# Weight resolution
# ----------------------------------------------------------------------------------------------------------
_OFFLINE_HINT = (
    "Pass a local diffusers-format SDXL folder (--pretrained_model_name_or_path /path/to/model) and a local "
    "adapter folder (--adapter /path/to/adapter), download them while online (e.g. `{download}`), or render "
    "without the neural model: --renderer classical."
)


_OFFLINE_FIX = ("--pretrained_model_name_or_path DIR for the SDXL base, --adapter DIR for the adapter; or render "
                "without the neural model: --renderer classical")


def _hint(repo: str) -> str:
    return _OFFLINE_HINT.format(download=download_command(repo))


def _is_local(path: str | os.PathLike) -> bool:
    return Path(path).exists()


def _hub_file(repo: str, candidates: list[str], what: str, revision: str | None) -> Path | None:
    """First of ``candidates`` available from the hub (cache first); ``None`` if the repo lacks them all."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    offline = cache_only(repo)  # hub unreachable: cache only, no retries (models/hub.py)
    last_offline: Exception | None = None
    for name in candidates:
        try:
            return Path(hf_hub_download(repo, name, revision=revision, local_files_only=offline))
        except LocalEntryNotFoundError as exc:  # offline and not cached (a subclass: test it first)
            last_offline = exc
            continue  # another candidate name may be cached
        except EntryNotFoundError:
            continue  # the repo is reachable and lacks this file: try the next name
        except Exception as exc:  # network errors, unknown repo, auth
            raise WeightsUnavailableError(
                f"cannot fetch {what} from '{repo}' ({type(exc).__name__}). " + _hint(repo)
            ) from exc
    if last_offline is not None:
        raise offline_error(repo, what, _OFFLINE_FIX) from last_offline
    return None


def _adapter_files(adapter: str | os.PathLike, variant: str | None, revision: str | None) -> tuple[Path, Path | None]:
    """Locate ``(lora_file, vae_file_or_None)`` in a local file/folder or a hub repo.

    Search order in a folder or repo: ``<variant>/<name>``, then ``<name>`` (the published repo keeps the VAE
    under ``small/``)."""
    names = lambda n: ([f"{variant}/{n}"] if variant else []) + [n]  # noqa: E731
    if _is_local(adapter):
        path = Path(adapter)
        if path.is_file():
            vae = path.parent / VAE_WEIGHT_NAME
            return path, vae if vae.is_file() else None
        lora = next((path / n for n in names(LORA_WEIGHT_NAME) if (path / n).is_file()), None)
        if lora is None:
            raise FileNotFoundError(
                f"adapter folder '{path}' has no {' or '.join(names(LORA_WEIGHT_NAME))}; pass the folder written by "
                f"train_lora_otf.py's inference export, or the LoRA file itself."
            )
        vae = next((path / n for n in names(VAE_WEIGHT_NAME) if (path / n).is_file()), None)
        return lora, vae
    lora = _hub_file(str(adapter), names(LORA_WEIGHT_NAME), "adapter", revision)
    if lora is None:
        raise WeightsUnavailableError(f"adapter repo '{adapter}' has no {names(LORA_WEIGHT_NAME)}.")
    vae = _hub_file(str(adapter), names(VAE_WEIGHT_NAME), "adapter VAE weights", revision)
    return lora, vae


def _load_base(base: str | os.PathLike, dtype: torch.dtype, revision: str | None, variant: str | None) -> dict:
    """SDXL components from a local folder or hub id (text encoders in float32; they are dropped after use)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    local = _is_local(base)
    if local and not (Path(base) / "unet").is_dir():
        raise FileNotFoundError(
            f"'{base}' is not a diffusers SDXL folder (no 'unet/' subfolder). Expected the layout written by "
            f"StableDiffusionXLPipeline.save_pretrained: unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, "
            f"tokenizer_2/, scheduler/."
        )
    if not local:  # hub unreachable: the cached snapshot's folder, or HubUnreachableError at once (models/hub.py)
        base = local_source(str(base), "base model", revision=revision, hint=_OFFLINE_FIX)
    common = dict(revision=revision)
    try:
        return dict(
            unet=UNet2DConditionModel.from_pretrained(base, subfolder="unet", torch_dtype=dtype, variant=variant, **common),
            vae=AutoencoderKL.from_pretrained(base, subfolder="vae", torch_dtype=torch.float32, variant=variant, **common),
            text_encoder=CLIPTextModel.from_pretrained(base, subfolder="text_encoder", **common),
            text_encoder_2=CLIPTextModelWithProjection.from_pretrained(base, subfolder="text_encoder_2", **common),
            tokenizer=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **common),
            tokenizer_2=CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2", **common),
            # DDPM's alphas_cumprod: the training schedule (the same betas for every SDXL scheduler config).
            scheduler=DDPMScheduler.from_pretrained(base, subfolder="scheduler", **common),
        )
    except (OSError, ValueError) as exc:
        if local:
            raise FileNotFoundError(f"cannot load the base model from folder '{base}': {exc}") from exc
        raise WeightsUnavailableError(
            f"cannot load base model '{base}': it is not a local folder and could not be loaded from the Hugging "
            f"Face hub or its cache (offline, or a wrong id). " + _hint(str(base))
        ) from exc


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
        protocol: ``"corrected"`` (default: this repository's rendering) or ``"published"``: reproduce the
            released code's inference path (README, "Protocols"): gamma 1 (set on ``model`` by the
            constructors), PISA with the published discretisation and geometry, the ``|CoC|`` resized as
            published, images padded only to the VAE factor, 512-px tiles above ``2 * 512^2`` px blended with
            Gaussian weights on the noise prediction, each with the published micro-conditioning, VAE tiling
            always enabled (diffusers' threshold from the VAE config), and the DDPM x0 clamp from the base
            model's scheduler config (``model.x0_clip``).
    """

    def __init__(
        self,
        model: OneStepBokeh,
        *,
        pisa: bool | Mapping = True,
        seed: int = 0,
        tile_size: int = 1024,
        tile_overlap: int = 256,
        full_frame_max_px: int | None = None,
        protocol: str = "corrected",
    ):
        if protocol not in ("published", "corrected"):
            raise ValueError(
                f"protocol must be 'published' or 'corrected' here, got {protocol!r} ('auto' is resolved from the "
                "adapter's metadata by from_pretrained)."
            )
        self.protocol = protocol
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.tile_size = int(tile_size)
        self.tile_overlap = int(tile_overlap)
        self.full_frame_max_px = full_frame_max_px
        self.pisa_settings: dict | None = None
        self._installed_seed: int | None = None
        self.seed = int(seed)
        if pisa is not False:  # True or a (possibly empty) mapping of overrides
            published = dict(compat=True, published_geometry=True) if protocol == "published" else {}
            self.pisa_settings = {**DEFAULT_PISA, **published, **(dict(pisa) if isinstance(pisa, Mapping) else {})}
            if not self.pisa_settings.get("compat", False):  # an explicit compat=False drops the published geometry
                self.pisa_settings.pop("published_geometry", None)
            self._install_pisa(self.seed)
        self.info: dict = {}
        self.last_plan: RenderPlan | None = None

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

        ``gamma=None`` takes the protocol's default (:func:`default_gamma`); ``protocol="published"`` also
        takes the x0 clamp from ``scheduler``'s config (:func:`models.onestep.ddpm_x0_clip`)."""
        if protocol not in ("published", "corrected"):
            raise ValueError(f"protocol must be 'published' or 'corrected' for from_components, got {protocol!r}.")
        model = OneStepBokeh.from_components(
            unet, vae, scheduler, text_encoder, text_encoder_2, tokenizer, tokenizer_2,
            prompt=prompt, timestep=timestep, gamma=default_gamma(protocol) if gamma is None else gamma,
            x0_clip=ddpm_x0_clip(scheduler) if protocol == "published" else None,
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
            lora_file, vae_file = _adapter_files(adapter, adapter_variant, revision if _is_local(adapter) else None)
        if vae_weights is not None:
            vae_file = Path(vae_weights)
        components = _load_base(base, torch.float32, revision, base_variant)
        info: dict = {"base": str(base), "adapter": None if adapter is None else str(adapter)}
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
        if lora_file is not None:
            info["lora"] = load_lora(components["unet"], lora_file)
        if protocol == "auto":
            protocol = protocol_for(info.get("lora"))
        info["protocol"] = protocol
        if kwargs.get("gamma") is None:
            kwargs["gamma"] = default_gamma(protocol, info.get("lora"))
        if lora_file is not None:
            pisa = kwargs.get("pisa", True)
            if pisa is not False:
                settings = dict(pisa) if isinstance(pisa, Mapping) else {}
                if protocol == "published":
                    settings.setdefault("compat", True)
                settings.setdefault("compat", pisa_compat_for(info["lora"]))
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
        _cast_unet(components["unet"], unet_dtype)
        ctor = {k: kwargs.pop(k) for k in ("prompt", "timestep", "gamma") if k in kwargs}
        pipe = cls.from_components(**components, **ctor, protocol=protocol, **kwargs)
        info["gamma"] = pipe.model.gamma
        info["load_s"] = time.perf_counter() - t0
        pipe.info = info
        return pipe

    def _install_pisa(self, seed: int) -> None:
        from .pisa import install_pisa_processors

        settings = dict(self.pisa_settings)
        patterns = settings.pop("patterns", ("down_blocks.1.attentions.0.*.attn1",))
        install_pisa_processors(self.model.unet, patterns=tuple(patterns), seed=int(seed), **settings)
        self._installed_seed = int(seed)

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> "BokehDiffPipeline":
        """Move to ``device``; ``dtype`` sets the UNet's precision (the VAE stays float32)."""
        if device is not None:
            self.model.to(device)
        if dtype is not None:
            _cast_unet(self.model.unet, resolve_dtype(dtype))
        return self

    @property
    def device(self) -> torch.device:
        return self.model.prompt_embeds.device

    # ------------------------------------------------------------------------------------------------------
    # Planning
    # ------------------------------------------------------------------------------------------------------
    @property
    def pad_multiple(self) -> int:
        """Image sizes are padded to this: the VAE factor times the UNet's total downsampling."""
        n_down = len(self.model.unet.config.block_out_channels) - 1
        return self.model.vae_scale_factor * 2**n_down

    def _available_bytes(self) -> int | None:
        device = self.device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        if device.type == "cpu" and hasattr(os, "sysconf"):
            try:
                return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
            except (ValueError, OSError):
                return None
        return None

    def estimate_bytes(self, height: int, width: int) -> tuple[int, int]:
        """Rough peak activation bytes of a full-frame ``(unet, vae)`` pass at ``height x width`` image px.

        The UNet figure includes PISA's working set as the sparse path needs it (``models.pisa_sparse``:
        linear in the tokens, no N x N table), so full frame is planned whenever the activations fit.
        """
        f = self.model.vae_scale_factor
        config = self.model.unet.config
        widths = sum(config.block_out_channels) / _SDXL_WIDTH_SUM
        unet_elem = torch.finfo(self.model.unet.dtype).bits // 8
        vae_elem = torch.finfo(self.model.vae.dtype).bits // 8
        unet = _UNET_BYTES_PER_LATENT_PX_PER_ELEM * unet_elem * widths * (height // f) * (width // f)
        if self.pisa_settings is not None:
            from .pisa_sparse import working_set_bytes

            # PISA runs in down_blocks.1 (half the latent resolution); diffusers' SDXL config names the
            # number of heads "attention_head_dim".
            heads_cfg = config.attention_head_dim
            heads = heads_cfg[1] if isinstance(heads_cfg, (list, tuple)) else heads_cfg
            tokens = (height // f // 2) * (width // f // 2)
            unet += working_set_bytes(tokens, 1, int(heads), config.block_out_channels[1] // int(heads),
                                      int(self.pisa_settings.get("n_segments", 7)))
        vae_widths = max(self.model.vae.config.block_out_channels) / 512
        vae = _VAE_BYTES_PER_PX_PER_ELEM * vae_elem * vae_widths * height * width
        return int(unet), int(vae)

    def plan(self, height: int, width: int, mode: str = "auto", vae_tiling: bool | str = "auto") -> RenderPlan:
        """Decide full frame vs tiled (and VAE tiling) for an ``height x width`` image.

        ``mode="auto"``: full frame when the estimated UNet activations fit in 80% of the free memory (and
        ``H * W <= full_frame_max_px`` if set); tiled otherwise. ``vae_tiling="auto"``: tile the VAE when its
        full-resolution pass would not fit. Explicit ``"full"`` / ``"tiled"`` / booleans override.
        """
        if mode not in ("auto", "full", "tiled"):
            raise ValueError(f"mode must be 'auto', 'full' or 'tiled', got {mode!r}.")
        if self.protocol == "published":
            return self._plan_published(height, width, mode, vae_tiling)
        m = self.pad_multiple
        ph, pw = -(-height // m) * m, -(-width // m) * m
        unet_b, vae_b = self.estimate_bytes(ph, pw)
        free = self._available_bytes()
        budget = None if free is None else free * _MEMORY_HEADROOM
        reason = f"estimated UNet {unet_b / 2**30:.2f} GiB, VAE {vae_b / 2**30:.2f} GiB" + (
            "" if budget is None else f", budget {budget / 2**30:.2f} GiB"
        )
        if mode == "auto":
            too_big = (budget is not None and unet_b > budget) or (
                self.full_frame_max_px is not None and ph * pw > self.full_frame_max_px
            )
            mode = "tiled" if too_big and max(ph, pw) > self.tile_size else "full"
            reason = f"auto: {mode} ({reason})"
        else:
            reason = f"{mode} (requested; {reason})"
        if vae_tiling == "auto":
            vae_tiling = budget is not None and vae_b > budget
        f = self.model.vae_scale_factor
        if mode == "tiled":
            if self.tile_size % m or self.tile_overlap % f:
                raise ValueError(
                    f"tile_size ({self.tile_size}) must be a multiple of {m} px and tile_overlap ({self.tile_overlap}) "
                    f"of {f} px."
                )
            tile, overlap = self.tile_size // f, self.tile_overlap // f
            align = m // f
            n = len(tile_starts(ph // f, tile, overlap, align)) * len(tile_starts(pw // f, tile, overlap, align))
            return RenderPlan("tiled", bool(vae_tiling), (ph, pw), tile, overlap, n, reason)
        return RenderPlan("full", bool(vae_tiling), (ph, pw), reason=reason)

    def _plan_published(self, height: int, width: int, mode: str, vae_tiling: bool | str) -> RenderPlan:
        """Published protocol: pad to the VAE factor only; tiled (512-px tiles) when the latent has more than
        ``2 * 64^2`` pixels; the VAE's own tiling always enabled (it applies above the VAE config's size)."""
        f = self.model.vae_scale_factor
        ph, pw = -(-height // f) * f, -(-width // f) * f
        T = PUBLISHED_TILE_LATENT
        if mode == "auto":
            mode = "tiled" if (ph // f) * (pw // f) > 2 * T * T else "full"
            reason = f"published protocol: {mode} (tiles above {2 * T * T} latent px)"
        else:
            reason = f"published protocol: {mode} (requested)"
        vae_tiling = True if vae_tiling == "auto" else bool(vae_tiling)
        n = len(published_tile_starts(ph // f, T)) * len(published_tile_starts(pw // f, T)) if mode == "tiled" else 1
        return RenderPlan(mode, vae_tiling, (ph, pw), T if mode == "tiled" else 0, 0, n, reason)

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

    @staticmethod
    def _pad(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == (ph, pw):
            return x
        pad = (0, pw - w, 0, ph - h)
        # Reflection keeps image statistics at the border (no black frame for the VAE); it needs pad < size.
        padding_mode = "reflect" if pw - w < w and ph - h < h else "replicate"
        return F.pad(x, pad, mode=padding_mode)

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
        if self.protocol == "published":
            # The released code passes |CoC| at image resolution and PISA resizes it (bilinear): the absolute
            # value is taken before the resize, not after as for a signed map.
            coc_px = coc_px.abs()

        # A per-call seed applies to this call only; later calls without one use the pipeline's seed again.
        wanted = self.seed if seed is None else int(seed)
        if self.pisa_settings is not None and wanted != self._installed_seed:
            self._install_pisa(wanted)
        plan = self.plan(height, width, mode, vae_tiling)
        ph, pw = plan.padded_hw
        image_p, disp_p, coc_p = (self._pad(t, ph, pw) for t in (image, disparity, coc_px))
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        t0 = time.perf_counter()
        with self._vae_tiling(plan.vae_tiling):
            z = self.model.encode(image_p)
            sync()
            t1 = time.perf_counter()
            if plan.mode == "full":
                x0 = self.model.predict_x0(z, disp_p, coc_p, pisa_hardness=pisa_hardness)
            elif self.protocol == "published":
                x0 = self._predict_tiled_published(z, disp_p, coc_p, pisa_hardness)
            else:
                x0 = self._predict_tiled(z, disp_p, coc_p, plan, pisa_hardness, tile_batch_size)
            sync()
            t2 = time.perf_counter()
            out = self.model.decode(x0)
            sync()
            t3 = time.perf_counter()
        plan.timings = dict(encode_s=t1 - t0, unet_s=t2 - t1, decode_s=t3 - t2, total_s=t3 - t0)
        self.last_plan = plan
        return out[..., :height, :width].clamp(0, 1)

    def _predict_tiled(self, z, disp, coc, plan: RenderPlan, pisa_hardness, tile_batch_size: int) -> torch.Tensor:
        """x0 from overlapping latent tiles blended with :func:`blend_window` weights (normalised by their sum).

        Each tile is conditioned as a training crop: ``original_size`` = the full padded image, ``crop_top_left``
        = the tile's pixel offset, ``target_size`` = the tile's pixel size; ``disp_coc`` is the tile's crop at
        image resolution, so PISA sees CoC radii in the same pixel units as in full-frame mode.
        """
        f = self.model.vae_scale_factor
        align = self.pad_multiple // f
        _, _, h, w = z.shape
        t_h, t_w = min(plan.tile_latent, h), min(plan.tile_latent, w)
        ys, xs = tile_starts(h, t_h, plan.overlap_latent, align), tile_starts(w, t_w, plan.overlap_latent, align)
        acc = torch.zeros(z.shape, dtype=torch.float32, device=z.device)
        norm = torch.zeros((1, 1, h, w), dtype=torch.float32, device=z.device)
        tiles = [(iy, ix) for iy in range(len(ys)) for ix in range(len(xs))]
        full_size = (h * f, w * f)
        for b in range(z.shape[0]):
            for start in range(0, len(tiles), max(1, tile_batch_size)):
                chunk = tiles[start:start + max(1, tile_batch_size)]
                zs, ds, cs, offsets = [], [], [], []
                for iy, ix in chunk:
                    y, x = ys[iy], xs[ix]
                    zs.append(z[b:b + 1, :, y:y + t_h, x:x + t_w])
                    ds.append(disp[b:b + 1, :, y * f:(y + t_h) * f, x * f:(x + t_w) * f])
                    cs.append(coc[b:b + 1, :, y * f:(y + t_h) * f, x * f:(x + t_w) * f])
                    offsets.append((y * f, x * f))
                x0 = self.model.predict_x0(
                    torch.cat(zs),
                    torch.cat(ds),
                    torch.cat(cs),
                    original_size=full_size,
                    crop_top_left=torch.tensor(offsets, dtype=torch.float32),
                    target_size=(t_h * f, t_w * f),
                    pisa_hardness=pisa_hardness,
                )
                for k, (iy, ix) in enumerate(chunk):
                    y, x = ys[iy], xs[ix]
                    wy = blend_window(ys, t_h, iy).to(z.device, torch.float32)
                    wx = blend_window(xs, t_w, ix).to(z.device, torch.float32)
                    weight = wy[:, None] * wx[None, :]
                    acc[b:b + 1, :, y:y + t_h, x:x + t_w] += x0[k:k + 1] * weight
                    if b == 0:
                        norm[:, :, y:y + t_h, x:x + t_w] += weight
        return acc / norm

    def _predict_tiled_published(self, z, disp, coc, pisa_hardness) -> torch.Tensor:
        """The released code's tiled denoiser: 64-latent tiles at :func:`published_tile_starts` offsets, visited
        column-major (all row offsets for the first column offset, then the next), each conditioned with
        :func:`published_time_ids` and the tile's ``disp_coc`` crop; the UNet *outputs* are blended with
        :func:`published_tile_window` weights normalised by their sum, then turned into ``x0`` (and clamped)
        once for the whole latent. A side shorter than a tile (where the released code fails) uses the
        whole side and the matching crop of the window."""
        f = self.model.vae_scale_factor
        T = PUBLISHED_TILE_LATENT
        _, _, h, w = z.shape
        t_h, t_w = min(T, h), min(T, w)
        window = published_tile_window(T, device=z.device)[:t_h, :t_w]
        acc = torch.zeros(z.shape, dtype=torch.float32, device=z.device)
        norm = torch.zeros(z.shape, dtype=torch.float32, device=z.device)
        for x in published_tile_starts(w, T):
            for y in published_tile_starts(h, T):
                original, crop, target = published_time_ids(h * f, w * f, y, x)
                eps = self.model.predict_noise(
                    z[..., y:y + t_h, x:x + t_w],
                    disp[..., y * f:(y + t_h) * f, x * f:(x + t_w) * f],
                    coc[..., y * f:(y + t_h) * f, x * f:(x + t_w) * f],
                    original_size=original, crop_top_left=crop, target_size=target, pisa_hardness=pisa_hardness,
                )
                acc[..., y:y + t_h, x:x + t_w] += eps * window
                norm[..., y:y + t_h, x:x + t_w] += window
        return self.model.noise_to_x0(z, acc / norm)
