"""``python -m scripts.reproduce`` end to end on tiny BLB / EBB / layered folders in their public formats:
every artefact written, the classical renderer reproduces its own ground truth, failures stay local, reruns
reuse renders."""

import csv
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from scripts import make_benchmark, reproduce
from tests.benchmark_fixtures import make_blb, make_ebb
from tests.forked_ranks import GROUP as FORKED
from tests.forked_ranks import run_ranks

FAKE_PEER = Path(__file__).resolve().parent / "fake_peer.py"
ARTEFACTS = ("tables.md", "per_image.csv", "per_scene.csv", "chart.png", "worst_cases.png", "results.json")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce_data")
    make_benchmark.main(["--out", str(root / "layered"), "--n_scenes", "1", "--height", "32", "--width", "40",
                         "--max_coc_px", "2", "4"])
    return {"blb": make_blb(root / "blb"), "ebb": make_ebb(root / "ebb"), "layered": root / "layered"}


def _argv(data, out, *extra):
    peer = f"fake={sys.executable} {FAKE_PEER} {{image}} {{disparity}} {{K}} {{focus}} {{out}} --fail_above_K 7"
    return ["--benchmark", "all", "--data", *(f"{k}={v}" for k, v in data.items()), "--methods", "identity",
            "gaussian", "classical", "--method", peer, "--ebb_K", "4", "--learned", "--device", "cpu",
            "--out", str(out), *extra]


def test_all_benchmarks_end_to_end_then_a_rerun_reuses_every_render(data, tmp_path, capsys):
    out = tmp_path / "out"
    assert reproduce.main(_argv(data, out)) == 1  # two broken BLB scenes and the peer's K > 7 cases failed
    for benchmark in ("blb", "ebb", "layered"):
        for name in ARTEFACTS:
            assert (out / benchmark / name).is_file(), (benchmark, name)
        for picture in ("chart.png", "worst_cases.png"):
            with Image.open(out / benchmark / picture) as image:
                assert image.format == "PNG" and min(image.size) > 100
    rows = list(csv.DictReader((out / "blb" / "per_image.csv").open()))
    by_method = {m: [r for r in rows if r["method"] == m] for m in ("identity", "gaussian", "classical", "fake")}
    assert len(by_method["classical"]) == 6 and len(by_method["identity"]) == 6  # 2 scenes x 3 GTs
    assert all(float(r["psnr"]) >= 60 and float(r["psnr_band"]) >= 60 for r in by_method["classical"])
    assert all(float(r["psnr"]) < 45 for r in by_method["identity"])
    assert sorted({r["level"] for r in by_method["fake"]}) == ["1"]  # K 3.75 ran; K 7.5 (level 2) failed
    tables = (out / "blb" / "tables.md").read_text()
    assert "### blb, level 1" in tables and "### blb, level 2" in tables
    assert "| fake | n/a | n/a | n/a | n/a | 0 |" in tables.split("### blb, level 2")[1]  # all failed: shown, not dropped
    assert "| method | psnr ↑ | ssim ↑ | psnr band ↑ | ssim band ↑ | images |" in tables
    assert str(data["blb"] / "s3_no_info" / "info.json") in tables and "not valid JSON" in tables
    assert "peer 'fake' exited with status 3 on 's1_bokeh_01_00'" in tables and "K 7.5 is above 7.0" in tables
    ebb = list(csv.DictReader((out / "ebb" / "per_image.csv").open()))
    assert {r["focus_source"] for r in ebb} == {"mask_median"} and len(ebb) == 8  # 2 pairs x 4 methods
    per_scene = list(csv.DictReader((out / "layered" / "per_scene.csv").open()))
    assert {r["level"] for r in per_scene} == {"1", "2"} and all(int(r["images"]) == 2 for r in per_scene
                                                                 if r["method"] == "classical")
    summary = (out / "summary.md").read_text()
    assert all(f"## {b}" in summary for b in ("blb", "ebb", "layered"))
    first = json.loads((out / "blb" / "results.json").read_text())
    assert first["rendered"]["classical"] == 6 and first["reused"]["classical"] == 0
    capsys.readouterr()

    assert reproduce.main(_argv(data, out, "--levels", "1")) == 1
    again = json.loads((out / "blb" / "results.json").read_text())
    assert again["rendered"] == {"identity": 0, "gaussian": 0, "classical": 0, "fake": 0}
    assert again["reused"]["classical"] == 2 and again["reused"]["fake"] == 2
    assert "### blb, level 2" not in (out / "blb" / "tables.md").read_text()
    again_rows = {(r["method"], r["name"]): r["psnr"] for r in csv.DictReader((out / "blb" / "per_image.csv").open())}
    assert all(again_rows[(r["method"], r["name"])] == r["psnr"] for r in rows if r["level"] == "1")


