"""BokehDiff training objective (Zhu et al., ICCV 2025): reconstruction, edge, perceptual and GAN terms.

Generator objective, for a prediction ``pred``, ground truth ``target`` and all-in-focus input ``aif`` (all
``(B, 3, H, W)`` sRGB in [0, 1]):

    L = lambda_mse * MSE(pred, target)
      + lambda_edge  * L_edge(pred, target, aif)      if config.edge     (losses.edge)
      + lambda_lpips * LPIPS(pred, target)            if config.lpips    (losses.perceptual)
      + lambda_gan   * L_G(D(pred))                   if a GAN is configured and step >= gan_step

and the discriminator ``D`` (losses.gan) is trained with ``L_D = BCE(D(target), 0.8) + BCE(D(pred), 0)``.

Options that express the released training's definitions (``configs/train_published.yaml``; defaults keep
ours): ``signed_range`` computes MSE and the edge loss on images mapped to [-1, 1] (``2x - 1``: 4x the MSE,
2x the edge differences and doubled gradients inside the edge weights); ``edge_weight_mode="per_channel"``;
``clamp_pred`` clamps the prediction to [0, 1] before the edge, LPIPS and GAN terms (the MSE sees it
unclamped); ``gan_levels="last"``, ``gan_normalize=False``, ``gan_head="mlp"`` build the released
discriminator; ``gan_generator_target=0.8`` and ``gan_batch_reduction="sum"`` its loss.

Use from a training step::

    loss_fn = build_losses(args)                 # LossConfig, a dict of its fields, or an argparse.Namespace
    loss_fn.to(device)
    disc = accelerator.prepare(loss_fn.discriminator)      # if loss_fn.discriminator is not None
    total, terms = loss_fn(pred, target, aif, step=step, discriminator=disc)
    accelerator.backward(total); optimizer_g.step()
    if loss_fn.discriminator is not None:
        optimizer_d.zero_grad()
        d_total, d_terms = loss_fn.discriminator_loss(pred, target, discriminator=disc)
        accelerator.backward(d_total); optimizer_d.step()

``terms`` are Python floats for logging. Optimise the discriminator with
``loss_fn.discriminator.trainable_parameters()`` and checkpoint it with ``trainable_state_dict()``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from losses._checks import check_images
from losses.edge import EDGE_WEIGHT_MODES, EdgeLoss, edge_loss
from losses.gan import (
    CV_TYPES,
    GAN_BATCH_REDUCTIONS,
    GAN_HEADS,
    GAN_LEVELS,
    GAN_LOSS_TYPES,
    MultiLevelDiscriminator,
    build_discriminator,
    discriminator_loss,
    generator_loss,
    real_label_for,
)
from losses.perceptual import LPIPSLoss

__all__ = [
    "BokehLoss",
    "CV_TYPES",
    "EdgeLoss",
    "GAN_LOSS_TYPES",
    "LPIPSLoss",
    "LossConfig",
    "MultiLevelDiscriminator",
    "build_discriminator",
    "build_losses",
    "discriminator_loss",
    "edge_loss",
    "generator_loss",
]


@dataclass
class LossConfig:
    """Loss settings; field names match the training CLI flags (``--lpips``, ``--lambda_gan``, ...).

    Attributes:
        lambda_mse: weight of the pixel MSE (always on).
        edge, lambda_edge: enable and weight the multi-scale edge loss.
        lpips, lambda_lpips: enable and weight LPIPS-VGG.
        lpips_pretrained: load the ImageNet VGG trunk (must be True for real runs; False for tests).
        lpips_vgg_weights: local torchvision VGG-16 state dict; None uses the torch hub cache.
        gan_loss_type: None/"" disables the GAN; ``"multilevel_sigmoid_s"`` (real label 0.8, the paper's) or
            ``"multilevel_sigmoid"`` (real label 1.0).
        cv_type: discriminator backbone family: ``"convnext"`` (default), ``"dino"`` or ``"clip"``.
        lambda_gan: weight of the generator's adversarial term.
        gan_step: first optimisation step (0-based, inclusive) at which the adversarial term is added.
        gan_backbone: override the timm model name of ``cv_type``.
        gan_backbone_weights: local checkpoint of the backbone; None uses the Hugging Face hub cache.
        gan_pretrained: load pretrained backbone weights (must be True for real runs).
        gan_tiny: tiny random backbone (tests only; requires ``gan_pretrained=False``).
        gan_head_channels: hidden channels of each discriminator head (the released MLP head: 256).
        signed_range: MSE and edge loss on ``2x - 1`` images (the release's [-1, 1] convention).
        edge_weight_mode: ``"channel_mean"`` (ours) or ``"per_channel"`` (the release) edge weights.
        clamp_pred: clamp the prediction to [0, 1] before the edge, LPIPS and GAN terms (the release).
        gan_levels: ``"all"`` backbone levels or only the ``"last"`` (the release: ConvNeXt's last stage).
        gan_normalize: normalise the discriminator's input with the backbone's mean/std (the release: no).
        gan_head: ``"patch"`` or ``"mlp"`` (the release) heads.
        gan_generator_target: the generator's BCE target (1.0; the release: its real label 0.8).
        gan_batch_reduction: ``"mean"`` or ``"sum"`` (the release) of the GAN losses over the batch.
    """

    lambda_mse: float = 1.0
    edge: bool = False
    lambda_edge: float = 1.0
    lpips: bool = False
    lambda_lpips: float = 1.0
    lpips_pretrained: bool = True
    lpips_vgg_weights: str | None = None
    gan_loss_type: str | None = None
    cv_type: str = "convnext"
    lambda_gan: float = 0.1
    gan_step: int = 0
    gan_backbone: str | None = None
    gan_backbone_weights: str | None = None
    gan_pretrained: bool = True
    gan_tiny: bool = False
    gan_head_channels: int = 64
    signed_range: bool = False
    edge_weight_mode: str = "channel_mean"
    clamp_pred: bool = False
    gan_levels: str = "all"
    gan_normalize: bool = True
    gan_head: str = "patch"
    gan_generator_target: float = 1.0
    gan_batch_reduction: str = "mean"

    def __post_init__(self) -> None:
        for name, allowed in (("edge_weight_mode", EDGE_WEIGHT_MODES), ("gan_levels", GAN_LEVELS),
                              ("gan_head", GAN_HEADS), ("gan_batch_reduction", GAN_BATCH_REDUCTIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"`--{name}` must be one of {list(allowed)}; found {getattr(self, name)!r}.")
        if not 0.0 <= self.gan_generator_target <= 1.0:
            raise ValueError(f"`--gan_generator_target` must be in [0, 1]; found {self.gan_generator_target}.")
        if not self.gan_loss_type:
            self.gan_loss_type = None
        else:
            real_label_for(self.gan_loss_type)  # raises with the supported list
            if self.cv_type not in CV_TYPES:
                raise ValueError(f"`--cv_type` must be one of {sorted(CV_TYPES)}; found {self.cv_type!r}.")
        for name in ("lambda_mse", "lambda_edge", "lambda_lpips", "lambda_gan", "gan_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"`--{name}` must be >= 0; found {getattr(self, name)}.")

    @property
    def gan_enabled(self) -> bool:
        return self.gan_loss_type is not None

    @classmethod
    def from_mapping(cls, values: Mapping) -> "LossConfig":
        """Build from a dict of field values; unknown keys are an error (typos must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"LossConfig: unknown keys {unknown}; known keys: {sorted(known)}.")
        return cls(**values)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "LossConfig":
        """Pick the loss fields from a parsed training CLI (other attributes belong to other parts)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})


class BokehLoss(nn.Module):
    """The generator objective and the discriminator loss of BokehDiff; see the package docstring.

    Submodules: ``edge_loss`` (or None), ``lpips`` (:class:`LPIPSLoss` or None) and ``discriminator``
    (:class:`MultiLevelDiscriminator` or None). The frozen parts have no trainable parameters; the
    discriminator's heads are trainable and belong in their own optimiser.

    Args:
        config: the loss settings.
        lpips_module, discriminator: prebuilt modules to use instead of building them from ``config``.
    """

    def __init__(
        self,
        config: LossConfig,
        *,
        lpips_module: nn.Module | None = None,
        discriminator: MultiLevelDiscriminator | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.edge_loss = EdgeLoss(weight_mode=config.edge_weight_mode) if config.edge else None
        self.lpips = None
        if config.lpips:
            self.lpips = lpips_module or LPIPSLoss(config.lpips_pretrained, config.lpips_vgg_weights)
        self.discriminator = None
        self.real_label = None
        if config.gan_enabled:
            self.real_label = real_label_for(config.gan_loss_type)
            self.discriminator = discriminator or build_discriminator(
                config.cv_type,
                pretrained=config.gan_pretrained,
                weights_path=config.gan_backbone_weights,
                backbone=config.gan_backbone,
                tiny=config.gan_tiny,
                head_channels=config.gan_head_channels,
                levels=config.gan_levels,
                normalize=config.gan_normalize,
                head=config.gan_head,
            )

    def gan_active(self, step: int) -> bool:
        """Whether the generator's adversarial term is added at optimisation step ``step`` (0-based)."""
        return self.discriminator is not None and step >= self.config.gan_step

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        aif: torch.Tensor,
        *,
        step: int = 0,
        discriminator: nn.Module | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Generator objective.

        Args:
            pred: prediction ``(B, 3, H, W)``, sRGB in [0, 1] (may overshoot: decoder output), differentiable.
            target: ground-truth bokeh ``(B, 3, H, W)``, sRGB in [0, 1].
            aif: all-in-focus input ``(B, 3, H, W)``, sRGB in [0, 1] (edge weights only).
            step: current optimisation step (gates the adversarial term at ``gan_step``).
            discriminator: the (possibly DDP-wrapped) discriminator to call; default ``self.discriminator``.

        Returns:
            ``(total, terms)``: the scalar weighted total, and unweighted floats ``{"mse", "edge"?,
            "lpips"?, "gan_g"?, "total"}`` (a key is present iff that term was computed).
        """
        config = self.config
        check_images("BokehLoss", pred=pred, target=target, aif=aif)
        # The release computes MSE and edge on [-1, 1] images; the map is affine, so only the scale changes.
        pixel = (lambda x: x * 2.0 - 1.0) if config.signed_range else (lambda x: x)
        mse = F.mse_loss(pixel(pred), pixel(target))
        total = config.lambda_mse * mse
        terms = {"mse": mse.detach()}
        # The release clamps after the MSE: the other terms see a displayable image (no gradient outside it).
        shown = pred.clamp(0.0, 1.0) if config.clamp_pred else pred
        if self.edge_loss is not None:
            value = self.edge_loss(pixel(shown), pixel(target), pixel(aif))
            total = total + config.lambda_edge * value
            terms["edge"] = value.detach()
        if self.lpips is not None:
            value = self.lpips(shown, target)
            total = total + config.lambda_lpips * value
            terms["lpips"] = value.detach()
        if self.gan_active(step):
            value = generator_loss(discriminator or self.discriminator, shown, config.gan_generator_target,
                                   config.gan_batch_reduction)
            total = total + config.lambda_gan * value
            terms["gan_g"] = value.detach()
        terms["total"] = total.detach()
        return total, {name: float(value) for name, value in terms.items()}

    def discriminator_loss(
        self, pred: torch.Tensor, target: torch.Tensor, *, discriminator: nn.Module | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Discriminator loss ``BCE(D(target), real_label) + BCE(D(pred.detach()), 0)``.

        Args:
            pred: generated images ``(B, 3, H, W)`` in [0, 1] (detached here). target: real images, same shape.
            discriminator: the (possibly DDP-wrapped) discriminator; default ``self.discriminator``.

        Returns:
            ``(loss, {"gan_d": float})``.
        """
        if self.discriminator is None:
            raise RuntimeError(
                "BokehLoss.discriminator_loss: no GAN is configured; set `--gan_loss_type "
                f"{next(iter(GAN_LOSS_TYPES))}` to train a discriminator."
            )
        loss = discriminator_loss(discriminator or self.discriminator, target, pred, self.real_label,
                                  self.config.gan_batch_reduction)
        return loss, {"gan_d": float(loss.detach())}


def build_losses(config: LossConfig | Mapping | argparse.Namespace) -> BokehLoss:
    """Build :class:`BokehLoss` from a :class:`LossConfig`, a dict of its fields (unknown keys raise), or
    a parsed training CLI namespace (its loss-related attributes are used)."""
    if isinstance(config, LossConfig):
        resolved = config
    elif isinstance(config, argparse.Namespace):
        resolved = LossConfig.from_namespace(config)
    elif isinstance(config, Mapping):
        resolved = LossConfig.from_mapping(config)
    else:
        raise TypeError(
            f"build_losses: expected LossConfig, dict or argparse.Namespace; found {type(config).__name__}."
        )
    return BokehLoss(resolved)
