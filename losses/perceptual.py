"""LPIPS (VGG) perceptual loss, frozen, for the BokehDiff training objective (Zhu et al., ICCV 2025).

LPIPS (Zhang et al., CVPR 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric")
compares unit-normalised VGG-16 features with learned per-channel weights. Two sets of weights are involved:

* the per-layer linear weights ("lin" layers) ship inside the ``lpips`` package: never downloaded;
* the VGG-16 trunk (ImageNet classification weights, torchvision's ``VGG16_Weights.IMAGENET1K_V1``) is
  downloaded by torchvision into the torch hub cache (``$TORCH_HOME``, default ``~/.cache/torch/hub``) unless
  a local file is given with ``vgg_weights_path`` (config key / CLI flag ``lpips_vgg_weights``).

A real run must use the pretrained trunk: if it cannot be found this module raises, naming the flag,
instead of silently training against a random network. Tests pass ``pretrained_backbone=False``.
"""

from __future__ import annotations

import copy
import functools
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from losses._checks import check_images
from models.hub import WeightsUnavailableError

# torchvision's ImageNet VGG-16 weights (the trunk LPIPS v0.1 was calibrated on).
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


# Seed of the random VGG trunk (tests, and the lin/trunk shapes before pretrained weights are loaded).
_TRUNK_SEED = 0


@functools.lru_cache(maxsize=1)
def _lpips_vgg_template() -> nn.Module:
    """The ``lpips`` package model with its bundled lin weights and a random VGG trunk (no download), built
    once per process: torchvision initialises the whole VGG-16 (about 2.7 s of CPU, mostly its 120M-parameter
    classifier, which lpips drops). The trunk is drawn from its own seeded generator, so the global RNG is left
    as it was and every copy is the same network."""
    import lpips

    # lpips 0.1.4 calls torchvision's deprecated `pretrained=` argument; the warning is about lpips' own
    # call, not ours, so it is silenced only around this constructor.
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TRUNK_SEED)
        warnings.filterwarnings("ignore", message=".*pretrained.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*weight enum.*", category=UserWarning)
        return lpips.LPIPS(pretrained=True, net="vgg", version="0.1", pnet_rand=True, verbose=False)


def _build_lpips_vgg() -> nn.Module:
    """A fresh copy of :func:`_lpips_vgg_template` (the caller may load weights into it or move it)."""
    return copy.deepcopy(_lpips_vgg_template())


