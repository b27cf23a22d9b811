"""evaluate.py scores what inference_hf.py rendered from a folder against a GT folder of the same names."""

import json

import numpy as np

import evaluate
import inference_hf
from data.io import save_image


def _folder(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        save_image(tmp_path / "set" / f"{name}.png", rng.random((3, 32, 40)))
        disparity = np.full((32, 40), 0.1, np.float32)
        disparity[8:24, 10:30] = 0.8
        np.save(tmp_path / "set" / f"{name}.npy", disparity)
        save_image(tmp_path / "gt" / f"{name}.png", rng.random((3, 32, 40)))


def _infer(tmp_path, *K):
    assert inference_hf.main(["--renderer", "classical", "--test_data_dir", str(tmp_path / "set"), "--K", *K,
                              "--focus_disparity", "0.8", "--output_dir", str(tmp_path / "out"),
                              "--device", "cpu"]) == 0


def test_evaluate_pairs_inference_renders_with_gt_names(tmp_path, capsys):
    _folder(tmp_path)
    _infer(tmp_path, "8")
    code = evaluate.main(["--pred_dir", str(tmp_path / "out"), "--gt_dir", str(tmp_path / "gt"),
                          "--output_dir", str(tmp_path / "eval"), "--learned", "none", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert [row["name"] for row in data["per_image"]] == ["a", "b"]


def test_several_renders_per_ground_truth_are_refused_then_chosen_with_pred_glob(tmp_path, capsys):
    _folder(tmp_path)
    _infer(tmp_path, "4", "8")
    base = ["--pred_dir", str(tmp_path / "out"), "--gt_dir", str(tmp_path / "gt"), "--output_dir",
            str(tmp_path / "eval"), "--learned", "none", "--device", "cpu"]
    assert evaluate.main(base) == 2
    err = capsys.readouterr().err
    assert "a_K4_f0.80.png, a_K8_f0.80.png" in err and "--pred_glob '*_K4_f0.80.png'" in err
    assert evaluate.main([*base, "--pred_glob", "*_K8_f0.80.png"]) == 0
    assert len(json.loads((tmp_path / "eval" / "metrics.json").read_text())["per_image"]) == 2
