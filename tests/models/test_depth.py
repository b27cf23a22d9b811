"""Depth Anything -> disparity (1 = nearest): orientation on a synthetic scene, the wrapper, loading offline."""

import inspect
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoModelForDepthEstimation, DepthAnythingConfig, Dinov2Config

from data.io import InputWarning
from models.depth import (
    DepthEstimator,
    WeightsUnavailableError,
    load_depth_estimator,
    network_size,
    prediction_to_disparity,
)


def synthetic_scene(height=48, width=64):
    """Metric depth (m) ``(H, W)`` of a box at 1 m and a pole at 3 m in front of a wall at 10 m; and the masks.

    Object extents are fractions of the frame, so the scene is the same at any resolution."""
    y, x = np.mgrid[0:height, 0:width]
    y, x = (y + 0.5) / height, (x + 0.5) / width
    depth = np.full((height, width), 10.0)
    near = (y > 1 / 3) & (y < 5 / 6) & (x > 1 / 8) & (x < 7 / 16)
    middle = (y > 1 / 12) & (y < 11 / 12) & (x > 11 / 16) & (x < 13 / 16)
    depth[middle], depth[near] = 3.0, 1.0
    return depth, near, middle


def build_tiny_depth_anything(seed: int = 0) -> torch.nn.Module:
    """A tiny random Depth Anything (relative) built from config: Dinov2 backbone of width 32, 4 layers."""
    torch.manual_seed(seed)
    backbone = Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=56,
        patch_size=14, out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16, head_hidden_size=8, patch_size=14,
    )
    model = AutoModelForDepthEstimation.from_config(config)
    with torch.no_grad():
        # transformers' init (normal, std 0.02) shrinks the activations layer by layer until the prediction is
        # constant up to float rounding, which per-image min-max normalisation would then blow up into noise
        # (and batch-dependent rounding into "different" maps). PyTorch's fan-in init keeps them varying.
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                module.reset_parameters()
        # The relative head ends in a ReLU that is almost always 0 at random init; lift it so outputs vary.
        model.head.conv3.bias.fill_(1.0)
    return model.eval()


def save_tiny_depth_anything(folder: Path) -> Path:
    """Save the tiny model as a local folder (config.json + safetensors), as ``hf download REPO --local-dir DIR`` would."""
    build_tiny_depth_anything().save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------------------
# Orientation
# ----------------------------------------------------------------------------------------------------------
def test_relative_output_of_a_synthetic_scene_puts_the_near_object_at_one():
    depth, near, middle = synthetic_scene()
    # What a relative Depth Anything model outputs: inverse depth up to an unknown scale and shift.
    prediction = 7.3 / depth + 0.4
    disparity = prediction_to_disparity(prediction.astype(np.float32), estimation_type="relative")[0]
    far = ~(near | middle)
    np.testing.assert_allclose(disparity[near], 1.0, atol=1e-6)
    np.testing.assert_allclose(disparity[far], 0.0, atol=1e-6)
    assert disparity.dtype == np.float32
    # Affine in inverse depth: (1/3 - 1/10) / (1/1 - 1/10) = 0.259...
    np.testing.assert_allclose(disparity[middle], (1 / 3 - 1 / 10) / (1 - 1 / 10), atol=1e-6)


def test_metric_output_is_depth_and_gets_inverted():
    depth, near, middle = synthetic_scene()
    with pytest.warns(InputWarning, match="min-max normalised"):  # metres lose their scale: said, not hidden
        disparity = prediction_to_disparity(depth, estimation_type="metric")[0]
    np.testing.assert_allclose(disparity[near], 1.0, atol=1e-6)
    np.testing.assert_allclose(disparity[~(near | middle)], 0.0, atol=1e-6)


def test_unknown_estimation_type_is_refused():
    with pytest.raises(ValueError, match="relative"):
        prediction_to_disparity(np.ones((4, 4)), estimation_type="absolute")


class SceneStub(torch.nn.Module):
    """Stands in for Depth Anything: returns the synthetic scene's inverse depth at the network resolution."""

    def __init__(self, estimation_type="relative"):
        super().__init__()
        self.config = SimpleNamespace(model_type="depth_anything", depth_estimation_type=estimation_type, patch_size=14)
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, pixel_values):
        self.seen.append(pixel_values)
        b, _, h, w = pixel_values.shape
        depth, _, _ = synthetic_scene(h, w)
        value = torch.from_numpy(depth if self.config.depth_estimation_type == "metric" else 5.0 / depth)
        return SimpleNamespace(predicted_depth=value.float().expand(b, h, w) + self.weight)


