"""LoRA on the SDXL UNet and the partially fine-tuned VAE encoder: add, save, load, and *verify*.

BokehDiff (Zhu et al., ICCV 2025, Sec. 4 "Implementation") fine-tunes the UNet with rank-8 LoRA on the
attention projections, the transformer projections and feed-forward layers, the ResNet convolutions and
shortcuts, the down/up-sampler convolutions and the ResNet time-embedding projections, and fine-tunes the VAE
encoder's ``conv_in``, ``mid_block`` and ``conv_out`` directly (decoder frozen).

Why this module exists: the public script loaded its LoRA file with ``pipeline.load_lora_weights``. The file's
keys lack the ``unet.`` prefix, and diffusers >= 0.33 then loads *nothing* (it only logs a warning, which the
script had silenced with ``logging.disable``). Users got the base UNet and concluded the method fails. Here
every load is checked tensor by tensor: all expected LoRA tensors must be present, no key may be left unused,
and the values read back from the model must equal the file's; otherwise :class:`WeightLoadingError` lists
what is missing or unexpected. Library logging is never touched.

File formats:
- LoRA: safetensors, peft key names (``<module>.lora_A.weight`` / ``<module>.lora_B.weight``). We write them
  with the ``unet.`` prefix (diffusers' format for SDXL pipelines) and read them with or without it; the
  legacy ``lora.down.weight`` / ``lora.up.weight`` spelling is read too. Rank, alpha, targets and
  ``format: bokehdiff-train`` (``models.adapter``) are stored in the file's metadata (``bokehdiff_lora``) so a
  checkpoint describes itself; diffusers' ``lora_adapter_metadata`` goes next to it, and
  :func:`write_peft_adapter` adds peft's folder (``models.lora_formats``), so other libraries load it at the
  right scale.
- VAE: a *partial* state dict holding at least the trainable encoder tensors of
  :func:`vae_trainable_parameters`: ``vae.safetensors`` (written by training), or the released ``vae.ckpt``
  (``torch.save`` of a name -> tensor dict, read with ``weights_only=True``: no code runs from the pickle).
  A folder with both is read from ``vae.safetensors``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from data.io import atomic_write

from .adapter import TRAINING_FORMAT
from .lora_formats import DIFFUSERS_METADATA_KEY, diffusers_metadata, lora_config_dict, read_diffusers_metadata, \
    save_peft_adapter
from .tensor_files import WeightLoadingError, check_module_set, read_tensor_file, summarise_keys

__all__ = [
    "PAPER_LORA_TARGETS",
    "LORA_WEIGHT_NAME",
    "VAE_WEIGHT_NAME",
    "VAE_SAFETENSORS_NAME",
    "VAE_WEIGHT_NAMES",
    "VAE_TRAINABLE_PREFIXES",
    "WeightLoadingError",
    "add_lora",
    "lora_state_dict",
    "save_lora",
    "load_lora",
    "read_lora_file",
    "write_peft_adapter",
    "vae_trainable_parameters",
    "set_vae_trainable",
    "vae_partial_state_dict",
    "save_vae_partial",
    "load_vae_partial",
]

# Module-name suffixes as they appear in diffusers' UNet2DConditionModel (peft matches a target when a module's
# full name equals it or ends with "." + target). Checked against the module tree of SDXL and of models/tiny.py:
#   attention            ...transformer_blocks.N.attn{1,2}.to_{q,k,v}, ...to_out.0
#   transformer in/out   ...attentions.N.proj_in / proj_out (Linear with use_linear_projection, as SDXL)
#   feed-forward         ...ff.net.0.proj (GEGLU's input projection), ...ff.net.2
#   ResNet               ...resnets.N.conv1 / conv2 / conv_shortcut / time_emb_proj
#   resampling           ...downsamplers.0.conv / upsamplers.0.conv
# Not targeted (as in the paper's release): conv_in, conv_out, time_embedding.*, add_embedding.*.
PAPER_LORA_TARGETS: tuple[str, ...] = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default name, used by the published adapter
VAE_WEIGHT_NAME = "vae.ckpt"  # the released adapter's partial VAE (a torch pickle of tensors)
VAE_SAFETENSORS_NAME = "vae.safetensors"  # the same tensors as safetensors, what training writes
VAE_WEIGHT_NAMES = (VAE_SAFETENSORS_NAME, VAE_WEIGHT_NAME)  # looked for in a folder in this order
UNET_PREFIX = "unet."
_METADATA_KEY = "bokehdiff_lora"

# The VAE encoder layers fine-tuned by the paper; everything else in the VAE stays frozen.
VAE_TRAINABLE_PREFIXES: tuple[str, ...] = ("encoder.conv_in.", "encoder.mid_block.", "encoder.conv_out.")


#: The metadata keys by which an adapter describes how it was trained (models.adapter reads them).
ADAPTER_DESCRIPTION = ("format", "pisa", "base_model", "model_gamma", "synthesis_gamma", "gamma",
                       "vae_trainable")


# ----------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------

def _resolve_file(path_or_dir: str | os.PathLike, default_name: str | Sequence[str], what: str,
                  subfolder: str | None) -> Path:
    """The file itself, or in a folder the first of ``default_name`` (one name or several, in order of
    preference) that exists, else the folder's only file with the last name's suffix (a VAE folder: ``*.ckpt``,
    never the LoRA's ``.safetensors``)."""
    names = [default_name] if isinstance(default_name, str) else list(default_name)
    path = Path(path_or_dir)
    if subfolder:
        path = path / subfolder
    if path.is_file():
        return path
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        suffix = Path(names[-1]).suffix
        found = sorted(path.glob(f"*{suffix}"))
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(
            f"{what}: no {' or '.join(repr(n) for n in names)} in folder '{path}'"
            + (f" (found {len(found)} '*{suffix}' files: {[f.name for f in found]})" if found else "")
            + ". Pass the file path directly."
        )
    raise FileNotFoundError(f"{what} not found: '{path}'. Pass an existing file or a folder containing "
                            f"{' or '.join(repr(n) for n in names)}.")


# ----------------------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------------------
def add_lora(
    unet: nn.Module,
    rank: int = 8,
    targets: Sequence[str] = PAPER_LORA_TARGETS,
    *,
    alpha: float | None = None,
    adapter_name: str = "default",
    init: str | bool = "gaussian",
) -> list[str]:
    """Inject a peft LoRA adapter into ``unet`` (a diffusers ``UNet2DConditionModel``).

    Args:
        unet: the UNet; its base weights are frozen, only the LoRA matrices become trainable.
        rank: LoRA rank ``r`` (paper: 8).
        targets: module-name suffixes (see :data:`PAPER_LORA_TARGETS`) or exact module names.
        alpha: LoRA alpha; the update is scaled by ``alpha / rank``. Default ``rank`` (scale 1), as the paper.
        adapter_name: peft adapter name.
        init: peft ``init_lora_weights``; ``"gaussian"`` (paper) draws A from a Gaussian and sets B = 0, so the
            adapted UNet starts equal to the base UNet.

    Returns:
        The names of the modules that received LoRA layers (sorted). Raises ``ValueError`` if none matched.
    """
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank}.")
    config = LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        init_lora_weights=init,
        target_modules=list(targets),
    )
    unet.requires_grad_(False)
    try:
        unet.add_adapter(config, adapter_name=adapter_name)
    except ValueError as exc:
        raise ValueError(f"add_lora: no module of the UNet matches the targets {list(targets)} ({exc}).") from exc
    return lora_module_names(unet, adapter_name)


