"""Run a script as N ranks of a gloo job, forked from a process that has already imported the heavy libraries.

Why: a fresh Python that imports torch, diffusers, peft and transformers spends about 11 s of CPU before the
script's first line; a 2-rank test under ``torchrun`` pays that twice (plus torchrun's own start), and those
imports were most of the suite's multi-process time on 2 cores. Here one ``multiprocessing`` forkserver per
test process imports them once (:data:`PRELOAD`); each rank is a fork of it that runs the script as
``__main__`` with the environment ``torchrun --nproc_per_node N`` gives its workers (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). The scripts find
their rank exactly as under a launcher (``accelerate.PartialState`` / ``Accelerator`` read those variables)
and set up the same gloo process group.

What this does not cover, and where it is covered: the launchers themselves (``torchrun``'s agent and
``accelerate launch``) start real processes in tests/scripts/test_inference_sharded.py (torchrun and
``accelerate launch --multi_gpu`` on the classical renderer, whose start-up is cheap, and a rank killed by a
signal).

    proc = run_ranks(2, REPO / "inference_hf.py", "--test_data_dir", ..., env={"X": "1"})
    proc.returncode, proc.stdout, proc.stderr  # as subprocess.run(..., capture_output=True, text=True) gives

``run_forked(script, *args)`` runs one such process without the launcher's environment, for tests of a script's
own start (``python -m scripts.plot_run``, what a run prints on stderr).

``stdout`` / ``stderr`` are the ranks' outputs one after the other (rank 0 first); ``returncode`` is 0 when
every rank exited 0, else the first failed rank's exit code (torchrun says 1 for any failed rank). As under
torchrun, a rank that fails stops the others.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Imported once by the forkserver: the libraries whose import dominates a rank's start, and the scripts' packages.
PRELOAD = ["torch", "accelerate", "transformers", "peft", "diffusers", "diffusers.models", "safetensors.torch",
           "models.pipeline", "training.run", "inference.reproduce", "data.ranks"]
# The environment the forkserver starts with: libraries read some of it once, at import (thread count, offline hub).
# No ACCELERATE_USE_CPU: the scripts themselves must form a gloo group on a CPU-only host, as a user's torchrun does.
BASE_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

# The tests that call run_ranks carry @pytest.mark.xdist_group(GROUP), so that under `pytest -n` one worker
# holds the forkserver (preloading it costs about 13 s of CPU per process); tests/conftest.py sets
# current_group to the running test's group, and run_ranks refuses to run outside it.
GROUP = "forkserver"
current_group: str | None = None

_context = None


def _forkserver():
    """This process's forkserver context, started (and preloaded) on first use with :data:`BASE_ENV`."""
    global _context
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        saved = {key: os.environ.get(key) for key in BASE_ENV}
        os.environ.update(BASE_ENV)
        try:
            from multiprocessing import forkserver

            forkserver.ensure_running()  # the server inherits os.environ as it is now
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        _context = context
    return _context


