"""training/plots.py: the run's curves from its StepLog records (format: training.loop.StepLog, keys: training.run)."""

from __future__ import annotations

import logging

import pytest

from tests.training.helpers import check_png, write_run
from training.plots import CURVES_NAME, read_records, write_training_curves


def test_curves_of_a_run_are_a_png_in_the_run_folder(tmp_path):
    run = write_run(tmp_path / "run")
    path = write_training_curves(run)
    assert path == run / CURVES_NAME
    check_png(path)
    assert not list(run.glob(".*.tmp"))  # written through a temporary, nothing left behind
    other = write_training_curves(run, tmp_path / "elsewhere" / "curves.png")
    check_png(other)


def test_a_run_without_validation_is_plotted_and_says_so(tmp_path):
    run = write_run(tmp_path / "run", validation_every=None)
    check_png(write_training_curves(run))


def test_records_are_sorted_and_a_partial_line_is_skipped_with_a_warning(tmp_path, caplog):
    run = write_run(tmp_path / "run", steps=3)
    with open(run / "train_log.jsonl", "a") as handle:
        handle.write('{"step": 4, "total": 0.0')  # a write cut short while the run appends
    with caplog.at_level(logging.WARNING):
        records = read_records(run / "train_log.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert "line 4 is not a complete record" in caplog.text
    assert records[0]["gan_g"] is None  # null in strict JSON; drawn as a gap
    check_png(write_training_curves(run))


def test_missing_folder_or_log_and_an_empty_log_are_errors_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder '.*nowhere' does not exist"):
        write_training_curves(tmp_path / "nowhere")
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="train_log.jsonl' does not exist"):
        write_training_curves(run)
    (run / "train_log.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="train_log.jsonl' holds no record"):
        write_training_curves(run)
    assert not (run / CURVES_NAME).exists()
