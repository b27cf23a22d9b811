"""inference.renderers: wrappers around the renderers."""

import torch

from inference.renderers import with_upsample


def test_upsample_keeps_a_raw_map_and_hdr_image_above_one():
    """--upsample on the published BLB input: the image and disparity the renderer gets keep values above 1
    (only bicubic overshoot beyond the input's own range is clipped)."""
    seen = {}

    def render(image, disparity, K, focus):
        seen.update(image=image, disparity=disparity, K=K)
        return image

    image = torch.full((1, 3, 8, 8), 0.5)
    image[..., 2:4, 2:4] = 2.0
    disparity = torch.full((1, 1, 8, 8), 0.3)
    disparity[..., :, :4] = 1.25
    out = with_upsample(render, 2.0)(image, disparity, 10.0, 1.25)
    assert seen["image"].shape[-2:] == (16, 16) and seen["K"] == 20.0
    assert float(seen["image"].max()) == 2.0 and float(seen["disparity"].max()) == 1.25
    assert out.shape == image.shape and float(out.max()) <= 1.0
