"""Multi-scale edge loss: zero/positive, a hand-computed step case, a second implementation, gradients."""

import pytest
import torch
import torch.nn.functional as F

from losses.edge import EdgeLoss, edge_loss


def _step_image(size: int = 12, column: int = 6) -> torch.Tensor:
    """(1, 3, size, size): 0 left of `column`, 1 from `column` on (a vertical edge)."""
    image = torch.zeros(1, 3, size, size)
    image[..., column:] = 1.0
    return image


def _reference_edge_loss(pred, target, aif, scales=(1, 2, 3)):
    """Second implementation: avg_pool2d for area resampling (exact when s divides H, W), conv kernels."""
    kx = torch.tensor([[[[-1.0, 1.0]]]]).repeat(3, 1, 1, 1)
    ky = kx.transpose(-1, -2)
    total = 0.0
    for s in scales:
        p, t, a = (F.avg_pool2d(x, s) if s > 1 else x for x in (pred, target, aif))
        for k in (kx, ky):
            dp, dt, da = (F.conv2d(x, k.to(x.dtype), groups=3) for x in (p, t, a))
            w = 1 + torch.maximum(dt.abs().mean(1, keepdim=True), da.abs().mean(1, keepdim=True))
            total = total + (w * (dp - dt).abs()).mean() / s
    return total


def test_zero_for_identical_and_positive_otherwise():
    target, aif = torch.rand(2, 3, 18, 24), torch.rand(2, 3, 18, 24)
    assert edge_loss(target.clone(), target, aif).item() == 0.0
    assert edge_loss(target + 0.1 * torch.rand_like(target), target, aif).item() > 0.0


def test_constant_offset_has_no_edge_loss():
    # The loss sees gradients only: a global brightness shift is MSE's job, not this term's.
    target = torch.rand(1, 3, 12, 12)
    assert edge_loss(target + 0.25, target, target).item() == pytest.approx(0.0, abs=1e-6)


def test_step_image_matches_hand_computation():
    # Target: a vertical step at column 6 of 12; prediction and AIF flat. The step stays a one-column
    # jump of height 1 at every scale (6 and 12 are multiples of 2 and 3), so at scale s with n = 12 / s
    # there are n jumps among n (n - 1) x-differences, each with |error| 1 and weight 1 + 1 = 2; y is 0.
    # L = sum_s (1 / s) * 2 n / (n (n - 1)) = 2/11 + (1/2)(2/5) + (1/3)(2/3).
    target = _step_image()
    flat = torch.zeros_like(target)
    expected = 2 / 11 + 1 / 5 + 2 / 9
    assert edge_loss(flat, target, flat).item() == pytest.approx(expected, rel=1e-6)


def test_aif_edges_raise_the_weight():
    # Prediction has a spurious step, target is flat: the error is weighted 1 with a flat AIF and
    # 1 + 1 = 2 where the AIF has that same edge, so the loss doubles exactly.
    step, flat = _step_image(), torch.zeros(1, 3, 12, 12)
    assert edge_loss(step, flat, step).item() == pytest.approx(2 * edge_loss(step, flat, flat).item(), rel=1e-6)


def test_matches_reference_implementation():
    pred, target, aif = (torch.rand(2, 3, 12, 18, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(edge_loss(pred, target, aif), _reference_edge_loss(pred, target, aif))


def test_gradient_flows_to_prediction_only():
    pred = torch.rand(1, 3, 16, 16, requires_grad=True)
    target = torch.rand(1, 3, 16, 16, requires_grad=True)
    aif = torch.rand(1, 3, 16, 16)
    EdgeLoss()(pred, target, aif).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None  # target and weights are treated as constants


def test_gradcheck():
    pred = torch.rand(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    target, aif = torch.rand(1, 3, 6, 6, dtype=torch.float64), torch.rand(1, 3, 6, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: edge_loss(p, target, aif), (pred,), fast_mode=True)


@pytest.mark.parametrize(
    "shapes, match",
    [(((1, 3, 12, 12), (1, 3, 12, 10), (1, 3, 12, 12)), "has shape"), (((1, 1, 12, 12),) * 3, r"\(B, 3, H, W\)")],
)
def test_bad_shapes_raise(shapes, match):
    with pytest.raises(ValueError, match=match):
        edge_loss(*(torch.rand(s) for s in shapes))


def test_too_small_for_coarsest_scale_raises():
    x = torch.rand(1, 3, 5, 5)
    with pytest.raises(ValueError, match="too small"):
        edge_loss(x, x, x)
