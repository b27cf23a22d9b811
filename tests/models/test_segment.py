"""The segmenter interface and BiRefNet's input/output handling, with a tiny module that mimics BiRefNet.

``TinySubjectSegmenter`` follows BiRefNet's contract (ImageNet-normalised input, a list of logit maps coarse
to fine, the last one final) with fixed weights whose logits are high where the image is bright, so the
orientation of the whole path (normalisation, sigmoid, resize back) can be checked. It is registered with
transformers' auto classes and saved to a folder, so ``load_birefnet(folder)`` runs the same
``AutoModelForImageSegmentation.from_pretrained`` path as a local copy of BiRefNet.
"""

import inspect
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageSegmentation, PreTrainedConfig, PreTrainedModel

from models.depth import IMAGENET_MEAN, IMAGENET_STD, WeightsUnavailableError
from models.segment import BIREFNET_REVISION, DEFAULT_MASK_MODEL, BiRefNetSegmenter, Segmenter, load_birefnet


class TinySubjectSegmenterConfig(PreTrainedConfig):
    model_type = "bokehdiff_tiny_subject_segmenter"

    def __init__(self, gain: float = 8.0, **kwargs):
        self.gain = gain
        super().__init__(**kwargs)


class TinySubjectSegmenter(PreTrainedModel):
    """Logits = gain * (mean sRGB brightness - 0.5), computed from the ImageNet-normalised input."""

    config_class = TinySubjectSegmenterConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Conv2d(3, 1, kernel_size=1)
        self.post_init()
        # Undo the ImageNet normalisation inside the 1x1 conv: sum_c (std_c x_c + mean_c) / 3 = brightness.
        # Plain floats, not tensors: from_pretrained builds the module on the meta device first.
        weight = [config.gain * s / 3 for s in IMAGENET_STD]
        bias = config.gain * (sum(IMAGENET_MEAN) / 3 - 0.5)
        with torch.no_grad():
            self.proj.weight.copy_(torch.tensor(weight, device=self.proj.weight.device).view(1, 3, 1, 1))
            self.proj.bias.fill_(bias)

    def forward(self, pixel_values):
        logits = self.proj(pixel_values)
        return [torch.zeros_like(logits[:, :, ::4, ::4]), logits]  # coarse first, final last, as BiRefNet

    def _init_weights(self, module):  # weights are set in __init__; nothing random to initialise
        pass


AutoConfig.register(TinySubjectSegmenterConfig.model_type, TinySubjectSegmenterConfig, exist_ok=True)
AutoModelForImageSegmentation.register(TinySubjectSegmenterConfig, TinySubjectSegmenter, exist_ok=True)


def save_tiny_segmenter(folder: Path) -> Path:
    """Write the tiny BiRefNet stand-in to ``folder`` (config.json + weights) and return the folder."""
    TinySubjectSegmenter(TinySubjectSegmenterConfig()).save_pretrained(folder)
    return folder


def bright_square(height=40, width=56):
    """A dark image ``(1, 3, H, W)`` with a bright square (the 'subject') and its boolean footprint."""
    image = torch.full((1, 3, height, width), 0.1)
    inside = torch.zeros(height, width, dtype=torch.bool)
    inside[10:30, 16:40] = True
    image[:, :, inside] = 0.9
    return image, inside


def test_birefnet_path_puts_the_subject_at_one(tmp_path):
    segmenter = load_birefnet(str(save_tiny_segmenter(tmp_path / "tiny")), resolution=64)
    image, inside = bright_square()
    masks = segmenter(image)
    assert masks.shape == (1, 1, 40, 56) and masks.dtype == torch.float32
    # Compare away from the square's edge, where resizing mixes subject and background.
    core, near = torch.zeros_like(inside), torch.zeros_like(inside)
    core[13:27, 19:37] = True
    near[7:33, 13:43] = True
    assert masks[0, 0][core].min() > 0.95
    assert masks[0, 0][~near].max() < 0.05


def test_birefnet_batch_is_per_image(tmp_path):
    segmenter = BiRefNetSegmenter(TinySubjectSegmenter(TinySubjectSegmenterConfig()), resolution=32)
    image, _ = bright_square()
    batch = torch.cat([image, 1 - image])
    masks = segmenter(batch)
    assert masks.shape == (2, 1, 40, 56)
    torch.testing.assert_close(masks[0], segmenter(image)[0])
    assert masks[1].mean() > masks[0].mean()  # the inverted image has the larger bright area


def test_another_segmenter_implements_the_interface():
    class Threshold(Segmenter):
        def segment(self, images):
            return (images.mean(dim=1, keepdim=True) > 0.5).float()

    image, inside = bright_square()
    assert torch.equal(Threshold()(image)[0, 0].bool(), inside)


def test_interface_rejects_bad_shapes_and_ranges():
    class WrongShape(Segmenter):
        def segment(self, images):
            return images

    class OutOfRange(Segmenter):
        def segment(self, images):
            return images[:, :1] * 3

    image, _ = bright_square()
    with pytest.raises(ValueError, match=r"expected \(1, 1, 40, 56\)"):
        WrongShape()(image)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        OutOfRange()(image)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        WrongShape()(image[0])


def test_loader_takes_the_device_from_the_caller(tmp_path):
    """No device literal in the package: without ``device`` the module stays where ``from_pretrained`` put it."""
    assert inspect.signature(load_birefnet).parameters["device"].default is None
    folder = save_tiny_segmenter(tmp_path / "tiny")
    assert next(load_birefnet(str(folder)).module.parameters()).device == torch.device("cpu")
    assert next(load_birefnet(str(folder), device="meta").module.parameters()).device.type == "meta"


def test_unavailable_mask_weights_raise_one_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="bokehdiff-tests/no-such-segmenter"):
        load_birefnet("bokehdiff-tests/no-such-segmenter", revision="main")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        load_birefnet(str(tmp_path / "missing" / "folder"))


def _cache_snapshot(cache: Path, repo: str, commit: str, gain: float) -> None:
    """A tiny segmenter as huggingface_hub caches a repo at ``commit`` (snapshots/<commit>/)."""
    folder = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
    TinySubjectSegmenter(TinySubjectSegmenterConfig(gain=gain)).save_pretrained(folder)


def test_the_default_hub_id_loads_at_the_pinned_commit(tmp_path, monkeypatch):
    """BiRefNet runs its repository's code: the hub id is loaded at the reviewed commit, not at the newest
    (here ``main`` points at another snapshot, which must not be used). Offline (tests/conftest.py), so the
    cached snapshots are all there is."""
    from huggingface_hub import constants

    newer = "f" * 40
    _cache_snapshot(tmp_path, DEFAULT_MASK_MODEL, BIREFNET_REVISION, gain=8.0)
    _cache_snapshot(tmp_path, DEFAULT_MASK_MODEL, newer, gain=-8.0)
    (tmp_path / "models--ZhengPeng7--BiRefNet" / "refs").mkdir()
    (tmp_path / "models--ZhengPeng7--BiRefNet" / "refs" / "main").write_text(newer)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert load_birefnet(DEFAULT_MASK_MODEL, resolution=64).module.config.gain == 8.0
    assert load_birefnet(DEFAULT_MASK_MODEL, revision="main", resolution=64).module.config.gain == -8.0


def test_a_hub_id_without_a_pinned_revision_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"no pinned revision.*--mask_revision COMMIT.*--mask_revision main"):
        load_birefnet("someone/OtherSegmenter")
    with pytest.raises(ValueError, match="local folder; a revision"):
        load_birefnet(str(save_tiny_segmenter(tmp_path / "tiny")), revision="abc")
