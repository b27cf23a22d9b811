"""What the command-line tools print: help texts, errors, warnings next to progress bars (issue 12, items
15, 17, 21, 22)."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import app
import dataset
import evaluate
import inference_hf
import prepare_data
import train_lora_otf
from scripts import make_benchmark, make_sample_data, plot_run, run_benchmark
from tests.forked_ranks import GROUP as FORKED
from tests.forked_ranks import run_forked
from training.config import build_parser as train_parser

REPO = Path(inference_hf.__file__).resolve().parent


def _parser(parse_args, monkeypatch) -> argparse.ArgumentParser:
    """The parser a script's ``parse_args`` builds (caught at its ``parse_args`` call)."""
    caught = {}

    def catch(self, *args, **kwargs):
        caught["parser"] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(SystemExit):
        parse_args([])
    monkeypatch.undo()
    return caught["parser"]


def _all_parsers(monkeypatch) -> dict[str, argparse.ArgumentParser]:
    parsers = {"inference_hf.py": inference_hf.build_parser(), "train_lora_otf.py": train_parser(),
               "app.py": app.build_parser()}
    for name, parse in (("evaluate.py", evaluate.parse_args), ("prepare_data.py", prepare_data.parse_args),
                        ("dataset.py", dataset.parse_args), ("make_sample_data", make_sample_data.parse_args),
                        ("make_benchmark", make_benchmark.parse_args), ("run_benchmark", run_benchmark.parse_args), ("plot_run", plot_run.parse_args)):
        parsers[name] = _parser(parse, monkeypatch)
    for action in parsers["dataset.py"]._actions:  # the preview / inspect subcommands
        if isinstance(action, argparse._SubParsersAction):
            parsers.update({f"dataset.py {k}": v for k, v in action.choices.items()})
    return parsers


def test_every_option_has_help_and_shows_its_default(monkeypatch):
    problems = []
    for name, parser in _all_parsers(monkeypatch).items():
        shows_defaults = issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction,
                                                                       argparse._SubParsersAction)):
                continue
            flag = "/".join(action.option_strings) or action.dest
            if not action.help:
                problems.append(f"{name} {flag}: no help")
            if (action.default not in (None, False, argparse.SUPPRESS) and not shows_defaults
                    and "default" not in action.help.lower()):
                problems.append(f"{name} {flag}: default {action.default!r} not shown")
        text = parser.format_help()
        if "docstring" in text:  # a --help reader cannot open the module docstring
            problems.append(f"{name}: help refers to the module docstring")
    assert problems == []


@pytest.mark.parametrize("script", ["inference_hf.py", "app.py"])
def test_help_states_each_default_once(script, monkeypatch):
    """An option whose help already says its default gets no second "(default: ...)", and none gets
    "(default: None)"; the app's own options show theirs (port, output folder, preview size)."""
    parser = _all_parsers(monkeypatch)[script]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.help or action.help == argparse.SUPPRESS:
            continue
        shown = formatter._get_help_string(action).replace("%(default)s", "VALUE").lower()
        said = "default" in action.help.lower()
        suffix = not said and action.default not in (None, False, argparse.SUPPRESS)
        assert shown.count("default") == action.help.lower().count("default") + suffix, shown
    text = parser.format_help()
    assert "(default: None)" not in " ".join(text.split())
    if script == "app.py":
        flat = " ".join(text.split())
        assert "(default: 7860)" in flat and "(default: outputs/app)" in flat and "(default: 384)" in flat
        assert "``" not in text


def test_inference_help_carries_focus_outputs_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        inference_hf.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--focus_percentile p" in text and "Exit code 0 if every input rendered" in text
    assert "(default: outputs/inference)" in text


