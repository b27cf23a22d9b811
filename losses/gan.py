"""Multilevel discriminator on a frozen pretrained backbone, and its GAN losses.

BokehDiff (Zhu et al., ICCV 2025) adds an adversarial term to the one-step generator's objective, using a
discriminator built on a frozen pretrained vision model with light trainable heads on several of its
feature levels and a sigmoid (BCE) loss with one-sided label smoothing (the ``multilevel_sigmoid_s`` loss of
"Ensembling Off-the-shelf Models for GAN Training", Kumari et al., CVPR 2022).

Design here (our own implementation):

* **Backbone** (:class:`FrozenBackbone`): a timm model built with ``features_only=True``; ``cv_type``
  picks it: ``"convnext"`` (default, ConvNeXt-B, 4 stages at strides 4..32), ``"dino"`` (DINOv2 ViT-S/14) or
  ``"clip"`` (CLIP ViT-B/16 image tower), the ViTs giving 4 intermediate blocks. Inputs in [0, 1] are
  normalised with the model's own ``pretrained_cfg`` mean/std (ImageNet for ConvNeXt/DINOv2, OpenAI's for
  CLIP). Parameters are frozen and the module is pinned to eval mode; gradients still flow *through* it to
  the generator's image.
* **Heads** (:class:`PatchHead`): per level, a spectrally normalised 3x3 conv, LeakyReLU(0.2), and a
  spectrally normalised 1x1 conv to one logit per feature-map position (a patch discriminator per level).
  Spectral norm (Miyato et al., ICLR 2018) bounds each head's Lipschitz constant, which keeps the
  adversarial gradient from exploding against a strong frozen feature extractor.
* **Losses**: with ``BCE(z, y) = -(y log sigmoid(z) + (1 - y) log(1 - sigmoid(z)))`` averaged over the
  positions of one level and then averaged over levels (each level counts equally whatever its size),

      L_D = BCE(D(real), real_label) + BCE(D(fake), 0)        real_label = 0.8 for multilevel_sigmoid_s
      L_G = BCE(D(fake), 1)                                   non-saturating generator loss

  The smoothing is one-sided (only the real target is softened), as in Salimans et al. 2016: it stops the
  discriminator from becoming over-confident on real images without rewarding fakes.

Options reproducing the released training's discriminator (``configs/train_published.yaml``): the backbone
``convnext_base.fb_in22k`` with ``levels="last"`` (its ``forward_features``), ``normalize=False`` (the [0, 1]
image fed as is), ``head="mlp"`` (:class:`MLPHead`, 256 hidden), and in the losses the generator target 0.8 and
``batch_reduction="sum"``.

Pretrained weights are loaded from the Hugging Face hub cache (timm's default source) or a local file
(``weights_path``, CLI ``--gan_backbone_weights``). A real run never falls back to random weights. With the
hub unreachable, a cached checkpoint is read from the cache and an uncached one fails at once (``models/hub.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from losses._checks import check_images

# Target of real images per loss type: `_s` = one-sided label smoothing at 0.8.
GAN_LOSS_TYPES: dict[str, float] = {"multilevel_sigmoid_s": 0.8, "multilevel_sigmoid": 1.0}
#: Feature levels the heads read: every level the backbone exposes, or only its last (deepest) one.
GAN_LEVELS = ("all", "last")
#: Head per level: ``patch`` (3x3 conv, LeakyReLU, 1x1 conv) or ``mlp`` (a per-position two-layer perceptron).
GAN_HEADS = ("patch", "mlp")
#: How per-sample losses are combined over the batch: ``mean`` or ``sum`` (the released training's loss sums).
GAN_BATCH_REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one ``cv_type``: timm name, feature levels, extra kwargs, and the tiny test variant."""

    model_name: str
    out_indices: tuple[int, ...] | None = None  # None: every level timm exposes
    model_kwargs: dict = field(default_factory=dict)
    tiny_model_name: str = ""
    tiny_out_indices: tuple[int, ...] | None = None
    tiny_model_kwargs: dict = field(default_factory=dict)


