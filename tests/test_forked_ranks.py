"""tests/forked_ranks.py, the launcher of the multi-rank tests: each rank sees torchrun's environment and joins
one gloo group, output and exit codes come back as from subprocess.run, and a failing rank stops the others."""

import textwrap
import time

import pytest

from tests import forked_ranks
from tests.forked_ranks import GROUP, run_ranks

pytestmark = pytest.mark.xdist_group(GROUP)

_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    print(f"rank {rank} of {dist.get_world_size()} local {os.environ['LOCAL_RANK']} sum {value.item():g} "
          f"argv {sys.argv[1:]} threads {torch.get_num_threads()}")
    if "--fail" in sys.argv:
        if rank == 1:
            print("rank 1 fails", file=sys.stderr)
            raise SystemExit(3)
        time.sleep(600)  # rank 0 ends only when the launcher stops it
    dist.destroy_process_group()
""")


def test_ranks_join_one_group_and_a_failed_rank_stops_the_others(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)
    proc = run_ranks(2, script, "--x", 1)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"rank {r} of 2 local {r} sum 3 argv ['--x', '1'] threads 1" for r in (0, 1)]

    start = time.monotonic()
    failed = run_ranks(2, script, "--fail", timeout=120)
    assert failed.returncode == 3 and "rank 1 fails" in failed.stderr
    assert time.monotonic() - start < 60  # rank 0 was stopped, not waited for


def test_a_test_outside_the_forkserver_group_is_refused(monkeypatch):
    """Under pytest -n only the worker that runs the group preloads a forkserver (tests/xdist_groups.py)."""
    monkeypatch.setattr(forked_ranks, "current_group", None)
    with pytest.raises(RuntimeError, match="xdist_group"):
        run_ranks(1, "-m", "json.tool", "--help")