def lora_module_names(unet: nn.Module, adapter_name: str = "default") -> list[str]:
    """Names of the modules that carry a LoRA layer for ``adapter_name``."""
    from peft.tuners.lora import LoraLayer

    return sorted(
        name for name, module in unet.named_modules() if isinstance(module, LoraLayer) and adapter_name in module.lora_A
    )


def lora_state_dict(unet: nn.Module, adapter_name: str = "default", *, prefix: str = UNET_PREFIX) -> dict[str, torch.Tensor]:
    """The adapter's tensors in peft naming, keys prefixed by ``prefix`` (``unet.`` as diffusers writes them).

    Tensors are detached CPU copies; shapes ``(r, in)`` for ``lora_A`` of a Linear, ``(r, in, kh, kw)`` of a
    Conv2d, ``(out, r)`` / ``(out, r, 1, 1)`` for ``lora_B``.
    """
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    return {prefix + k: v.detach().cpu().contiguous() for k, v in state.items()}


def _lora_config_summary(unet: nn.Module, adapter_name: str) -> dict:
    config = unet.peft_config[adapter_name]
    targets = config.target_modules
    return dict(
        rank=int(config.r),
        alpha=float(config.lora_alpha),
        targets=sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
        modules=len(lora_module_names(unet, adapter_name)),
    )


