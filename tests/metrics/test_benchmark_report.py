"""Multi-level benchmark reports: per-level tables (method x metric), per-scene means, CSV, chart, worst cases."""

import csv
import math

import numpy as np
from PIL import Image

from data.io import save_image
from metrics.benchmark_report import level_tables, plot_levels, scene_rows, worst_cases, write_csv


def _rows(tmp_path=None):
    rows = []
    for method, base in (("identity", 20.0), ("classical", 30.0)):
        for level in (1, 2):
            for scene, shift in (("a", 0.0), ("b", 2.0)):
                rows.append({"benchmark": "toy", "method": method, "scene": scene, "name": f"{scene}_{level}",
                             "level": level, "K": 4.0 * level, "disp_focus": 0.5, "focus_source": "metadata",
                             "prediction": "", "psnr": base - level + shift, "psnr_band": base - 5 - level,
                             "ssim": 0.9, "ssim_band": math.nan, "lpips_vgg": 0.1 * level})
    return rows


def test_one_table_per_level_methods_by_metrics_with_failures():
    text = level_tables("toy", _rows(), ["identity", "classical"],
                        failures=[{"method": "peer", "name": "a_2", "reason": "exited with status 3"}],
                        unavailable={"bokehdiff": "no weights"})
    assert text.count("### toy, level ") == 2
    level2 = text.split("### toy, level 2")[1]
    assert "| method | psnr ↑ | ssim ↑ | lpips_vgg ↓ | psnr band ↑ | ssim band ↑ | lpips_vgg band ↓ | images |" in level2
    assert "| classical | 29.00 | 0.9000 | 0.2000 | 23.00 | n/a | n/a | 2 |" in level2  # mean of 28 and 30
    assert "| identity | 19.00 |" in level2
    assert "`a_2` (peer): exited with status 3" in text and "`bokehdiff`: unavailable (no weights)" in text


def test_scene_means_and_csv(tmp_path):
    scenes = scene_rows(_rows())
    assert len(scenes) == 8
    first = next(r for r in scenes if (r["method"], r["scene"], r["level"]) == ("classical", "b", 1))
    assert first["psnr"] == 31.0 and first["images"] == 1 and math.isnan(first["ssim_band"])
    path = write_csv(scenes, tmp_path / "per_scene.csv")
    read = list(csv.DictReader(path.open()))
    assert len(read) == 8 and read[0]["ssim_band"] == "" and float(read[0]["psnr"]) > 0


def test_chart_and_worst_cases_are_pngs(tmp_path):
    rows = _rows()
    chart = plot_levels("toy", rows, ["identity", "classical"], tmp_path / "chart.png")
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.size[0] > 300
    rng = np.random.default_rng(0)
    gts = {}
    for row in rows:
        gts[row["name"]] = rng.random((3, 16, 20)).astype(np.float32)
        row["prediction"] = str(save_image(tmp_path / f"{row['method']}_{row['name']}.png", gts[row["name"]]))
    sheet = worst_cases(rows, lambda name: gts[name], tmp_path / "worst.png", k=2)
    with Image.open(sheet) as image:
        width, height = image.size
    assert width == 3 * 256 and height > 2 * 16  # GT | prediction | error, two rows (classical only)
    assert worst_cases([r for r in rows if r["method"] == "identity"], gts.get, tmp_path / "none.png") is None
