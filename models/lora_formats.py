"""How other libraries read our LoRA: diffusers' safetensors metadata and peft's adapter folder.

diffusers >= 0.34 (``pipe.load_lora_weights``) builds the adapter's ``peft.LoraConfig`` from the safetensors
header key ``lora_adapter_metadata``: JSON whose keys carry the component prefix (``unet.r``,
``unet.lora_alpha``, ``unet.target_modules``, ...). Without it, diffusers assumes alpha = rank, so an adapter
trained with alpha != rank loads at the wrong scale (alpha / rank). peft's ``PeftModel.from_pretrained(unet,
folder)`` reads ``adapter_config.json`` and ``adapter_model.safetensors`` (keys
``base_model.model.<module>.lora_A.weight``). Both configurations name the adapted modules exactly (as
``models.lora.load_lora`` does), so each library wraps the same modules with the same rank and alpha.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

from data.io import atomic_write, write_text_atomic

__all__ = [
    "DIFFUSERS_METADATA_KEY",
    "PEFT_CONFIG_NAME",
    "PEFT_PREFIX",
    "PEFT_WEIGHT_NAME",
    "diffusers_metadata",
    "lora_config_dict",
    "read_diffusers_metadata",
    "save_peft_adapter",
]

DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
PEFT_CONFIG_NAME = "adapter_config.json"  # peft.utils.CONFIG_NAME
PEFT_WEIGHT_NAME = "adapter_model.safetensors"  # peft.utils.SAFETENSORS_WEIGHTS_NAME
PEFT_PREFIX = "base_model.model."  # where PeftModel keeps the wrapped model's modules


def lora_config_dict(modules: Sequence[str], rank: int, alpha: float, rank_pattern: Mapping[str, int] | None = None,
                     base_model: str | None = None) -> dict:
    """``peft.LoraConfig(...).to_dict()`` as plain JSON types, for LoRA on exactly ``modules`` (UNet module names).

    ``rank`` is the LoRA rank ``r``, ``alpha`` its alpha (the update is scaled by ``alpha / rank``),
    ``rank_pattern`` the modules whose rank differs from ``rank``.
    """
    from peft import LoraConfig

    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=sorted(modules),
                        rank_pattern=dict(rank_pattern or {}), base_model_name_or_path=base_model)
    plain = json.loads(json.dumps(config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
    plain["peft_type"] = str(config.peft_type.value)
    return plain


def diffusers_metadata(config: Mapping, component: str = "unet") -> str:
    """The ``lora_adapter_metadata`` header value diffusers' pipelines read for ``component``'s LoRA."""
    return json.dumps({f"{component}.{k}": v for k, v in config.items()}, indent=2, sort_keys=True)


def read_diffusers_metadata(text: str, component: str = "unet") -> dict:
    """The LoraConfig fields of ``component`` in a ``lora_adapter_metadata`` value (keys with or without the
    ``<component>.`` prefix, as pipelines and bare models write them)."""
    data = json.loads(text)
    prefix = component + "."
    prefixed = {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}
    return prefixed or data


def save_peft_adapter(state: Mapping[str, torch.Tensor], config: Mapping, folder: str | os.PathLike) -> Path:
    """Write peft's adapter folder: ``adapter_model.safetensors`` and ``adapter_config.json``; returns ``folder``.

    Args:
        state: LoRA tensors with UNet module keys (``<module>.lora_A.weight``, no ``unet.`` prefix).
        config: :func:`lora_config_dict`.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_write(folder / PEFT_WEIGHT_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_text_atomic(folder / PEFT_CONFIG_NAME, json.dumps(dict(config), indent=2, sort_keys=True))
    return folder
