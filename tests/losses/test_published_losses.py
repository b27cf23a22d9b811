"""The losses of configs/train_published.yaml equal the released training's formulas, written out here from the
release's train_lora_otf.py and vision_aided_loss (convnext discriminator, multilevel_sigmoid_s) on fixed tensors.

The release works on [-1, 1] images (``x = 2 s - 1`` for our [0, 1] sRGB ``s``): it takes the MSE of the raw
prediction, then clamps the prediction to [-1, 1] for the edge loss, LPIPS and the GAN (which sees ``.5 + .5 x``).
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.config import parse_args
from training.loop import build_losses_from_args

PRESET = str(Path(__file__).resolve().parents[2] / "configs" / "train_published.yaml")


@pytest.fixture(scope="module")
def preset_loss():
    """The preset's BokehLoss, offline: random LPIPS trunk, tiny random ConvNeXt trunk, GAN active from step 0."""
    args = parse_args(["--config", PRESET, "--train_data_dir", "x", "--output_dir", "y", "--no-lpips_pretrained",
                       "--no-gan_pretrained", "--gan_tiny", "--gan_step", "0"])
    torch.manual_seed(0)
    loss = build_losses_from_args(args)
    loss.discriminator.eval()  # fixed spectral-norm weights, so both computations see the same heads
    return loss, args


def _images(seed=0, shape=(2, 3, 48, 60)):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(shape, generator=g) * 1.4 - 0.2  # decoder output overshoots [0, 1]
    target, aif = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
    return pred, target, aif


def _release_edge(pred_im, bokeh_image, aif_image):
    """train_lora_otf.py's multi-scale edge loss on [-1, 1] tensors (pred already clamped), as written there."""
    def term(p, b, a, factor):
        nb1, nb2 = b[..., :-1] - b[..., 1:], b[..., :-1, :] - b[..., 1:, :]
        na1, na2 = a[..., :-1] - a[..., 1:], a[..., :-1, :] - a[..., 1:, :]
        w1 = factor * (1 + torch.maximum(nb1.abs(), na1.abs()))
        w2 = factor * (1 + torch.maximum(nb2.abs(), na2.abs()))
        return (torch.abs(p[..., :-1] - p[..., 1:] - nb1) * w1).mean() + (
            torch.abs(p[..., :-1, :] - p[..., 1:, :] - nb2) * w2).mean()

    loss = term(pred_im, bokeh_image, aif_image, 1.0)
    for resamp in (2, 3):
        down = [F.interpolate(x, scale_factor=1 / resamp, mode="area") for x in (pred_im, bokeh_image, aif_image)]
        loss = loss + term(*down, 1 / resamp)
    return loss


def _release_logits(disc, image01):
    """vision_aided_loss ConvNext + MLPD: timm forward_features (last stage) of the un-normalised image, then
    Linear(C, 256) -> LeakyReLU(0.2) -> Linear(256, 1) at every position; (B, h, w, 1)."""
    import timm

    trunk = timm.create_model("convnext_atto", pretrained=False, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1))
    ours = {k.replace("stem_", "stem.").replace("stages_", "stages."): v
            for k, v in disc.backbone.model.state_dict().items()}
    missing = trunk.load_state_dict(ours, strict=False).missing_keys
    assert all(k.startswith("head.") for k in missing)  # the classifier head is not part of forward_features
    trunk.eval()
    features = trunk.forward_features(image01).permute(0, 2, 3, 1)
    head = disc.heads[0]
    w1, w2 = head.conv.weight.flatten(1), head.out.weight.flatten(1)  # spectrally normalised (eval: fixed)
    hidden = F.leaky_relu(F.linear(features, w1, head.conv.bias), 0.2)
    return F.linear(hidden, w2, head.out.bias)


def _release_bce(logits, target):
    """multilevel_loss(alpha=0.8) through losses_list: it iterates over the first axis (the batch), so the
    result is the sum over images of each image's mean BCE over positions."""
    total = 0
    for each in logits:
        total = total + F.binary_cross_entropy_with_logits(each, torch.full_like(each, target), reduction="none").mean()
    return total