def _rank_main(script: str, args: list[str], env: dict[str, str], cwd: str, out_path: str, err_path: str) -> None:
    """One rank (in the forked child): redirect fds 1 and 2 to files, set the launcher's environment, run
    ``script`` (a path, or ``-m module``) as ``__main__``, run the exit handlers a normal exit runs, and exit
    with the script's code."""
    import atexit
    import runpy
    import traceback

    for fd, path in ((1, out_path), (2, err_path)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    os.environ.update(env)
    os.chdir(cwd)
    import torch

    torch.set_num_threads(1)
    code = 0
    try:
        if script == "-m":
            sys.argv = [args[0], *args[1:]]
            runpy.run_module(args[0], run_name="__main__", alter_sys=True)
        else:
            sys.argv = [script, *args]
            sys.path.insert(0, str(Path(script).parent))
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, (int, type(None))):
            print(exit_.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - reported as an uncaught exception would be, exit 1
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()  # what interpreter shutdown runs (logging.shutdown, accelerate's cleanup)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(ranks: list, timeout: float, cmd: list[str]) -> int:
    """Wait for every rank, as torchrun's agent does: when one exits non-zero the others are stopped (SIGTERM,
    then SIGKILL after 5 s), since they would otherwise wait in their next collective until gloo's timeout.
    Returns the exit code of the rank that failed first (0 when none did)."""
    from multiprocessing.connection import wait

    deadline = time.monotonic() + timeout
    running = [process for process, _ in ranks]
    while running:
        left = deadline - time.monotonic()
        if left <= 0:
            for process in running:
                process.kill()
            raise subprocess.TimeoutExpired(cmd, timeout)
        wait([process.sentinel for process in running], timeout=left)
        done = [process for process in running if process.exitcode is not None]
        running = [process for process in running if process.exitcode is None]
        failed = [process.exitcode for process in done if process.exitcode != 0]
        if failed:
            for process in running:
                process.terminate()
            for process in running:
                process.join(5)
                if process.exitcode is None:
                    process.kill()
                    process.join()
            return next((code for code in failed if code > 0), failed[0])
    return 0


def run_ranks(n_ranks: int, script, *args, env: dict | None = None, timeout: float = 300,
              cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``script args`` (``script`` a path, or ``"-m"`` with the module name first in ``args``) as
    ``n_ranks`` ranks of one gloo job; returns what ``subprocess.run(capture_output=True, text=True)`` would.

    Raises:
        RuntimeError: the calling test is not marked ``@pytest.mark.xdist_group(GROUP)``.
        subprocess.TimeoutExpired: the ranks ran longer than ``timeout`` seconds (every rank is killed first).
    """
    with socket.socket() as sock:  # a free port: a fixed one fails when another run on the machine holds it
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    launcher = {"WORLD_SIZE": str(n_ranks), "LOCAL_WORLD_SIZE": str(n_ranks), "GROUP_RANK": "0",
                "ROLE_WORLD_SIZE": str(n_ranks), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    return _run([{**launcher, "RANK": str(rank), "LOCAL_RANK": str(rank), "ROLE_RANK": str(rank)}
                 for rank in range(n_ranks)], script, args, env, timeout, cwd)


def run_forked(script, *args, env: dict | None = None, timeout: float = 300,
               cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run ``script args`` once, as ``python script args`` (or ``python -m``) would, but forked from the
    preloaded forkserver: no launcher environment. For tests of a script's own start (``-m`` entry, output
    streams) that would otherwise pay a fresh interpreter's imports. Returns like :func:`run_ranks`."""
    return _run([{}], script, args, env, timeout, cwd)


def _run(rank_envs: list[dict], script, args, env, timeout, cwd) -> subprocess.CompletedProcess:
    """One forked process per entry of ``rank_envs`` (its launcher variables), waited for by :func:`_wait`."""
    if current_group != GROUP:
        raise RuntimeError(f"run_ranks: mark the test @pytest.mark.xdist_group({GROUP!r}) (from tests.forked_ranks "
                           f"import GROUP), so that under pytest -n the forkserver is preloaded by one worker only")
    context = _forkserver()
    args = [str(arg) for arg in args]
    with tempfile.TemporaryDirectory(prefix="ranks-") as logs:
        ranks = []
        for rank, launcher in enumerate(rank_envs):
            paths = (os.path.join(logs, f"{rank}.out"), os.path.join(logs, f"{rank}.err"))
            process = context.Process(target=_rank_main, args=(str(script), args, {**BASE_ENV, **(env or {}),
                                                                                     **launcher}, str(cwd), *paths))
            process.start()
            ranks.append((process, paths))
        returncode = _wait(ranks, timeout, [str(script), *args])
        outputs = [tuple(Path(path).read_text(errors="replace") if Path(path).is_file() else "" for path in paths)
                   for _, paths in ranks]
    return subprocess.CompletedProcess([str(script), *args], returncode, "".join(out for out, _ in outputs),
                                       "".join(err for _, err in outputs))
