"""The command-line tools without network: a hub id that is not cached fails within seconds, with one message.

Each tool runs in a subprocess with ``HF_ENDPOINT`` pointing at a closed local port (connection refused, as
on a machine without network), an empty ``HF_HOME`` and the offline variables of tests/conftest.py removed,
so the tools themselves must notice that the hub is unreachable. No real host is contacted. Before
models/hub.py, huggingface_hub's retries made these runs take 48 s (inference, data preparation) and 517 s
(training, with 264 retry warnings and chained tracebacks).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Generous for Python + torch start-up on a loaded 2-core machine; the retry series alone took >= 48 s.
LIMIT_S = 40


def _offline_env(tmp_path: Path) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1",
               HF_HUB_DISABLE_TELEMETRY="1")
    return env


def _run(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, *args], cwd=REPO, env=_offline_env(tmp_path), capture_output=True,
                                text=True, timeout=3 * LIMIT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args[0]} still waiting for the unreachable hub after {3 * LIMIT_S} s")
    return result, time.perf_counter() - start


@pytest.mark.parametrize("tool, args, what", [
    ("inference_hf.py", ["--image", "test_data/ebb/input/scene00.png", "--disparity",
                         "test_data/ebb/depth/scene00_pred.npy"], "adapter 'zcx65535/bokehdiff'"),
    ("prepare_data.py", ["--input_dir", "test_data/ebb/input"], "depth model 'depth-anything/"),
    ("train_lora_otf.py", ["--config", "configs/train_tiny.yaml", "--train_data_dir", "test_data/otf"],
     "SDXL base model 'SG161222/RealVisXL_V5.0'"),
])
def test_uncached_hub_ids_fail_fast_with_one_message(tool, args, what, tmp_path):
    out_flag = "--output_dir"
    result, seconds = _run([tool, *args, out_flag, str(tmp_path / "out")], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert seconds < LIMIT_S, f"{tool} took {seconds:.0f} s"
    assert "Retrying" not in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert what in errors[0] and "is unreachable" in errors[0] and "Connection refused" in errors[0]
    assert "`hf download " in errors[0] and "huggingface-cli" not in errors[0]
