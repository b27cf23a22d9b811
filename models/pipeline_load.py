"""Loading what :class:`models.pipeline.BokehDiffPipeline` is built from: an SDXL base + the BokehDiff adapter
(:func:`load_base_and_adapter`, every tensor verified by :mod:`models.lora`), or a folder the pipeline's
``save_pretrained`` wrote (:func:`load_saved`, :mod:`models.pipeline_files`); the protocol table and the
precision rule they share with the pipeline.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Mapping

import torch

from .adapter import AdapterInfo
from .lora import LORA_WEIGHT_NAME, VAE_WEIGHT_NAME, load_lora, load_vae_partial
from .pipeline_files import load_components, read_model_index
from .published_tiling import PublishedTiler
from .sdxl import cast_unet
from .tiling import Tiler
from .weights import adapter_files, is_local, load_base

__all__ = [
    "DEFAULT_BASE_MODEL",
    "DEFAULT_ADAPTER",
    "DEFAULT_ADAPTER_VARIANT",
    "TILERS",
    "PROTOCOLS",
    "LOAD_KWARGS",
    "CTOR_KWARGS",
    "cast_components",
    "load_base_and_adapter",
    "load_saved",
]

DEFAULT_BASE_MODEL = "SG161222/RealVisXL_V5.0"
DEFAULT_ADAPTER = "zcx65535/bokehdiff"
DEFAULT_ADAPTER_VARIANT = "small"

# The tiler of each protocol; "auto" is resolved from the adapter by from_pretrained.
TILERS: dict[str, type[Tiler]] = {"published": PublishedTiler, "corrected": Tiler}
PROTOCOLS = ("published", "corrected", "auto")

# from_pretrained's keywords: those only loading a base + adapter reads, and the pipeline constructor's.
LOAD_KWARGS = frozenset({"adapter_variant", "vae_weights", "dtype", "torch_dtype", "revision", "base_variant",
                         "require_vae_weights"})
CTOR_KWARGS = frozenset({"prompt", "timestep", "gamma", "protocol", "pisa", "seed", "tile_size", "tile_overlap",
                         "full_frame_max_px"})


def cast_components(unet: torch.nn.Module, vae: torch.nn.Module, dtype: torch.dtype) -> None:
    """The pipeline's precision rule (as diffusers' SDXL pipelines apply it): the UNet in ``dtype``; the VAE in
    ``dtype`` too unless its config says ``force_upcast`` (SDXL's VAE overflows in fp16), then float32. Only
    modules whose dtype changes are cast (:func:`models.sdxl.cast_unet`: diffusers warns on every cast)."""
    cast_unet(unet, dtype)
    cast_unet(vae, torch.float32 if getattr(vae.config, "force_upcast", True) else dtype)


def load_saved(folder: Path, kwargs: Mapping) -> tuple[dict, dict, dict]:
    """A saved pipeline folder -> ``(components, constructor kwargs, info)``, offline, float32 on the CPU.

    The LoRA (``pytorch_lora_weights.safetensors`` beside the base UNet) is loaded into the UNet here, before
    the constructor installs PISA, as when loading a base + adapter. ``kwargs`` (constructor keywords) override
    the saved configuration."""
    load_only = sorted(k for k in kwargs if k in LOAD_KWARGS)
    if load_only:
        raise TypeError(f"{load_only} apply to loading a base + adapter; '{folder}' is a saved pipeline.")
    t0 = time.perf_counter()
    index = read_model_index(folder)
    components = load_components(folder, index)
    info: dict = {"base": str(folder), "adapter": None}
    lora_file = folder / LORA_WEIGHT_NAME
    if lora_file.is_file():
        info["adapter"] = str(lora_file)
        info["lora"] = load_lora(components["unet"], lora_file)
    config = {k: index[k] for k in CTOR_KWARGS if k in index}
    config.update(kwargs)
    info["load_s"] = time.perf_counter() - t0
    return components, config, info


def load_base_and_adapter(
    base: str | os.PathLike,
    adapter: str | os.PathLike | None,
    *,
    dtype: torch.dtype,
    adapter_variant: str | None = DEFAULT_ADAPTER_VARIANT,
    vae_weights: str | os.PathLike | None = None,
    revision: str | None = None,
    base_variant: str | None = None,
    require_vae_weights: bool = True,
    protocol: str = "auto",
    **kwargs,
) -> tuple[dict, dict, dict]:
    """An SDXL base + adapter -> ``(components, constructor kwargs, info)`` (arguments: ``from_pretrained``'s).

    Resolves ``protocol="auto"`` from the adapter (``info["protocol_reason"]`` says why), the protocol's
    gamma and PISA discretisation (``compat``), loads and verifies the LoRA and the partial VAE, and applies
    :func:`cast_components`."""
    t0 = time.perf_counter()
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")
    lora_file = vae_file = None
    if adapter is not None:  # resolve the adapter first: a missing adapter fails before the big download
        lora_file, vae_file = adapter_files(adapter, adapter_variant, revision if is_local(adapter) else None)
    if vae_weights is not None:
        vae_file = Path(vae_weights)
    components = load_base(base, revision, base_variant)
    info: dict = {"base": str(base), "adapter": None if adapter is None else str(adapter)}
    if lora_file is not None:
        info["lora"] = load_lora(components["unet"], lora_file)
    described = AdapterInfo.from_metadata(info.get("lora"))  # the adapter's description, parsed once
    if protocol == "auto":
        protocol = described.protocol
        info["protocol_reason"] = described.protocol_reason
    tiler = TILERS[protocol]
    info["protocol"] = protocol
    if kwargs.get("gamma") is None:
        kwargs["gamma"] = tiler.model_gamma(described)
    if lora_file is not None:
        pisa = kwargs.get("pisa", True)
        if pisa in (True, None, {}) and not described.pisa_trained:
            # Trained without PISA (the ablation): rendering it with PISA would not be the model that was trained.
            # Explicit PISA settings (a non-empty dict) still install it, with a warning.
            pisa = kwargs["pisa"] = False
            info["pisa_off_reason"] = (f"PISA off: adapter '{adapter}' was trained without PISA (its metadata says "
                                       f"pisa.enabled false); pass PISA settings (--pisa_compat, --pisa_hardness) to "
                                       f"render it with PISA anyway")
        elif pisa is not False and not described.pisa_trained:
            warnings.warn(f"adapter '{adapter}' was trained without PISA (pisa.enabled false), and PISA settings were "
                          f"given: rendering it with PISA layers it was not trained with.")
        if pisa is not False:
            settings = dict(pisa) if isinstance(pisa, Mapping) else {}
            settings.setdefault("compat", tiler.pisa_compat(described))
            kwargs["pisa"] = settings
            info["pisa_compat"] = settings["compat"]
        if vae_file is not None:
            info["vae"] = load_vae_partial(components["vae"], vae_file)
        elif not described.vae_trained:  # trained with --opt_vae 0: the base encoder is the one it was trained with
            info["vae_note"] = (f"adapter '{adapter}' was trained with the base VAE encoder (its metadata records no "
                                f"trainable VAE tensors): the base encoder is used")
        elif require_vae_weights:
            raise FileNotFoundError(
                f"adapter '{adapter}' has no {VAE_WEIGHT_NAME} (the fine-tuned VAE encoder). Pass vae_weights=... "
                f"(--vae_weights), or require_vae_weights=False to keep the base VAE encoder."
            )
        else:
            warnings.warn(f"adapter '{adapter}' has no {VAE_WEIGHT_NAME}: the VAE encoder keeps its base weights.")
    else:
        warnings.warn("no adapter given: rendering with the base UNet (no BokehDiff LoRA); outputs are not bokeh.")
    cast_components(components["unet"], components["vae"], dtype)
    kwargs["protocol"] = protocol
    info["load_s"] = time.perf_counter() - t0
    return components, kwargs, info
