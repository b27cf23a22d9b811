"""The torch device a command line's ``--device`` names: one resolution for every script and app.

``auto`` is CUDA when torch sees a CUDA device, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` are taken as given.
Asking for CUDA where there is none is an error that names the flag and the fix, never a silent CPU run.
"""

from __future__ import annotations

import torch

AUTO = "auto"


def resolve_device(name: str = AUTO, *, flag: str = "--device") -> torch.device:
    """``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ...) as a :class:`torch.device`.

    Raises:
        ValueError: ``name`` is not a device, or it asks for CUDA and torch sees no CUDA device; the message
            names ``flag`` and what to pass instead.
    """
    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"{flag} {name!r} is not a device ({error}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag} {name}: no CUDA device is available here; use {flag} cpu (or auto)")
    return device