def _load_vgg_state_dict(vgg_weights_path: str | os.PathLike | None) -> dict[str, torch.Tensor]:
    """torchvision VGG-16 state dict (``features.N.weight`` keys) from a file or the torch hub cache."""
    if vgg_weights_path is not None:
        path = Path(vgg_weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"LPIPS: `lpips_vgg_weights` points to {str(path)!r}, which is not a file. Expected "
                f"torchvision's VGG-16 ImageNet state dict (vgg16-397923af.pth, from {VGG16_URL}), or the "
                "`features.*` part of it."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - pickle, zip, truncation, foreign objects: one remedy
            raise WeightsUnavailableError(
                f"LPIPS: cannot read `lpips_vgg_weights` file {str(path)!r} ({type(error).__name__}: "
                f"{' '.join(str(error).split())[:200]}). Expected torchvision's VGG-16 ImageNet state dict "
                f"(vgg16-397923af.pth, from {VGG16_URL}); download it again and pass its path."
            ) from error
        if not isinstance(state, dict):
            raise WeightsUnavailableError(
                f"LPIPS: `lpips_vgg_weights` file {str(path)!r} holds a {type(state).__name__}, not a state dict; "
                f"expected torchvision's VGG-16 ImageNet state dict (vgg16-397923af.pth, from {VGG16_URL})."
            )
        return state
    from torchvision.models import VGG16_Weights

    try:
        return VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    except Exception as error:  # network, proxy, or cache permission failures all need the same remedy
        # The GAN backbone's offline error is a models.hub.WeightsUnavailableError too: exit status 2, one line.
        raise WeightsUnavailableError(
            "LPIPS: could not obtain the pretrained VGG-16 trunk (torchvision VGG16_Weights.IMAGENET1K_V1) "
            f"from the torch hub cache ({torch.hub.get_dir()}) or {VGG16_URL} ({type(error).__name__}: "
            f"{error}). Download that file and pass its path with `--lpips_vgg_weights` "
            "(LossConfig.lpips_vgg_weights), or place it in the torch hub cache. Refusing to train LPIPS on a "
            "random VGG."
        ) from error


class LPIPSLoss(nn.Module):
    """Frozen LPIPS-VGG distance between two image batches; gradients flow to the inputs only.

    The wrapped network stays in eval mode (no dropout in the lin layers) even after ``.train()`` on a
    parent module, and none of its parameters require grad, so optimisers built from ``parameters()`` of
    a parent skip it.

    Args:
        pretrained_backbone: load the ImageNet VGG-16 trunk (required for real runs). ``False`` keeps a
            randomly initialised trunk: for offline tests only.
        vgg_weights_path: local torchvision VGG-16 state dict; ``None`` uses the torch hub cache/download.
    """

    def __init__(self, pretrained_backbone: bool = True, vgg_weights_path: str | os.PathLike | None = None):
        super().__init__()
        if not pretrained_backbone and vgg_weights_path is not None:
            raise ValueError(
                "LPIPS: `lpips_vgg_weights` was given but `pretrained_backbone` is False; drop one of them."
            )
        # Weights first: a missing file or download fails before the (slow) network construction.
        trunk_state = _load_vgg_state_dict(vgg_weights_path) if pretrained_backbone else None
        self.net = _build_lpips_vgg()
        if trunk_state is not None:
            try:
                self._load_trunk(trunk_state)
            except (ValueError, RuntimeError) as error:  # missing keys, other shapes: the file is not VGG-16's
                source = f"file {str(vgg_weights_path)!r}" if vgg_weights_path is not None else "download"
                raise WeightsUnavailableError(
                    f"LPIPS: the `lpips_vgg_weights` {source} does not fit the VGG-16 trunk "
                    f"({' '.join(str(error).split())[:240]}). Pass torchvision's VGG-16 ImageNet state dict "
                    f"(vgg16-397923af.pth, from {VGG16_URL})."
                ) from error
        self.pretrained_backbone = pretrained_backbone
        self.net.requires_grad_(False)
        self.train(False)

    def _load_trunk(self, state_dict: dict[str, torch.Tensor]) -> None:
        # lpips keeps torchvision's layer indices inside its slices (`slice2.5.weight` is `features.5.weight`).
        trunk = self.net.net
        mapped = {}
        for key in trunk.state_dict():
            _, index, param = key.split(".")
            source = f"features.{index}.{param}"
            if source not in state_dict:
                raise ValueError(
                    f"LPIPS: the VGG-16 weights lack `{source}`; expected torchvision's vgg16 state dict "
                    f"(keys `features.N.weight`), from {VGG16_URL}."
                )
            mapped[key] = state_dict[source]
        trunk.load_state_dict(mapped, strict=True)

    def train(self, mode: bool = True) -> "LPIPSLoss":
        """Ignore ``mode``: a frozen metric is always evaluated in eval mode."""
        return super().train(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS distance averaged over the batch.

        Args:
            pred, target: ``(B, 3, H, W)`` sRGB images in [0, 1] (mapped to LPIPS' [-1, 1] here).
                ``H, W >= 16`` (VGG pools four times before its last LPIPS layer).

        Returns:
            Scalar tensor >= 0 (0 for identical inputs).
        """
        check_images("LPIPSLoss", pred=pred, target=target)
        if min(pred.shape[-2:]) < 16:
            raise ValueError(f"LPIPSLoss: images must be at least 16x16 px; found {tuple(pred.shape[-2:])}.")
        distance = self.net(pred * 2.0 - 1.0, target * 2.0 - 1.0)  # (B, 1, 1, 1)
        return distance.mean()
