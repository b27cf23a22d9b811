"""Backend selection, the clear CUDA error, and torch-vs-cuda agreement on a GPU."""

import pytest
import torch

import kernels
from kernels import cuda_available, render_layers, render_scatter


def test_cuda_request_without_cupy_or_gpu_raises_with_install_hint():
    if cuda_available():
        pytest.skip("CuPy and a GPU work here; the error path cannot be exercised")
    img = torch.rand(1, 3, 8, 8)
    with pytest.raises(RuntimeError, match=r"impl='cuda' cannot run.*pip install -r requirements-gpu.txt"):
        render_scatter(img, torch.zeros(1, 1, 8, 8), impl="cuda")
    with pytest.raises(RuntimeError, match=r"pip install -r requirements-gpu.txt"):
        render_layers(torch.rand(1, 1, 3, 8, 8), torch.ones(1, 1, 1, 8, 8), torch.tensor([[[0.0, 0.0, 2.0]]]),
                      1.0, 0.5, impl="cuda")
    # "auto" falls back to the torch reference and gives the same result.
    assert torch.equal(render_scatter(img, torch.ones(1, 1, 8, 8), impl="auto"),
                       render_scatter(img, torch.ones(1, 1, 8, 8), impl="torch"))


def test_public_api_is_exported():
    for name in ("render_scatter", "render_classical", "render_layers", "cuda_available"):
        assert callable(getattr(kernels, name))


@pytest.mark.gpu
@pytest.mark.parametrize("blades", [0, 5, 6])  # 5: odd polygon, reflected for coc > 0 (kernels/aperture.py)
def test_scatter_cuda_matches_torch(blades):
    if not cuda_available():
        pytest.skip("CuPy is not installed: pip install -r requirements-gpu.txt")
    torch.manual_seed(0)
    img = torch.rand(2, 3, 64, 80, device="cuda")
    coc = torch.randn(2, 1, 64, 80, device="cuda") * 6.0
    ref = render_scatter(img, coc, blades=blades, rotation_deg=15.0, impl="torch")
    out = render_scatter(img, coc, blades=blades, rotation_deg=15.0, impl="cuda")
    assert (out - ref).abs().max().item() < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("blades", [0, 5])
def test_layers_cuda_matches_torch(blades):
    if not cuda_available():
        pytest.skip("CuPy is not installed: pip install -r requirements-gpu.txt")
    torch.manual_seed(0)
    imgs = torch.rand(2, 3, 3, 48, 64, device="cuda")
    alphas = torch.rand(2, 3, 1, 48, 64, device="cuda")
    alphas[:, -1] = 1.0
    planes = torch.tensor([[0.001, -0.002, 1.2], [0.0, 0.003, 2.0], [0.0, 0.0, 6.0]], device="cuda").expand(2, 3, 3)
    k = torch.tensor([20.0, 35.0], device="cuda")
    ref = render_layers(imgs, alphas, planes, k, 0.5, n_samples=32, blades=blades, impl="torch")
    out = render_layers(imgs, alphas, planes, k, 0.5, n_samples=32, blades=blades, impl="cuda")
    for a, b in zip(ref, out):
        assert (a - b).abs().max().item() < 1e-4
    # Planes (and K) given on the CPU are moved to the images' device, on both paths.
    for impl in ("torch", "cuda"):
        moved = render_layers(imgs, alphas, planes.cpu(), k.cpu(), 0.5, n_samples=32, blades=blades, impl=impl)
        for a, b in zip(ref, moved):
            assert a.device == b.device and (a - b).abs().max().item() < 1e-4