def test_usage_errors_exit_2(data, tmp_path, capsys):
    for argv in (["--benchmark", "blb", "ebb", "--data", str(data["blb"]), "--out", str(tmp_path)],
                 ["--benchmark", "blb", "--data", str(data["blb"]), "--method", "p=echo {image}", "--out", str(tmp_path)],
                 ["--benchmark", "blb", "--data", str(data["blb"]), "--method", "classical=x {out}", "--out", str(tmp_path)],
                 ["--benchmark", "ebb", "--out", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_:
            reproduce.parse_args(argv)
        assert exit_.value.code == 2
    errors = capsys.readouterr().err
    assert "NAME=DIR" in errors and "no {out}" in errors and "must be new" in errors and "--data ebb=DIR" in errors
    code = reproduce.main(["--benchmark", "blb", "--data", str(tmp_path / "nowhere"), "--methods", "identity",
                           "--learned", "--device", "cpu", "--out", str(tmp_path / "o")])
    assert code == 2 and f"BLB folder '{tmp_path / 'nowhere'}' does not exist" in capsys.readouterr().err


def test_bokehdiff_on_the_tiny_stack_under_both_protocols(tmp_path, capsys):
    from models.tiny import save_tiny_sdxl
    from tests.tiny_weights import trained_tiny_stack, write_published_adapter

    base = save_tiny_sdxl(tmp_path / "base", seed=0)
    adapter = write_published_adapter(trained_tiny_stack(seed=2), tmp_path / "adapter")  # the released layout
    blb = make_blb(tmp_path / "blb", size=(48, 64))  # the tiny UNet needs a few tokens per side
    psnr = {}
    for protocol in ("published", "corrected"):
        out = tmp_path / f"out_{protocol}"
        argv = ["--benchmark", "blb", "--data", str(blb), "--methods", "bokehdiff", "--levels", "1", "--learned",
                "--bokehdiff_args", f"--pretrained_model_name_or_path {base} --adapter {adapter} --protocol {protocol}",
                "--device", "cpu", "--out", str(out)]
        assert reproduce.main(argv) == 1  # the two broken scenes
        assert f"--protocol {protocol} -> {protocol}" in capsys.readouterr().out
        results = json.loads((out / "blb" / "results.json").read_text())
        assert results["rendered"] == {"bokehdiff": 2} and results["unavailable"] == {}  # a new spec: rendered again
        psnr[protocol] = [r["psnr"] for r in csv.DictReader((out / "blb" / "per_image.csv").open())]
    assert len(psnr["published"]) == 2 and psnr["published"] != psnr["corrected"]  # gamma 1 vs 2.2
    # Under published, bokehdiff renders the released code's BLB input (unclipped x ** (1/2.2), raw 1 / depth up
    # to 1.25 here, focus 1 / 0.8 = 1.25, K = the blur parameter), not the corrected loader's rescaled one.
    import numpy as np
    import torch

    from data.io import read_image
    from data.published import load_published_blb
    from models.pipeline import BokehDiffPipeline

    pipe = BokehDiffPipeline.from_pretrained(base, adapter=adapter, protocol="published")
    scene = blb / "s1"
    image, disparity, focus = load_published_blb(scene / "image.exr", scene / "depth.exr", 0.8)
    assert disparity.max() == pytest.approx(1.25) and focus == pytest.approx(1.25)
    with torch.no_grad():
        direct = pipe(torch.from_numpy(image)[None], torch.from_numpy(disparity)[None], K=3.0,
                      disp_focus=focus)[0].clamp(0, 1).numpy()
    written = read_image(tmp_path / "out_published" / "blb" / "bokehdiff" / "s1_bokeh_00_00.png")
    assert np.abs(written - direct).max() <= 1 / 65535  # 16-bit PNG of the same render
    corrected = read_image(tmp_path / "out_corrected" / "blb" / "bokehdiff" / "s1_bokeh_00_00.png")
    assert np.abs(corrected - direct).max() > 0.01
    missing = ["--benchmark", "blb", "--data", str(blb), "--methods", "bokehdiff", "identity", "--learned",
               "--bokehdiff_args", f"--pretrained_model_name_or_path {tmp_path / 'none'}", "--device", "cpu",
               "--out", str(tmp_path / "o2")]
    assert reproduce.main(missing) == 1
    results = json.loads((tmp_path / "o2" / "blb" / "results.json").read_text())
    assert "bokehdiff" in results["unavailable"] and results["scored"] == 6  # identity still scored


@pytest.mark.xdist_group(FORKED)
def test_two_processes_write_what_one_writes(data, tmp_path):
    """2 ranks (gloo; tests/forked_ranks.py): each renders its block, the main process scores all; renders,
    manifests and tables equal those of one process, and no rank's manifest file is left behind."""
    from tests.scripts.test_inference_sharded import files

    sets = {k: data[k] for k in ("blb", "layered")}
    args = ["--benchmark", "blb", "layered", "--data", *(f"{k}={v}" for k, v in sets.items()), "--methods",
            "identity", "classical", "--learned", "--device", "cpu"]
    assert reproduce.main([*args, "--out", str(tmp_path / "one")]) == 1  # the two broken BLB scenes
    proc = run_ranks(2, "-m", "scripts.reproduce", *args, "--out", tmp_path / "two")
    assert proc.returncode == 1, proc.stderr[-4000:]
    # layered: 4 GTs, 2 per process, 2 methods (the broken BLB scenes are not cases)
    assert "process 1 of 2: 2 ground truths, 4 renders" in proc.stdout
    assert "process 2 of 2: 2 ground truths, 4 renders" in proc.stdout
    launched = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    for benchmark in sets:
        assert all((tmp_path / "two" / benchmark / name).is_file() for name in ("tables.md", "per_image.csv",
                                                                               "results.json")), launched
        for method in ("identity", "classical"):
            one, two = (files(tmp_path / run / benchmark / method) for run in ("one", "two"))
            assert one == two and len(one) > 3  # every render byte for byte, and manifest.json
        for name in ("tables.md", "per_image.csv"):  # (the CSV names each render's path)
            one, two = ((tmp_path / run / benchmark / name).read_text() for run in ("one", "two"))
            assert one.replace(str(tmp_path / "one"), "OUT") == two.replace(str(tmp_path / "two"), "OUT")
        results = json.loads((tmp_path / "two" / benchmark / "results.json").read_text())
        assert results["reused"] == {"identity": 0, "classical": 0}  # every render counted as rendered once