# ViTs get `dynamic_img_size` so training crops of any size work (the position embedding is resampled).
CV_TYPES: dict[str, BackboneSpec] = {
    "convnext": BackboneSpec(
        model_name="convnext_base.fb_in22k_ft_in1k",
        tiny_model_name="convnext_atto",
        tiny_model_kwargs={"dims": (8, 16, 32, 64), "depths": (1, 1, 1, 1)},
    ),
    "dino": BackboneSpec(
        model_name="vit_small_patch14_dinov2.lvd142m",
        out_indices=(2, 5, 8, 11),
        model_kwargs={"dynamic_img_size": True},
        tiny_model_name="vit_small_patch14_dinov2",
        tiny_out_indices=(1, 3),
        tiny_model_kwargs={"dynamic_img_size": True, "embed_dim": 16, "depth": 4, "num_heads": 2, "img_size": 56},
    ),
    "clip": BackboneSpec(
        model_name="vit_base_patch16_clip_224.openai",
        out_indices=(2, 5, 8, 11),
        model_kwargs={"dynamic_img_size": True},
        tiny_model_name="vit_base_patch16_clip_224",
        tiny_out_indices=(1, 3),
        tiny_model_kwargs={"dynamic_img_size": True, "embed_dim": 16, "depth": 4, "num_heads": 2, "img_size": 64},
    ),
}


def _cached_backbone_file(model_name: str) -> str | None:
    """When the hub is unreachable, the cached checkpoint of timm model ``model_name`` (so timm reads a local file
    instead of retrying the hub), or :class:`models.hub.HubUnreachableError` at once if it is not cached.
    ``None`` when the hub is reachable or the weights do not come from the hub (timm then loads as usual)."""
    import timm

    from models.hub import cache_only, local_source

    hub_id = getattr(timm.models.get_pretrained_cfg(model_name), "hf_hub_id", None)
    if not hub_id or not cache_only(hub_id):
        return None
    folder = Path(local_source(hub_id, f"GAN backbone of timm model {model_name!r}",
                               hint="--gan_backbone_weights PATH (its model.safetensors)"))
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors"):
        if (folder / name).is_file():
            return str(folder / name)
    return None  # an unusual cached layout: timm decides (and fails with its own message)


