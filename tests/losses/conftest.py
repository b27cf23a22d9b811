"""Fixtures shared by the loss tests: networks that are slow to build are built once per session."""

import pytest
import torch

from losses.gan import build_discriminator
from losses.perceptual import LPIPSLoss


@pytest.fixture(scope="session")
def random_lpips() -> LPIPSLoss:
    """LPIPS with a random VGG trunk (no download); its lin weights ship with the lpips package."""
    torch.manual_seed(0)
    return LPIPSLoss(pretrained_backbone=False)


@pytest.fixture
def tiny_discriminator():
    """A fresh, seeded tiny ConvNeXt discriminator (random frozen backbone, 4 levels)."""
    torch.manual_seed(0)
    return build_discriminator("convnext", pretrained=False, tiny=True, head_channels=8)