@torch.no_grad()
def test_preset_discriminator_is_the_released_one(preset_loss):
    loss, args = preset_loss
    disc = loss.discriminator
    assert len(disc.heads) == 1 and disc.backbone.reductions == [32]  # the last stage only
    assert not disc.backbone.apply_normalization
    assert args.gan_backbone == "convnext_base.fb_in22k" and args.gan_head_channels == 256
    image = torch.rand(2, 3, 64, 96)
    ours = disc(image)[0].permute(0, 2, 3, 1)
    torch.testing.assert_close(ours, _release_logits(disc, image), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_preset_losses_equal_the_released_formulas(preset_loss):
    loss, _ = preset_loss
    pred, target, aif = _images()
    total, terms = loss(pred, target, aif, step=0)

    pred_im, bokeh_image, aif_image = pred * 2 - 1, target * 2 - 1, aif * 2 - 1
    loss_mse = torch.mean((pred_im - bokeh_image) ** 2)
    pred_im = torch.clamp(pred_im, -1, 1)
    loss_edge = _release_edge(pred_im, bokeh_image, aif_image)
    loss_lpips = loss.lpips.net(pred_im, bokeh_image).mean()
    loss_g = _release_bce(_release_logits(loss.discriminator, 0.5 + 0.5 * pred_im), 0.8)  # for_G: target 0.8
    release_total = loss_mse * 1.0 + loss_edge + loss_lpips * 5 + loss_g * 0.1

    assert terms["mse"] == pytest.approx(float(loss_mse), rel=1e-6)
    assert terms["edge"] == pytest.approx(float(loss_edge), rel=1e-5)
    assert terms["lpips"] == pytest.approx(float(loss_lpips), rel=1e-5)
    assert terms["gan_g"] == pytest.approx(float(loss_g), rel=1e-5)
    assert float(total) == pytest.approx(float(release_total), rel=1e-5)
    # The conventions matter: [0, 1] MSE is a quarter, and channel-mean edge weights give another value.
    assert float(loss_mse) == pytest.approx(4 * float(F.mse_loss(pred, target)), rel=1e-6)


@torch.no_grad()
def test_preset_discriminator_loss_equals_the_released_formula(preset_loss):
    loss, _ = preset_loss
    pred, target, _ = _images(seed=1)
    pred_d = (0.5 + 0.5 * (pred * 2 - 1).clamp(-1, 1))  # the release: .5 + .5 * pred.detach().clamp_(-1, 1)
    d_loss, _ = loss.discriminator_loss(pred.clamp(0, 1), target)
    real = _release_bce(_release_logits(loss.discriminator, target), 0.8)
    fake = _release_bce(_release_logits(loss.discriminator, pred_d), 0.0)
    assert float(d_loss) == pytest.approx(float(real + fake), rel=1e-5)


def test_edge_loss_on_a_size_that_scale_factor_rounds():
    """64 px / 3: F.interpolate(scale_factor=1/3) and our size = H // 3 pick the same 21 px."""
    from losses.edge import edge_loss

    pred, target, aif = _images(seed=2, shape=(1, 3, 64, 64))
    ours = edge_loss(pred * 2 - 1, target * 2 - 1, aif * 2 - 1, weight_mode="per_channel")
    assert float(ours) == pytest.approx(float(_release_edge(pred * 2 - 1, target * 2 - 1, aif * 2 - 1)), rel=1e-5)
    other = edge_loss(pred * 2 - 1, target * 2 - 1, aif * 2 - 1)
    assert abs(float(other) - float(ours)) > 1e-3  # the channel-mean weights are a different loss


def test_options_are_validated():
    from losses import LossConfig, build_discriminator

    with pytest.raises(ValueError, match="edge_weight_mode"):
        LossConfig(edge_weight_mode="per_pixel")
    with pytest.raises(ValueError, match="gan_generator_target"):
        LossConfig(gan_generator_target=1.5)
    with pytest.raises(ValueError, match="gan_levels"):
        build_discriminator("convnext", pretrained=False, tiny=True, levels="first")