def save_lora(
    unet: nn.Module,
    path: str | os.PathLike,
    *,
    adapter_name: str = "default",
    extra_metadata: Mapping[str, object] | None = None,
) -> Path:
    """Write the UNet's LoRA as safetensors (peft keys with the ``unet.`` prefix) and return the file path.

    ``path`` may be a folder (the file is then ``<path>/pytorch_lora_weights.safetensors``). Rank, alpha and
    targets, ``format: bokehdiff-train`` (:data:`models.adapter.TRAINING_FORMAT`: an adapter of this repository,
    so ``protocol="auto"`` picks the corrected protocol), plus ``extra_metadata`` (e.g. base model id, PISA
    settings, model gamma; its ``format`` wins, ``None`` records none), go into the ``bokehdiff_lora`` metadata
    as JSON. diffusers' ``lora_adapter_metadata`` (the exact LoraConfig: rank, alpha, adapted modules) is written
    too, so ``pipe.load_lora_weights`` scales the adapter by alpha / rank as peft and :func:`load_lora` do.
    The file is written to a temporary name and renamed, so an interrupted save never leaves a truncated file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / LORA_WEIGHT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    state = lora_state_dict(unet, adapter_name)
    if not state:
        raise ValueError(f"save_lora: the UNet has no LoRA adapter named '{adapter_name}' (call add_lora first).")
    info = {"format": TRAINING_FORMAT, **_lora_config_summary(unet, adapter_name)}
    info.update(dict(extra_metadata or {}))
    if info["format"] is None:
        del info["format"]
    config = _peft_config(_normalise_lora_keys(state)[0], info)
    metadata = {_METADATA_KEY: json.dumps(info, default=str), DIFFUSERS_METADATA_KEY: diffusers_metadata(config),
                "format": "pt"}
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def _peft_config(state: Mapping[str, torch.Tensor], info: Mapping) -> dict:
    """:func:`models.lora_formats.lora_config_dict` of normalised LoRA tensors and their rank/alpha info."""
    rank, alpha, rank_pattern, modules = _infer_lora_config(state, info)
    base = info.get("base_model")
    return lora_config_dict(modules, rank, alpha, rank_pattern, base_model=base if isinstance(base, str) else None)


def write_peft_adapter(path_or_dir: str | os.PathLike, folder: str | os.PathLike | None = None) -> Path:
    """Write peft's ``adapter_config.json`` + ``adapter_model.safetensors`` for one of our LoRA files.

    ``PeftModel.from_pretrained(unet, folder)`` then adapts the same modules with the same rank and alpha as
    :func:`load_lora`. ``folder`` defaults to the LoRA file's folder. Returns ``folder``.
    """
    state, info = read_lora_file(path_or_dir)
    target = Path(info["file"]).parent if folder is None else Path(folder)
    return save_peft_adapter(state, _peft_config(state, info), target)


_LEGACY_SUFFIXES = ((".lora.down.weight", ".lora_A.weight"), (".lora.up.weight", ".lora_B.weight"))
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")


def _normalise_lora_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip the ``unet.`` prefix and map legacy ``lora.down/up`` names to peft's ``lora_A/B``.

    Returns ``(normalised, foreign)``: ``foreign`` are keys that are not UNet LoRA tensors at all (e.g.
    ``text_encoder.*`` LoRA, ``*.alpha`` scalars, DoRA magnitudes), which we refuse rather than ignore.
    """
    normalised: dict[str, torch.Tensor] = {}
    foreign: list[str] = []
    for key, value in state.items():
        name = key[len(UNET_PREFIX):] if key.startswith(UNET_PREFIX) else key
        for old, new in _LEGACY_SUFFIXES:
            if name.endswith(old):
                name = name[: -len(old)] + new
        if not _LORA_KEY.match(name) or name.startswith(("text_encoder", "te_", "te1", "te2")):
            foreign.append(key)
            continue
        if name in normalised:
            raise WeightLoadingError(f"LoRA file holds the tensor '{name}' twice (with and without the 'unet.' prefix).")
        normalised[name] = value
    return normalised, foreign


