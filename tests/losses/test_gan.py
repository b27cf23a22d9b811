"""Multilevel discriminator: level shapes, spectral norm, frozen backbone, normalisation, loss closed forms."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from losses.gan import (
    CV_TYPES,
    FrozenBackbone,
    build_discriminator,
    discriminator_loss,
    discriminator_loss_from_logits,
    generator_loss,
    real_label_for,
)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_output_shapes_per_level(tiny_discriminator):
    image = torch.rand(2, 3, 64, 96)
    logits = tiny_discriminator(image)
    backbone = tiny_discriminator.backbone
    assert backbone.reductions == [4, 8, 16, 32]
    assert [tuple(level.shape) for level in logits] == [(2, 1, 64 // r, 96 // r) for r in backbone.reductions]


@pytest.mark.parametrize("cv_type", ["dino", "clip"])
def test_vit_backbones_give_one_map_per_chosen_block(cv_type):
    disc = build_discriminator(cv_type, pretrained=False, tiny=True, head_channels=4)
    patch = disc.backbone.reductions[0]
    logits = disc(torch.rand(1, 3, 4 * patch, 3 * patch))  # not the model's default size: dynamic_img_size
    assert len(logits) == len(CV_TYPES[cv_type].tiny_out_indices)
    assert all(tuple(level.shape) == (1, 1, 4, 3) for level in logits)


def test_heads_are_spectrally_normalised(tiny_discriminator):
    convs = [m for m in tiny_discriminator.heads.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * len(tiny_discriminator.heads)
    assert all(parametrize.is_parametrized(conv, "weight") for conv in convs)
    # After a few power iterations (one per training-mode forward) the largest singular value of each
    # reshaped weight is ~1.
    tiny_discriminator.train()
    for _ in range(20):
        for head, channels in zip(tiny_discriminator.heads, tiny_discriminator.backbone.channels):
            head(torch.rand(1, channels, 2, 2))
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, rel=0.05)


def test_backbone_frozen_in_eval_and_gets_no_grads(tiny_discriminator):
    parent = nn.ModuleDict({"disc": tiny_discriminator})
    parent.train()
    assert not any(m.training for m in tiny_discriminator.backbone.modules())
    assert all(m.training for m in tiny_discriminator.heads.modules())
    assert all(not p.requires_grad for p in tiny_discriminator.backbone.parameters())
    assert {id(p) for p in tiny_discriminator.trainable_parameters()} == {
        id(p) for p in tiny_discriminator.parameters() if p.requires_grad
    }

    fake = torch.rand(1, 3, 64, 64, requires_grad=True)
    generator_loss(tiny_discriminator, fake).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0  # gradients pass through the backbone
    assert all(p.grad is None for p in tiny_discriminator.backbone.parameters())
    assert all(p.grad is not None for p in tiny_discriminator.trainable_parameters())


def test_input_normalised_with_pretrained_cfg(tiny_discriminator):
    backbone = tiny_discriminator.backbone
    cfg = backbone.model.pretrained_cfg
    assert backbone.mean.flatten().tolist() == pytest.approx(cfg["mean"])
    assert backbone.std.flatten().tolist() == pytest.approx(cfg["std"])
    image = torch.rand(1, 3, 64, 64)
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    expected = backbone.model((image - mean) / std)
    for got, want in zip(backbone(image), expected):
        torch.testing.assert_close(got, want)


def test_clip_uses_its_own_normalisation():
    disc = build_discriminator("clip", pretrained=False, tiny=True, head_channels=4)
    assert disc.backbone.mean.flatten().tolist() == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_discriminator_loss_uses_label_smoothing_0_8():
    # Constant logits c (real) and f (fake) on every level. With target y the BCE-with-logits is
    # y softplus(-z) + (1 - y) softplus(z); real uses y = 0.8, fake y = 0.
    c, f = 0.7, -0.3
    disc = lambda image: [torch.full((image.shape[0], 1, s, s), c if image.mean() > 0.5 else f) for s in (8, 4, 2)]
    real, fake = torch.ones(2, 3, 16, 16), torch.zeros(2, 3, 16, 16)
    expected = 0.8 * _softplus(-c) + 0.2 * _softplus(c) + _softplus(f)
    label = real_label_for("multilevel_sigmoid_s")
    assert label == 0.8
    assert discriminator_loss(disc, real, fake, label).item() == pytest.approx(expected, rel=1e-6)
    # Generator: non-saturating, target 1, no smoothing.
    assert generator_loss(disc, fake).item() == pytest.approx(_softplus(-f), rel=1e-6)


def test_levels_are_averaged_not_summed():
    real = [torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)]
    fake = [torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)]
    # At z = 0 every BCE term is log 2, whatever the target.
    assert discriminator_loss_from_logits(real, fake, 0.8).item() == pytest.approx(2 * math.log(2), rel=1e-6)


def test_discriminator_loss_detaches_fake(tiny_discriminator):
    fake = torch.rand(1, 3, 64, 64, requires_grad=True)
    discriminator_loss(tiny_discriminator, torch.rand(1, 3, 64, 64), fake).backward()
    assert fake.grad is None
    assert all(p.grad is not None for p in tiny_discriminator.trainable_parameters())


def test_trainable_state_round_trip(tiny_discriminator):
    state = tiny_discriminator.trainable_state_dict()
    assert state and not any(k.startswith("backbone") for k in state)
    torch.manual_seed(1)
    other = build_discriminator("convnext", pretrained=False, tiny=True, head_channels=8)
    other.load_trainable_state_dict(state)
    image = torch.rand(1, 3, 64, 64)
    other.backbone.load_state_dict(tiny_discriminator.backbone.state_dict())
    tiny_discriminator.eval(), other.eval()
    for a, b in zip(tiny_discriminator(image), other(image)):
        torch.testing.assert_close(a, b)


def test_unsupported_choices_list_the_supported_ones():
    with pytest.raises(ValueError, match=r"\['clip', 'convnext', 'dino'\]"):
        build_discriminator("swin", pretrained=False, tiny=True)
    with pytest.raises(ValueError, match="multilevel_sigmoid_s"):
        real_label_for("hinge")


def test_missing_pretrained_weights_raise_naming_the_flag():
    with pytest.raises(FileNotFoundError, match="gan_backbone_weights"):
        build_discriminator("convnext", weights_path="/nonexistent/convnext.safetensors")
    # Offline (tests/conftest.py): without a cached checkpoint the hub lookup fails at once (HubUnreachableError);
    # with one, the tiny architecture does not match it (RuntimeError). Either way the error names the flag,
    # never a silent random backbone.
    from models.hub import HubUnreachableError

    with pytest.raises((RuntimeError, HubUnreachableError), match="--gan_backbone_weights"):
        FrozenBackbone("convnext_atto.d2_in1k", pretrained=True, model_kwargs=CV_TYPES["convnext"].tiny_model_kwargs)


def test_uncached_backbone_fails_at_once_when_the_hub_is_unreachable(tmp_path, monkeypatch):
    """Offline (tests/conftest.py) with an empty cache: one error naming the hub id, the download command and
    the flag, before timm would retry the hub."""
    from huggingface_hub import constants

    from models.hub import HubUnreachableError

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(HubUnreachableError, match=r"hf download timm/convnext_atto\.d2_in1k .*--gan_backbone_weights"):
        FrozenBackbone("convnext_atto.d2_in1k", pretrained=True, model_kwargs=CV_TYPES["convnext"].tiny_model_kwargs)