class FrozenBackbone(nn.Module):
    """A frozen timm feature pyramid that takes ``(B, 3, H, W)`` images in [0, 1].

    Args:
        model_name: timm model name (with pretrained tag, e.g. ``"convnext_base.fb_in22k_ft_in1k"``).
        pretrained: load pretrained weights (hub cache or ``weights_path``); ``False`` is for tests only.
        weights_path: local checkpoint file (``.safetensors``/``.pth``/``.bin``) for ``model_name``.
        out_indices: feature levels to return (timm's ``out_indices``); ``None`` returns all of them.
        model_kwargs: extra ``timm.create_model`` arguments (architecture overrides for tiny test models).
        normalize: map [0, 1] inputs with the model's mean/std first (``False``: the [0, 1] image goes in as
            is, as in the released training's ConvNeXt discriminator).

    Attributes:
        channels: feature channels per level; ``reductions``: stride of each level in input pixels.
        mean, std: ``(1, 3, 1, 1)`` normalisation from the model's ``pretrained_cfg`` (non-persistent).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = True,
        weights_path: str | os.PathLike | None = None,
        out_indices: Sequence[int] | None = None,
        model_kwargs: dict | None = None,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        import timm

        kwargs = dict(model_kwargs or {}, features_only=True)
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        if weights_path is not None:
            path = Path(weights_path)
            if not path.is_file():
                raise FileNotFoundError(
                    f"GAN: `gan_backbone_weights` points to {str(path)!r}, which is not a file. Expected a "
                    f"checkpoint of timm model {model_name!r} (e.g. its model.safetensors from the hub)."
                )
            if not pretrained:
                raise ValueError("GAN: `gan_backbone_weights` was given but `pretrained` is False; drop one.")
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        elif pretrained:
            cached = _cached_backbone_file(model_name)
            if cached is not None:
                kwargs["pretrained_cfg_overlay"] = {"file": cached}
        try:
            self.model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
        except Exception as error:  # hub offline, missing cache, bad file: all need the same remedy
            if not pretrained:
                raise
            raise RuntimeError(
                f"GAN: could not load pretrained weights for discriminator backbone {model_name!r} "
                f"({type(error).__name__}: {error}). Populate the Hugging Face hub cache ($HF_HOME) with it, "
                "or download the checkpoint and pass `--gan_backbone_weights PATH` "
                "(LossConfig.gan_backbone_weights). Refusing to train a discriminator on a random backbone."
            ) from error

        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.channels: list[int] = list(self.model.feature_info.channels())
        self.reductions: list[int] = list(self.model.feature_info.reduction())
        self.model_name = model_name
        self.apply_normalization = bool(normalize)
        self.model.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "FrozenBackbone":
        """Ignore ``mode``: the frozen backbone's norm/dropout layers always run as at inference."""
        return super().train(False)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """[0, 1] sRGB -> the backbone's input space: ``(image - mean) / std``, or unchanged with
        ``normalize=False``."""
        if not self.apply_normalization:
            return image
        return (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, H, W)`` in [0, 1] -> list of ``(B, channels[l], ~H / reductions[l], ~W / reductions[l])``."""
        return list(self.model(self.normalize(image)))


class PatchHead(nn.Module):
    """Per-level patch classifier: ``(B, C, h, w)`` features -> ``(B, 1, h, w)`` logits.

    ``kernel_size`` is the first convolution's (odd; ``1`` makes it :class:`MLPHead`)."""

    def __init__(self, in_channels: int, hidden_channels: int = 64, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = spectral_norm(nn.Conv2d(in_channels, hidden_channels, kernel_size=kernel_size,
                                            padding=kernel_size // 2))
        self.act = nn.LeakyReLU(0.2)
        self.out = spectral_norm(nn.Conv2d(hidden_channels, 1, kernel_size=1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.conv(features)))


class MLPHead(PatchHead):
    """Per-position two-layer perceptron: ``(B, C, h, w)`` features -> ``(B, 1, h, w)`` logits.

    ``logit = W2 LeakyReLU_0.2(W1 f + b1) + b2`` at every feature-map position, both layers spectrally
    normalised; the head of the released training's ConvNeXt discriminator (hidden width 256). Written as a
    :class:`PatchHead` with a 1x1 first convolution, which applies the same linear maps to each position.
    """

    def __init__(self, in_channels: int, hidden_channels: int = 256) -> None:
        super().__init__(in_channels, hidden_channels, kernel_size=1)


class MultiLevelDiscriminator(nn.Module):
    """Frozen backbone + one trainable spectrally normalised head (:class:`PatchHead` or :class:`MLPHead`) per
    feature level.

    ``forward(image)`` takes ``(B, 3, H, W)`` images in [0, 1] and returns one logit map
    ``(B, 1, h_l, w_l)`` per level. Only the heads train: use :meth:`trainable_parameters` for the optimiser
    and :meth:`trainable_state_dict` / :meth:`load_trainable_state_dict` for checkpoints (the frozen
    backbone is rebuilt from its pretrained weights, so it need not be saved).
    """

    def __init__(self, backbone: FrozenBackbone, head_channels: int = 64, head: str = "patch") -> None:
        super().__init__()
        if head not in GAN_HEADS:
            raise ValueError(f"GAN: unsupported head {head!r}; supported: {list(GAN_HEADS)}.")
        self.backbone = backbone
        head_class = PatchHead if head == "patch" else MLPHead
        self.heads = nn.ModuleList(head_class(c, head_channels) for c in backbone.channels)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        check_images("MultiLevelDiscriminator", image=image)
        features = self.backbone(image)
        return [head(feature) for head, feature in zip(self.heads, features)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The heads' parameters (the backbone's are frozen)."""
        return list(self.heads.parameters())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the heads only (spectral-norm ``u``/``v`` vectors included, so resume is exact)."""
        return self.heads.state_dict()

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.heads.load_state_dict(state_dict, strict=True)


def build_discriminator(
    cv_type: str = "convnext",
    *,
    pretrained: bool = True,
    weights_path: str | os.PathLike | None = None,
    backbone: str | None = None,
    tiny: bool = False,
    head_channels: int = 64,
    levels: str = "all",
    normalize: bool = True,
    head: str = "patch",
) -> MultiLevelDiscriminator:
    """Build the multilevel discriminator for ``cv_type`` (``"convnext"``, ``"dino"`` or ``"clip"``).

    Args:
        cv_type: backbone family (CLI ``--cv_type``).
        pretrained: load pretrained backbone weights; must be ``True`` for real runs.
        weights_path: local backbone checkpoint (CLI ``--gan_backbone_weights``) instead of the hub cache.
        backbone: override the timm model name of ``cv_type`` (same family, e.g. ``"convnext_small.fb_in1k"``).
        tiny: a few-thousand-parameter random backbone of the same family, for tests (forces no weights).
        head_channels: hidden channels of each head.
        levels: ``"all"`` feature levels of the family, or only the ``"last"`` (deepest) one (the released
            ConvNeXt discriminator reads only the last stage, ``forward_features``).
        normalize: normalise inputs with the backbone's mean/std (``False``: the released discriminator).
        head: ``"patch"`` (:class:`PatchHead`) or ``"mlp"`` (:class:`MLPHead`, the released head).
    """
    if cv_type not in CV_TYPES:
        raise ValueError(f"GAN: unsupported `cv_type` {cv_type!r}; supported: {sorted(CV_TYPES)}.")
    if levels not in GAN_LEVELS:
        raise ValueError(f"GAN: unsupported `gan_levels` {levels!r}; supported: {list(GAN_LEVELS)}.")
    spec = CV_TYPES[cv_type]

    def pick(out_indices):
        if levels == "all":
            return out_indices
        return (out_indices[-1],) if out_indices else (-1,)  # timm counts -1 as the last stage

    if tiny:
        if pretrained or weights_path is not None:
            raise ValueError("GAN: a `tiny` discriminator backbone is random; pass pretrained=False, no weights.")
        net = FrozenBackbone(spec.tiny_model_name, False, None, pick(spec.tiny_out_indices), spec.tiny_model_kwargs,
                             normalize=normalize)
    else:
        net = FrozenBackbone(backbone or spec.model_name, pretrained, weights_path, pick(spec.out_indices),
                             spec.model_kwargs, normalize=normalize)
    return MultiLevelDiscriminator(net, head_channels, head)


def real_label_for(gan_loss_type: str) -> float:
    """Target probability of real images for ``gan_loss_type`` (0.8 for ``multilevel_sigmoid_s``)."""
    if gan_loss_type not in GAN_LOSS_TYPES:
        raise ValueError(f"GAN: unsupported `gan_loss_type` {gan_loss_type!r}; supported: {sorted(GAN_LOSS_TYPES)}.")
    return GAN_LOSS_TYPES[gan_loss_type]


def _check_reduction(batch_reduction: str) -> None:
    if batch_reduction not in GAN_BATCH_REDUCTIONS:
        raise ValueError(f"GAN: unsupported batch reduction {batch_reduction!r}; supported: {list(GAN_BATCH_REDUCTIONS)}.")


def multilevel_bce(logits: Sequence[torch.Tensor], target: float, batch_reduction: str = "mean") -> torch.Tensor:
    """Mean over levels of each level's BCE-with-logits against a constant ``target``.

    Per level, the BCE is averaged over the positions of each sample, then averaged (``"mean"``) or summed
    (``"sum"``, the released training's loss, which grows with the batch size) over the batch.
    """
    _check_reduction(batch_reduction)
    if len(logits) == 0:
        raise ValueError("GAN: the discriminator returned no levels.")
    losses = []
    for level in logits:
        bce = F.binary_cross_entropy_with_logits(level.float(), torch.full_like(level, target, dtype=torch.float32),
                                                 reduction="none")
        per_sample = bce.flatten(1).mean(dim=1)
        losses.append(per_sample.sum() if batch_reduction == "sum" else per_sample.mean())
    return torch.stack(losses).mean()


def discriminator_loss_from_logits(
    real_logits: Sequence[torch.Tensor], fake_logits: Sequence[torch.Tensor], real_label: float = 0.8,
    batch_reduction: str = "mean",
) -> torch.Tensor:
    """``L_D = BCE(real, real_label) + BCE(fake, 0)`` (one-sided smoothing); scalar float32."""
    return multilevel_bce(real_logits, real_label, batch_reduction) + multilevel_bce(fake_logits, 0.0, batch_reduction)


def generator_loss_from_logits(fake_logits: Sequence[torch.Tensor], target: float = 1.0,
                               batch_reduction: str = "mean") -> torch.Tensor:
    """Non-saturating ``L_G = BCE(fake, target)``: by default the generator is pushed to full "real" (1, no
    smoothing); the released training used the smoothed real label 0.8 here too."""
    return multilevel_bce(fake_logits, target, batch_reduction)


Discriminator = Callable[[torch.Tensor], Sequence[torch.Tensor]]


def discriminator_loss(
    discriminator: Discriminator, real: torch.Tensor, fake: torch.Tensor, real_label: float = 0.8,
    batch_reduction: str = "mean",
) -> torch.Tensor:
    """Discriminator loss on image batches; ``fake`` is detached so no gradient reaches the generator.

    Args:
        discriminator: a :class:`MultiLevelDiscriminator` (or its DDP wrapper).
        real: ground-truth bokeh images ``(B, 3, H, W)`` in [0, 1]. fake: generated, same shape.
        real_label: target for real images (``real_label_for(gan_loss_type)``).
        batch_reduction: ``"mean"`` or ``"sum"`` over the batch (:func:`multilevel_bce`).
    """
    check_images("discriminator_loss", real=real, fake=fake)
    return discriminator_loss_from_logits(discriminator(real), discriminator(fake.detach()), real_label,
                                          batch_reduction)


def generator_loss(discriminator: Discriminator, fake: torch.Tensor, target: float = 1.0,
                   batch_reduction: str = "mean") -> torch.Tensor:
    """Generator's adversarial loss on ``fake`` ``(B, 3, H, W)`` in [0, 1]; gradients flow to ``fake``.

    The heads also receive gradients from this loss; the training step must zero the discriminator's
    gradients before its own backward (``optimizer_d.zero_grad()``), as usual for alternating GAN updates.
    """
    check_images("generator_loss", fake=fake)
    return generator_loss_from_logits(discriminator(fake), target, batch_reduction)
