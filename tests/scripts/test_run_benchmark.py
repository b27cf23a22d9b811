"""The evaluation benchmark end to end at toy scale: build, render with the baselines, score, tabulate."""

import json

import pytest

from metrics.report import dataset_records
from scripts import make_benchmark, run_benchmark


@pytest.fixture(scope="module")
def benchmark_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark")
    make_benchmark.main(["--out", str(root), "--n_scenes", "2", "--height", "48", "--width", "64",
                         "--max_coc_px", "4"])
    return root


def test_make_benchmark_is_seeded_and_complete(benchmark_data, tmp_path):
    meta = json.loads((benchmark_data / "ebb" / "meta.json").read_text())
    records = dataset_records(benchmark_data / "ebb")
    assert len(records) == 4  # 2 scenes x 2 focus planes x 1 strength
    assert all(r["gt"].is_file() and r["input"].is_file() and r["disparity"].is_file() for r in records)
    assert (benchmark_data / "motorcycle" / "depth" / "motorcycle_pred.npy").is_file()
    make_benchmark.main(["--out", str(tmp_path), "--n_scenes", "2", "--height", "48", "--width", "64",
                         "--max_coc_px", "4"])
    assert json.loads((tmp_path / "ebb" / "meta.json").read_text()) == meta
    first = sorted((benchmark_data / "ebb" / "bokeh").iterdir())[0]
    assert (tmp_path / "ebb" / "bokeh" / first.name).read_bytes() == first.read_bytes()


def test_run_benchmark_scores_methods_and_reports_unavailable(benchmark_data, tmp_path):
    out, md = tmp_path / "out", tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    code = run_benchmark.main(["--data", str(benchmark_data), "--out", str(out), "--learned", "--device", "cpu",
                               "--methods", "identity", "classical", "bokehdiff",
                               "--bokehdiff_args", f"--pretrained_model_name_or_path {tmp_path / 'missing'}",
                               "--write_benchmarks", str(md)])
    assert code == 0
    table = (out / "summary.md").read_text()
    assert "| bokehdiff | unavailable" in table
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    psnr = {m: float(rows[m].split(" | ")[1]) for m in ("identity", "classical")}
    assert psnr["classical"] > psnr["identity"] + 3  # the physical renderer is much closer to the ray-traced GT
    assert len(list((out / "classical").glob("scene*.png"))) == 4
    assert json.loads((out / "classical" / "eval" / "metrics.json").read_text())["failures"] == {}
    assert (out / "motorcycle_sheet.png").is_file()
    written = md.read_text()
    assert "## Evaluation" in written and "## Other\n\nkept" in written
