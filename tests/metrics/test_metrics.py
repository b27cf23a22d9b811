import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from data.io import save_image
from metrics.bands import discontinuity_band
from metrics.image import (PSNR_MAX_DB, LearnedMetric, load_learned_metrics, masked_mean, mse_map, psnr_from_mse,
                           ssim_map)
from metrics.report import Pair, evaluate_pairs, find_pairs, score, write_reports


def _image(seed, h=48, w=64):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_identical_images_score_perfect():
    image = _image(0)
    values = score(image, image.clone(), band=None)
    assert float(values["psnr"][0]) == PSNR_MAX_DB == 100.0  # the documented cap, not +inf
    assert values["ssim"][0] == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(values["psnr_band"][0])  # no disparity: band metrics are undefined, not zero


def test_psnr_of_a_known_mse():
    target = torch.full((1, 3, 16, 16), 0.5)
    pred = target + 0.1  # MSE = 0.01 -> PSNR = 20 dB exactly
    assert float(psnr_from_mse(masked_mean(mse_map(pred, target), None))[0]) == pytest.approx(20.0, abs=1e-4)


def test_ssim_drops_with_noise_and_is_symmetric():
    target = _image(1)
    noisy = (target + 0.2 * torch.randn_like(target)).clamp(0, 1)
    a, b = ssim_map(noisy, target).mean(), ssim_map(target, noisy).mean()
    assert float(a) < 0.9
    assert float(a) == pytest.approx(float(b), abs=1e-6)


def test_band_mask_on_a_step_edge():
    disparity = torch.zeros(1, 1, 20, 30)
    disparity[..., 15:] = 0.8  # a vertical edge between columns 14 and 15
    band = discontinuity_band(disparity, width_px=3, threshold=0.05)[0, 0]
    columns = band.any(dim=0).nonzero().flatten().tolist()
    assert columns == list(range(14 - 3, 15 + 3 + 1))
    assert band[:, 11:19].all()  # the full height is covered
    assert not discontinuity_band(disparity * 0.01 + 0.3, width_px=3)[0, 0].any()  # jumps below threshold


def test_band_and_outside_split_the_error():
    target = torch.full((1, 3, 20, 30), 0.5)
    pred = target.clone()
    pred[..., 11:19] += 0.1  # error exactly on the band (columns 11..18)
    disparity = torch.zeros(1, 1, 20, 30)
    disparity[..., 15:] = 1.0
    band = discontinuity_band(disparity, width_px=3)
    values = score(pred, target, band)
    assert values["psnr_outside"][0] == PSNR_MAX_DB  # error-free outside the band: the cap
    assert values["psnr_band"][0] == pytest.approx(20.0, abs=1e-3)
    assert values["psnr"][0] > values["psnr_band"][0]


def test_unavailable_learned_metrics_are_reported_not_faked():
    def offline(device):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    loaded, unavailable = load_learned_metrics(["lpips_vgg"], torch.device("cpu"), factories={"lpips_vgg": offline})
    assert loaded == []
    assert "Name or service not known" in unavailable["lpips_vgg"]
    with pytest.raises(ValueError, match="unknown metric"):
        load_learned_metrics(["fid"], torch.device("cpu"))


def _write_pairs(tmp_path, n=3):
    pred_dir, gt_dir, disp_dir = tmp_path / "pred", tmp_path / "gt", tmp_path / "depth"
    disp_dir.mkdir()
    for i in range(n):
        gt = _image(10 + i)[0]
        save_image(gt_dir / f"scene{i}.png", gt)
        save_image(pred_dir / f"scene{i}.png", (gt + 0.05 * (i + 1)).clamp(0, 1))
        disparity = np.zeros((48, 64), np.float32)
        disparity[:, 32:] = 0.9
        np.save(disp_dir / f"scene{i}_pred.npy", disparity)
    return pred_dir, gt_dir, disp_dir


