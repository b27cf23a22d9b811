"""data.published: the released code's EBB input handling, written out here from its equations."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from data.inference_io import InputItem, choose_focus, folder_inputs
from data.published import (
    export_published_ebb, load_published_ebb, published_disparity, published_focus, published_focus_planes,
)

ROOT = Path(__file__).resolve().parents[2]


def _released_normalisation(d):
    d = (d - d.min()) / (d.max() - d.min())
    opened = ndimage.maximum_filter(ndimage.minimum_filter(d, size=3, mode="nearest"), size=3, mode="nearest")
    return np.clip((d - opened.min()) / (opened.max() - opened.min()), 0, 1)


def test_disparity_normalisation_min_max_then_opening():
    rng = np.random.default_rng(0)
    d = np.linspace(2.0, 5.0, 40 * 30, dtype=np.float32).reshape(40, 30) + rng.random((40, 30), dtype=np.float32) * 0.01
    d[5, 7] = 50.0  # an isolated near outlier: the opening removes it from the range
    d[20, 3] = -10.0
    out = published_disparity(d)
    assert out.dtype == np.float32 and out.shape == d.shape
    assert np.allclose(out, _released_normalisation(d.astype(np.float64)), atol=1e-6)
    assert out[5, 7] == 1.0 and out[20, 3] == 0.0
    # An opening (erode, then dilate) removes isolated *maxima* only: the near outlier no longer sets the top
    # of the range (the bulk reaches 1), while the far outlier still sets its bottom (the bulk starts at 0.8).
    inner = np.delete(out.ravel(), [5 * 30 + 7, 20 * 30 + 3])
    assert inner.max() == 1.0 and 0.79 < inner.min() < 0.81
    assert published_disparity(d.astype(np.float16)).dtype == np.float32  # float16 (released code: crash)
    assert published_disparity(d.astype(np.float64)).dtype == np.float64
    with pytest.raises(ValueError, match="constant"):
        published_disparity(np.ones((4, 4)))


def test_focus_is_the_mask_median_with_a_central_box_fallback():
    d = np.tile(np.linspace(0, 1, 50, dtype=np.float32), (20, 1))  # columns 0..49
    mask = np.zeros((20, 50), np.uint8)
    mask[:, 40:] = 255
    assert published_focus(d, Image.fromarray(mask)) == pytest.approx(float(np.median(d[:, 40:])))
    # empty mask -> the central box [0.4 H, 0.6 H) x [0.4 W, 0.6 W)
    box = d[8:12, 20:30]
    assert published_focus(d, Image.fromarray(np.zeros((20, 50), np.uint8))) == pytest.approx(float(np.median(box)))
    assert published_focus(d, None) == pytest.approx(float(np.median(box)))
    # a mask of another size is resized (LANCZOS) to the disparity first
    assert published_focus(d, Image.fromarray(mask).resize((100, 40))) == pytest.approx(float(np.median(d[:, 40:])))


def test_three_focus_planes():
    d = torch.tensor([[0.1, 0.3], [0.6, 0.9]])
    f = 0.6
    assert published_focus_planes(d, f) == pytest.approx([f + 0.6 * (0.1 - f), f, f + 0.6 * (0.9 - f)])
    item = InputItem("x", np.zeros((3, 2, 2), np.float32), d[None].numpy(), None, focus=f)
    planes = choose_focus(item, focus_protocol="published")
    assert [label for _, label in planes] == ["far", "subject", "near"]
    assert [v for v, _ in planes] == pytest.approx(published_focus_planes(d, f))
    assert choose_focus(item) == [(f, "published")]
    with pytest.raises(ValueError, match="focus_protocol"):
        choose_focus(item, focus_disparity=[0.5], focus_protocol="published")


def test_ebb_item_is_resized_to_multiples_of_8_not_padded(tmp_path):
    rng = np.random.default_rng(1)
    for sub in ("input", "depth", "mask"):
        (tmp_path / sub).mkdir()
    rgb = (rng.random((21, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "input" / "a.png")
    raw = rng.random((21, 30)).astype(np.float32)
    np.save(tmp_path / "depth" / "a_pred.npy", raw)
    mask = np.zeros((21, 30), np.uint8)
    mask[3:9, 4:12] = 255
    Image.fromarray(mask).save(tmp_path / "mask" / "a.png")
    image, disp, focus = load_published_ebb(tmp_path / "input" / "a.png", tmp_path / "depth" / "a_pred.npy",
                                            tmp_path / "mask" / "a.png")
    assert image.shape == (3, 24, 32) and disp.shape == (1, 24, 32)
    expected_img = np.asarray(Image.fromarray(rgb).resize((32, 24), Image.Resampling.LANCZOS), np.float32) / 255
    assert np.array_equal(image, expected_img.transpose(2, 0, 1))
    norm = published_disparity(raw)
    expected_disp = torch.nn.functional.interpolate(torch.from_numpy(norm)[None, None], (24, 32), mode="bilinear",
                                                    align_corners=False)[0].numpy()
    assert np.allclose(disp, expected_disp, atol=1e-6)
    assert focus == pytest.approx(float(np.median(norm[3:9, 4:12])))
    # through the CLI's input discovery
    (item,) = [p.load() for p in folder_inputs(str(tmp_path), protocol="published")]
    assert item.image.shape == (3, 24, 32) and item.focus == pytest.approx(focus)
    (ours,) = [p.load() for p in folder_inputs(str(tmp_path))]
    assert ours.image.shape == (3, 21, 30) and ours.focus is None


def test_shipped_sample_set_in_the_released_format(tmp_path):
    src, shipped = ROOT / "test_data" / "ebb", ROOT / "test_data" / "ebb_published"
    assert sorted(p.name for p in shipped.iterdir()) == ["depth", "input", "mask"]  # no bokeh/ next to mask/
    names = export_published_ebb(src, tmp_path)
    assert names == sorted(p.stem for p in (shipped / "input").iterdir())
    for name in names:
        depth = np.load(shipped / "depth" / f"{name}_pred.npy")
        assert depth.dtype == np.float32  # the released code's erosion rejects float16
        assert np.array_equal(depth, np.load(src / "depth" / f"{name}_pred.npy").astype(np.float32))
        assert np.array_equal(depth, np.load(tmp_path / "depth" / f"{name}_pred.npy"))
        assert (shipped / "mask" / f"{name}.png").is_file()
        assert (shipped / "input" / f"{name}.png").read_bytes() == (src / "input" / f"{name}.png").read_bytes()


def _blb_scene(root: Path, gts=("bokeh_04_00", "bokeh_04_01", "bokeh_00_00"), size=(16, 24)) -> Path:
    import json

    from data.exr import write_exr

    h, w = size
    scene = root / "277"
    linear = np.full((h, w, 3), 0.25, np.float32)
    linear[2, 3] = 4.0  # a highlight above 1: the released encoding does not clip it
    depth = np.full((h, w), 3.0, np.float32)
    depth[:, : w // 2] = 0.8  # nearer than one scene unit: disparity 1.25
    depth[:2] = 65504.0  # sky
    rgb = {c: linear[:, :, i] for i, c in enumerate("RGB")}
    write_exr(scene / "image.exr", rgb)
    write_exr(scene / "depth.exr", {c: depth for c in "RGB"})  # three equal channels; the first is read
    (scene / "info.json").write_text(json.dumps({"blur_parameters": [10, 20, 30, 40, 50],
                                                 "focus_distances": [0.8, 3.0]}))
    for gt in gts:
        write_exr(scene / f"{gt}.exr", rgb)
    return scene


def test_blb_as_released_unclipped_image_raw_disparity_focus_from_info(tmp_path):
    from data.published import load_published_blb

    scene = _blb_scene(tmp_path)
    image, disparity, focus = load_published_blb(scene / "image.exr", scene / "depth.exr", 0.8)
    assert image.shape == (3, 16, 24) and disparity.shape == (1, 16, 24)
    assert image[:, 2, 3] == pytest.approx([4.0 ** (1 / 2.2)] * 3, rel=1e-6)  # above 1, as the VAE gets it
    assert image[0, 5, 5] == pytest.approx(0.25 ** (1 / 2.2), rel=1e-6)
    assert disparity[0, 5, 0] == pytest.approx(1.25, rel=1e-6) and disparity[0, 5, -1] == pytest.approx(1 / 3, rel=1e-6)
    assert disparity[0, 0, 0] == pytest.approx(1 / 65504.0, rel=1e-5)  # the sky is not exactly 0
    assert focus == pytest.approx(1.25)
    with pytest.raises(ValueError, match="focus distance"):
        load_published_blb(scene / "image.exr", scene / "depth.exr", 0.0)


def test_blb_published_folder_inputs_are_the_bokeh_04_ground_truths_with_their_focus(tmp_path):
    _blb_scene(tmp_path)
    pending = folder_inputs(str(tmp_path), protocol="published")
    assert [p.name for p in pending] == ["277_bokeh_04_00", "277_bokeh_04_01"]  # bokeh_00_* is not listed
    items = [p.load() for p in pending]
    assert [i.focus for i in items] == pytest.approx([1.25, 1 / 3])
    planes = choose_focus(items[1], focus_protocol="published")
    s = items[1].disparity - 1 / 3
    assert [f for f, _ in planes] == pytest.approx([1 / 3 + 0.6 * s.min(), 1 / 3, 1 / 3 + 0.6 * s.max()], rel=1e-6)
    assert [p.name for p in folder_inputs(str(tmp_path), protocol="corrected")] == ["277"]  # one input per scene


def test_blb_published_without_bokeh_04_names_the_files_it_needs(tmp_path):
    _blb_scene(tmp_path, gts=("bokeh_00_00",))
    with pytest.raises(ValueError, match="bokeh_04_<f>.exr"):
        folder_inputs(str(tmp_path), protocol="published")
