"""LPIPS wrapper: built offline, frozen, pinned to eval, [0, 1] inputs, local trunk weights."""

import pytest
import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from losses.perceptual import LPIPSLoss


@pytest.fixture
def lpips_loss(random_lpips):
    return random_lpips


def test_zero_for_identical_inputs_and_positive_otherwise(lpips_loss):
    x = torch.rand(2, 3, 32, 32)
    assert lpips_loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)
    assert lpips_loss(x, torch.rand_like(x)).item() > 0.0


def test_inputs_are_mapped_from_unit_range(lpips_loss):
    # The wrapper must feed 2x - 1 to the lpips network (which expects [-1, 1]).
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    expected = lpips_loss.net(a * 2 - 1, b * 2 - 1).mean()
    torch.testing.assert_close(lpips_loss(a, b), expected)


def test_frozen_but_gradients_reach_the_input(lpips_loss):
    assert all(not p.requires_grad for p in lpips_loss.parameters())
    pred = torch.rand(1, 3, 32, 32, requires_grad=True)
    lpips_loss(pred, torch.rand(1, 3, 32, 32)).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in lpips_loss.parameters())


def test_stays_in_eval_mode_when_parent_trains(lpips_loss):
    parent = nn.ModuleDict({"lpips": lpips_loss, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training
    assert not any(m.training for m in lpips_loss.modules())
    # Eval mode means dropout in the lin layers is off: the value is deterministic.
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert lpips_loss(a, b).item() == lpips_loss(a, b).item()


def test_loads_trunk_from_a_local_torchvision_state_dict(tmp_path):
    # A features-only torchvision VGG-16 state dict (`features.N.*` keys), randomly initialised.
    features = make_layers(cfgs["D"])
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    loaded = LPIPSLoss(pretrained_backbone=True, vgg_weights_path=path)
    trunk = loaded.net.net.state_dict()
    assert len(trunk) == len(state) == 26  # 13 convolutions, weight and bias
    for key, value in trunk.items():
        _, index, param = key.split(".")
        assert torch.equal(value, state[f"features.{index}.{param}"])


def test_missing_local_weights_name_the_flag():
    with pytest.raises(FileNotFoundError, match="lpips_vgg_weights"):
        LPIPSLoss(pretrained_backbone=True, vgg_weights_path="/nonexistent/vgg16.pth")


def test_small_images_raise(lpips_loss):
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="16x16"):
        lpips_loss(x, x)


def test_random_trunk_leaves_the_global_rng_alone_and_each_loss_owns_its_network():
    """The random VGG trunk comes from its own seeded generator (built once per process, copied per loss): the
    global RNG draws the same numbers with or without building one, two losses are the same network, and loading
    weights into one leaves the other as it was."""
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    first, second = LPIPSLoss(pretrained_backbone=False), LPIPSLoss(pretrained_backbone=False)
    assert torch.equal(torch.rand(4), expected)
    one, two = first.net.state_dict(), second.net.state_dict()
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    weight = next(iter(first.net.net.parameters()))
    with torch.no_grad():
        weight.add_(1.0)
    assert not torch.equal(weight, next(iter(second.net.net.parameters())))