def test_reports_are_written_and_parse(tmp_path):
    pred_dir, gt_dir, disp_dir = _write_pairs(tmp_path)
    (gt_dir / "orphan.png").write_bytes(b"")  # ground truth without a prediction is reported
    (pred_dir / "extra.png").write_bytes(b"")  # and so is a prediction without ground truth
    pairs, problems = find_pairs(pred_dir, gt_dir, disp_dir)
    assert [p.name for p in pairs if p.pred] == ["scene0", "scene1", "scene2"]
    assert [p.name for p in pairs if p.pred is None] == ["orphan"]
    assert any("extra" in p for p in problems)

    spatial = LearnedMetric("fake_spatial", lambda p, t: (p - t).abs().mean(1, keepdim=True), spatial=True)
    evaluation = evaluate_pairs(pairs, learned=[spatial], unavailable={"dists": "offline"}, band_width_px=4)
    assert not evaluation.failures and list(evaluation.missing) == ["orphan"]
    paths = write_reports(evaluation, pairs, tmp_path / "out", worst_k=2)
    data = json.loads(paths["json"].read_text())
    assert len(data["per_image"]) == 3
    assert data["unavailable"] == {"dists": "offline"}
    psnrs = [row["psnr"] for row in data["per_image"]]
    assert psnrs[0] > psnrs[1] > psnrs[2]  # larger offsets, lower PSNR
    assert data["mean"]["psnr"] == pytest.approx(np.mean(psnrs))
    assert data["mean"]["fake_spatial_band"] > 0
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("name,psnr,ssim") and len(csv_lines) == 4
    table = paths["markdown"].read_text()
    assert "| psnr |" in table and "| dists | unavailable" in table
    assert paths["worst"].is_file()


def test_a_bad_pair_is_skipped_and_reported(tmp_path):
    pred_dir, gt_dir, disp_dir = _write_pairs(tmp_path, n=2)
    save_image(pred_dir / "scene1.png", _image(5, 20, 20)[0])  # wrong size
    pairs, _ = find_pairs(pred_dir, gt_dir, disp_dir)
    evaluation = evaluate_pairs(pairs)
    assert [row["name"] for row in evaluation.rows] == ["scene0"]
    assert "20x20" in evaluation.failures["scene1"]


def test_cli_end_to_end(tmp_path, capsys):
    import evaluate

    pred_dir, gt_dir, disp_dir = _write_pairs(tmp_path, n=2)
    code = evaluate.main([
        "--pred_dir", str(pred_dir), "--gt_dir", str(gt_dir), "--disparity_dir", str(disp_dir),
        "--output_dir", str(tmp_path / "eval"), "--learned", "--device", "cpu",
    ])
    assert code == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["mean"]["psnr"] > 20
    assert evaluate.main(["--pred_dir", str(tmp_path / "nope"), "--gt_dir", str(gt_dir),
                          "--output_dir", str(tmp_path)]) == 2
    assert "--pred_dir" in capsys.readouterr().err


def test_dataset_layout_pairs_ground_truth_with_inference_and_gt_named_predictions(tmp_path, capsys):
    """--dataset: each GT of meta.json finds its prediction (named like the GT, or as inference_hf.py names
    a render of that scene, K and focus) and its scene's disparity, so band metrics are defined."""
    import shutil

    import evaluate
    from data.inference_io import output_name
    from metrics.report import dataset_records, find_dataset_pairs

    ebb = Path(__file__).resolve().parents[2] / "test_data" / "ebb"
    records = dataset_records(ebb)
    assert len(records) == 6 and all(r["disparity"].is_file() and r["gt"].is_file() for r in records)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for i, record in enumerate(records[:4]):  # two named like the GT, two as inference_hf.py names renders
        name = f"{record['name']}.png" if i % 2 else output_name(record["scene"], record["K"], record["disp_focus"])
        shutil.copy(record["gt"], pred_dir / name)
    pairs, problems = find_dataset_pairs(ebb, pred_dir)
    assert [p.name for p in pairs if p.pred] == [r["name"] for r in records[:4]] and not problems
    assert all("no prediction" in p.missing for p in pairs[4:]) and not any(p.pred for p in pairs[4:])
    out = tmp_path / "eval"
    # Two ground truths have no prediction: they are in the reports, and the exit code says so.
    assert evaluate.main(["--pred_dir", str(pred_dir), "--dataset", str(ebb), "--output_dir", str(out),
                          "--learned", "--device", "cpu"]) == 1
    data = json.loads((out / "metrics.json").read_text())
    rows = data["per_image"]
    assert len(rows) == 4 and all(r["psnr"] == PSNR_MAX_DB and r["psnr_band"] is not None for r in rows)
    assert sorted(data["missing"]) == sorted(r["name"] for r in records[4:])
    assert evaluate.main(["--pred_dir", str(pred_dir), "--dataset", str(tmp_path), "--output_dir", str(out)]) == 2
    assert "meta.json" in capsys.readouterr().err


