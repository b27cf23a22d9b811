"""The folder :meth:`models.pipeline.BokehDiffPipeline.save_pretrained` writes and ``from_pretrained`` reads.

Layout (diffusers' pipeline layout): ``model_index.json`` (components and the pipeline's configuration),
``unet/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``, ``tokenizer/``, ``tokenizer_2/``, ``scheduler/``,
and the BokehDiff LoRA next to them as ``pytorch_lora_weights.safetensors`` (where diffusers'
``save_lora_weights`` puts it). The UNet is stored *without* the LoRA (base weights) and the LoRA beside it,
not fused: a fused ``W + B A`` rounds differently from peft's ``W x + B (A x)``, so only base + adapter
reloads bit-identically. The VAE (fine-tuned encoder included) is stored whole, as safetensors.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch

from .lora import LORA_WEIGHT_NAME, save_lora

__all__ = ["COMPONENT_NAMES", "is_saved_pipeline", "read_model_index", "save_components", "load_components"]

COMPONENT_NAMES = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
_UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"


def read_model_index(folder: str | os.PathLike) -> dict | None:
    """``model_index.json`` of a local folder as a dict, or ``None`` when there is none."""
    path = Path(folder) / "model_index.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def is_saved_pipeline(folder: str | os.PathLike, class_name: str) -> bool:
    """Whether ``folder`` is a local folder written by ``<class_name>.save_pretrained`` (its model_index.json
    names the class); an SDXL base folder names ``StableDiffusionXLPipeline`` instead."""
    index = read_model_index(folder) if Path(folder).is_dir() else None
    return index is not None and index.get("_class_name") == class_name


def _base_unet_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's weights without peft's LoRA layers, under the plain diffusers names (``.base_layer`` removed)."""
    state = {}
    for key, value in unet.state_dict().items():
        if ".lora_" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value.detach().contiguous()
    return state


def save_components(folder: Path, components: dict, lora_metadata: dict | None = None) -> None:
    """Write each component to ``folder/<name>`` (UNet: base weights + ``folder/pytorch_lora_weights.safetensors``
    when it carries a peft LoRA, with ``lora_metadata``: what the loaded adapter said of itself, e.g. its
    training ``format``). Components that are ``None`` are skipped (model_index.json says ``null``)."""
    from safetensors.torch import save_file

    for name, component in components.items():
        if component is None:
            continue
        target = folder / name
        if name == "unet":
            target.mkdir(parents=True, exist_ok=True)
            component.save_config(target)
            save_file(_base_unet_state(component), str(target / _UNET_WEIGHTS), metadata={"format": "pt"})
            if getattr(component, "peft_config", None):
                save_lora(component, folder / LORA_WEIGHT_NAME, extra_metadata=lora_metadata)
        elif hasattr(component, "save_pretrained"):
            kwargs = {"safe_serialization": True} if isinstance(component, torch.nn.Module) else {}
            component.save_pretrained(target, **kwargs)
        else:
            raise ValueError(f"component '{name}' ({type(component).__name__}) has no save_pretrained.")


def load_components(folder: str | os.PathLike, index: dict) -> dict:
    """Load the components model_index.json lists, on the CPU in float32 (the caller casts), offline.

    Returns ``{name: component}``; ``None`` for a component saved as ``null``."""
    folder = Path(folder)
    components = {}
    for name in COMPONENT_NAMES:
        library, class_name = index.get(name) or (None, None)
        if library is None:
            components[name] = None
            continue
        cls = getattr(importlib.import_module(library), class_name)
        kwargs = {"torch_dtype": torch.float32} if issubclass(cls, torch.nn.Module) else {}
        components[name] = cls.from_pretrained(folder / name, local_files_only=True, **kwargs)
    return components
