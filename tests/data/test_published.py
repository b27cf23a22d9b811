"""data.published: the released code's test-set input handling (EBB, BLB, folder, pngdepth), written out here
from its equations."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from data.inference_io import InputItem, choose_focus, folder_inputs
from data.io import InputWarning
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


# ----------------------------------------------------------------------------------------------------------
# folder and pngdepth, as the released TestDataset(organization="folder" | "pngdepth", split="inference")
# ----------------------------------------------------------------------------------------------------------
def _photo(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _ramp(h, w):
    d = np.tile(np.linspace(1.0, 5.0, w, dtype=np.float32), (h, 1))
    d[h // 2, 1] = 40.0  # an isolated near outlier: the opening keeps it out of the range
    return d


def _box_mask(h, w):
    m = np.zeros((h, w), np.uint8)
    m[h // 4: h // 2, 3 * w // 4:] = 255
    return m


def test_inference_size_rule_long_side_at_least_1024_then_up_to_multiples_of_8():
    from data.published import published_inference_size as size

    assert size(1024, 768) == (1024, 768) and size(768, 1024) == (768, 1024)  # nothing to do
    assert size(640, 320) == (1024, 512)  # landscape: width 1024, height 1024 * 320 / 640
    assert size(500, 333) == (1024, 688)  # height 681.98 -> int 681 -> up to 688
    assert size(333, 500) == (688, 1024)  # portrait: the height is the side set to 1024
    assert size(600, 600) == (1024, 1024)  # a square counts as portrait
    assert size(1030, 771) == (1032, 776)  # >= 1024 already: only rounded up to multiples of 8
    assert size(2000, 1000) == (2000, 1000)  # never shrunk


def test_enlarged_tiled_input_is_rendered_with_a_warning(tmp_path):
    # 40 x 30 -> 1024 x 768: tiled by the released pipeline, whose tiles crop the 40 x 30 map with image
    # coordinates (an 800 x 600 input fails there with a size mismatch); 48 x 24 -> 1024 x 512 is one frame.
    from data.published import load_published_folder

    for name, (w, h) in (("t", (40, 30)), ("f", (48, 24))):
        scene = tmp_path / name
        scene.mkdir()
        Image.fromarray(_photo(h, w)).save(scene / "image.jpg")
        np.save(scene / "depth.npy", _ramp(h, w))
        Image.fromarray(_box_mask(h, w)).save(scene / "mask_portrait.jpg")
    with pytest.warns(InputWarning, match="cannot render"):
        got = load_published_folder(tmp_path / "t" / "image.jpg", tmp_path / "t" / "depth.npy")
    assert got.disparity.shape == (1, 768, 1024) and got.output_size == (30, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_published_folder(tmp_path / "f" / "image.jpg", tmp_path / "f" / "depth.npy")


def test_folder_disparity_npy_opening_val300_and_disp_refine(tmp_path):
    from data.published import load_published_folder

    for sub in ("s", "val300/s"):
        scene = tmp_path / sub
        scene.mkdir(parents=True)
        Image.fromarray(_photo(24, 48)).save(scene / "image.jpg")
        np.save(scene / "depth.npy", _ramp(24, 48))
        Image.fromarray(_box_mask(24, 48)).save(scene / "mask_portrait.jpg", quality=100)
    got = load_published_folder(tmp_path / "s" / "image.jpg", tmp_path / "s" / "depth.npy")
    stored = _released_normalisation(_ramp(24, 48).astype(np.float64))
    assert got.output_size == (24, 48) and got.image.shape == (3, 512, 1024) and got.disparity.shape == (1, 512, 1024)
    expected = torch.nn.functional.interpolate(torch.from_numpy(stored.astype(np.float32))[None, None], (512, 1024),
                                               mode="bilinear", align_corners=False)[0].numpy()
    assert np.allclose(got.disparity, expected, atol=1e-6)  # the stored map, resized bilinearly to the image
    assert got.disparity_range == pytest.approx((0.0, 1.0))
    # 'val300/' in the path: min-max only, so the outlier sets the top of the range
    val = load_published_folder(tmp_path / "val300/s/image.jpg", tmp_path / "val300/s/depth.npy")
    raw = _ramp(24, 48)
    minmax = (raw - raw.min()) / (raw.max() - raw.min())
    assert val.focus == pytest.approx(float(np.median(minmax[6:12, 36:])), rel=1e-5) and val.focus < 0.15
    assert got.focus == pytest.approx(float(np.median(stored[6:12, 36:])), rel=1e-5) and got.focus > 0.8
    # disp_refine.jpg beside the image wins: grey / 255 (1 = near), LANCZOS-resized to the image, not normalised
    refine = np.tile(np.linspace(40, 200, 24, dtype=np.uint8), (12, 1))
    Image.fromarray(refine).save(tmp_path / "s" / "disp_refine.jpg", quality=100)
    got = load_published_folder(tmp_path / "s" / "image.jpg", tmp_path / "s" / "depth.npy")
    with Image.open(tmp_path / "s" / "disp_refine.jpg") as f:
        grey = np.asarray(f.resize((48, 24), Image.Resampling.LANCZOS).convert("L")) / 255.0
    assert got.output_size == (24, 48) and got.disparity_range == pytest.approx((grey.min(), grey.max()))
    assert 0.1 < grey.min() and grey.max() < 0.85  # not min-max normalised
    assert got.focus == pytest.approx(float(np.median(grey[6:12, 36:])))
    # ... and with another name the released code would read the image itself as the disparity: refused
    (tmp_path / "s" / "image.jpg").rename(tmp_path / "s" / "photo.jpg")
    with pytest.raises(ValueError, match="image itself"):
        load_published_folder(tmp_path / "s" / "photo.jpg", tmp_path / "s" / "depth.npy")


def test_folder_mask_rule_mask_portrait_else_the_image_itself(tmp_path):
    from data.published import load_published_folder, published_folder_files

    h, w = 24, 48
    scene = tmp_path / "s"
    scene.mkdir()
    Image.fromarray(_photo(h, w)).save(scene / "image.jpg")
    np.save(scene / "depth.npy", _ramp(h, w))
    Image.fromarray(_box_mask(h, w)).save(scene / "mask_portrait.jpg")
    assert published_folder_files(scene / "image.jpg", scene / "depth.npy", scene / "mask.png")[1:] == (
        scene / "mask_portrait.jpg", [])
    (scene / "mask_portrait.jpg").unlink()
    assert published_folder_files(scene / "image.jpg", scene / "depth.npy", scene / "mask.png")[1] == scene / "mask.png"
    # no mask_portrait.jpg (the released code crashes): the layout's mask, else the central box, with a warning
    with pytest.warns(InputWarning, match="mask_portrait.jpg' is missing"):
        got = load_published_folder(scene / "image.jpg", scene / "depth.npy")
    stored = published_disparity(_ramp(h, w))
    assert got.focus == pytest.approx(float(np.median(stored[9:14, 19:28])))
    # a flat input (no 'image.jpg' in its name): the released mask path is the image itself, reproduced
    flat = np.zeros((h, w, 3), np.uint8)
    flat[:, : w // 4] = 255  # bright on the far left only
    Image.fromarray(flat).save(tmp_path / "a.png")
    np.save(tmp_path / "a.npy", _ramp(h, w))
    assert published_folder_files(tmp_path / "a.png", tmp_path / "a.npy")[1] == tmp_path / "a.png"
    with pytest.warns(InputWarning, match="the image itself"):
        got = load_published_folder(tmp_path / "a.png", tmp_path / "a.npy")
    assert got.focus == pytest.approx(float(np.median(stored[:, : w // 4])), rel=1e-6) and got.focus < 0.2
    # through the CLI's input discovery: one flat and one scene input, read the released way
    pending = folder_inputs(str(tmp_path), protocol="published")
    assert [p.name for p in pending] == ["s", "a"]
    with pytest.warns(InputWarning):
        items = [p.load() for p in pending]
    assert [i.image.shape for i in items] == [(3, 512, 1024)] * 2 and [i.output_size for i in items] == [(h, w)] * 2
    assert [p.load().image.shape for p in folder_inputs(str(tmp_path))] == [(3, h, w)] * 2  # corrected: as stored


def _pngdepth(root, depth_names=("depth_01.png", "depth_02.png")):
    for sub in ("original", "depth", "mask"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    far = np.tile(np.linspace(30, 230, 48).astype(np.uint8), (24, 1))  # bright = far
    Image.fromarray(_photo(24, 48)).save(root / "original" / "b.jpg")
    Image.fromarray(_photo(24, 48, 1)).save(root / "original" / "a.png")
    Image.fromarray(far).save(root / "depth" / depth_names[0])  # sorted first: paired with a.png
    Image.fromarray(far[:, ::-1]).save(root / "depth" / depth_names[1])  # with b.jpg
    Image.fromarray(_box_mask(24, 48)).save(root / "mask" / "a.png")
    Image.fromarray(_box_mask(24, 48)).save(root / "mask" / "b.png")  # b.jpg -> mask/b.png
    return far


def test_pngdepth_pairs_by_sort_order_one_minus_grey_min_max(tmp_path):
    from data.published import list_published_pngdepth, load_published_pngdepth

    far = _pngdepth(tmp_path)
    entries = list_published_pngdepth(tmp_path)
    assert [(e["image"].name, e["disparity"].name, e["mask"].name) for e in entries] == [
        ("a.png", "depth_01.png", "a.png"), ("b.jpg", "depth_02.png", "b.png")]
    got = load_published_pngdepth(entries[0]["image"], entries[0]["disparity"], entries[0]["mask"])
    d = 1 - far / 255.0
    d = (d - d.min()) / (d.max() - d.min())
    assert got.image.shape == (3, 512, 1024) and got.output_size == (24, 48)
    assert got.focus == pytest.approx(float(np.median(d[6:12, 36:])))  # the mask's columns are the far end
    assert got.disparity[0, 0, 0] == pytest.approx(1.0) and got.disparity[0, 0, -1] == pytest.approx(0.0)
    items = [p.load() for p in folder_inputs(str(tmp_path), protocol="published")]
    assert [i.name for i in items] == ["a", "b"] and items[0].focus < 0.2 < 0.8 < items[1].focus  # b's is mirrored
    # our own naming (depth/<name>.png, no 'depth' in it): the released glob finds none; paired by name instead
    for p in (tmp_path / "depth").iterdir():
        p.unlink()
    _pngdepth(tmp_path, ("b.png", "a.png"))
    with pytest.warns(InputWarning, match="paired by name"):
        entries = list_published_pngdepth(tmp_path)
    assert [(e["image"].name, e["disparity"].name) for e in entries] == [("a.png", "a.png"), ("b.jpg", "b.png")]
    (tmp_path / "depth" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"depth/\*depth\*.png"):
        list_published_pngdepth(tmp_path)


def test_pngdepth_mask_rule_and_16_bit_refused(tmp_path):
    from data.published import list_published_pngdepth, load_published_pngdepth

    _pngdepth(tmp_path)
    (tmp_path / "mask" / "b.png").rename(tmp_path / "mask" / "b.jpg")  # not where the released code looks
    entries = list_published_pngdepth(tmp_path)
    assert entries[1]["mask"] == tmp_path / "mask" / "b.jpg" and "is missing" in entries[1]["notes"][0]
    for p in (tmp_path / "mask").iterdir():
        p.unlink()
    (tmp_path / "mask").rmdir()
    entries = list_published_pngdepth(tmp_path)  # no mask/: the released code raises; the central box here
    assert entries[0]["mask"] is None and "NotImplementedError" in entries[0]["notes"][0]
    with pytest.warns(InputWarning, match="NotImplementedError"):
        (item, _) = [p.load() for p in folder_inputs(str(tmp_path), protocol="published")]
    deep = (np.tile(np.linspace(0, 60000, 48), (24, 1))).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "depth" / "depth_01.png")
    with pytest.raises(ValueError, match="clips"):
        load_published_pngdepth(tmp_path / "original" / "a.png", tmp_path / "depth" / "depth_01.png")


def test_focus_planes_span_the_stored_map_and_renders_go_back_to_its_size():
    from data.published import published_resize_output

    item = InputItem("x", np.zeros((3, 4, 8), np.float32), np.full((1, 4, 8), 0.5, np.float32), focus=0.5,
                     output_size=(2, 4), disparity_range=(0.1, 0.9))
    planes = [v for v, _ in choose_focus(item, focus_protocol="published")]
    assert planes == pytest.approx([0.5 + 0.6 * (0.1 - 0.5), 0.5, 0.5 + 0.6 * (0.9 - 0.5)])
    render = np.random.default_rng(0).random((3, 512, 1024)).astype(np.float32)
    small = published_resize_output(render, (20, 40))
    assert small.shape == (3, 20, 40) and small.min() >= 0 and small.max() <= 1
    channel = np.asarray(Image.fromarray(render[1]).resize((40, 20), Image.Resampling.LANCZOS))
    assert np.allclose(small[1], np.clip(channel, 0, 1))
    assert published_resize_output(render, (512, 1024)) is not None and np.array_equal(
        published_resize_output(render, (512, 1024)), render)