def test_dataset_without_any_match_says_which_names_and_the_command_that_renders_one(tmp_path):
    """A --pred_dir rendered at other K / focus values (e.g. inference_hf.py's default K 20) matches nothing:
    the error names the files it looked for and an inference_hf.py command; that command, run as given with
    the classical renderer, writes a prediction that then matches."""
    import re
    import shlex

    import inference_hf
    from metrics.report import find_dataset_pairs

    ebb = Path(__file__).resolve().parents[2] / "test_data" / "ebb"
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    save_image(pred_dir / "scene00_K20_f0.17.png", _image(0)[0])
    with pytest.raises(ValueError) as caught:
        find_dataset_pairs(ebb, pred_dir)
    message = str(caught.value)
    assert "scene00_K9.62_f0.168.png" in message and "scene00_K9.62_f0.17.png" in message
    command = re.search(r"`python inference_hf.py \[--renderer NAME\] ([^`]+)`", message).group(1)
    assert inference_hf.main(["--renderer", "classical", *shlex.split(command), "--no_contact_sheet"]) == 0
    pairs, _ = find_dataset_pairs(ebb, pred_dir)
    assert [pair.name for pair in pairs if pair.pred is not None] == ["scene00_K9.62_f0.168"]


def test_an_image_too_small_for_ssim_fails_alone(tmp_path):
    pred_dir, gt_dir, _ = _write_pairs(tmp_path, n=2)
    for folder in (pred_dir, gt_dir):
        save_image(folder / "tiny.png", _image(3, 4, 4)[0])  # kornia's 11-px SSIM window raises on 4 x 4
    pairs, _ = find_pairs(pred_dir, gt_dir)
    evaluation = evaluate_pairs(pairs)
    assert sorted(row["name"] for row in evaluation.rows) == ["scene0", "scene1"]
    assert "tiny" in evaluation.failures


def _strict_json(path):
    def reject(constant):
        raise AssertionError(f"'{path}' is not strict JSON: it holds {constant}")

    return json.loads(Path(path).read_text(), parse_constant=reject)


def test_missing_predictions_are_reported_counted_and_fail_the_run(tmp_path, capsys):
    """4 of 6 predictions missing: the reports list them and count them, and the exit code is 1."""
    import evaluate

    pred_dir, gt_dir, disp_dir = _write_pairs(tmp_path, n=6)
    for i in (1, 2, 4, 5):
        (pred_dir / f"scene{i}.png").unlink()
    out = tmp_path / "eval"
    assert evaluate.main(["--pred_dir", str(pred_dir), "--gt_dir", str(gt_dir), "--disparity_dir", str(disp_dir),
                          "--output_dir", str(out), "--learned", "--device", "cpu"]) == 1
    data = _strict_json(out / "metrics.json")
    assert data["counts"] == {"ground_truths": 6, "scored": 2, "missing": 4, "failed": 0}
    assert sorted(data["missing"]) == ["scene1", "scene2", "scene4", "scene5"]
    assert "scene1.png" in data["missing"]["scene1"]
    table = (out / "metrics.md").read_text()
    assert "2 of 6 images scored" in table and "Missing predictions (4)" in table and "`scene5`" in table
    assert "scene4" in capsys.readouterr().err


