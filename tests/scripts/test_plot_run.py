"""python -m scripts.plot_run RUN_DIR [--out PNG]: the run's curves as a PNG; a missing folder, a missing or empty
train_log.jsonl: one error line naming it, exit status 2. As a process of its own once (the ``-m`` entry point, forked: tests/forked_ranks.py), else
in-process through ``main(argv)``."""

from __future__ import annotations

import pytest

from scripts import plot_run
from tests.forked_ranks import GROUP as FORKED
from tests.forked_ranks import run_forked
from tests.training.helpers import check_png, write_run


def test_plot_run_writes_the_png_into_the_run_folder_or_out(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    assert plot_run.main([str(run)]) == 0
    assert f"wrote {run / 'training_curves.png'}" in capsys.readouterr().out
    check_png(run / "training_curves.png")
    assert plot_run.main([str(run), "--out", str(tmp_path / "curves.png")]) == 0
    check_png(tmp_path / "curves.png")


def test_plot_run_errors_name_the_file_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert plot_run.main([str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plot_run: error: ") and f"'{missing}'" in err and "Traceback" not in err
    run = tmp_path / "run"
    run.mkdir()
    (run / "validation.jsonl").write_text('{"step": 0, "psnr": 20.0, "ssim": 0.5, "l1": 0.1}\n')
    assert plot_run.main([str(run)]) == 2
    assert f"'{run / 'train_log.jsonl'}' does not exist" in capsys.readouterr().err
    (run / "train_log.jsonl").write_text("")
    assert plot_run.main([str(run)]) == 2
    assert f"'{run / 'train_log.jsonl'}' holds no record" in capsys.readouterr().err
    assert not (run / "training_curves.png").exists()


@pytest.mark.xdist_group(FORKED)
def test_plot_run_as_a_module(tmp_path):
    run = write_run(tmp_path / "run", steps=3)
    ok = run_forked("-m", "scripts.plot_run", run)  # `python -m scripts.plot_run RUN`, forked (tests/forked_ranks.py)
    assert ok.returncode == 0, ok.stderr
    check_png(run / "training_curves.png")  # (exit 2 on errors: main()'s status, tested in-process below)
