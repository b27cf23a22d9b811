"""Input handling, focus choice and output naming of inference_hf.py (data/inference_io.py), without a renderer."""

import argparse

import numpy as np
import pytest
import torch

from data.inference_io import (
    InputItem, OutputFiles, choose_focus, conform_item, format_value, item_contact_sheet, limit_size, output_name,
    safe_name, sheet_name, strength_K, unique_focus, unique_names,
)
from data.io import InputWarning


def _item(h=20, w=30, mask=None):
    disparity = np.full((1, h, w), 0.25, np.float32)
    disparity[:, : h // 2] = 0.75
    return InputItem("x", np.random.default_rng(0).random((3, h, w)).astype(np.float32), disparity, mask)


def test_output_names():
    assert output_name("motorcycle", 20.0, 0.6249) == "motorcycle_K20_f0.62.png"
    assert output_name("a", 7.5, 1.0) == "a_K7.5_f1.00.png"
    assert output_name("a", 0.0, 0.0) == "a_K0_f0.00.png"
    assert [format_value(v) for v in (20.0, 7.5, 0.125, 0.0)] == ["20", "7.5", "0.12", "0"]
    assert safe_name("my photo/ü:1") == "my_photo_ü_1" and safe_name("...") == "image"
    assert safe_name("场景") == "场景" and safe_name("Cafe\u0301") == "Caf\u00e9"  # Unicode kept, NFC
    assert sheet_name("a", True) == "contact_sheet.png" and sheet_name("a", False) == "a_contact_sheet.png"


def test_strength_K_rejects_negative_and_non_finite():
    assert strength_K("20") == 20.0 and strength_K("0") == 0.0
    for bad in ("-1", "inf", "nan", "abc"):
        with pytest.raises(argparse.ArgumentTypeError, match="--K"):
            strength_K(bad)


def test_focus_precedence():
    mask = np.zeros((1, 20, 30), np.float32)
    mask[:, 15:] = 1  # subject in the bottom half (far plane)
    item = _item(mask=mask)
    assert choose_focus(item, focus_disparity=[0.3, 0.6]) == [(0.3, "given"), (0.6, "given")]
    assert choose_focus(item, focus_xy=(3, 2)) == [(0.75, "at (3, 2)")]
    assert choose_focus(item, focus_percentile=[90, 10]) == [(0.75, "p90"), (0.25, "p10")]
    assert choose_focus(item) == [(0.25, "mask")]
    item.mask = None
    item.disparity[:, 7:13, 12:18] = 0.5  # covers the 5 x 5 window around the centre (15, 10)
    assert choose_focus(item) == [(0.5, "centre")]
    with pytest.raises(ValueError, match="--focus_xy"):
        choose_focus(item, focus_xy=(30, 0))


def test_unique_focus_drops_name_collisions_with_a_warning():
    with pytest.warns(InputWarning, match="duplicates"):
        kept = unique_focus([(0.5, "a"), (0.501, "b"), (0.7, "c")], "x")
    assert kept == [(0.5, "a"), (0.7, "c")]


def test_conform_item_from_torch_with_repairs():
    image = torch.rand(1, 10, 12)  # grey, channel-first
    disparity = torch.full((1, 5, 6), 2.0)
    disparity[0, 0, 0] = float("nan")
    disparity[0, 1, 1] = 4.0
    with pytest.warns(InputWarning) as record:
        item = conform_item("a b", image, disparity, mask=torch.ones(5, 6))
    messages = " ".join(str(w.message) for w in record)
    assert "invalid pixels" in messages and "normalised" in messages and "resized" in messages
    assert item.name == "a_b" and item.image.shape == (3, 10, 12) and item.disparity.shape == (1, 10, 12)
    assert item.mask.shape == (1, 10, 12) and np.isfinite(item.disparity).all()
    assert 0 <= item.disparity.min() and item.disparity.max() <= 1


def test_limit_size_shrinks_only():
    item = _item(h=40, w=80, mask=np.ones((1, 40, 80), np.float32))
    small = limit_size(item, 20)
    assert small.image.shape == (3, 10, 20) and small.disparity.shape == (1, 10, 20) and small.mask.shape == (1, 10, 20)
    assert limit_size(item, 100) is item and limit_size(item, None) is item


def test_item_contact_sheet_layout():
    item = _item(h=20, w=30)
    renders = {(k, f): item.image for k in (5.0, 10.0) for f in (0.2, 0.8)}
    sheet = item_contact_sheet(item, renders, [5.0, 10.0], [(0.2, "p10"), (0.8, "p90")], width=60)
    assert sheet.shape == (3, 2 * (40 + 22), 3 * 60)
    # One K: the disparity still gets its own row, next to black (absent) tiles.
    sheet = item_contact_sheet(item, renders, [5.0], [(0.2, "p10")], width=60)
    assert sheet.shape == (3, 2 * (40 + 22), 2 * 60) and sheet[:, 62 + 30, 90].max() == 0


def test_unique_names_are_distinct_deterministic_and_keep_clean_names():
    names = ["my scene", "my_scene", "场景", "风景", "a:b", "a?b", "A_b"]
    unique = unique_names(names)
    assert len({n.casefold() for n in unique}) == len(names)  # distinct even on case-insensitive file systems
    assert unique[1] == "my_scene" and unique[2:4] == ["场景", "风景"]  # clean names are kept as they are
    assert unique[0].startswith("my_scene-") and unique[4].startswith("a_b-") and unique[5].startswith("a_b-")
    assert unique_names(names[::-1]) == unique[::-1]  # independent of the order the inputs are listed in
    assert unique_names(["x", "x"]) == ["x", "x-2"]  # identical names: numbered in order


def test_output_files_never_hand_out_an_input_or_a_path_twice(tmp_path):
    photo = tmp_path / "contact_sheet.png"
    photo.write_bytes(b"photo")
    (tmp_path / "old.png").write_bytes(b"an earlier output: may be replaced")
    files = OutputFiles(tmp_path, protected=[photo])
    assert files.claim("contact_sheet.png") == tmp_path / "contact_sheet-2.png"
    assert files.claim("a.png") == tmp_path / "a.png" and files.claim("a.png") == tmp_path / "a-2.png"
    assert files.claim("old.png") == tmp_path / "old.png"
    assert files.renamed == [("contact_sheet.png", "contact_sheet-2.png"), ("a.png", "a-2.png")]


def test_limit_size_keeps_the_protocols_focus_and_a_raw_maps_range():
    """--max_side on a published input: its focus and focus-plane range survive, a raw map above 1 (published
    BLB) is not clipped to 1, and the renders are written at the shrunk size."""
    from dataclasses import replace

    item = _item(h=40, w=80)
    item = replace(item, disparity=item.disparity * 1.5 + 0.1, focus=1.2, output_size=(40, 80),
                   disparity_range=(0.1, 1.6))
    small = limit_size(item, 20)
    assert small.focus == 1.2 and small.disparity_range == (0.1, 1.6) and small.output_size is None
    assert float(small.disparity.max()) > 1.0
