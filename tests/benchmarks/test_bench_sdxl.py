"""benchmarks/bench_sdxl.py at toy scale: its children measure real rows on the tiny stack (time, peak memory,
the planner's estimate, the PISA path that ran), a child that cannot run under its memory cap becomes a row that
says so, and the BENCHMARKS.md section keeps every row. The full-shape numbers come from running the benchmark
itself (BENCHMARKS.md, "Full SDXL architecture")."""

from __future__ import annotations

import argparse
import contextlib
import io
import json

import pytest

import models.hub
import models.sdxl
from benchmarks import bench_sdxl


def _child_rows(argv: list[str]) -> list[dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bench_sdxl.main(argv) == 0
    return [json.loads(line[len(bench_sdxl.ROW):]) for line in out.getvalue().splitlines()
            if line.startswith(bench_sdxl.ROW)]


def test_inference_child_measures_each_protocol_and_mode():
    rows = _child_rows(["--child", "infer", "--smoke", "--device", "cpu", "--protocols", "corrected", "published",
                        "--modes", "full", "tiled"])
    build, *infer = rows
    assert build["kind"] == "build" and build["weights_gib"] > 0
    assert [(r["protocol"], r["mode"]) for r in infer] == [("corrected", "full"), ("corrected", "tiled"),
                                                           ("published", "full"), ("published", "tiled")]
    for r in infer:
        assert r["status"] == "ok", r
        assert r["seconds"] > 0 and r["cpu_seconds"] > 0 and r["peak_gib"] >= 0
        assert r["estimate_gib"] == max(r["unet_estimate_gib"], r["vae_estimate_gib"]) > 0
        assert r["measured_over_estimate"] == pytest.approx(r["peak_gib"] / r["estimate_gib"])
    by = {(r["protocol"], r["mode"]): r for r in infer}
    assert by["corrected", "full"]["tiles"] == 1 and by["corrected", "tiled"]["tiles"] > 1
    # Each row names the PISA implementation that ran (both protocols run PISA, in their own discretisation).
    assert all(r["pisa"] in {"sparse", "chunked", "chunked/sparse"} for r in infer)
    section = bench_sdxl.section(rows, argparse.Namespace(mem_cap_gib=20.0, merge_json=None))
    assert section.startswith("## Full SDXL architecture")
    assert sum(line.startswith("| 128x128 |") for line in section.splitlines()) == 4


def test_training_child_counts_lora_and_pisa_layers(monkeypatch):
    # The child points the model loaders at the random stack; restore them after the test.
    monkeypatch.setattr(models.hub, "local_source", models.hub.local_source)
    monkeypatch.setattr(models.sdxl, "load_sdxl_components", models.sdxl.load_sdxl_components)
    built, row = _child_rows(["--child", "train", "--smoke", "--device", "cpu", "--checkpointing", "1",
                              "--train_steps", "1"])
    assert built["kind"] == "train_build" and built["lora_layers"] == row["lora_layers"]  # printed before the step
    assert row["status"] == "ok", row
    assert row["gradient_checkpointing"] is True and row["lora_layers"] > 0 and row["lora_params"] > 0
    assert row["pisa_layers"] >= 1 and row["seconds"] > 0 and row["peak_gib"] >= 0


def test_a_child_over_its_memory_cap_is_a_row_and_the_section_is_written(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    # 0.15 GiB resident is not enough to import torch and build the stack: the parent stops the child and
    # records it as a row.
    code = bench_sdxl.main(["--smoke", "--device", "cpu", "--no-train", "--mem_cap_gib", "0.15",
                            "--output", str(md), "--json", str(tmp_path / "rows.json")])
    assert code == 1
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["kind"] for r in rows] == ["error"]
    assert rows[0]["status"].startswith("does not fit: the resident set passed the 0.15 GiB cap")
    text = md.read_text()
    assert "## Full SDXL architecture" in text and "does not fit" in text and "## Other\n\nkept" in text


def test_rows_are_restated_with_the_calibrated_vae_constant():
    """A row measured with the first VAE constant (750) is reported with today's: the VAE estimate scales
    exactly, the UNet estimate is unchanged."""
    row = dict(kind="infer", status="ok", peak_gib=2.8, unet_estimate_gib=1.25, vae_estimate_gib=2.25,
               estimate_gib=2.25, measured_over_estimate=2.8 / 2.25)
    restated = bench_sdxl.recalibrated(row, 1000)
    assert restated["vae_estimate_gib"] == pytest.approx(3.0) and restated["unet_estimate_gib"] == 1.25
    assert restated["measured_over_estimate"] == pytest.approx(2.8 / 3.0)
    assert bench_sdxl.recalibrated({**row, "vae_bytes_per_px": 1000}, 1000)["vae_estimate_gib"] == 2.25


def test_sizes_parse_as_width_by_height():
    assert bench_sdxl.parse_size("1024x768") == (768, 1024) and bench_sdxl.parse_size("512") == (512, 512)
