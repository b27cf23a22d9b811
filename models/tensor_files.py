"""Reading weight files (safetensors, or torch pickles with ``weights_only=True``) and the checks every
loader applies: readable, finite, complete. Errors name the file and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import torch

__all__ = ["WeightLoadingError", "check_finite", "check_module_set", "read_tensor_file", "summarise_keys"]


class WeightLoadingError(ValueError):
    """Weights could not be loaded completely; the message lists missing and unexpected tensor names."""


def summarise_keys(keys: Iterable[str], limit: int = 12) -> str:
    """``"N: a, b, ..."``: a count and the first ``limit`` names, sorted, for error messages."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{len(keys)}: {shown}" + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def read_tensor_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a name -> tensor dict (safetensors, or a torch pickle read with ``weights_only=True``) on CPU.

    Returns ``(state_dict, metadata)``; metadata is empty for torch pickles.
    """
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        tensors, metadata = {}, {}
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                metadata = dict(handle.metadata() or {})
                for key in handle.keys():
                    tensors[key] = handle.get_tensor(key)
        except Exception as exc:  # safetensors' SafetensorError (empty, truncated, header only), or OSError
            raise WeightLoadingError(
                f"cannot read '{path}' as safetensors ({type(exc).__name__}: {exc}): the file is empty, truncated "
                f"or not safetensors. Download or export it again."
            ) from exc
        check_finite(tensors, path)
        return tensors, metadata
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or a pickle with arbitrary objects
        raise WeightLoadingError(
            f"cannot read '{path}' as a tensor dictionary ({type(exc).__name__}: {exc}). Expected a safetensors "
            f"file or a torch.save'd dict of tensors; re-export the checkpoint."
        ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightLoadingError(f"'{path}' does not hold a dict of tensors (found {type(obj).__name__}).")
    check_finite(obj, path)
    return dict(obj), {}


def check_finite(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or inf, by name: they load without complaint and render black images."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightLoadingError(f"'{path}' has non-finite (NaN or inf) values in {len(bad)} tensor(s): "
                                 f"{summarise_keys(bad)}. The weights are broken (a diverged run?); use another checkpoint.")


def check_module_set(state: Mapping[str, torch.Tensor], info: Mapping, file: Path) -> None:
    """Every adapted module has both its ``lora_A`` and ``lora_B``, and there are as many modules as the
    metadata says (``modules``, written by :func:`save_lora`): a file missing both tensors of a module would
    otherwise load as "all verified", with that module silently unadapted."""
    halves: dict[str, set[str]] = {}
    for key in state:
        module, _, rest = key.partition(".lora_")
        halves.setdefault(module, set()).add(rest.split(".")[0])
    incomplete = sorted(m for m, parts in halves.items() if parts != {"A", "B"})
    if incomplete:
        raise WeightLoadingError(f"LoRA file '{file}': {len(incomplete)} module(s) have only one of lora_A / lora_B "
                                 f"({summarise_keys(incomplete)}); the file is incomplete, export it again.")
    expected = info.get("modules")
    if isinstance(expected, int) and expected != len(halves):
        raise WeightLoadingError(f"LoRA file '{file}' holds {len(halves)} adapted modules but its metadata says "
                                 f"{expected}: tensors are missing; export the adapter again.")
