"""Test-set loaders: every layout from small fixtures, metadata, odd sizes, and no GT leaking into inputs."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.io import InputWarning, read_image, save_image
from data.exr import read_exr, write_exr
from data.loaders import detect_layout, load_test_set

EBB = Path(__file__).resolve().parents[2] / "test_data" / "ebb"


def _check_item(item, stored_size):
    """Shapes, dtypes and ranges; ``stored_size`` = (H, W) of the files on disk (no resize requested)."""
    h, w = item["image"].shape[1:]
    assert (h, w) == tuple(stored_size)
    assert item["image"].shape == (3, h, w) and item["image"].dtype == torch.float32
    assert item["disparity"].shape == (1, h, w)
    assert 0 <= float(item["disparity"].min()) and float(item["disparity"].max()) <= 1
    for key, channels in (("mask", 1), ("gt", 3)):
        if key in item:
            assert item[key].shape == (channels, h, w), key
    assert item["original_size"].dtype == torch.long
    assert item["original_size"].tolist() == list(stored_size)


def test_ebb_sample_set_with_metadata():
    assert detect_layout(EBB) == "EBB"
    test_set = load_test_set(EBB)
    meta = json.loads((EBB / "meta.json").read_text())
    assert len(test_set) == sum(len(v) for k, v in meta.items() if not k.startswith("_"))
    for item in test_set:
        _check_item(item, read_image(EBB / "input" / f"{item['input_name']}.png").shape[1:])
        record = next(r for r in meta[item["input_name"]] if Path(r["gt"]).stem == item["name"])
        assert float(item["K"]) == pytest.approx(record["K"])
        assert float(item["disp_focus"]) == pytest.approx(record["disp_focus"])
        assert item["focus_source"] == "metadata" and "mask" in item
        # The input is exactly the stored file: nothing of the GT (e.g. colour matching) reaches it.
        stored = torch.from_numpy(read_image(EBB / "input" / f"{item['input_name']}.png"))
        assert torch.equal(item["image"], stored)
    # The GTs of one input differ (several K / focus values).
    first = [item for item in test_set if item["input_name"] == "scene00"]
    assert len(first) >= 2 and not torch.equal(first[0]["gt"], first[1]["gt"])


def test_ebb_inputs_only_and_odd_sizes():
    inputs = load_test_set(EBB, inputs_only=True)
    assert [item["name"] for item in inputs] == ["scene00", "scene01", "scene02"]
    item = inputs[0]
    assert "gt" not in item and "K" not in item
    h, w = item["image"].shape[1:]
    assert w % 2 == 1  # the committed scenes have an odd width on purpose
    resized = load_test_set(EBB, inputs_only=True, multiple_of=8)[0]
    H, W = resized["image"].shape[1:]
    assert H % 8 == 0 and W % 8 == 0 and H >= h and W >= w
    for key in ("disparity", "mask"):
        assert resized[key].shape[1:] == (H, W), key
    assert resized["original_size"].tolist() == [h, w]


def test_ebb_classic_gt_gives_focus_from_edges(tmp_path):
    """EBB! itself has one GT per input and no focus metadata: the focus comes from in-focus edges."""
    source = load_test_set(EBB)[0]
    for sub in ("input", "depth", "bokeh"):
        (tmp_path / sub).mkdir()
    save_image(tmp_path / "input" / "a.png", source["image"])
    save_image(tmp_path / "bokeh" / "a.png", source["gt"])
    np.save(tmp_path / "depth" / "a_pred.npy", 5.0 * source["disparity"][0].numpy() + 2.0)  # relative, unnormalised
    item = load_test_set(tmp_path)[0]
    assert item["focus_source"] == "gt_edges" and "K" not in item
    assert float(item["disparity"].max()) == pytest.approx(1.0) and float(item["disparity"].min()) == pytest.approx(0.0)
    # Min-max normalisation maps the true focus d to (d - min) / (max - min).
    d = source["disparity"]
    expected = (float(source["disp_focus"]) - float(d.min())) / (float(d.max()) - float(d.min()))
    assert float(item["disp_focus"]) == pytest.approx(expected, abs=0.1)


@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute_flag_but_out_of_range"])
def test_ebb_metadata_k_and_focus_follow_the_disparity_normalisation(tmp_path, absolute):
    """A normalised disparity map carries its metadata K and focus along: the CoC in pixels computed from the
    loaded item equals the one from the stored file and the metadata (also for a focus outside the map)."""
    rng = np.random.default_rng(4)
    h, w = 10, 13
    save_image(tmp_path / "input" / "a.png", rng.random((3, h, w)))
    save_image(tmp_path / "bokeh" / "a_near.png", rng.random((3, h, w)))
    save_image(tmp_path / "bokeh" / "a_out.png", rng.random((3, h, w)))
    stored = (0.2 + 0.5 * rng.random((h, w))).astype(np.float32)  # inside [0, 1]: normalised ("always")
    if absolute:
        stored = 5.0 * stored + 2.0  # absolute per meta.json, but outside [0, 1]: normalised with a warning
    (tmp_path / "depth").mkdir()
    np.save(tmp_path / "depth" / "a_pred.npy", stored)
    records = [{"gt": "bokeh/a_near.png", "K": 9.0, "disp_focus": float(np.quantile(stored, 0.7))},
               {"gt": "bokeh/a_out.png", "K": 4.5, "disp_focus": float(stored.min()) - 0.05}]
    meta = {"a": records} | ({"_disparity_absolute": True} if absolute else {})
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = list(load_test_set(tmp_path))
    assert [item["name"] for item in items] == ["a_near", "a_out"]
    assert any("min-max normalised" in str(c.message) for c in caught) == absolute
    for item, record in zip(items, records):
        _check_item(item, (h, w))
        assert float(item["disparity"].min()) == 0.0 and float(item["disparity"].max()) == pytest.approx(1.0)
        coc = (item["K"] * (item["disparity"][0] - item["disp_focus"])).numpy()
        stored_coc = record["K"] * (stored - record["disp_focus"])
        np.testing.assert_allclose(coc, stored_coc, rtol=0, atol=1e-4)


def test_folders_without_required_files_are_skipped_with_a_warning(tmp_path):
    """A sub-folder with no image is not a scene (skipped, with a warning); an image without its disparity is
    an input that fails when loaded, naming the file expected (it used to be skipped with a warning, so a
    batch missing inputs exited 0)."""
    rng = np.random.default_rng(5)
    save_image(tmp_path / "good" / "image.png", rng.random((3, 8, 8)))
    np.save(tmp_path / "good" / "depth.npy", rng.random((8, 8)))
    save_image(tmp_path / "nodepth" / "image.png", rng.random((3, 8, 8)))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a scene")
    save_image(tmp_path / "flat.png", rng.random((3, 8, 8)))  # no flat.npy next to it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        test_set = load_test_set(tmp_path, layout="folder")
    assert [e["name"] for e in test_set.entries] == ["good", "nodepth", "flat"]
    messages = [str(c.message) for c in caught if issubclass(c.category, InputWarning)]
    assert any(str(tmp_path / "notes") in m and "skipped" in m for m in messages), messages
    assert not any("nodepth" in m or "flat" in m for m in messages), messages
    assert test_set[0]["name"] == "good"
    for index, expected in ((1, tmp_path / "nodepth" / "depth.npy"), (2, tmp_path / "flat.npy")):
        with pytest.raises(FileNotFoundError, match="disparity for") as error:
            test_set[index]
        assert str(expected) in str(error.value)

    blb = tmp_path / "blb"
    _write_exr(blb / "1" / "image.exr", rng.random((6, 6, 3)).astype(np.float32))
    _write_exr(blb / "1" / "depth.exr", np.full((6, 6), 2.0, np.float32))
    (blb / "1" / "info.json").write_text(json.dumps({"blur_parameters": [5.0], "focus_distances": [2.0]}))
    _write_exr(blb / "2" / "image.exr", rng.random((6, 6, 3)).astype(np.float32))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = list(load_test_set(blb, layout="BLB"))
    assert [item["name"] for item in items] == ["1"]
    messages = [str(c.message) for c in caught if issubclass(c.category, InputWarning)]
    assert any(str(blb / "2") in m and "info.json" in m and "skipped" in m for m in messages), messages


def test_folder_layout_flat_and_per_scene(tmp_path):
    rng = np.random.default_rng(0)
    save_image(tmp_path / "flat.png", rng.random((3, 21, 33)))
    np.save(tmp_path / "flat.npy", rng.random((21, 33)).astype(np.float32) * 7)
    save_image(tmp_path / "flat_mask.png", np.ones((21, 33)))
    scene = tmp_path / "scene1"
    save_image(scene / "image.png", rng.random((3, 16, 16)))
    np.save(scene / "depth.npy", rng.random((8, 8)))  # half size: resized to the image, with a warning
    assert detect_layout(tmp_path) == "folder"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = list(load_test_set(tmp_path))
    assert [i["name"] for i in items] == ["scene1", "flat"]
    assert items[0]["disparity"].shape == (1, 16, 16) and "mask" not in items[0]
    assert items[1]["mask"].shape == (1, 21, 33)
    assert any("resized" in str(w.message) for w in caught)
    _check_item(items[0], (16, 16))
    _check_item(items[1], (21, 33))


def test_pngdepth_layout_bright_is_far(tmp_path):
    rng = np.random.default_rng(1)
    save_image(tmp_path / "original" / "p.jpg", rng.random((3, 24, 30)))
    depth = np.tile(np.linspace(0.2, 0.9, 30, dtype=np.float32), (24, 1))  # far on the right
    save_image(tmp_path / "depth" / "p.png", depth, bits=16)
    save_image(tmp_path / "mask" / "p.png", np.zeros((24, 30)))
    assert detect_layout(tmp_path) == "pngdepth"
    item = load_test_set(tmp_path)[0]
    _check_item(item, (24, 30))
    row = item["disparity"][0, 0]
    assert float(row[0]) == pytest.approx(1.0) and float(row[-1]) == pytest.approx(0.0, abs=1e-6)
    assert bool((row[1:] <= row[:-1]).all())


def _write_exr(path: Path, array: np.ndarray) -> None:
    """RGB (H, W, 3) or single-channel (H, W) float32 -> EXR (data.exr, the OpenEXR bindings)."""
    if array.ndim == 3:
        write_exr(path, {c: array[:, :, i] for i, c in enumerate("RGB")})
    else:
        write_exr(path, {"R": array})


@pytest.mark.parametrize("compression", ["none", "zip", "piz", "pxr24", "b44", "dwaa"])
def test_exr_round_trip_with_each_compression(tmp_path, compression):
    """What the hand-written reader refused (PIZ, PXR24, B44, DWA, used by real EXR files such as BLB's)
    reads back: exactly for the lossless codecs, within their documented loss for the lossy ones."""
    values = np.random.default_rng(3).random((19, 23)).astype(np.float32) * 3
    write_exr(tmp_path / "a.exr", {"R": values, "G": values * 2}, compression=compression)
    planes = read_exr(tmp_path / "a.exr")
    assert sorted(planes) == ["G", "R"] and planes["R"].dtype == np.float32
    if compression in ("none", "zip", "piz"):
        np.testing.assert_array_equal(planes["R"], values)
        np.testing.assert_array_equal(planes["G"], values * 2)
    else:  # PXR24 keeps 24 bits of float32; B44/DWAA store FLOAT as is only for HALF, so allow half precision
        np.testing.assert_allclose(planes["R"], values, rtol=2e-2, atol=2e-2)


def test_tiled_half_exr_is_read(tmp_path):
    """A tiled file with HALF channels (another layout the hand-written reader refused)."""
    import OpenEXR

    values = np.linspace(0, 4, 7 * 9, dtype=np.float32).reshape(7, 9)
    tiles = OpenEXR.TileDescription()
    tiles.xSize, tiles.ySize, tiles.mode = 4, 4, OpenEXR.ONE_LEVEL
    header = {"compression": OpenEXR.PIZ_COMPRESSION, "type": OpenEXR.tiledimage, "tiles": tiles}
    OpenEXR.File(header, {"Z": values.astype(np.float16)}).write(str(tmp_path / "t.exr"))
    np.testing.assert_array_equal(read_exr(tmp_path / "t.exr")["Z"], values.astype(np.float16).astype(np.float32))


def test_corrupt_exr_raises_value_error_naming_the_file(tmp_path):
    """Truncated, garbage and missing files raise ValueError naming the file (callers catch ValueError)."""
    values = np.random.default_rng(4).random((64, 64)).astype(np.float32)
    data = write_exr(tmp_path / "ok.exr", {"R": values}, compression="piz").read_bytes()
    (tmp_path / "truncated.exr").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.exr").write_bytes(b"not an exr file" * 10)
    for name in ("truncated.exr", "garbage.exr", "missing.exr"):
        with pytest.raises(ValueError, match=rf"cannot read EXR '.*{name}'.*re-export or re-download"):
            read_exr(tmp_path / name)
    with pytest.raises(ValueError, match=r"cannot decode EXR image '.*truncated\.exr'"):
        read_image(tmp_path / "truncated.exr")


def test_blb_layout_exr_with_exact_coc(tmp_path):
    rng = np.random.default_rng(2)
    scene = tmp_path / "277"
    linear = rng.random((12, 18, 3)).astype(np.float32) * 1.2  # HDR values above 1 are allowed
    depth = np.full((12, 18), 0.5, np.float32)
    depth[:, 9:] = 4.0
    depth[:3] = 65504.0  # sky: infinitely far
    _write_exr(scene / "image.exr", linear)
    _write_exr(scene / "depth.exr", depth)
    _write_exr(scene / "bokeh_01_2.exr", linear * 0.5)
    (scene / "info.json").write_text(json.dumps({"blur_parameters": [5.0, 10.0], "focus_distances": [0.5, 1.0, 4.0]}))
    assert detect_layout(tmp_path) == "BLB"
    items = list(load_test_set(tmp_path))
    assert len(items) == 1
    item = items[0]
    _check_item(item, (12, 18))
    assert item["name"] == "277_bokeh_01_2"
    # Image: linear EXR -> sRGB with gamma 2.2, clipped to [0, 1].
    expected = np.clip(linear, 0, 1) ** (1 / 2.2)
    np.testing.assert_allclose(item["image"].numpy().transpose(1, 2, 0), expected, atol=1e-5)
    # Disparity = 1 / depth (scaled into [0, 1]), sky = 0; K and focus scaled alike: coc_px is the set's own.
    coc = item["K"] * (item["disparity"][0] - item["disp_focus"])
    true_disparity = np.where(depth >= 65504, 0.0, 1.0 / depth)
    true_coc = 10.0 * (true_disparity - 1.0 / 4.0)
    np.testing.assert_allclose(coc.numpy(), true_coc, atol=1e-4)
    assert float(item["disparity"][0, 0, 0]) == 0.0 and float(item["disparity"].max()) == pytest.approx(1.0)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the layout"):
        load_test_set(tmp_path)
    with pytest.raises(ValueError, match="layout must be"):
        load_test_set(EBB, layout="nope")
    save_image(tmp_path / "input" / "x.png", np.zeros((3, 8, 8)))
    (tmp_path / "depth").mkdir()
    test_set = load_test_set(tmp_path, layout="ebb")  # a missing file fails its own item, not the listing
    with pytest.raises(FileNotFoundError, match="disparity for input 'x.png' missing.*x_pred.npy"):
        test_set[0]


def test_a_missing_ground_truth_fails_only_its_item_and_not_inputs_only(tmp_path):
    root = tmp_path / "ebb"
    shutil.copytree(EBB, root)
    meta = json.loads((root / "meta.json").read_text())
    missing = root / meta["scene01"][0]["gt"]
    missing.unlink()
    test_set = load_test_set(root)
    names = [entry["name"] for entry in test_set.entries]
    with pytest.raises(FileNotFoundError, match=f"GT listed in .*{missing.name}"):
        test_set[names.index(missing.stem)]
    assert "gt" in test_set[names.index(meta["scene01"][1]["gt"].split("/")[-1][:-4])]
    assert len(list(load_test_set(root, inputs_only=True))) == 3  # inference needs no ground truth


def test_inputs_sharing_a_stem_are_all_kept_under_distinct_names(tmp_path):
    for suffix, value in ((".jpg", 0.2), (".png", 0.8)):
        save_image(tmp_path / f"a{suffix}", np.full((3, 16, 16), value, np.float32))
    np.save(tmp_path / "a.npy", np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16))
    with pytest.warns(InputWarning, match=r"2 inputs share the name 'a'.*a_jpg, a_png"):
        test_set = load_test_set(tmp_path, "folder", inputs_only=True)
    assert [e["name"] for e in test_set.entries] == ["a_jpg", "a_png"]
    assert [e["image"].suffix for e in test_set.entries] == [".jpg", ".png"]


def test_ebb_reads_every_image_format_and_names_what_it_skips(tmp_path):
    (tmp_path / "input" / "nested").mkdir(parents=True)
    (tmp_path / "depth").mkdir()
    for name, suffix in (("one", ".png"), ("two", ".tif"), ("three", ".webp")):
        cv2.imwrite(str(tmp_path / "input" / f"{name}{suffix}"), np.full((12, 12, 3), 100, np.uint8))
        np.save(tmp_path / "depth" / f"{name}_pred.npy", np.random.default_rng(0).random((12, 12)).astype(np.float32))
    (tmp_path / "input" / "notes.txt").write_text("not an image")
    with pytest.warns(InputWarning, match=r"2 entries not read as inputs \(nested/, notes\.txt\)"):
        test_set = load_test_set(tmp_path, "EBB", inputs_only=True)
    assert sorted(e["name"] for e in test_set.entries) == ["one", "three", "two"]
    assert test_set[1]["image"].shape == (3, 12, 12)


# ------------------------------------------------------------------------------ disparity rule, EXR photos
def _folder_set(root: Path, disparity: np.ndarray, *, scene: bool = False) -> None:
    image = np.random.default_rng(5).random((3, *disparity.shape)).astype(np.float32)
    if scene:
        save_image(root / "s" / "image.png", image)
        np.save(root / "s" / "depth.npy", disparity)
    else:
        save_image(root / "a.png", image)
        np.save(root / "a.npy", disparity)


@pytest.mark.parametrize("scene", [False, True], ids=["flat", "scene_folders"])
def test_folder_layout_disparity_rule_is_stated_and_replaceable(tmp_path, scene):
    """The folder layout min-max normalises by default and says so; ``disparity_normalise`` replaces the rule
    (the old loader ignored any choice: a map already in [0, 1] was always rescaled)."""
    stored = np.tile(np.linspace(0.2, 0.7, 20, dtype=np.float32), (12, 1))
    _folder_set(tmp_path, stored, scene=scene)
    default = load_test_set(tmp_path, "folder")
    assert "folder layout: always" in default.disparity_rule and "--disparity_normalise changes it" in default.disparity_rule
    assert float(default[0]["disparity"].min()) == 0.0 and float(default[0]["disparity"].max()) == pytest.approx(1.0)
    for mode in ("auto", "never"):
        kept = load_test_set(tmp_path, "folder", disparity_normalise=mode)
        assert kept.disparity_rule.startswith(f"folder layout: {mode} (") and "--disparity_normalise" in kept.disparity_rule
        np.testing.assert_allclose(kept[0]["disparity"][0].numpy(), stored, atol=1e-6)


def test_ebb_metadata_follows_a_replaced_disparity_rule(tmp_path):
    """EBB metadata K and focus refer to the stored map: whatever the rule, coc_px stays the stored one."""
    shutil.copytree(EBB, tmp_path / "ebb")
    for mode in (None, "never", "always"):
        item = load_test_set(tmp_path / "ebb", disparity_normalise=mode)[0]
        name = item["input_name"]
        stored = np.load(tmp_path / "ebb" / "depth" / f"{name}_pred.npy")
        record = json.loads((tmp_path / "ebb" / "meta.json").read_text())[name][0]
        coc = item["K"] * (item["disparity"][0] - item["disp_focus"])
        # The map is stored as float16: compare in float64, not in its own precision.
        np.testing.assert_allclose(coc.numpy(), record["K"] * (stored.astype(np.float64) - record["disp_focus"]),
                                   atol=1e-5)


def test_physical_layouts_refuse_a_disparity_rule(tmp_path):
    save_image(tmp_path / "original" / "p.png", np.zeros((3, 8, 8)))
    save_image(tmp_path / "depth" / "p.png", np.zeros((8, 8)))
    assert "pngdepth layout: 1 - the depth PNG" in load_test_set(tmp_path).disparity_rule
    with pytest.raises(ValueError, match=r"--disparity_normalise auto: .*pngdepth.*cannot be changed"):
        load_test_set(tmp_path, disparity_normalise="auto")
    with pytest.raises(ValueError, match="disparity_normalise must be"):
        load_test_set(tmp_path, disparity_normalise="sometimes")


def test_folder_layout_reads_an_exr_photo_as_linear_light(tmp_path):
    """``<name>.exr`` in a folder set is scene-linear: encoded like BLB's images, it matches its sRGB PNG."""
    srgb = np.random.default_rng(6).random((3, 10, 14)).astype(np.float32)
    save_image(tmp_path / "png" / "a.png", srgb, bits=16)
    _write_exr(tmp_path / "exr" / "a.exr", srgb.transpose(1, 2, 0) ** 2.2)
    for sub in ("png", "exr"):
        np.save(tmp_path / sub / "a.npy", np.zeros((10, 14), np.float32))
    from_png, from_exr = (load_test_set(tmp_path / sub, "folder")[0]["image"] for sub in ("png", "exr"))
    np.testing.assert_allclose(from_exr.numpy(), from_png.numpy(), atol=1e-4)
