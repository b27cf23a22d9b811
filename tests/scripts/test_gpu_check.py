"""benchmarks/gpu_check.sh (the one-call device check): its steps fit the call's budget in priority order, a
short budget skips what does not fit, and every flag a step passes exists in that benchmark's parser.

The script runs with stand-ins for ``python3`` and ``nvidia-smi`` on PATH that only record their arguments, so
nothing is measured here (no GPU); the GPU run itself is the device session's job."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.forked_ranks import GROUP as FORKED
from tests.forked_ranks import run_forked

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
CALL_LIMIT_S = 600  # the device tool's longest single call
PRIORITY = ["pytest_gpu", "sdxl", "pisa_sparse", "pipeline", "train", "pisa", "renderers"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def _run(tmp_path: Path, budget: int) -> tuple[list[list[str]], list[list[str]], str]:
    """Run the script with recording stand-ins; returns (python3 argv per call, summary rows, stdout)."""
    bin_dir, out = tmp_path / "bin", tmp_path / f"out{budget}"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / f"calls{budget}.txt"
    for name in ("python3", "nvidia-smi"):
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\n[ "{name}" = python3 ] && printf "%s\\037" "$@" >> "{calls}" '
                        f'&& echo >> "{calls}"\nexit 0\n')
        stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OUT=str(out),
               GPU_CHECK_BUDGET_S=str(budget))
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    argvs = [line.split("\x1f")[:-1] for line in calls.read_text().splitlines()] if calls.exists() else []
    rows = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()[1:]]
    return argvs, rows, proc.stdout


def test_syntax():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_steps_run_in_priority_order_within_the_call_limit(tmp_path):
    argvs, rows, _ = _run(tmp_path, budget=540)
    assert [r[0] for r in rows] == PRIORITY and all(r[1] == "0" for r in rows)
    # The steps' own limits, plus 30 s for the wheel install and 10 s for nvidia-smi, fit the budget, which
    # leaves slack under the device call's limit.
    assert sum(int(r[3]) for r in rows) + 30 + 10 <= 540 < CALL_LIMIT_S
    assert argvs[0][:2] == ["-m", "pytest"] and "gpu" in argvs[0]


def test_a_short_budget_skips_what_does_not_fit(tmp_path):
    argvs, rows, stdout = _run(tmp_path, budget=10)
    assert argvs == [] and [r[:2] for r in rows] == [[name, "skipped"] for name in PRIORITY]
    assert "pytest_gpu skipped" in stdout


def _help(module: str) -> str:
    """The module's --help text, in-process (each benchmark parses inside its main())."""
    mod = __import__(module, fromlist=["main"])
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
        mod.main(["--help"])
    return buffer.getvalue()


@pytest.mark.xdist_group(FORKED)
def test_every_flag_a_step_passes_exists(tmp_path):
    argvs, _, _ = _run(tmp_path, budget=540)
    for argv in argvs:
        assert argv[0] == "-m", argv
        if argv[1] == "pytest":
            text = run_forked("-m", "pytest", "--help", timeout=60).stdout  # `python -m pytest --help`
        else:
            text = _help(argv[1])
        flags = [word for word in argv[2:] if word.startswith("--")]
        assert flags and all(flag in text for flag in flags), (argv[1], [f for f in flags if f not in text])
    assert len(argvs) == len(PRIORITY)