def test_evaluate_learned_none_means_psnr_and_ssim_only(capsys):
    base = ["--pred_dir", "p", "--gt_dir", "g", "--output_dir", "o"]
    assert evaluate.parse_args([*base, "--learned", "none"]).learned == []
    assert evaluate.parse_args([*base, "--learned"]).learned == []
    assert evaluate.parse_args([*base, "--learned", "dists"]).learned == ["dists"]
    with pytest.raises(SystemExit):
        evaluate.parse_args([*base, "--learned", "none", "dists"])
    assert "--learned none excludes the other metrics" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    ([], "error: --train_data_dir is required"),
    (["--train_data_dir", "no/such/folder"], "--train_data_dir must contain fg/"),
])
def test_train_reports_missing_data_as_one_error_line(argv, expected, tmp_path, capsys):
    code = train_lora_otf.main(["--config", str(REPO / "configs" / "train_tiny.yaml"), "--output_dir",
                                str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and err.count("error:") == 1
    assert "python -m scripts.make_sample_data --out DIR" in err or "required" in err


@pytest.mark.xdist_group(FORKED)
def test_warnings_are_not_printed_into_the_progress_bar_line(tmp_path):
    """A repaired input's warning appears while the bar is drawn: it must be on its own displayed line (the
    text after the last carriage return), not appended to the bar."""
    Image.fromarray(np.full((24, 32, 3), 128, np.uint8)).save(tmp_path / "photo.png")
    disparity = np.full((24, 32), 0.5, np.float32)
    disparity[0, 0] = np.nan  # repaired with an InputWarning while loading, after the bar is drawn
    np.save(tmp_path / "disp.npy", disparity)
    result = run_forked(REPO / "inference_hf.py", "--renderer", "classical", "--image", tmp_path / "photo.png",
                        "--disparity", tmp_path / "disp.npy", "--K", "1", "--output_dir", tmp_path / "out",
                        timeout=120)  # as `python inference_hf.py ...`, forked (tests/forked_ranks.py)
    assert result.returncode == 0, result.stderr
    displayed = [line.split("\r")[-1] for line in result.stderr.split("\n")]
    warned = [line for line in displayed if "InputWarning" in line]
    assert warned, result.stderr
    assert all("render" not in line.split("InputWarning")[0] for line in warned), warned


def test_make_evaluate_leaves_the_tracked_benchmarks_file_alone():
    def recipe(target):
        return subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, check=True).stdout

    assert "run_benchmark" in recipe("evaluate") and "--write_benchmarks" not in recipe("evaluate")
    assert "--write_benchmarks" in recipe("evaluate-record")


def test_dataset_cli_reports_unusable_data_in_one_line(tmp_path, capsys):
    import cv2
    import numpy as np

    import dataset

    (tmp_path / "empty").mkdir()
    assert dataset.main(["inspect", "--data_root", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dataset.py inspect: error: cannot tell the layout of") and "Traceback" not in err
    # Foregrounds without alpha: one line naming the folder and what fg/ needs, no traceback.
    for sub in ("fg", "bg"):
        (tmp_path / "otf" / sub).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "otf" / "fg" / "rgb.png"), np.full((40, 40, 3), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "otf" / "bg" / "bg.png"), np.full((200, 200, 3), 64, np.uint8))
    assert dataset.main(["preview", "--data_root", str(tmp_path / "otf"), "--out", str(tmp_path / "prev"),
                         "--n", "1", "--size", "64"]) == 2
    err = capsys.readouterr().err
    assert "dataset.py preview: error:" in err and "alpha" in err and "Traceback" not in err
    assert not (tmp_path / "prev" / "preview.png").exists()


@pytest.mark.parametrize("gamma", ["0", "-1"])
def test_dataset_preview_refuses_a_gamma_that_is_not_positive(gamma, tmp_path, capsys):
    """`--gamma 0` crashed with ZeroDivisionError while rendering; now the parser refuses it (exit 2)."""
    with pytest.raises(SystemExit) as info:
        dataset.main(["preview", "--data_root", str(REPO / "test_data" / "otf"), "--out", str(tmp_path / "prev"),
                      "--n", "1", "--size", "32", "--gamma", gamma])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "error: --gamma must be > 0" in err and f"found {float(gamma)}" in err
    assert "Traceback" not in err and not (tmp_path / "prev").exists()


def test_dataset_cli_errors_name_its_own_flags(tmp_path, capsys):
    """`preview --data_root /nonexist` said `--train_data_dir must contain fg/` and `inspect` said `Pass
    layout=...`: flags of other tools or of the Python API, not the ones given."""
    assert dataset.main(["preview", "--data_root", str(tmp_path / "nonexist"), "--out", str(tmp_path / "prev"),
                         "--n", "1", "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert "--data_root must contain fg/" in err and "--train_data_dir" not in err and err.count("error:") == 1
    (tmp_path / "empty").mkdir()
    assert dataset.main(["inspect", "--data_root", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "Pass --layout NAME (one of EBB" in err and "layout=" not in err and err.count("error:") == 1