def test_estimator_keeps_orientation_and_returns_the_image_size():
    stub = SceneStub()
    estimator = DepthEstimator(stub, input_size=56)
    images = torch.rand(2, 3, 48, 64)
    disparity = estimator(images)
    assert disparity.shape == (2, 1, 48, 64) and disparity.dtype == torch.float32
    assert 0 <= disparity.min() and disparity.max() <= 1
    _, near, middle = synthetic_scene(48, 64)
    interior = torch.zeros(48, 64, dtype=torch.bool)
    interior[20:36, 11:25] = True  # well inside the near box, away from resampling at its edge
    assert disparity[:, 0][:, interior].min() > 0.95
    assert disparity[:, 0][:, torch.from_numpy(~(near | middle))].mean() < 0.1
    # The network saw an ImageNet-normalised image with sides multiple of the patch, aspect kept.
    seen = stub.seen[0]
    assert seen.shape[-2:] == (56, 70) and seen.shape[-2] % 14 == 0 and seen.shape[-1] % 14 == 0
    assert seen.min() < -1.5 and seen.max() > 1.5


def test_one_unusable_prediction_fails_only_its_image():
    class NaNForSecond(SceneStub):
        def forward(self, pixel_values):
            output = super().forward(pixel_values)
            output.predicted_depth[1] = float("nan")  # no finite value: nothing to fill from
            return output

    estimator = DepthEstimator(NaNForSecond(), input_size=56)
    images = torch.rand(3, 3, 48, 64)
    results = estimator.disparities(images)
    assert isinstance(results[1], ValueError) and "image 1 of the batch" in str(results[1])
    reference = DepthEstimator(SceneStub(), input_size=56)(images)
    for index in (0, 2):  # its neighbours in the batch are converted as if it were not there
        assert results[index].shape == (1, 48, 64) and results[index].dtype == np.float32
        np.testing.assert_array_equal(results[index], reference[index].numpy())
    with pytest.raises(ValueError, match="image 1 of the batch"):
        estimator(images)  # the batch API still refuses to return a partial batch


def test_network_size_keeps_aspect_and_patch_multiples():
    assert network_size(1080, 1920, shorter_side=518, multiple=14) == (518, 924)
    assert network_size(10, 1000, shorter_side=14, multiple=14) == (14, 1400)
    assert network_size(3, 3, shorter_side=5, multiple=14) == (14, 14)


def test_non_depth_anything_model_is_refused():
    stub = SceneStub()
    stub.config.model_type = "glpn"
    with pytest.raises(ValueError, match="Depth Anything"):
        DepthEstimator(stub)


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------
def test_tiny_depth_anything_from_a_local_folder(tmp_path):
    folder = save_tiny_depth_anything(tmp_path / "tiny-depth-anything")
    estimator = load_depth_estimator(str(folder), input_size=28)
    images = torch.rand(2, 3, 30, 45)
    raw = estimator.predict(images)
    assert (raw.amax(dim=(1, 2)) - raw.amin(dim=(1, 2)) > 1e-3).all()  # a real map, not rounding noise
    disparity = estimator(images)
    assert disparity.shape == (2, 1, 30, 45) and disparity.dtype == torch.float32
    assert torch.isfinite(disparity).all()
    for d in disparity:
        assert d.min() == 0 and d.max() == 1  # per-image min-max of relative disparity
    # Same weights as the in-memory model: loading went through the folder, not a fresh init.
    reference = DepthEstimator(build_tiny_depth_anything(), input_size=28)(images)
    torch.testing.assert_close(disparity, reference)


def test_loader_takes_the_device_from_the_caller(tmp_path):
    """No device literal in the package: without ``device`` the model stays where ``from_pretrained`` put it,
    with one it goes there (``prepare_data.py --device`` passes it)."""
    assert inspect.signature(load_depth_estimator).parameters["device"].default is None
    folder = save_tiny_depth_anything(tmp_path / "tiny-depth-anything")
    assert load_depth_estimator(str(folder), input_size=28).device == torch.device("cpu")
    assert load_depth_estimator(str(folder), device="meta", input_size=28).device.type == "meta"


def test_unavailable_depth_weights_raise_one_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="bokehdiff-tests/no-such-depth-model"):
        load_depth_estimator("bokehdiff-tests/no-such-depth-model")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_depth_estimator(str(tmp_path / "not" / "there"))
