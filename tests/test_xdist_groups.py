"""tests/xdist_groups.py: under ``pytest -n 2`` every test of an ``xdist_group`` runs on one worker, while with
xdist's own ``load`` scheduling (the control run here) the same tests are spread over both."""

import os
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_SUITE = textwrap.dedent("""
    import os
    import pytest

    def _record(name):
        with open(os.path.join(os.environ["RECORDS"], name), "w") as f:
            f.write(os.environ["PYTEST_XDIST_WORKER"])

    @pytest.mark.parametrize("i", range(12))
    def test_free(i):
        _record(f"free{i}")

    @pytest.mark.xdist_group("g")
    @pytest.mark.parametrize("i", range(6))
    def test_g(i):
        _record(f"g{i}")

    @pytest.mark.xdist_group(name="h")
    @pytest.mark.parametrize("i", range(6))
    def test_h(i):
        _record(f"h{i}")
""")


def _workers_by_test(tmp_path: Path, *plugin: str) -> dict[str, str]:
    suite, records = tmp_path / "suite", tmp_path / f"records{len(plugin)}"
    suite.mkdir(exist_ok=True)
    records.mkdir()
    # The suite's conftest alternates ungrouped and grouped tests, so xdist's chunks of consecutive tests would
    # split each group between the workers.
    (suite / "test_mixed.py").write_text(_SUITE)
    (suite / "conftest.py").write_text(textwrap.dedent("""
        def pytest_collection_modifyitems(items):
            free = [i for i in items if "free" in i.nodeid]
            grouped = [i for i in items if "free" not in i.nodeid]
            items[:] = [x for pair in zip(free, grouped) for x in pair]
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(RECORDS=str(records), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", *plugin,
                           str(suite)], cwd=suite, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {p.name: p.read_text() for p in records.iterdir()}


def _groups(workers: dict[str, str]) -> dict[str, set[str]]:
    by_group = defaultdict(set)
    for name, worker in workers.items():
        by_group[name.rstrip("0123456789")].add(worker)
    return by_group


def test_a_group_runs_on_one_worker_and_plain_load_scheduling_splits_it(tmp_path):
    grouped = _workers_by_test(tmp_path, "-p", "tests.xdist_groups")
    assert len(grouped) == 24  # every test ran once
    by_group = _groups(grouped)
    assert len(by_group["g"]) == 1 and len(by_group["h"]) == 1
    assert by_group["free"] == {"gw0", "gw1"}

    plain = _workers_by_test(tmp_path)  # xdist's load scheduling: the same suite, groups spread out
    assert len(plain) == 24 and _groups(plain)["g"] == {"gw0", "gw1"}
