"""Where the inference pipeline's weights come from: the SDXL base and the adapter files, each a local path or
a hub id, with the inference CLI's remedies in every error.

``models.hub`` decides when only the cache may be read; :func:`models.sdxl.load_sdxl_components` loads the base.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .hub import WeightsUnavailableError, cache_only, check_source, download_command, local_source, offline_error
from .lora import LORA_WEIGHT_NAME, VAE_WEIGHT_NAMES
from .sdxl import load_sdxl_components

__all__ = ["OFFLINE_FIX", "adapter_files", "hub_file", "is_local", "load_base", "offline_hint"]

_OFFLINE_HINT = (
    "Pass a local diffusers-format SDXL folder (--pretrained_model_name_or_path /path/to/model) and a local "
    "adapter folder (--adapter /path/to/adapter), download them while online (e.g. `{download}`), or render "
    "without the neural model: --renderer classical."
)
# The flags that take local folders instead of hub ids (models.hub.offline_error's hint).
OFFLINE_FIX = ("--pretrained_model_name_or_path DIR for the SDXL base, --adapter DIR for the adapter; or render "
               "without the neural model: --renderer classical")


def offline_hint(repo: str) -> str:
    """The remedies for weights of hub repo ``repo`` that cannot be fetched (local folders, download, classical)."""
    return _OFFLINE_HINT.format(download=download_command(repo))


def is_local(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an existing file or folder (else it is taken as a hub id)."""
    return Path(path).exists()


def hub_file(repo: str, candidates: list[str], what: str, revision: str | None) -> Path | None:
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
                f"cannot fetch {what} from '{repo}' ({type(exc).__name__}). " + offline_hint(repo)
            ) from exc
    if last_offline is not None:
        raise offline_error(repo, what, OFFLINE_FIX) from last_offline
    return None


def adapter_files(adapter: str | os.PathLike, variant: str | None, revision: str | None) -> tuple[Path, Path | None]:
    """Locate ``(lora_file, vae_file_or_None)`` in a local file/folder or a hub repo.

    Search order in a folder or repo: ``<variant>/<name>``, then ``<name>`` (the published repo keeps the VAE
    under ``small/``); for the VAE, ``vae.safetensors`` before ``vae.ckpt`` at each level
    (``models.lora.VAE_WEIGHT_NAMES``)."""
    names = lambda n: ([f"{variant}/{n}"] if variant else []) + [n]  # noqa: E731
    vae_names = ([f"{variant}/{n}" for n in VAE_WEIGHT_NAMES] if variant else []) + list(VAE_WEIGHT_NAMES)
    check_source(adapter, "adapter (--adapter)")
    if is_local(adapter):
        path = Path(adapter)
        if path.is_file():
            vae = next((path.parent / n for n in VAE_WEIGHT_NAMES if (path.parent / n).is_file()), None)
            return path, vae
        lora = next((path / n for n in names(LORA_WEIGHT_NAME) if (path / n).is_file()), None)
        if lora is None:
            raise FileNotFoundError(
                f"adapter folder '{path}' has no {' or '.join(names(LORA_WEIGHT_NAME))}; pass the folder written by "
                f"train_lora_otf.py's inference export, or the LoRA file itself."
            )
        vae = next((path / n for n in vae_names if (path / n).is_file()), None)
        return lora, vae
    lora = hub_file(str(adapter), names(LORA_WEIGHT_NAME), "adapter", revision)
    if lora is None:
        raise WeightsUnavailableError(f"adapter repo '{adapter}' has no {names(LORA_WEIGHT_NAME)}.")
    vae = hub_file(str(adapter), vae_names, "adapter VAE weights", revision)
    return lora, vae


def load_base(base: str | os.PathLike, revision: str | None, variant: str | None) -> dict:
    """SDXL components (float32) from a local diffusers folder or a hub id, for inference.

    Raises:
        FileNotFoundError: a local path that is not a loadable diffusers SDXL folder.
        WeightsUnavailableError: a hub id neither cached nor loadable (offline, or a wrong id), with remedies.
    """
    check_source(base, "base model (--pretrained_model_name_or_path)")
    local = is_local(base)
    if local and not (Path(base) / "unet").is_dir():
        raise FileNotFoundError(
            f"'{base}' is not a diffusers SDXL folder (no 'unet/' subfolder). Expected the layout written by "
            f"StableDiffusionXLPipeline.save_pretrained: unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, "
            f"tokenizer_2/, scheduler/."
        )
    if not local:  # hub unreachable: the cached snapshot's folder, or HubUnreachableError at once (models/hub.py)
        base = local_source(str(base), "base model", revision=revision, hint=OFFLINE_FIX)
    try:
        return load_sdxl_components(base, revision=revision, variant=variant, vae_variant=variant,
                                    torch_dtype=torch.float32)
    except (OSError, ValueError) as exc:
        if local:
            raise FileNotFoundError(f"cannot load the base model from folder '{base}': {exc}") from exc
        raise WeightsUnavailableError(
            f"cannot load base model '{base}': it is not a local folder and could not be loaded from the Hugging "
            f"Face hub or its cache (offline, or a wrong id). " + offline_hint(str(base))
        ) from exc