def test_an_identical_pair_is_capped_and_the_json_is_strict(tmp_path):
    """PSNR of an identical pair is the documented cap (not inf, which hid every other image in the mean);
    undefined values (no band without a disparity) are null, never NaN, in metrics.json."""
    import shutil

    pred_dir, gt_dir, _ = _write_pairs(tmp_path, n=2)
    shutil.copy(gt_dir / "scene0.png", pred_dir / "scene0.png")
    pairs, _ = find_pairs(pred_dir, gt_dir)
    evaluation = evaluate_pairs(pairs)
    data = _strict_json(write_reports(evaluation, pairs, tmp_path / "out")["json"])
    first, second = data["per_image"]
    assert first["psnr"] == PSNR_MAX_DB and 20 < second["psnr"] < PSNR_MAX_DB
    assert data["mean"]["psnr"] == pytest.approx((PSNR_MAX_DB + second["psnr"]) / 2)
    assert first["psnr_band"] is None and data["mean"]["psnr_band"] is None


def test_reports_never_replace_an_input(tmp_path, capsys):
    """--output_dir is the predictions' folder and one prediction is called metrics.md... or worst_cases.png."""
    import evaluate

    pred_dir, gt_dir, _ = _write_pairs(tmp_path, n=2)
    for folder in (pred_dir, gt_dir):
        save_image(folder / "worst_cases.png", _image(7)[0])
    before = (pred_dir / "worst_cases.png").read_bytes()
    assert evaluate.main(["--pred_dir", str(pred_dir), "--gt_dir", str(gt_dir), "--output_dir", str(pred_dir),
                          "--learned", "--device", "cpu"]) == 2
    assert "worst_cases.png" in capsys.readouterr().err
    assert (pred_dir / "worst_cases.png").read_bytes() == before and not (pred_dir / "metrics.json").exists()


def test_renders_named_by_inference_pair_with_their_ground_truth(tmp_path):
    """``inference_hf.py`` writes ``<name>_K<K>_f<focus>.png``; a GT ``<name>.png`` takes its only render (a
    cleaned name too), and several renders of one GT are refused with the choices and --pred_glob."""
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    for name, render in (("a", "a_K20_f0.50"), ("my scene", "my_scene_K7.5_f0.12"), ("sub/b", "sub/b_K20_f0.50-2")):
        save_image(gt_dir / f"{name}.png", _image(1)[0])
        save_image(pred_dir / f"{render}.png", _image(2)[0])
    save_image(pred_dir / "contact_sheet.png", _image(3)[0])
    pairs, problems = find_pairs(pred_dir, gt_dir)
    assert {p.name: p.pred.relative_to(pred_dir).as_posix() for p in pairs} == {
        "a": "a_K20_f0.50.png", "my scene": "my_scene_K7.5_f0.12.png", "sub/b": "sub/b_K20_f0.50-2.png"}
    assert problems == [f"no ground truth for prediction '{pred_dir / 'contact_sheet.png'}'"]

    save_image(pred_dir / "a_K40_f0.50.png", _image(4)[0])  # a second render of 'a'
    with pytest.raises(ValueError, match=r"several renders.*a_K20_f0\.50\.png, a_K40_f0\.50\.png.*--pred_glob"):
        find_pairs(pred_dir, gt_dir)
    pairs, _ = find_pairs(pred_dir, gt_dir, pred_glob="*_K40_*")
    assert [(p.name, p.pred.name if p.pred else None) for p in pairs] == [
        ("a", "a_K40_f0.50.png"), ("my scene", None), ("sub/b", None)]
    # A prediction named exactly like its GT is kept, as before, whatever renders lie beside it.
    save_image(pred_dir / "a.png", _image(5)[0])
    assert next(p for p in find_pairs(pred_dir, gt_dir)[0] if p.name == "a").pred.name == "a.png"
