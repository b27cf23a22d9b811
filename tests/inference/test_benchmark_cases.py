"""The benchmarks' cases: BLB's (level, K, focus) mapping pinned, scene failures, EBB focus rule, layered levels."""

import json

import numpy as np
import pytest

from data.exr import read_exr_array
from inference.benchmark_cases import blb_cases, blb_level, ebb_cases, layered_cases
from tests.benchmark_fixtures import BLB_GTS, BLB_INFO, NEAR_DEPTH, make_blb, make_ebb


@pytest.fixture(scope="module")
def blb(tmp_path_factory):
    return make_blb(tmp_path_factory.mktemp("blb"))


def test_blb_level_focus_and_K_mapping_is_pinned(blb):
    cases, failures = blb_cases(blb)
    assert [c.name for c in cases if c.scene == "s1"] == [f"s1_bokeh_{k:02d}_{f:02d}" for k, f in BLB_GTS]
    assert blb_level(0) == 1 and blb_level(4) == 5  # bokeh_00_* is level 1 of the release's 5
    scale = 1.0 / NEAR_DEPTH  # nearest disparity 1 / 0.8 > 1: disparity / s, K * s, focus / s
    for case in cases:
        k, f = (int(part) for part in case.name.split("_")[-2:])
        assert case.level == k + 1
        item = case.load()
        assert item["K"] == pytest.approx(BLB_INFO["blur_parameters"][k] * scale, rel=1e-6)
        assert item["disp_focus"] == pytest.approx(1.0 / BLB_INFO["focus_distances"][f] / scale, rel=1e-6)
        assert float(item["disparity"].max()) == pytest.approx(1.0) and float(item["disparity"].min()) == 0.0  # sky
        # The set's own CoC: K_blb * (1 / depth - 1 / focus_distance), in px.
        coc = item["K"] * (item["disparity"] - item["disp_focus"])
        depth = read_exr_array(blb / case.scene / "depth.exr")[:, :, 0]
        expected = BLB_INFO["blur_parameters"][k] * (np.where(depth >= 65504, 0.0, 1.0 / depth)
                                                     - 1.0 / BLB_INFO["focus_distances"][f])
        np.testing.assert_allclose(coc[0].numpy(), expected, atol=1e-5)
        assert item["gt"].shape == item["image"].shape and 0 <= float(item["gt"].min()) <= float(item["gt"].max()) <= 1
    assert {c.level for c in blb_cases(blb, levels=[2])[0]} == {2}


def test_blb_missing_or_malformed_info_fails_that_scene_only(blb):
    cases, failures = blb_cases(blb)
    assert sorted(failures) == ["s3_no_info", "s4_bad_info"]
    assert str(blb / "s3_no_info" / "info.json") in failures["s3_no_info"] and "no info.json" in failures["s3_no_info"]
    assert str(blb / "s4_bad_info" / "info.json") in failures["s4_bad_info"]
    assert "not valid JSON" in failures["s4_bad_info"]
    assert {c.scene for c in cases} == {"s1", "s2"}
    (blb / "s4_bad_info" / "info.json").write_text(json.dumps({"blur_parameters": [1.0]}))
    try:
        assert "no 'focus_distances' list" in blb_cases(blb)[1]["s4_bad_info"]
    finally:
        (blb / "s4_bad_info" / "info.json").write_text('{"blur_parameters": [3.0], "focus_distances": ')


def test_ebb_pairs_focus_on_the_subject_mask_and_K_levels(tmp_path):
    root = make_ebb(tmp_path / "ebb")
    cases, failures = ebb_cases(root, [4.0, 8.0])
    assert failures == {} and [(c.name, c.level) for c in cases] == [("p1_K4", 1), ("p1_K8", 2), ("p2_K4", 1),
                                                                        ("p2_K8", 2)]
    item = cases[0].load()
    assert item["focus_source"] == "mask_median" and item["disp_focus"] == pytest.approx(1.0)  # the near bar
    assert item["K"] == 4.0 and item["gt"].shape == item["image"].shape
    (root / "mask" / "p1.png").unlink()  # no mask: the disparity whose pixels stay sharp in the GT
    assert ebb_cases(root, [4.0])[0][0].load()["focus_source"] == "gt_edges"
    (root / "bokeh" / "p2.jpg").unlink()
    cases, failures = ebb_cases(root, [4.0])
    assert [c.name for c in cases] == ["p1_K4"] and "no ground truth" in failures["p2"]


def test_layered_levels_rank_the_largest_coc(tmp_path):
    from scripts import make_benchmark

    make_benchmark.main(["--out", str(tmp_path), "--n_scenes", "1", "--height", "32", "--width", "40",
                         "--max_coc_px", "2", "4"])
    cases, _ = layered_cases(tmp_path)
    meta = json.loads((tmp_path / "ebb" / "meta.json").read_text())
    by_gt = {r["gt"].split("/")[-1].rsplit(".", 1)[0]: r for r in meta["scene00"]}
    assert len(cases) == 4 and {c.level for c in cases} == {1, 2}
    for case in cases:
        assert case.level == (1 if by_gt[case.name]["max_coc_px"] == 2 else 2)
        item = case.load()
        assert item["K"] == pytest.approx(by_gt[case.name]["K"]) and np.isfinite(item["disp_focus"])