def _raise_on_mismatch(header: str, *problems: tuple[str, list], hint: str) -> None:
    """Raise one :class:`WeightLoadingError` listing every non-empty ``(label, keys)`` problem, or return."""
    found = [(label, keys) for label, keys in problems if keys]
    if found:
        lines = [header] + [f"  {label} {summarise_keys(keys)}" for label, keys in found] + [hint]
        raise WeightLoadingError("\n".join(lines))


def read_lora_file(path_or_dir: str | os.PathLike, *, subfolder: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a LoRA file into ``(tensors, info)``: tensors with normalised peft keys (no ``unet.`` prefix) and
    the rank/alpha information found in its metadata (empty dict if none). Foreign keys raise
    :class:`WeightLoadingError`."""
    file = _resolve_file(path_or_dir, LORA_WEIGHT_NAME, "LoRA weights", subfolder)
    raw, metadata = read_tensor_file(file)
    state, foreign = _normalise_lora_keys(raw)
    if foreign:
        raise WeightLoadingError(
            f"LoRA file '{file}' has keys that are not UNet LoRA tensors, which would be ignored "
            f"(unexpected {summarise_keys(foreign)}). Expected '<unet module>.lora_A.weight' / '.lora_B.weight', "
            f"with or without the 'unet.' prefix."
        )
    if not state:
        raise WeightLoadingError(f"LoRA file '{file}' holds no LoRA tensors.")
    info: dict = {}
    if _METADATA_KEY in metadata:
        try:
            info = json.loads(metadata[_METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise WeightLoadingError(f"LoRA file '{file}': its '{_METADATA_KEY}' metadata is not JSON ({exc}); "
                                     f"re-export the adapter.") from exc
    elif DIFFUSERS_METADATA_KEY in metadata:  # written by diffusers >= 0.34 (LoraConfig as JSON)
        config = read_diffusers_metadata(metadata[DIFFUSERS_METADATA_KEY])
        info = {"rank": config.get("r"), "alpha": config.get("lora_alpha")}
    check_module_set(state, info, file)
    info["file"] = str(file)
    return state, info



def _infer_lora_config(state: Mapping[str, torch.Tensor], info: Mapping) -> tuple[int, float, dict[str, int], list[str]]:
    """Rank per module from the ``lora_A`` shapes; the modules to target; alpha from metadata (else rank)."""
    ranks: dict[str, int] = {}
    for name, tensor in state.items():
        match = _LORA_KEY.match(name)
        if match["ab"] == "A":
            ranks[match["module"]] = int(tensor.shape[0])
    modules = sorted({_LORA_KEY.match(n)["module"] for n in state})
    if not ranks:
        raise WeightLoadingError("LoRA file holds lora_B tensors but no lora_A tensors.")
    rank = int(info.get("rank") or max(set(ranks.values()), key=list(ranks.values()).count))
    alpha = float(info.get("alpha") or rank)
    rank_pattern = {m: r for m, r in ranks.items() if r != rank}
    return rank, alpha, rank_pattern, modules


def load_lora(
    unet: nn.Module,
    path_or_dir: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    adapter_name: str = "default",
    subfolder: str | None = None,
) -> dict:
    """Load a LoRA file into ``unet`` and verify that every tensor arrived.

    Accepts keys with or without the ``unet.`` prefix (the published ``zcx65535/bokehdiff`` file has none) and
    legacy ``lora.down/up`` names. If the UNet has no adapter ``adapter_name`` yet, one is created whose rank
    and target modules are read from the file (alpha from its metadata, else alpha = rank, as the paper); if
    it has one (e.g. when resuming training), the file must match it exactly.

    Args:
        unet: diffusers ``UNet2DConditionModel`` (any dtype/device; tensors are cast to each parameter's).
        path_or_dir: a ``.safetensors`` file, a folder holding ``pytorch_lora_weights.safetensors`` (or exactly
            one ``*.safetensors``), or an already loaded dict of tensors.
        subfolder: optional subfolder of ``path_or_dir`` (the published adapter keeps variants in ``small/``).

    Returns:
        ``{"file", "rank", "alpha", "modules", "tensors"}`` describing what was loaded, plus ``format``,
        ``pisa``, ``base_model``, ``model_gamma``, ``synthesis_gamma``, ``gamma`` and ``vae_trainable`` when the file's metadata
        records them (adapters written by our training).

    Raises:
        WeightLoadingError: a key matches no LoRA tensor of the UNet, an expected LoRA tensor is absent from
            the file, shapes disagree, or a value read back differs from the file's. The message lists them.
    """
    from peft import set_peft_model_state_dict

    if isinstance(path_or_dir, Mapping):
        state, foreign = _normalise_lora_keys(path_or_dir)
        if foreign:
            raise WeightLoadingError(f"LoRA state dict has non-LoRA keys (unexpected {summarise_keys(foreign)}).")
        info: dict = {"file": "<state dict>"}
    else:
        state, info = read_lora_file(path_or_dir, subfolder=subfolder)
    source = info["file"]

    existing = getattr(unet, "peft_config", {}) or {}
    if adapter_name not in existing:
        from peft import LoraConfig

        rank, alpha, rank_pattern, modules = _infer_lora_config(state, info)
        known = {name for name, _ in unet.named_modules()}
        absent = [m for m in modules if m not in known]
        if absent:
            raise WeightLoadingError(
                f"LoRA file '{source}' targets modules this UNet does not have (unexpected {summarise_keys(absent)}). "
                f"Is it an adapter for a different base model?"
            )
        # Exact module names as targets: peft matches a name equal to the target, so nothing else is wrapped.
        config = LoraConfig(r=rank, lora_alpha=alpha, rank_pattern=rank_pattern, target_modules=modules)
        unet.add_adapter(config, adapter_name=adapter_name)
        unet.requires_grad_(False)
    else:
        rank, alpha = int(existing[adapter_name].r), float(existing[adapter_name].lora_alpha)

    expected = {k[len(UNET_PREFIX):]: v for k, v in lora_state_dict(unet, adapter_name).items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    _raise_on_mismatch(
        f"LoRA weights from '{source}' do not match the UNet's adapter '{adapter_name}':",
        ("missing (in the model, not in the file)", missing),
        ("unexpected (in the file, not in the model)", unexpected),
        ("shape mismatch", bad_shape),
        hint="Check that the adapter was trained for this base model with the same rank and targets.",
    )

    set_peft_model_state_dict(unet, state, adapter_name=adapter_name)
    # Read back: guards against a library silently skipping tensors (the failure this module exists for).
    loaded = {k[len(UNET_PREFIX):]: v for k, v in lora_state_dict(unet, adapter_name).items()}
    differ = [k for k, v in state.items() if not torch.equal(loaded[k], v.to(loaded[k].dtype))]
    if differ:
        raise WeightLoadingError(f"LoRA tensors from '{source}' were not applied to the UNet: {summarise_keys(differ)}.")
    described = {k: info[k] for k in ADAPTER_DESCRIPTION
                 if k in info}  # what the file says of itself
    return dict(file=source, rank=rank, alpha=alpha, modules=len({k.rsplit(".lora_", 1)[0] for k in state}),
                tensors=len(state), **described)


# ----------------------------------------------------------------------------------------------------------
# VAE encoder fine-tuning
# ----------------------------------------------------------------------------------------------------------
def vae_trainable_parameters(vae: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs of the VAE layers BokehDiff fine-tunes: the encoder's ``conv_in``,
    ``mid_block`` and ``conv_out`` (names as in ``vae.state_dict()``, e.g. ``encoder.conv_in.weight``)."""
    params = [(n, p) for n, p in vae.named_parameters() if n.startswith(VAE_TRAINABLE_PREFIXES)]
    if not params:
        raise ValueError(
            f"the VAE has no parameters under {VAE_TRAINABLE_PREFIXES}; expected a diffusers AutoencoderKL."
        )
    return params


def set_vae_trainable(vae: nn.Module, trainable: bool = True) -> list[nn.Parameter]:
    """Freeze the whole VAE, then set ``requires_grad=trainable`` on :func:`vae_trainable_parameters`.

    Returns those parameters (for the optimizer; the paper uses 0.1x the LoRA learning rate for them).
    """
    vae.requires_grad_(False)
    params = [p for _, p in vae_trainable_parameters(vae)]
    for p in params:
        p.requires_grad_(trainable)
    return params


def vae_partial_state_dict(vae: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the fine-tuned VAE tensors (the content of ``vae.safetensors`` / ``vae.ckpt``)."""
    return {n: p.detach().cpu().contiguous() for n, p in vae_trainable_parameters(vae)}


def save_vae_partial(vae: nn.Module, path: str | os.PathLike) -> Path:
    """Write :func:`vae_partial_state_dict` to ``path``: safetensors for a ``.safetensors`` name (what training
    writes, :data:`VAE_SAFETENSORS_NAME`), else with ``torch.save`` (the published ``vae.ckpt`` format, which a
    folder path gets inside). Written to a temporary name, then renamed."""
    path = Path(path)
    if path.suffix not in (".ckpt", ".pt", ".pth", ".bin", ".safetensors"):
        path = path / VAE_WEIGHT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    state = vae_partial_state_dict(vae)
    with atomic_write(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp))
        else:
            torch.save(state, str(tmp))
    return path


def load_vae_partial(
    vae: nn.Module,
    path_or_dir: str | os.PathLike | Mapping[str, torch.Tensor],
    *,
    subfolder: str | None = None,
    required: Sequence[str] | None = None,
) -> dict:
    """Load a partial VAE state dict (``vae.safetensors`` or ``vae.ckpt``; a folder: the first of
    :data:`VAE_WEIGHT_NAMES`) and verify it.

    Every key must name a VAE tensor with the same shape (``vae.`` / ``module.`` prefixes are stripped), every
    tensor in ``required`` (default: the fine-tuned encoder tensors of :func:`vae_trainable_parameters`) must
    be present, and the values read back must equal the file's. Other VAE tensors keep their base weights.

    Returns ``{"file", "tensors"}``. Raises :class:`WeightLoadingError` listing missing/unexpected keys.
    """
    if isinstance(path_or_dir, Mapping):
        raw, source = dict(path_or_dir), "<state dict>"
    else:
        file = _resolve_file(path_or_dir, VAE_WEIGHT_NAMES, "VAE weights", subfolder)
        raw, _ = read_tensor_file(file)
        source = str(file)
    state = {}
    for key, value in raw.items():
        for prefix in ("module.", "vae."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    model_state = vae.state_dict()
    required = [n for n, _ in vae_trainable_parameters(vae)] if required is None else list(required)
    missing = sorted(set(required) - set(state))
    unexpected = sorted(set(state) - set(model_state))
    bad_shape = sorted(
        f"{k} (file {tuple(v.shape)}, model {tuple(model_state[k].shape)})"
        for k, v in state.items()
        if k in model_state and v.shape != model_state[k].shape
    )
    _raise_on_mismatch(
        f"VAE weights from '{source}' do not match the VAE:",
        ("missing (fine-tuned encoder tensors not in the file)", missing),
        ("unexpected (not in the VAE)", unexpected),
        ("shape mismatch", bad_shape),
        hint="Check that the file is the partial VAE state dict saved with the adapter for this base model.",
    )
    result = vae.load_state_dict(state, strict=False)
    if result.unexpected_keys:  # cannot happen after the check above; kept so nothing is ever ignored silently
        raise WeightLoadingError(f"VAE ignored keys from '{source}': {summarise_keys(result.unexpected_keys)}")
    after = vae.state_dict()
    differ = [k for k, v in state.items() if not torch.equal(after[k].detach().cpu(), v.to(after[k].dtype))]
    if differ:
        raise WeightLoadingError(f"VAE tensors from '{source}' were not applied: {summarise_keys(differ)}.")
    return dict(file=source, tensors=len(state))
