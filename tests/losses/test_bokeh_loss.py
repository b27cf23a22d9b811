"""Combined objective: term dict, weights, GAN gating at gan_step, config parsing, discriminator step."""

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from losses import BokehLoss, LossConfig, build_losses
from losses.edge import edge_loss


def _batch(size=32):
    torch.manual_seed(3)
    pred = torch.rand(2, 3, size, size, requires_grad=True)
    return pred, torch.rand(2, 3, size, size), torch.rand(2, 3, size, size)


def test_mse_only_by_default():
    pred, target, aif = _batch()
    total, terms = build_losses({})(pred, target, aif)
    assert set(terms) == {"mse", "total"}
    assert terms["mse"] == pytest.approx(F.mse_loss(pred, target).item())
    assert terms["total"] == pytest.approx(total.item())


def test_all_terms_weighted_and_gan_gated_by_step(random_lpips, tiny_discriminator):
    config = LossConfig(
        lambda_mse=2.0, edge=True, lambda_edge=0.5, lpips=True, lambda_lpips=0.25,
        gan_loss_type="multilevel_sigmoid_s", lambda_gan=0.1, gan_step=5,
    )
    loss_fn = BokehLoss(config, lpips_module=random_lpips, discriminator=tiny_discriminator)
    pred, target, aif = _batch()

    total, terms = loss_fn(pred, target, aif, step=4)
    assert set(terms) == {"mse", "edge", "lpips", "total"}  # before gan_step: no adversarial term
    assert terms["edge"] == pytest.approx(edge_loss(pred, target, aif).item(), rel=1e-6)
    assert terms["lpips"] == pytest.approx(random_lpips(pred, target).item(), rel=1e-6)
    expected = 2.0 * terms["mse"] + 0.5 * terms["edge"] + 0.25 * terms["lpips"]
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert all(isinstance(v, float) for v in terms.values())

    total, terms = loss_fn(pred, target, aif, step=5)
    assert set(terms) == {"mse", "edge", "lpips", "gan_g", "total"}
    assert total.item() == pytest.approx(expected + 0.1 * terms["gan_g"], rel=1e-5)
    total.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert not loss_fn.gan_active(4) and loss_fn.gan_active(5)


def test_discriminator_step_uses_config_label(tiny_discriminator):
    loss_fn = BokehLoss(LossConfig(gan_loss_type="multilevel_sigmoid_s"), discriminator=tiny_discriminator)
    assert loss_fn.real_label == 0.8
    calls = []

    def constant_disc(image):
        calls.append(image.requires_grad)
        return [torch.zeros(image.shape[0], 1, 4, 4)]

    pred, target, _ = _batch()
    loss, terms = loss_fn.discriminator_loss(pred, target, discriminator=constant_disc)
    # At logit 0 both BCE terms are log 2; the fake image reaches D detached.
    assert terms["gan_d"] == pytest.approx(2 * math.log(2), rel=1e-6)
    assert calls == [False, False]


def test_discriminator_loss_without_gan_raises():
    pred, target, _ = _batch()
    with pytest.raises(RuntimeError, match="--gan_loss_type"):
        build_losses(LossConfig()).discriminator_loss(pred, target)


def test_build_from_namespace_ignores_other_cli_args_and_builds_tiny_gan():
    args = argparse.Namespace(
        learning_rate=1e-4, gan_loss_type="multilevel_sigmoid_s", cv_type="convnext", lambda_gan=0.5,
        gan_step=10, gan_pretrained=False, gan_tiny=True, lpips=False, edge=True,
    )
    loss_fn = build_losses(args)
    assert loss_fn.config.lambda_gan == 0.5 and loss_fn.edge_loss is not None and loss_fn.lpips is None
    assert loss_fn.discriminator is not None and len(loss_fn.discriminator.heads) == 4


@pytest.mark.parametrize(
    "values, error, match",
    [
        ({"lambda_lipis": 1.0}, ValueError, "unknown keys"),
        ({"gan_loss_type": "hinge"}, ValueError, "multilevel_sigmoid_s"),
        ({"gan_loss_type": "multilevel_sigmoid_s", "cv_type": "swin"}, ValueError, "--cv_type"),
        ({"lambda_edge": -1.0}, ValueError, "--lambda_edge"),
    ],
)
def test_bad_config_raises(values, error, match):
    with pytest.raises(error, match=match):
        build_losses(values)


def test_empty_gan_loss_type_disables_gan():
    assert build_losses({"gan_loss_type": ""}).discriminator is None


def test_shape_mismatch_raises():
    pred, target, aif = _batch()
    with pytest.raises(ValueError, match="has shape"):
        build_losses({})(pred, target[..., :16], aif)
