"""What an adapter is, parsed once from its LoRA metadata: :class:`AdapterInfo`.

Adapters written by this repository's training carry ``format: bokehdiff-train`` metadata recording how they
were trained (model gamma, PISA settings); any other adapter (the released ``zcx65535/bokehdiff`` has no such
metadata) was trained with the released code. The ``*_for`` functions are the same questions on a raw
metadata dict (``models.lora.load_lora``'s info).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from kernels.colour import DEFAULT_GAMMA

__all__ = ["TRAINING_FORMAT", "AdapterInfo", "model_gamma_for", "pisa_compat_for", "protocol_for"]

# The metadata format of every checkpoint and export our training writes (training.loop.describe_run).
TRAINING_FORMAT = "bokehdiff-train"


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter's description.

    Attributes:
        present: an adapter was loaded (``False``: the base UNet alone).
        trained_here: its metadata says ``format: bokehdiff-train``.
        model_gamma: the model gamma it records (the VAE saw ``srgb ** gamma``); ``None`` if none.
        pisa_compat: the PISA discretisation it was trained with (``models.pisa``'s ``compat``): as recorded
            for adapters trained here (default corrected), the published one for any other adapter.
        pisa_trained: it was trained with PISA layers in the UNet (``False`` only when an adapter trained here
            records ``pisa.enabled: false``, i.e. ``train_lora_otf.py --no-pisa``, the paper's ablation).
        vae_trained: it comes with fine-tuned VAE encoder tensors (``False`` only when an adapter trained here
            records an empty ``vae_trainable``, i.e. ``--opt_vae 0``: the base encoder is what it was trained with).
    """

    present: bool = False
    trained_here: bool = False
    model_gamma: float | None = None
    pisa_compat: bool = False
    pisa_trained: bool = True
    vae_trained: bool = True

    @classmethod
    def from_metadata(cls, lora_info: Mapping | None) -> "AdapterInfo":
        """From ``models.lora.load_lora``'s info dict (``None``: no adapter). Adapters written before the model
        and synthesis gammas were separate record one ``gamma``, used for both."""
        if lora_info is None:
            return cls()
        if lora_info.get("format") != TRAINING_FORMAT:
            return cls(present=True, pisa_compat=True)
        gamma = next((float(lora_info[k]) for k in ("model_gamma", "gamma") if lora_info.get(k) is not None), None)
        pisa = lora_info.get("pisa") or {}
        return cls(present=True, trained_here=True, model_gamma=gamma, pisa_compat=bool(pisa.get("compat", False)),
                   pisa_trained=bool(pisa.get("enabled", True)),
                   vae_trained=bool(lora_info.get("vae_trainable", True)))

    @property
    def protocol(self) -> str:
        """What ``protocol="auto"`` means for it: ``"published"`` for an adapter not trained here (nothing
        records how it was trained but the released code), else (or without an adapter) ``"corrected"``."""
        return "published" if self.present and not self.trained_here else "corrected"

    @property
    def protocol_reason(self) -> str:
        """Why ``protocol="auto"`` picks :attr:`protocol`, in one line (the CLI's message and the API's log)."""
        if not self.present:
            return "protocol auto -> corrected: no adapter (the base UNet alone)"
        if self.trained_here:
            gamma = f"not recorded: {DEFAULT_GAMMA:g}" if self.model_gamma is None else f"{self.model_gamma:g}"
            return (f"protocol auto -> corrected: the adapter's metadata says format '{TRAINING_FORMAT}' (written by "
                    f"this repository; model gamma {gamma}, PISA discretisation "
                    f"{'published' if self.pisa_compat else 'corrected'})")
        return (f"protocol auto -> published: the adapter's metadata has no format '{TRAINING_FORMAT}', so it is taken "
                f"as trained with the released code (model gamma 1, published PISA discretisation); pass "
                f"protocol='corrected' (--protocol corrected) if it was not")


def pisa_compat_for(lora_info: Mapping) -> bool:
    """:attr:`AdapterInfo.pisa_compat` of an adapter's metadata."""
    return AdapterInfo.from_metadata(lora_info).pisa_compat


def model_gamma_for(lora_info: Mapping) -> float | None:
    """:attr:`AdapterInfo.model_gamma` of an adapter's metadata (``None``: the caller's protocol decides)."""
    return AdapterInfo.from_metadata(lora_info).model_gamma


def protocol_for(lora_info: Mapping | None) -> str:
    """:attr:`AdapterInfo.protocol` of an adapter's metadata (``None``: no adapter, ``"corrected"``)."""
    return AdapterInfo.from_metadata(lora_info).protocol
